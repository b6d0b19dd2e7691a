"""Configuration of the Wan diffusion transformer (Wan 2.1 T2V/I2V, Wan 2.2 A14B and TI2V-5B).

One dataclass describes every variant; it can be built from a diffusers ``config.json`` (the ``transformer/``
folder of the ``Wan-AI/*-Diffusers`` repositories), from an official Wan ``config.json`` (keys ``dim``,
``num_heads``, ``model_type``...), or from a named preset with the real sizes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping

from vidpar.config_fields import ConfigFields

# Number of CLIP image tokens Wan 2.1 I2V feeds to the image cross-attention (FLF2V feeds two images: 2 * 257).
WAN_IMAGE_TOKENS = 257
# The official ``model_type`` values vidpar runs (VACE, S2V and other variants have layers it does not build).
WAN_MODEL_TYPES = ("t2v", "i2v", "flf2v", "ti2v")
# Width of the CLIP (open-clip xlm-roberta ViT-H/14) image states that Wan 2.1 I2V consumes.
WAN_CLIP_DIM = 1280


@dataclass(frozen=True)
class WanTransformerConfig:
    """Sizes and switches of a Wan DiT.

    ``image_dim`` is set only for models with an image embedding (Wan 2.1 I2V / FLF2V: CLIP states go through
    ``img_emb`` and get their own K/V in every cross-attention). Wan 2.2 I2V-A14B has no image embedding: its
    image conditioning is concatenated into the latent channels (``in_channels=36``). Wan 2.2 TI2V-5B takes
    per-token timesteps ``[B, S]``; every model accepts both ``[B]`` and ``[B, S]``.
    """

    dim: int = 1536
    num_heads: int = 12
    num_layers: int = 30
    ffn_dim: int = 8960
    in_channels: int = 16
    out_channels: int = 16
    text_dim: int = 4096
    freq_dim: int = 256
    patch_size: tuple[int, int, int] = (1, 2, 2)
    eps: float = 1e-6
    qk_norm: bool = True
    cross_attn_norm: bool = True
    image_dim: int | None = None
    # FLF2V only: learned position embedding added to the 2 * 257 image tokens.
    image_pos_embed_len: int | None = None
    rope_theta: float = 10000.0
    # Informational (the pipeline pads text to this many tokens); the model accepts any text length.
    text_len: int = 512
    model_type: str = "t2v"

    def __post_init__(self) -> None:
        object.__setattr__(self, "patch_size", tuple(int(p) for p in self.patch_size))
        if len(self.patch_size) != 3 or min(self.patch_size) < 1:
            raise ValueError(f"patch_size must be three positive ints, got {self.patch_size}")
        for name in ("dim", "num_heads", "num_layers", "ffn_dim", "in_channels", "out_channels", "text_dim"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.dim % self.num_heads:
            raise ValueError(f"dim={self.dim} is not divisible by num_heads={self.num_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim={self.head_dim} must be even for rotary embeddings")
        if self.freq_dim % 2:
            raise ValueError(f"freq_dim={self.freq_dim} must be even")
        if self.image_pos_embed_len is not None and self.image_dim is None:
            raise ValueError("image_pos_embed_len needs image_dim (an image embedding)")

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def patch_volume(self) -> int:
        pt, ph, pw = self.patch_size
        return pt * ph * pw

    def replace(self, **changes: Any) -> "WanTransformerConfig":
        """A copy with some fields changed."""
        return dataclasses.replace(self, **changes)

    def planner_workload(self):
        """The planner's ``DitWorkload`` of this config (exact parameter and FLOP counts)."""
        from .workload import wan_dit_workload

        return wan_dit_workload(self)

    def planner_spec(self, name: str = "custom"):
        """The planner's ``ModelSpec`` of this DiT with the released VAE it is paired with (one expert)."""
        from .workload import wan_model_spec

        return wan_model_spec(name, self)

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_diffusers_config(cls, cfg: dict[str, Any]) -> "WanTransformerConfig":
        """From a diffusers ``WanTransformer3DModel`` ``config.json`` dict; every field typed and ranged
        (``ValueError`` naming the field; the caller names the file).

        diffusers always builds QK RMS-norms across heads whatever ``qk_norm`` says, so ``qk_norm`` is True.
        ``rope_max_seq_len`` is ignored: vidpar computes rotary tables for any length.
        """
        f = ConfigFields(cfg)
        cls_name = cfg.get("_class_name", "WanTransformer3DModel")
        if cls_name != "WanTransformer3DModel":
            raise ValueError(f"expected a WanTransformer3DModel config, got _class_name={cls_name!r}")
        heads = f.int("num_attention_heads", 40, min=1)
        dim = heads * f.int("attention_head_dim", 128, min=1)
        image_dim = f.optional_int("image_dim", min=1)
        added_kv = f.optional_int("added_kv_proj_dim", min=1)
        if image_dim is not None and added_kv not in (None, dim):
            raise ValueError(f"added_kv_proj_dim={added_kv} must equal the model width {dim} when image_dim is set")
        if image_dim is None and added_kv is not None:
            raise ValueError("added_kv_proj_dim is set but image_dim is not; this layout is not a Wan model")
        in_ch = f.int("in_channels", 16, min=1)
        f.optional_int("rope_max_seq_len", min=1)  # typed, then ignored (see above)
        return cls(
            dim=dim,
            num_heads=heads,
            num_layers=f.int("num_layers", 40, min=1),
            ffn_dim=f.int("ffn_dim", 13824, min=1),
            in_channels=in_ch,
            out_channels=f.optional_int("out_channels", min=1) or in_ch,
            text_dim=f.int("text_dim", 4096, min=1),
            freq_dim=f.int("freq_dim", 256, min=2),
            patch_size=f.int_list("patch_size", (1, 2, 2), length=3, min=1),
            eps=f.float("eps", 1e-6, positive=True),
            qk_norm=True,
            cross_attn_norm=f.bool("cross_attn_norm", True),
            image_dim=image_dim,
            image_pos_embed_len=f.optional_int("pos_embed_seq_len", min=1),
            model_type="i2v" if image_dim is not None else "t2v",
        )

    @classmethod
    def from_official_config(
        cls, cfg: dict[str, Any], image_dim: int | None | str = "auto"
    ) -> "WanTransformerConfig":
        """From an official Wan ``config.json`` dict (``dim``, ``num_heads``, ``model_type``, ``in_dim``...); every
        field typed and ranged (``ValueError`` naming the field; the caller names the file).

        ``model_type == "i2v"`` is ambiguous: Wan 2.1 I2V has a CLIP image embedding, Wan 2.2 I2V-A14B has none,
        and their configs do not say which. ``image_dim="auto"`` guesses 1280 for ``i2v``/``flf2v``; the loader
        passes the value it reads from the checkpoint's keys instead.
        """
        if "dim" not in cfg or "num_heads" not in cfg:
            raise ValueError("not an official Wan config: keys 'dim' and 'num_heads' are required")
        f = ConfigFields(cfg)
        model_type = f.str("model_type", "t2v", choices=WAN_MODEL_TYPES)
        window = f.int_list("window_size", (-1, -1), length=2)
        if window != (-1, -1):
            raise ValueError(f"windowed attention (window_size={list(window)}) is not supported; only global "
                             "attention")
        if image_dim == "auto":
            image_dim = WAN_CLIP_DIM if model_type in ("i2v", "flf2v") else None
        in_ch = f.int("in_dim", 16, min=1)
        return cls(
            dim=f.int("dim", min=1),
            num_heads=f.int("num_heads", min=1),
            num_layers=f.int("num_layers", 32, min=1),
            ffn_dim=f.int("ffn_dim", 8192, min=1),
            in_channels=in_ch,
            out_channels=f.optional_int("out_dim", min=1) or in_ch,
            text_dim=f.int("text_dim", 4096, min=1),
            freq_dim=f.int("freq_dim", 256, min=2),
            patch_size=f.int_list("patch_size", (1, 2, 2), length=3, min=1),
            eps=f.float("eps", 1e-6, positive=True),
            qk_norm=f.bool("qk_norm", True),
            cross_attn_norm=f.bool("cross_attn_norm", True),
            image_dim=image_dim,
            image_pos_embed_len=2 * WAN_IMAGE_TOKENS if (model_type == "flf2v" and image_dim) else None,
            text_len=f.int("text_len", 512, min=1),
            model_type=model_type,
        )

    @classmethod
    def preset(cls, name: str) -> "WanTransformerConfig":
        """Real sizes of a released model; ``name`` is one of ``WAN_TRANSFORMER_PRESETS``."""
        try:
            return WAN_TRANSFORMER_PRESETS[name]
        except KeyError:
            raise ValueError(f"unknown Wan preset {name!r}; known: {sorted(WAN_TRANSFORMER_PRESETS)}") from None


