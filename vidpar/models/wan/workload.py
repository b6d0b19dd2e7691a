"""The planner's view of Wan models, from the same ``WanTransformerConfig`` / ``WanVAEConfig`` the models are built
from: exact parameter and FLOP counts, the VAE's decode estimates and its exact comm walk, the released presets."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path

from vidpar.planner.workload import DitWorkload, ForwardFlops, ModelSpec, VaeWorkload

from .transformer_config import WAN_IMAGE_TOKENS, WAN_TRANSFORMER_PRESETS, WanTransformerConfig
from .vae_config import WanVAEConfig

# umt5-xxl encoder (Wan's text encoder): vocab 256384 x 4096 embedding + 24 layers of (4 x 4096^2 attention +
# 3 x 4096 x 10240 gated FFN) = 5.68e9 parameters; Wan ships it as an 11.4 GB bf16 file.
TEXT_ENCODER_PARAMS = 256384 * 4096 + 24 * (4 * 4096 * 4096 + 3 * 4096 * 10240)
# Per-token timesteps (Wan2.2 TI2V): e0 [S, 6, dim] + e [S, dim] fp32 (28 bytes per dim unit), and the fp64
# sinusoid [S, 256] (2048 bytes).
PER_TOKEN_TIME_BYTES_PER_DIM = 28
PER_TOKEN_TIME_BYTES = 256 * 8


def wan_dit_params(cfg: WanTransformerConfig) -> int:
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


def wan_forward_flops(cfg: WanTransformerConfig, tokens: int, text_len: int | None = None) -> ForwardFlops:
    """FLOPs of one forward of ``cfg`` over ``tokens`` video tokens and ``text_len`` text tokens (default the
    config's padded text length; batch 1). Self-attention 4 S^2 dim per layer; cross-attention 4 S L dim."""
    text_len = cfg.text_len if text_len is None else text_len
    s, d, f, layers = tokens, cfg.dim, cfg.ffn_dim, cfg.num_layers
    img = (cfg.image_pos_embed_len or WAN_IMAGE_TOKENS) if cfg.image_dim is not None else 0
    attention = layers * 4.0 * s * s * d
    per_layer_linear = 2.0 * s * (4 * d * d + 2 * d * d + 2 * d * f)  # self q,k,v,o; cross q,o; FFN
    linear = layers * per_layer_linear + 2.0 * s * d * cfg.patch_volume * (cfg.in_channels + cfg.out_channels)
    context = layers * 2.0 * (text_len + img) * 2 * d * d + 2.0 * text_len * (cfg.text_dim * d + d * d)
    cross = layers * 4.0 * s * (text_len + img) * d
    return ForwardFlops(attention, linear, context, cross)


def wan_dit_workload(cfg: WanTransformerConfig, name: str = "wan") -> DitWorkload:
    extra = PER_TOKEN_TIME_BYTES_PER_DIM * cfg.dim + PER_TOKEN_TIME_BYTES if cfg.model_type == "ti2v" else 0.0
    return DitWorkload(
        name=name, num_layers=cfg.num_layers, dim=cfg.dim, num_heads=cfg.num_heads, ffn_dim=cfg.ffn_dim,
        in_channels=cfg.in_channels, out_channels=cfg.out_channels, patch_size=cfg.patch_size,
        params=wan_dit_params(cfg), flops=partial(wan_forward_flops, cfg), extra_bytes_per_token=extra,
    )


@dataclass(frozen=True)
class WanVaeWorkload(VaeWorkload):
    """A Wan VAE for the planner. ``decode_flops_per_pixel``: ~3 MFLOP per level and output pixel of the 2.1
    decoder's conv stack (channels 384/192/96 at 1/8..1/1 resolution) — an estimate. ``decode_bytes_per_chunk_pixel``:
    live decoder activations per output pixel of one causal chunk (4 frames), a model to calibrate on a GPU (2.1:
    ~7 fp32 tensors of 96-192 channels at full resolution, ~4 KB; 2.2 decodes its last stage at half resolution)."""

    config: WanVAEConfig
    params: float
    decode_flops_per_pixel: float = 1.0e7
    decode_bytes_per_chunk_pixel: float = 4096.0

    @property
    def temporal(self) -> int:
        return self.config.scale_factor_temporal

    @property
    def spatial(self) -> int:
        return self.config.scale_factor_spatial

    @property
    def z_dim(self) -> int:
        return self.config.z_dim

    def num_stages(self) -> int:
        from .vae_comm_model import wan_vae_num_stages

        return wan_vae_num_stages(self.config)

    def stage_costs(self, h: int, w: int) -> list[float]:
        from .vae_comm_model import wan_vae_stage_costs

        return wan_vae_stage_costs(self.config, h, w)

    def decode_comm_bytes(self, latent_shape, world_size, vae_mode="auto", output="all", dtype_bytes=4, *,
                          batch=1, rank=None, pipeline_degree=None) -> dict[str, int]:
        from .vae_comm_model import wan_vae_comm_bytes

        return wan_vae_comm_bytes(self.config, latent_shape, world_size, vae_mode, output, dtype_bytes,
                                  batch=batch, rank=rank, pipeline_degree=pipeline_degree)


# Released VAEs: Wan2.1_VAE.pth (508 MB fp32 -> ~127M parameters), Wan2.2_VAE.pth (2.8 GB -> ~705M).
_RELEASED_VAE_PARAMS = {False: 127e6, True: 705e6}


def wan_vae_workload(cfg: WanVAEConfig) -> WanVaeWorkload:
    """The workload of a Wan VAE config (parameters counted on the meta device for unreleased sizes)."""
    from .vae_config import WAN_VAE_PRESETS

    wan22 = cfg.is_residual
    if cfg in tuple(WAN_VAE_PRESETS.values()):
        params = _RELEASED_VAE_PARAMS[wan22]
    else:
        import torch

        from .vae import WanVAE

        with torch.device("meta"):
            params = float(sum(p.numel() for p in WanVAE(cfg).parameters()))
    # The decode estimate scales with the decoder's width (released: 2.1 base 96, 2.2 decoder base 256), so a
    # small custom VAE is not estimated as a released one; floored at 1/4, since per-pixel buffers (feature caches,
    # upsampling intermediates, the RGB output) do not shrink with the width (the built-in tiny VAE, base 8,
    # decoding 256x256 x 9 frames: +0.41 GB RSS measured against +0.30 GB predicted with the floor).
    width = max(0.25, cfg.decoder_dim / (256 if wan22 else 96))
    return WanVaeWorkload(cfg, params, decode_bytes_per_chunk_pixel=(2048.0 if wan22 else 4096.0) * width)


def released_vae_for(dit: WanTransformerConfig) -> WanVAEConfig:
    """The VAE a released DiT is paired with (48 latent channels: Wan2.2 VAE, else Wan2.1 VAE)."""
    return WanVAEConfig.wan22() if dit.out_channels == 48 else WanVAEConfig.wan21()


def wan_model_spec(name: str, dit: WanTransformerConfig, vae: WanVAEConfig | None = None,
                   experts: int = 1, text_encoder_params: float = TEXT_ENCODER_PARAMS) -> ModelSpec:
    """The planner's spec; ``text_encoder_params``: the checkpoint's text encoder (default umT5-XXL, Wan's)."""
    vae = released_vae_for(dit) if vae is None else vae
    return ModelSpec(name, wan_dit_workload(dit, name), wan_vae_workload(vae), experts, text_encoder_params)


def wan_planner_spec_from_folder(path: Path) -> ModelSpec | None:
    """The planner's spec from a folder's DiT ``config.json`` alone (a diffusers pipeline root with
    ``transformer/``, an official folder, or an official A14B folder with ``high_noise_model/``); the VAE is the
    released one for the latent channels. None if the folder holds no Wan DiT config."""
    cfg_path = path / "config.json"
    for sub in ("transformer", "high_noise_model"):  # diffusers pipeline root; official Wan2.2 A14B folder
        if not cfg_path.is_file() and (path / sub / "config.json").is_file():
            cfg_path = path / sub / "config.json"
    if not cfg_path.is_file():
        return None
    try:
        raw = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{cfg_path}: not readable JSON ({e})") from None
    if not isinstance(raw, dict):
        return None
    try:
        if raw.get("_class_name") == "WanTransformer3DModel" or "num_attention_heads" in raw:
            cfg = WanTransformerConfig.from_diffusers_config(raw)
        elif "dim" in raw and "num_heads" in raw and "_class_name" not in raw:
            cfg = WanTransformerConfig.from_official_config(raw)
        else:
            return None
    except ValueError as e:
        raise ValueError(f"{cfg_path}: {e}") from None
    # A diffusers root with transformer_2/ or an official folder with low_noise_model/: two experts (A14B).
    root = cfg_path.parent.parent if cfg_path.parent != path else path
    experts = 2 if (root / "transformer_2").is_dir() or (root / "low_noise_model").is_dir() else 1
    return wan_model_spec(str(path), cfg, experts=experts)


def wan_planner_presets() -> dict[str, ModelSpec]:
    """The released Wan configurations by preset name (A14B: two experts resident)."""
    return {key: wan_model_spec(key, cfg, experts=2 if "a14b" in key else 1)
            for key, cfg in WAN_TRANSFORMER_PRESETS.items()}


__all__ = ["TEXT_ENCODER_PARAMS", "WanVaeWorkload", "released_vae_for", "wan_dit_params", "wan_dit_workload",
           "wan_forward_flops", "wan_model_spec", "wan_planner_presets", "wan_planner_spec_from_folder",
           "wan_vae_workload"]
