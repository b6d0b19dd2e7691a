"""Configuration of the HunyuanVideo-1.5 VAE, from a diffusers or an official ``vae/config.json``, with the preset.

diffusers' ``AutoencoderKLHunyuanVideo15`` and the official ``AutoencoderKLConv3D`` build the same network; the
official config names the compression ratios ``ffactor_spatial`` / ``ffactor_temporal`` and adds a latent
``shift_factor`` (null in the release) and spatial-tiling sizes (``sample_size`` / ``sample_tsize``, ignored here:
vidpar never tiles).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping

# Official config names -> ours (diffusers').
_OFFICIAL_NAMES = {"ffactor_spatial": "spatial_compression_ratio", "ffactor_temporal": "temporal_compression_ratio"}
# Keys that carry no architecture information (tiling sizes of the official code).
_IGNORED_KEYS = {"sample_size", "sample_tsize"}


@dataclass(frozen=True)
class DecoderLevel:
    """One decoder up block: ``in_dim -> out_dim`` over ``num_res_blocks`` residual blocks, then (``up_dim`` not
    None) an upsampler ``out_dim -> up_dim`` that doubles H and W, and T too when ``temporal``."""

    in_dim: int
    out_dim: int
    up_dim: int | None
    temporal: bool


@dataclass(frozen=True)
class EncoderLevel:
    """One encoder down block: residual blocks ``in_dim -> out_dim``, then (``down_dim`` not None) a downsampler
    ``out_dim -> down_dim`` that halves H and W, and T too when ``temporal``."""

    in_dim: int
    out_dim: int
    down_dim: int | None
    temporal: bool


def _power_of_two(name: str, v: int) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1 or v & (v - 1):
        raise ValueError(f"{name} must be a power of two >= 1, got {v!r}")
    return int(math.log2(v))


@dataclass(frozen=True)
class HunyuanVideo15VAEConfig:
    """Architecture and latent scaling of the HunyuanVideo-1.5 VAE; names and defaults are diffusers'
    ``AutoencoderKLHunyuanVideo15`` (= the released VAE), plus the official ``shift_factor``."""

    in_channels: int = 3
    out_channels: int = 3
    latent_channels: int = 32
    block_out_channels: tuple[int, ...] = (128, 256, 512, 1024, 1024)
    layers_per_block: int = 2
    spatial_compression_ratio: int = 16
    temporal_compression_ratio: int = 4
    downsample_match_channel: bool = True
    upsample_match_channel: bool = True
    scaling_factor: float = 1.03682
    shift_factor: float | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "block_out_channels", tuple(self.block_out_channels))
        for name in ("in_channels", "out_channels", "latent_channels", "layers_per_block"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        blocks = self.block_out_channels
        if not blocks or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in blocks):
            raise ValueError(f"block_out_channels must be positive ints, got {blocks!r}")
        s = _power_of_two("spatial_compression_ratio", self.spatial_compression_ratio)
        t = _power_of_two("temporal_compression_ratio", self.temporal_compression_ratio)
        if s > len(blocks) - 1:
            raise ValueError(
                f"spatial_compression_ratio={self.spatial_compression_ratio} needs {s + 1} blocks, "
                f"block_out_channels has {len(blocks)}"
            )
        if t > s:
            raise ValueError("temporal_compression_ratio must not exceed spatial_compression_ratio (every temporal "
                             f"resample also resamples space), got {self.temporal_compression_ratio} > "
                             f"{self.spatial_compression_ratio}")
        if blocks[-1] % (2 * self.latent_channels):
            raise ValueError(f"block_out_channels[-1]={blocks[-1]} must be divisible by 2 * latent_channels "
                             f"= {2 * self.latent_channels} (the encoder's and decoder's channel shortcuts)")
        if not (isinstance(self.scaling_factor, (int, float)) and self.scaling_factor > 0):
            raise ValueError(f"scaling_factor must be a positive number, got {self.scaling_factor!r}")
        if self.shift_factor is not None and not isinstance(self.shift_factor, (int, float)):
            raise ValueError(f"shift_factor must be a number or None, got {self.shift_factor!r}")
        for i, lv in enumerate(self.decoder_levels()):
            if lv.up_dim is not None:
                _check_resample(f"decoder up block {i}", lv.out_dim, lv.up_dim, lv.temporal, up=True)
        for i, lv in enumerate(self.encoder_levels()):
            if lv.down_dim is not None:
                _check_resample(f"encoder down block {i}", lv.out_dim, lv.down_dim, lv.temporal, up=False)

    # ---- geometry ------------------------------------------------------------------------------------------------

    @property
    def z_dim(self) -> int:
        """Latent channels (Wan's name)."""
        return self.latent_channels

    @property
    def temporal_factor(self) -> int:
        """Video frames per latent frame after the first: ``F = 1 + temporal_factor * (T - 1)``."""
        return self.temporal_compression_ratio

    @property
    def spatial_factor(self) -> int:
        """Pixels per latent pixel along H and W."""
        return self.spatial_compression_ratio

    scale_factor_temporal = temporal_factor
    scale_factor_spatial = spatial_factor

    @property
    def video_channels(self) -> int:
        return self.out_channels

    def num_frames(self, latent_frames: int) -> int:
        """Video frames decoded from ``latent_frames`` latent frames: ``1 + temporal_factor * (T - 1)``."""
        return 1 + self.temporal_factor * (latent_frames - 1)

    def latent_frames(self, frames: int) -> int:
        """Latent frames of a ``frames``-frame video; ``ValueError`` unless ``frames = 1 + temporal_factor * k``."""
        if frames < 1 or (frames - 1) % self.temporal_factor:
            raise ValueError(f"frame count must be 1 + {self.temporal_factor}k (k >= 0), got {frames}")
        return 1 + (frames - 1) // self.temporal_factor

    def decoder_levels(self) -> list[DecoderLevel]:
        """The decoder's up blocks in order, as ``HunyuanVideo15Decoder3D`` builds them."""
        rev = self.block_out_channels[::-1]
        s = int(math.log2(self.spatial_compression_ratio))
        t = int(math.log2(self.temporal_compression_ratio))
        levels, cin = [], rev[0]
        for i, out in enumerate(rev):
            if i < s or i < t:
                up = rev[i + 1] if self.upsample_match_channel else out
                levels.append(DecoderLevel(cin, out, up, i < t))
                cin = up
            else:
                levels.append(DecoderLevel(cin, out, None, False))
                cin = out
        return levels

    def encoder_levels(self) -> list[EncoderLevel]:
        """The encoder's down blocks in order, as ``HunyuanVideo15Encoder3D`` builds them."""
        blocks = self.block_out_channels
        s = int(math.log2(self.spatial_compression_ratio))
        first_temporal = int(math.log2(self.spatial_compression_ratio // self.temporal_compression_ratio))
        levels, cin = [], blocks[0]
        for i, out in enumerate(blocks):
            if i < s:
                down = blocks[i + 1] if self.downsample_match_channel else out
                levels.append(EncoderLevel(cin, out, down, i >= first_temporal))
                cin = down
            else:
                levels.append(EncoderLevel(cin, out, None, False))
                cin = out
        return levels

    # ---- dicts ---------------------------------------------------------------------------------------------------

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "HunyuanVideo15VAEConfig":
        """From a diffusers (``AutoencoderKLHunyuanVideo15``) or official (``AutoencoderKLConv3D``) ``config.json``
        dict; ``_``-prefixed metadata and tiling sizes are ignored, other unknown keys raise ``ValueError``."""
        names = {f.name for f in dataclasses.fields(cls)}
        kwargs: dict[str, Any] = {}
        unknown = []
        for k, v in d.items():
            if k.startswith("_") or k in _IGNORED_KEYS:
                continue
            key = _OFFICIAL_NAMES.get(k, k)
            if key not in names:
                unknown.append(k)
            elif key in kwargs:
                raise ValueError(f"HunyuanVideo-1.5 VAE config gives {key!r} twice (as {k!r} too)")
            else:
                kwargs[key] = v
        if unknown:
            raise ValueError(f"unknown HunyuanVideo-1.5 VAE config keys: {sorted(unknown)}")
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        """The diffusers ``AutoencoderKLHunyuanVideo15`` keyword arguments (``shift_factor`` is left out: diffusers
        has none; it must be None to build diffusers' model from this)."""
        d = dataclasses.asdict(self)
        d["block_out_channels"] = list(d["block_out_channels"])
        d.pop("shift_factor")
        return d

    def planner_workload(self):
        """The planner's ``VaeWorkload`` of this config (exact decode comm walk and parameter count, estimates)."""
        from .vae_workload import HunyuanVideo15VaeWorkload

        return HunyuanVideo15VaeWorkload(self)

    @classmethod
    def preset(cls, name: str) -> "HunyuanVideo15VAEConfig":
        """A released VAE's config; ``name`` is one of ``HUNYUANVIDEO15_VAE_PRESETS``."""
        try:
            return HUNYUANVIDEO15_VAE_PRESETS[name]
        except KeyError:
            raise ValueError(
                f"unknown HunyuanVideo-1.5 VAE preset {name!r}; known: {sorted(HUNYUANVIDEO15_VAE_PRESETS)}"
            ) from None


def _check_resample(where: str, cin: int, cout: int, temporal: bool, up: bool) -> None:
    """The channel arithmetic of a channel<->space shuffle (``HunyuanVideo15Upsample`` / ``Downsample``)."""
    factor = 8 if temporal else 4
    if up:
        # conv cin -> cout*factor; shortcut repeats cin channels factor*cout/cin times; the first frame of a
        # temporal upsample takes half of them, from cin/4 channels.
        ok = (factor * cout) % cin == 0 and (not temporal or (cin % 8 == 0 and (factor * cout // cin) % 2 == 0))
    else:
        # conv cin -> cout/factor; shortcut averages groups of factor*cin/cout channels (half for the first frame).
        ok = cout % factor == 0 and (factor * cin) % cout == 0 and (not temporal or (factor * cin // cout) % 2 == 0)
    if not ok:
        kind = ("temporal " if temporal else "") + ("upsample" if up else "downsample")
        raise ValueError(f"{where}: a {kind} from {cin} to {cout} channels does not divide into the x{factor} "
                         "channel shuffle; change block_out_channels")


# Read-only: presets are shared by every caller (the config itself is frozen). One VAE serves every released
# HunyuanVideo-1.5 checkpoint (480p / 720p, T2V / I2V, distilled).
HUNYUANVIDEO15_VAE_PRESETS: Mapping[str, HunyuanVideo15VAEConfig] = MappingProxyType(
    {"hunyuanvideo-1.5": HunyuanVideo15VAEConfig()}
)
