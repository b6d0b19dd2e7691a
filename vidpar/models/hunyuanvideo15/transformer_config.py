"""Configuration of the HunyuanVideo-1.5 diffusion transformer (8.3B, 480p/720p, T2V/I2V and distilled variants).

One frozen dataclass describes every released variant. It is built from a diffusers ``config.json``
(``HunyuanVideo15Transformer3DModel``, the ``transformer/`` folder of the ``HunyuanVideo-1.5-Diffusers-*``
repositories), from the official checkpoint's ``config.json`` (``transformer/<variant>/config.json`` of
``tencent/HunyuanVideo-1.5``: ``hidden_size``, ``heads_num``, ``mm_double_blocks_depth``...), or from a named
preset with the released sizes.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Mapping

# Width of the refiner's MLP relative to the model width: fixed in both the official code (``mlp_width_ratio``
# default of ``SingleTokenRefiner``) and diffusers (``HunyuanVideo15TokenRefiner``'s default), not in any config.
REFINER_MLP_RATIO = 4.0
# Hidden width of the ByT5 glyph projection (official ``ByT5Mapper(hidden_dim=2048, out_dim=2048)``).
GLYPH_HIDDEN_DIM = 2048
# Width of the ByT5 (Glyph-SDXL-v2) states; hard-coded as ``in_dim=1472`` in the official transformer.
BYT5_DIM = 1472
# Pixel size of the training bucket base per official ``ideal_resolution`` (diffusers ``target_size``).
TARGET_SIZES = MappingProxyType({"480p": 640, "720p": 960})
TASKS = ("t2v", "i2v")


@dataclass(frozen=True)
class HunyuanVideo15TransformerConfig:
    """Sizes and switches of a HunyuanVideo-1.5 DiT (54 dual-stream blocks of width 2048 in the releases).

    ``in_channels`` is the width the patch embedding reads: noisy latent (32) + condition latent (32) + mask (1)
    = 65, concatenated by the pipeline (the official config says ``in_channels: 32`` with ``concat_condition``).
    ``use_meanflow`` adds a second timestep embedding for ``timestep_r`` (the step-distilled checkpoint).
    ``task``, ``target_size``, ``text_len``, ``glyph_len`` and ``image_tokens`` describe how the checkpoint is
    used by its pipeline (what the family layer checks and the planner counts); the model accepts any token counts.
    """

    hidden_size: int = 2048
    num_heads: int = 16
    num_layers: int = 54
    num_refiner_layers: int = 2
    mlp_ratio: float = 4.0
    in_channels: int = 65
    out_channels: int = 32
    patch_size: tuple[int, int, int] = (1, 1, 1)
    text_dim: int = 3584  # Qwen2.5-VL-7B hidden states
    glyph_dim: int = BYT5_DIM  # ByT5 (Glyph-SDXL-v2) states
    image_dim: int = 1152  # SigLIP states
    rope_axes_dim: tuple[int, int, int] = (16, 56, 56)  # rotary dims of (time, height, width); sum = head_dim
    rope_theta: float = 256.0
    use_meanflow: bool = False
    task: str = "t2v"
    target_size: int = 640
    text_len: int = 1000  # the pipeline pads Qwen states to this many tokens (after the template is cropped)
    glyph_len: int = 256  # ... and ByT5 states to this many
    image_tokens: int = 729  # SigLIP tokens of the reference image (I2V)

    def __post_init__(self) -> None:
        object.__setattr__(self, "patch_size", _int_tuple("patch_size", self.patch_size))
        object.__setattr__(self, "rope_axes_dim", _int_tuple("rope_axes_dim", self.rope_axes_dim))
        for name in ("hidden_size", "num_heads", "in_channels", "out_channels", "text_dim", "glyph_dim",
                     "image_dim", "target_size", "text_len", "glyph_len", "image_tokens"):
            _positive_int(name, getattr(self, name))
        for name in ("num_layers", "num_refiner_layers"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ValueError(f"HunyuanVideo15TransformerConfig.{name} must be an int >= 0, got {value!r}")
        if min(self.patch_size) < 1:
            raise ValueError(f"patch_size must be three positive ints, got {self.patch_size}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size={self.hidden_size} is not divisible by num_heads={self.num_heads}")
        if sum(self.rope_axes_dim) != self.head_dim or any(a < 2 or a % 2 for a in self.rope_axes_dim):
            raise ValueError(f"rope_axes_dim={self.rope_axes_dim} must be three even dims summing to head_dim="
                             f"{self.head_dim}")
        if not self.mlp_ratio > 0 or self.ffn_dim < 1:
            raise ValueError(f"mlp_ratio must be positive, got {self.mlp_ratio!r}")
        if not self.rope_theta > 0:
            raise ValueError(f"rope_theta must be positive, got {self.rope_theta!r}")
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        object.__setattr__(self, "use_meanflow", bool(self.use_meanflow))
        object.__setattr__(self, "mlp_ratio", float(self.mlp_ratio))
        object.__setattr__(self, "rope_theta", float(self.rope_theta))

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    @property
    def ffn_dim(self) -> int:
        """Hidden width of the dual-stream blocks' MLPs (``int(hidden_size * mlp_ratio)``, as both references)."""
        return int(self.hidden_size * self.mlp_ratio)

    @property
    def refiner_ffn_dim(self) -> int:
        return int(self.hidden_size * REFINER_MLP_RATIO)

    @property
    def patch_volume(self) -> int:
        pt, ph, pw = self.patch_size
        return pt * ph * pw

    def replace(self, **changes: Any) -> "HunyuanVideo15TransformerConfig":
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_diffusers_config(cls, cfg: Mapping[str, Any]) -> "HunyuanVideo15TransformerConfig":
        """From a diffusers ``HunyuanVideo15Transformer3DModel`` ``config.json`` dict.

        Keys diffusers' model does not read are ignored, as diffusers ignores them.
        """
        name = cfg.get("_class_name", "HunyuanVideo15Transformer3DModel")
        if name != "HunyuanVideo15Transformer3DModel":
            raise ValueError(f"expected a HunyuanVideo15Transformer3DModel config, got _class_name={name!r}")
        if cfg.get("qk_norm", "rms_norm") != "rms_norm":
            raise ValueError(f"qk_norm={cfg.get('qk_norm')!r} is not supported (HunyuanVideo-1.5 uses 'rms_norm')")
        heads = _read_int(cfg, "num_attention_heads", 16)
        patch = _read_int(cfg, "patch_size", 1)
        in_ch = _read_int(cfg, "in_channels", 65)
        task = cfg.get("task_type", "i2v")
        return cls(
            hidden_size=heads * _read_int(cfg, "attention_head_dim", 128),
            num_heads=heads,
            num_layers=_read_int(cfg, "num_layers", 54),
            num_refiner_layers=_read_int(cfg, "num_refiner_layers", 2),
            mlp_ratio=float(cfg.get("mlp_ratio", 4.0)),
            in_channels=in_ch,
            out_channels=int(cfg.get("out_channels") or in_ch),
            patch_size=(_read_int(cfg, "patch_size_t", 1), patch, patch),
            text_dim=_read_int(cfg, "text_embed_dim", 3584),
            glyph_dim=_read_int(cfg, "text_embed_2_dim", BYT5_DIM),
            image_dim=_read_int(cfg, "image_embed_dim", 1152),
            rope_axes_dim=tuple(cfg.get("rope_axes_dim", (16, 56, 56))),
            rope_theta=float(cfg.get("rope_theta", 256.0)),
            use_meanflow=bool(cfg.get("use_meanflow", False)),
            task=task,
            target_size=_read_int(cfg, "target_size", 640),
        )

    @classmethod
    def from_official_config(cls, cfg: Mapping[str, Any]) -> "HunyuanVideo15TransformerConfig":
        """From the official ``HunyuanVideo_1_5_DiffusionTransformer`` ``config.json`` dict.

        Options no released checkpoint uses (single-stream blocks, guidance embedding, pooled-text vector,
        other text/vision projections, no condition-type embedding) are refused with ``ValueError`` rather than
        built wrongly. ``attn_mode`` (flash / sparse SSTA) is ignored: vidpar computes exact dense attention.
        """
        if "hidden_size" not in cfg or "heads_num" not in cfg:
            raise ValueError("not an official HunyuanVideo-1.5 config: keys 'hidden_size' and 'heads_num' are "
                             "required")
        refused = {
            "mm_single_blocks_depth": (0, "single-stream blocks"),
            "guidance_embed": (False, "an embedded-guidance input"),
            "text_projection": ("single_refiner", "another text projection"),
            "use_attention_mask": (True, "unmasked text pooling"),
            "text_pool_type": (None, "a pooled-text vector input"),
            "glyph_byT5_v2": (True, "no ByT5 glyph input"),
            "vision_projection": ("linear", "another image projection"),
            "use_cond_type_embedding": (True, "no condition-type embedding"),
            "qk_norm": (True, "no QK norm"),
            "qk_norm_type": ("rms", "another QK norm"),
            "qkv_bias": (True, "projections without bias"),
            "mlp_act_type": ("gelu_tanh", "another MLP activation"),
        }
        for key, (want, what) in refused.items():
            if key in cfg and cfg[key] != want:
                raise ValueError(f"official config {key}={cfg[key]!r} ({what}) is not supported; no released "
                                 f"HunyuanVideo-1.5 checkpoint uses it (expected {want!r})")
        task = cfg.get("ideal_task") or "t2v"
        if task not in TASKS:
            raise ValueError(f"official config ideal_task={task!r} is not supported (expected one of {TASKS}; the "
                             "super-resolution transformers are not)")
        resolution = cfg.get("ideal_resolution") or "480p"
        if resolution not in TARGET_SIZES:
            raise ValueError(f"official config ideal_resolution={resolution!r}; expected one of {list(TARGET_SIZES)}")
        hidden, heads = _read_int(cfg, "hidden_size", 0), _read_int(cfg, "heads_num", 0)
        latent = _read_int(cfg, "in_channels", 32)
        if cfg.get("concat_condition", True):  # official PatchEmbed: latent + condition latent + mask channels
            conv_in = latent + latent // 2 + 1 if cfg.get("is_reshape_temporal_channels") else 2 * latent + 1
        else:
            conv_in = latent
        patch = cfg.get("patch_size", (1, 1, 1))
        patch = (patch,) * 3 if isinstance(patch, int) else tuple(patch)
        rope = cfg.get("rope_dim_list") or ((hidden // heads // 3,) * 3 if heads else (0, 0, 0))  # official default
        return cls(
            hidden_size=hidden,
            num_heads=heads,
            num_layers=_read_int(cfg, "mm_double_blocks_depth", 20),
            num_refiner_layers=2,  # official SingleTokenRefiner(depth=2)
            mlp_ratio=float(cfg.get("mlp_width_ratio", 4.0)),
            in_channels=conv_in,
            out_channels=int(cfg.get("out_channels") or latent),
            patch_size=patch,
            text_dim=_read_int(cfg, "text_states_dim", 4096),
            glyph_dim=BYT5_DIM,
            image_dim=_read_int(cfg, "vision_states_dim", 1280),
            rope_axes_dim=tuple(rope),
            rope_theta=float(cfg.get("rope_theta", 256)),
            use_meanflow=bool(cfg.get("use_meanflow", False)),
            task=task,
            target_size=TARGET_SIZES[resolution],
        )

    @classmethod
    def preset(cls, name: str) -> "HunyuanVideo15TransformerConfig":
        """Sizes of a released checkpoint; ``name`` is one of ``HY15_TRANSFORMER_PRESETS``."""
        try:
            return HY15_TRANSFORMER_PRESETS[name]
        except KeyError:
            raise ValueError(f"unknown HunyuanVideo-1.5 preset {name!r}; known: "
                             f"{sorted(HY15_TRANSFORMER_PRESETS)}") from None


def _int_tuple(name: str, value: Any) -> tuple[int, ...]:
    try:
        out = tuple(int(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be three ints, got {value!r}") from None
    if len(out) != 3 or any(o != v for o, v in zip(out, value)):
        raise ValueError(f"{name} must be three ints, got {value!r}")
    return out


def _positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"HunyuanVideo15TransformerConfig.{name} must be a positive int, got {value!r}")


def _read_int(cfg: Mapping[str, Any], key: str, default: int) -> int:
    value = cfg.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
        raise ValueError(f"config.json field {key!r} must be an int, got {value!r}")
    return int(value)


# All released DiT variants share one architecture: 54 dual-stream blocks, 16 heads x 128, 65 -> 32 channels,
# Qwen2.5-VL (3584) + ByT5 (1472) + SigLIP (1152) conditioning. The cfg-distilled and sparse variants differ only
# in their pipeline settings (guidance 1.0; SSTA attention at inference), the step-distilled one adds the MeanFlow
# ``timestep_r`` embedding. Read from the official repository's pipeline tables (hyvideo/commons/__init__.py) and
# diffusers' conversion script; the 720p T2V cfg-distilled checkpoint is not released.
_BASE = HunyuanVideo15TransformerConfig()
_720 = dict(target_size=960)

# Read-only: presets are shared by every caller.
HY15_TRANSFORMER_PRESETS: Mapping[str, HunyuanVideo15TransformerConfig] = MappingProxyType({
    "hunyuanvideo-1.5-480p-t2v": _BASE,
    "hunyuanvideo-1.5-480p-i2v": _BASE.replace(task="i2v"),
    "hunyuanvideo-1.5-720p-t2v": _BASE.replace(**_720),
    "hunyuanvideo-1.5-720p-i2v": _BASE.replace(task="i2v", **_720),
    "hunyuanvideo-1.5-480p-t2v-distilled": _BASE,
    "hunyuanvideo-1.5-480p-i2v-distilled": _BASE.replace(task="i2v"),
    "hunyuanvideo-1.5-720p-i2v-distilled": _BASE.replace(task="i2v", **_720),
    "hunyuanvideo-1.5-720p-i2v-distilled-sparse": _BASE.replace(task="i2v", **_720),
    "hunyuanvideo-1.5-480p-i2v-step-distilled": _BASE.replace(task="i2v", use_meanflow=True),
})
