"""Configuration of the Wan VAE, read from a diffusers ``config.json`` dict, with presets for the real 2.1 / 2.2."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Mapping

from vidpar.config_fields import ConfigFields

# Per-channel latent statistics of the released VAEs (diffusers' AutoencoderKLWan default / conversion script).
WAN21_LATENTS_MEAN = [
    -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
    0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
]  # fmt: skip
WAN21_LATENTS_STD = [
    2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
    3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
]  # fmt: skip
WAN22_LATENTS_MEAN = [
    -0.2289, -0.0052, -0.1323, -0.2339, -0.2799, 0.0174, 0.1838, 0.1557,
    -0.1382, 0.0542, 0.2813, 0.0891, 0.1570, -0.0098, 0.0375, -0.1825,
    -0.2246, -0.1207, -0.0698, 0.5109, 0.2665, -0.2108, -0.2158, 0.2502,
    -0.2055, -0.0322, 0.1109, 0.1567, -0.0729, 0.0899, -0.2799, -0.1230,
    -0.0313, -0.1649, 0.0117, 0.0723, -0.2839, -0.2083, -0.0520, 0.3748,
    0.0152, 0.1957, 0.1433, -0.2944, 0.3573, -0.0548, -0.1681, -0.0667,
]  # fmt: skip
WAN22_LATENTS_STD = [
    0.4765, 1.0364, 0.4514, 1.1677, 0.5313, 0.4990, 0.4818, 0.5013,
    0.8158, 1.0344, 0.5894, 1.0901, 0.6885, 0.6165, 0.8454, 0.4978,
    0.5759, 0.3523, 0.7135, 0.6804, 0.5833, 1.4146, 0.8986, 0.5659,
    0.7069, 0.5338, 0.4889, 0.4917, 0.4069, 0.4999, 0.6866, 0.4093,
    0.5709, 0.6065, 0.6415, 0.4944, 0.5726, 1.2042, 0.5458, 1.6887,
    0.3971, 1.0600, 0.3943, 0.5537, 0.5444, 0.4089, 0.7468, 0.7744,
]  # fmt: skip

# diffusers config keys that carry no architecture information.
_IGNORED_KEYS = {"clip_output", "dropout"}


@dataclass(frozen=True)
class DecoderLevel:
    """One decoder up block as ``WanDecoder3d`` builds it: channels in and out, and its upsampler
    (``"upsample3d"``, ``"upsample2d"``, or None for the last block)."""

    in_dim: int
    out_dim: int
    mode: str | None


@dataclass(frozen=True)
class WanVAEConfig:
    """Architecture of a Wan VAE; field names and defaults follow diffusers' ``AutoencoderKLWan`` (= Wan 2.1)."""

    base_dim: int = 96
    decoder_base_dim: int | None = None
    z_dim: int = 16
    dim_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_scales: tuple[float, ...] = ()
    temperal_downsample: tuple[bool, ...] = (False, True, True)
    latents_mean: tuple[float, ...] = field(default_factory=lambda: tuple(WAN21_LATENTS_MEAN))
    latents_std: tuple[float, ...] = field(default_factory=lambda: tuple(WAN21_LATENTS_STD))
    is_residual: bool = False
    in_channels: int = 3
    out_channels: int = 3
    patch_size: int | None = None
    scale_factor_temporal: int = 4
    scale_factor_spatial: int = 8

    def __post_init__(self) -> None:
        for name in ("dim_mult", "attn_scales", "temperal_downsample", "latents_mean", "latents_std"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        if self.attn_scales:
            raise ValueError("attn_scales (encoder attention in down blocks) is not supported; released VAEs use []")
        if len(self.temperal_downsample) != len(self.dim_mult) - 1:
            raise ValueError(
                f"temperal_downsample needs len(dim_mult)-1 = {len(self.dim_mult) - 1} entries, "
                f"got {len(self.temperal_downsample)}"
            )
        if len(self.latents_mean) != self.z_dim or len(self.latents_std) != self.z_dim:
            raise ValueError(
                f"latents_mean/latents_std need z_dim={self.z_dim} entries, "
                f"got {len(self.latents_mean)}/{len(self.latents_std)}"
            )
        if self.patch_size is not None and self.patch_size < 1:
            raise ValueError(f"patch_size must be >= 1 or None, got {self.patch_size}")

    @property
    def decoder_dim(self) -> int:
        return self.base_dim if self.decoder_base_dim is None else self.decoder_base_dim

    def decoder_dims(self) -> list[int]:
        """Channel widths of the decoder: the mid block's, then each up block's output."""
        mult = self.dim_mult
        return [self.decoder_dim * u for u in (mult[-1], *mult[::-1])]

    def decoder_levels(self) -> list[DecoderLevel]:
        """The decoder's up blocks, in order (sizes only; for memory and communication models)."""
        dims, temporal_up, last = self.decoder_dims(), self.temperal_downsample[::-1], len(self.dim_mult) - 1
        levels = []
        for i, (cin, cout) in enumerate(zip(dims[:-1], dims[1:])):
            if i > 0 and not self.is_residual:
                cin //= 2  # Wan 2.1 upsamplers halve the channels
            mode = None if i == last else ("upsample3d" if temporal_up[i] else "upsample2d")
            levels.append(DecoderLevel(cin, cout, mode))
        return levels

    @property
    def patch(self) -> int:
        """Pixel patch folded into channels before the encoder (1 when unused)."""
        return self.patch_size or 1

    @property
    def video_channels(self) -> int:
        """Colour channels of the pixel video (``in_channels`` counts patchified channels)."""
        return self.in_channels // (self.patch * self.patch)

    @property
    def temporal_factor(self) -> int:
        return 2 ** sum(bool(t) for t in self.temperal_downsample)

    @property
    def spatial_factor(self) -> int:
        return 2 ** (len(self.dim_mult) - 1) * self.patch

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "WanVAEConfig":
        """From a diffusers ``config.json`` dict, every field typed and ranged (``ValueError`` naming the field; the
        caller names the file); ``_``-prefixed metadata is ignored, other unknown keys raise."""
        f = ConfigFields(d)
        names = {fl.name for fl in dataclasses.fields(cls)}
        unknown = sorted(k for k in d if k not in names and not k.startswith("_") and k not in _IGNORED_KEYS)
        if unknown:
            raise ValueError(f"unknown Wan VAE config keys: {unknown}")
        base = cls()
        z_dim = f.int("z_dim", base.z_dim, min=1)
        kwargs = dict(
            base_dim=f.int("base_dim", base.base_dim, min=1),
            decoder_base_dim=f.optional_int("decoder_base_dim", min=1),
            z_dim=z_dim,
            dim_mult=f.int_list("dim_mult", base.dim_mult, min=1),
            num_res_blocks=f.int("num_res_blocks", base.num_res_blocks, min=1),
            attn_scales=f.float_list("attn_scales", ()),
            temperal_downsample=f.bool_list("temperal_downsample", base.temperal_downsample),
            is_residual=f.bool("is_residual", base.is_residual),
            in_channels=f.int("in_channels", base.in_channels, min=1),
            out_channels=f.int("out_channels", base.out_channels, min=1),
            patch_size=f.optional_int("patch_size", min=1),
        )
        if not kwargs["dim_mult"]:
            raise ValueError("dim_mult must be a non-empty list of ints >= 1, got []")
        for key in ("latents_mean", "latents_std"):
            if f.has(key):
                kwargs[key] = f.float_list(key, length=z_dim, positive=key == "latents_std")
        for key in ("scale_factor_temporal", "scale_factor_spatial"):
            value = f.optional_int(key, min=1)
            if value is not None:
                kwargs[key] = value
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """The diffusers ``AutoencoderKLWan`` keyword arguments for this config."""
        d = dataclasses.asdict(self)
        for k, v in d.items():
            if isinstance(v, tuple):
                d[k] = list(v)
        return d

    def planner_workload(self):
        """The planner's ``VaeWorkload`` of this config (its exact decode comm walk, size and cost estimates)."""
        from .workload import wan_vae_workload

        return wan_vae_workload(self)

    @classmethod
    def preset(cls, name: str) -> "WanVAEConfig":
        """A released VAE's config; ``name`` is one of ``WAN_VAE_PRESETS`` (``"wan2.1"``, ``"wan2.2"``)."""
        try:
            return WAN_VAE_PRESETS[name]
        except KeyError:
            raise ValueError(f"unknown Wan VAE preset {name!r}; known: {sorted(WAN_VAE_PRESETS)}") from None

    @classmethod
    def wan21(cls) -> "WanVAEConfig":
        """The released Wan2.1 VAE (z 16, 4x8x8)."""
        return cls()

    @classmethod
    def wan22(cls) -> "WanVAEConfig":
        """The released Wan2.2 (TI2V-5B) VAE (z 48, 4x16x16, 2x2 patchify, residual up/down shortcuts)."""
        return cls(
            base_dim=160,
            decoder_base_dim=256,
            z_dim=48,
            is_residual=True,
            in_channels=12,
            out_channels=12,
            patch_size=2,
            scale_factor_temporal=4,
            scale_factor_spatial=16,
            latents_mean=tuple(WAN22_LATENTS_MEAN),
            latents_std=tuple(WAN22_LATENTS_STD),
        )


# Read-only: presets are shared by every caller (the config itself is frozen).
# 2.1: all Wan2.1 models and Wan2.2 A14B (T2V/I2V); 2.2: Wan2.2 TI2V-5B.
WAN_VAE_PRESETS: Mapping[str, WanVAEConfig] = MappingProxyType(
    {"wan2.1": WanVAEConfig.wan21(), "wan2.2": WanVAEConfig.wan22()}
)