_14B = dict(dim=5120, num_heads=40, num_layers=40, ffn_dim=13824)

# Read-only: presets are shared by every caller.
WAN_TRANSFORMER_PRESETS: Mapping[str, WanTransformerConfig] = MappingProxyType({
    "wan2.1-t2v-1.3b": WanTransformerConfig(dim=1536, num_heads=12, num_layers=30, ffn_dim=8960),
    "wan2.1-t2v-14b": WanTransformerConfig(**_14B),
    # 480P and 720P I2V share one architecture.
    "wan2.1-i2v-14b": WanTransformerConfig(**_14B, in_channels=36, image_dim=WAN_CLIP_DIM, model_type="i2v"),
    "wan2.1-flf2v-14b": WanTransformerConfig(
        **_14B, in_channels=36, image_dim=WAN_CLIP_DIM, image_pos_embed_len=2 * WAN_IMAGE_TOKENS, model_type="flf2v"
    ),
    # A14B: two experts (high noise / low noise), each this architecture.
    "wan2.2-t2v-a14b": WanTransformerConfig(**_14B),
    "wan2.2-i2v-a14b": WanTransformerConfig(**_14B, in_channels=36, model_type="i2v"),
    "wan2.2-ti2v-5b": WanTransformerConfig(
        dim=3072, num_heads=24, num_layers=30, ffn_dim=14336, in_channels=48, out_channels=48, model_type="ti2v"
    ),
})
