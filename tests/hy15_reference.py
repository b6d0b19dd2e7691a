"""Tiny diffusers HunyuanVideo-1.5 transformers as independent references for vidpar's DiT (tests only).

diffusers is imported only where a diffusers model is built, so distributed workers that need just the input
helpers do not pay for importing it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file

from vidpar.models.hunyuanvideo15 import HunyuanVideo15Transformer3D
from vidpar.models.hunyuanvideo15.transformer_loader import native_state_dict_to_official

# 3 heads x 16 (rope axes 4 + 6 + 6), 2 dual-stream layers, the real 2 refiner layers. diffusers hard-codes the
# ByT5 projection's hidden width (2048), which makes that projection the largest part of the tiny model.
TINY_DIFFUSERS_HY15: dict[str, Any] = dict(
    in_channels=9,
    out_channels=4,
    num_attention_heads=3,
    attention_head_dim=16,
    num_layers=2,
    num_refiner_layers=2,
    mlp_ratio=2.0,
    patch_size=1,
    patch_size_t=1,
    qk_norm="rms_norm",
    text_embed_dim=20,
    text_embed_2_dim=12,
    image_embed_dim=8,
    rope_theta=256.0,
    rope_axes_dim=(4, 6, 6),
    target_size=640,
    task_type="i2v",
    use_meanflow=False,
)


def make_tiny_diffusers_hy15(overrides: dict[str, Any] | None = None, seed: int = 0,
                             std: float = 0.05) -> "HunyuanVideo15Transformer3DModel":
    """A tiny fp32 diffusers HunyuanVideo-1.5 DiT in eval mode whose every parameter is randomly perturbed.

    Adding ``N(0, std)`` noise to every parameter (norm weights, zero-initialised layers, the condition-type
    table) makes each weight matter, so a comparison against it can fail.
    """
    from diffusers import HunyuanVideo15Transformer3DModel

    torch.manual_seed(seed)
    model = HunyuanVideo15Transformer3DModel(**dict(TINY_DIFFUSERS_HY15, **(overrides or {})))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * std)
    return model.float().eval()


def save_diffusers(model: "HunyuanVideo15Transformer3DModel", folder: Path, shard: str | None = None) -> Path:
    """``save_pretrained`` as a ``transformer/`` folder (safetensors, optionally sharded)."""
    kwargs = {} if shard is None else {"max_shard_size": shard}
    model.save_pretrained(folder, safe_serialization=True, **kwargs)
    return folder


def official_config(model: HunyuanVideo15Transformer3D, **extra: Any) -> dict[str, Any]:
    """An official ``config.json`` dict (as in ``tencent/HunyuanVideo-1.5/transformer/<variant>/``) for ``model``."""
    c = model.config
    latent = (c.in_channels - 1) // 2
    cfg = {
        "_class_name": "HunyuanVideo_1_5_DiffusionTransformer", "attn_mode": "flash", "attn_param": None,
        "concat_condition": True, "glyph_byT5_v2": True, "guidance_embed": False, "heads_num": c.num_heads,
        "hidden_size": c.hidden_size, "ideal_resolution": "480p", "ideal_task": c.task, "in_channels": latent,
        "is_reshape_temporal_channels": False, "mlp_act_type": "gelu_tanh", "mlp_width_ratio": c.mlp_ratio,
        "mm_double_blocks_depth": c.num_layers, "mm_single_blocks_depth": 0, "out_channels": c.out_channels,
        "patch_size": list(c.patch_size), "qk_norm": True, "qk_norm_type": "rms", "qkv_bias": True,
        "rope_dim_list": list(c.rope_axes_dim), "rope_theta": c.rope_theta, "text_pool_type": None,
        "text_projection": "single_refiner", "text_states_dim": c.text_dim, "text_states_dim_2": None,
        "use_attention_mask": True, "use_cond_type_embedding": True, "use_meanflow": c.use_meanflow,
        "vision_projection": "linear", "vision_states_dim": c.image_dim,
    }
    cfg.update(extra)
    return cfg


def write_official(folder: Path, model: HunyuanVideo15Transformer3D, config: dict[str, Any],
                   shards: int = 1) -> Path:
    """Write ``model`` as an official-layout checkpoint folder (config.json + safetensors, optionally sharded)."""
    folder.mkdir(parents=True)
    sd = {k: v.contiguous() for k, v in native_state_dict_to_official(model).items()}
    (folder / "config.json").write_text(json.dumps(config))
    if shards == 1:
        save_file(sd, str(folder / "diffusion_pytorch_model.safetensors"))
        return folder
    keys = sorted(sd)
    weight_map = {}
    for i in range(shards):
        name = f"diffusion_pytorch_model-{i + 1:05d}-of-{shards:05d}.safetensors"
        part = keys[i::shards]
        save_file({k: sd[k] for k in part}, str(folder / name))
        weight_map.update({k: name for k in part})
    (folder / "diffusion_pytorch_model.safetensors.index.json").write_text(
        json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def make_inputs(config, batch: int = 1, grid: tuple[int, int, int] = (3, 8, 10), text_valid=(13,),
                glyph_valid=(4,), image_tokens: int | None = 5, text_len: int = 24, glyph_len: int = 10,
                seed: int = 1) -> dict[str, torch.Tensor | None]:
    """Inputs with right-padded text/glyph (valid counts per sample); the padded values are random too."""
    g = torch.Generator().manual_seed(seed)
    f, h, w = grid
    pt, ph, pw = config.patch_size
    latents = torch.randn(batch, config.in_channels, f * pt, h * ph, w * pw, generator=g)
    timestep = torch.tensor([937.5, 421.25, 13.0][:batch])
    text = torch.randn(batch, text_len, config.text_dim, generator=g)
    glyph = torch.randn(batch, glyph_len, config.glyph_dim, generator=g)
    text_mask = torch.zeros(batch, text_len, dtype=torch.int64)
    glyph_mask = torch.zeros(batch, glyph_len, dtype=torch.int64)
    for i in range(batch):
        text_mask[i, : text_valid[i % len(text_valid)]] = 1
        glyph_mask[i, : glyph_valid[i % len(glyph_valid)]] = 1
    image = torch.randn(batch, image_tokens, config.image_dim, generator=g) if image_tokens else None
    return dict(latents=latents, timestep=timestep, text_states=text, text_mask=text_mask, glyph_states=glyph,
                glyph_mask=glyph_mask, image_states=image)


@torch.no_grad()
def diffusers_hy15_forward(model: "HunyuanVideo15Transformer3DModel", inputs: dict, image_tokens: int = 5,
                           timestep_r: torch.Tensor | None = None) -> torch.Tensor:
    """diffusers' forward on vidpar-style inputs; ``image_states=None`` becomes all-zero ``image_embeds`` (T2V).

    Timesteps are cast to the model's dtype, as diffusers' pipeline does (its timestep embedding needs it).
    """
    image = inputs["image_states"]
    b = inputs["latents"].shape[0]
    dtype = next(model.parameters()).dtype
    if image is None:
        image = torch.zeros(b, image_tokens, model.config.image_embed_dim)
    return model(
        hidden_states=inputs["latents"].to(dtype),
        timestep=inputs["timestep"].to(dtype),
        encoder_hidden_states=inputs["text_states"].to(dtype),
        encoder_attention_mask=inputs["text_mask"],
        encoder_hidden_states_2=inputs["glyph_states"].to(dtype),
        encoder_attention_mask_2=inputs["glyph_mask"],
        image_embeds=image.to(dtype),
        timestep_r=None if timestep_r is None else timestep_r.to(dtype),
        return_dict=False,
    )[0]


def max_rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max |out - ref| / max |ref|, in fp64."""
    return ((out.double() - ref.double()).abs().max() / ref.double().abs().max()).item()
