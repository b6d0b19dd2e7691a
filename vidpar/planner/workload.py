"""What one generation asks of the hardware: model sizes, latent geometry, parameter and FLOP counts.

All counts come from the real ``WanTransformerConfig`` (presets or a checkpoint's ``config.json``); nothing here
touches torch.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from vidpar.models.wan.transformer_config import WAN_IMAGE_TOKENS, WanTransformerConfig

# umt5-xxl encoder (Wan's text encoder): vocab 256384 x 4096 embedding + 24 layers of (4 x 4096^2 attention +
# 3 x 4096 x 10240 gated FFN) = 5.68e9 parameters; Wan ships it as an 11.4 GB bf16 file.
TEXT_ENCODER_PARAMS = 256384 * 4096 + 24 * (4 * 4096 * 4096 + 3 * 4096 * 10240)
TEXT_LEN = 512


@dataclass(frozen=True)
class VaeGeometry:
    """Compression of the VAE paired with a DiT: ``latent = ((F-1)/t + 1, H/s, W/s)`` with ``z`` channels."""

    temporal: int
    spatial: int
    z_dim: int
    params: float  # VAE parameters (Wan2.1_VAE.pth 508 MB fp32 -> ~127M; Wan2.2_VAE.pth 2.8 GB -> ~705M)
    # Decoder FLOPs per output pixel, estimated from the decoder's conv stack (3x3x3 convs, channels 384/192/96
    # for 2.1 at 1/8..1/1 resolution: ~3 MFLOP per level and output pixel). An estimate, not a measurement.
    decode_flops_per_pixel: float
    # Live decoder activations per output pixel of one causal chunk (4 frames), in bytes: a *model to be
    # calibrated* on a GPU. 2.1: ~7 fp32 tensors of 96-192 channels at full resolution (~4 KB); 2.2 decodes its
    # last stage at half resolution (2x2 patchify), ~half of that.
    decode_bytes_per_chunk_pixel: float


WAN21_VAE = VaeGeometry(4, 8, 16, 127e6, 1.0e7, 4096.0)
WAN22_VAE = VaeGeometry(4, 16, 48, 705e6, 1.0e7, 2048.0)


@dataclass(frozen=True)
class ModelSpec:
    """A DiT config plus what the planner needs beside it (VAE geometry, number of experts held in memory)."""

    name: str
    config: WanTransformerConfig
    vae: VaeGeometry
    experts: int = 1  # Wan2.2 A14B: two experts (high/low noise), both resident; one runs per step


def resolve_model(model: str) -> ModelSpec:
    """A built-in preset name (``"wan2.1-t2v-14b"``...) or a checkpoint folder holding a DiT ``config.json``.

    A folder may be a diffusers pipeline root (``transformer/config.json``) or a model folder (diffusers or
    official config). The VAE is inferred from the latent channels (48: Wan2.2 VAE, else Wan2.1 VAE).
    """
    from vidpar.models.wan.transformer_config import WAN_TRANSFORMER_PRESETS

    key = model.lower()
    if key in WAN_TRANSFORMER_PRESETS:
        cfg = WAN_TRANSFORMER_PRESETS[key]
        experts = 2 if "a14b" in key else 1
        return ModelSpec(key, cfg, _vae_for(cfg), experts)
    path = Path(model)
    if not path.exists():
        raise ValueError(f"unknown model {model!r}: not a preset ({sorted(WAN_TRANSFORMER_PRESETS)}) nor a folder")
    if path.is_file():
        path = path.parent
    cfg_path = path / "config.json"
    for sub in ("transformer", "high_noise_model"):  # diffusers pipeline root; official Wan2.2 A14B folder
        if not cfg_path.is_file() and (path / sub / "config.json").is_file():
            cfg_path = path / sub / "config.json"
    if not cfg_path.is_file():
        raise ValueError(f"no config.json in {path} (nor in transformer/ or high_noise_model/)")
    raw = json.loads(cfg_path.read_text(encoding="utf-8"))
    if raw.get("_class_name") == "WanTransformer3DModel" or "num_attention_heads" in raw:
        cfg = WanTransformerConfig.from_diffusers_config(raw)
    else:
        cfg = WanTransformerConfig.from_official_config(raw)
    # A diffusers root with transformer_2/ or an official folder with low_noise_model/: two experts (A14B).
    root = cfg_path.parent.parent if cfg_path.parent != path else path
    experts = 2 if (root / "transformer_2").is_dir() or (root / "low_noise_model").is_dir() else 1
    return ModelSpec(str(path), cfg, _vae_for(cfg), experts)


def model_spec(model: "str | WanTransformerConfig | ModelSpec") -> ModelSpec:
    """A ``ModelSpec`` from a preset name / folder, a bare DiT config (one expert assumed), or a spec."""
    if isinstance(model, ModelSpec):
        return model
    if isinstance(model, WanTransformerConfig):
        return ModelSpec("custom", model, _vae_for(model))
    return resolve_model(model)


def _vae_for(cfg: WanTransformerConfig) -> VaeGeometry:
    return WAN22_VAE if cfg.out_channels == WAN22_VAE.z_dim else WAN21_VAE


def vae_config_for(vae: VaeGeometry) -> "WanVAEConfig":
    """The released VAE architecture of a geometry (48 latent channels: Wan2.2 VAE, else Wan2.1 VAE)."""
    from vidpar.models.wan.vae_config import WanVAEConfig

    return WanVAEConfig.wan22() if vae.z_dim == WAN22_VAE.z_dim else WanVAEConfig.wan21()


def latent_shape(vae: VaeGeometry, height: int, width: int, frames: int) -> tuple[int, int, int, int]:
    """``(C, F_lat, H_lat, W_lat)`` of the latent of a ``frames x height x width`` video.

    Raises ``ValueError`` unless ``frames = 4k + 1`` and height/width are multiples of the VAE's spatial factor.
    """
    if frames < 1 or (frames - 1) % vae.temporal:
        raise ValueError(f"frames must be {vae.temporal}k+1 (e.g. 81), got {frames}")
    if height % vae.spatial or width % vae.spatial or height < 1 or width < 1:
        raise ValueError(f"height and width must be positive multiples of {vae.spatial}, got {height}x{width}")
    return vae.z_dim, (frames - 1) // vae.temporal + 1, height // vae.spatial, width // vae.spatial


def num_tokens(cfg: WanTransformerConfig, latent: tuple[int, ...]) -> int:
    """Tokens of a latent ``(..., F, H, W)``: ``prod(F/pt, H/ph, W/pw)`` (720p x 81 frames, Wan2.1: 75600)."""
    f, h, w = latent[-3:]
    pt, ph, pw = cfg.patch_size
    if f % pt or h % ph or w % pw:
        raise ValueError(f"latent {tuple(latent[-3:])} is not divisible by the patch size {cfg.patch_size}")
    return (f // pt) * (h // ph) * (w // pw)


def dit_params(cfg: WanTransformerConfig) -> int:
    """Exact parameter count of ``WanTransformer3D(cfg)`` (checked against the module in the tests)."""
    d, f, pv = cfg.dim, cfg.ffn_dim, cfg.patch_volume
    lin = lambda i, o: i * o + o  # noqa: E731 - nn.Linear with bias
    attn = 4 * lin(d, d) + (2 * d if cfg.qk_norm else 0)
    cross = attn
    if cfg.image_dim is not None:
        cross += 2 * lin(d, d) + (d if cfg.qk_norm else 0)
    block = attn + cross + (2 * d if cfg.cross_attn_norm else 0) + lin(d, f) + lin(f, d) + 6 * d
    total = cfg.num_layers * block
    total += cfg.in_channels * pv * d + d  # patch embedding (Conv3d)
    total += lin(cfg.text_dim, d) + lin(d, d)  # text embedding
    total += lin(cfg.freq_dim, d) + lin(d, d) + lin(d, 6 * d)  # time embedding + projection
    total += lin(d, cfg.out_channels * pv) + 2 * d  # head + its modulation
    if cfg.image_dim is not None:
        i = cfg.image_dim
        total += 2 * i + lin(i, i) + lin(i, d) + 2 * d  # LayerNorm(i), MLP, LayerNorm(d)
        if cfg.image_pos_embed_len:
            total += cfg.image_pos_embed_len * i
    return total


@dataclass(frozen=True)
class ForwardFlops:
    """FLOPs of one DiT forward at batch 1 (multiply-add = 2 FLOPs), split by how they run."""

    attention: float  # self-attention scores and values: 4 * S^2 * dim per layer
    linear: float  # every GEMM over video tokens (q/k/v/o, cross-attention q/o, FFN, patch embed, head)
    context: float  # per-forward work independent of S: text/image K/V projections, text embedding
    cross_attention: float  # video queries against text (and image) keys: 4 * S * L * dim per layer

    @property
    def total(self) -> float:
        return self.attention + self.linear + self.context + self.cross_attention


def forward_flops(cfg: WanTransformerConfig, tokens: int, text_len: int = TEXT_LEN) -> ForwardFlops:
    """FLOPs of one forward of ``cfg`` over ``tokens`` video tokens and ``text_len`` text tokens (batch 1)."""
    s, d, f, layers = tokens, cfg.dim, cfg.ffn_dim, cfg.num_layers
    img = (cfg.image_pos_embed_len or WAN_IMAGE_TOKENS) if cfg.image_dim is not None else 0
    attention = layers * 4.0 * s * s * d
    per_layer_linear = 2.0 * s * (4 * d * d + 2 * d * d + 2 * d * f)  # self q,k,v,o; cross q,o; FFN
    linear = layers * per_layer_linear + 2.0 * s * d * cfg.patch_volume * (cfg.in_channels + cfg.out_channels)
    context = layers * 2.0 * (text_len + img) * 2 * d * d + 2.0 * text_len * (cfg.text_dim * d + d * d)
    cross = layers * 4.0 * s * (text_len + img) * d
    return ForwardFlops(attention, linear, context, cross)
