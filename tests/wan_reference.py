"""Tiny diffusers Wan transformers as independent references for vidpar's Wan DiT (tests only)."""

from __future__ import annotations

from typing import Any

import torch
from diffusers import WanTransformer3DModel

# diffusers' WanAttnProcessor treats everything before the last 512 tokens of encoder_hidden_states as image
# tokens (I2V), so I2V comparisons must use exactly this many text tokens.
DIFFUSERS_I2V_TEXT_TOKENS = 512

TINY_DIFFUSERS_WAN: dict[str, Any] = dict(
    patch_size=(1, 2, 2),
    num_attention_heads=2,
    attention_head_dim=12,
    in_channels=16,
    out_channels=16,
    text_dim=32,
    freq_dim=256,
    ffn_dim=32,
    num_layers=2,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    image_dim=None,
    added_kv_proj_dim=None,
    rope_max_seq_len=32,
)


def tiny_diffusers_wan_config(config_overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Kwargs of a tiny ``WanTransformer3DModel``; an I2V config (``image_dim`` set) gets ``added_kv_proj_dim``."""
    cfg = dict(TINY_DIFFUSERS_WAN, **(config_overrides or {}))
    if cfg["image_dim"] is not None and cfg["added_kv_proj_dim"] is None:
        cfg["added_kv_proj_dim"] = cfg["num_attention_heads"] * cfg["attention_head_dim"]
    return cfg


def make_tiny_diffusers_wan(
    config_overrides: dict[str, Any] | None = None, seed: int = 0, std: float = 0.05
) -> WanTransformer3DModel:
    """A tiny fp32 diffusers Wan DiT in eval mode whose every parameter is randomly perturbed.

    diffusers zero-initialises some layers (e.g. ``pos_embed``); adding ``N(0, std)`` noise to every parameter
    makes each weight matter, so a comparison against it can fail.
    """
    torch.manual_seed(seed)
    model = WanTransformer3DModel(**tiny_diffusers_wan_config(config_overrides))
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * std)
    return model.float().eval()


@torch.no_grad()
def diffusers_wan_forward(
    model: WanTransformer3DModel,
    latents: torch.Tensor,
    timestep: torch.Tensor,
    text_states: torch.Tensor,
    image_states: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reference forward with vidpar's argument order. latents ``[B, C, F, H, W]`` -> ``[B, C_out, F, H, W]``."""
    if image_states is not None and text_states.shape[1] != DIFFUSERS_I2V_TEXT_TOKENS:
        raise ValueError(f"diffusers I2V needs exactly {DIFFUSERS_I2V_TEXT_TOKENS} text tokens")
    return model(
        hidden_states=latents,
        timestep=timestep,
        encoder_hidden_states=text_states,
        encoder_hidden_states_image=image_states,
        return_dict=False,
    )[0]


def max_rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max |out - ref| / max |ref|, in fp64."""
    return ((out.double() - ref.double()).abs().max() / ref.double().abs().max()).item()
