"""Tiny diffusers ``AutoencoderKLWan`` references for tests (diffusers is a test dependency only)."""

from __future__ import annotations

import torch

TINY_21 = dict(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1, temperal_downsample=[False, True, True])
# 2.2 layout: residual up/down shortcuts, 2x2 patchify (so 12 channels in/out), separate decoder width.
TINY_22 = dict(
    base_dim=4,
    decoder_base_dim=6,
    z_dim=8,
    dim_mult=[1, 2, 4, 4],  # channel changes make the DupUp3D/AvgDown3D shortcuts mix channels
    num_res_blocks=1,
    temperal_downsample=[False, True, True],
    is_residual=True,
    in_channels=12,
    out_channels=12,
    patch_size=2,
    scale_factor_temporal=4,
    scale_factor_spatial=16,
    latents_mean=[0.1 * i for i in range(8)],
    latents_std=[1.0 + 0.1 * i for i in range(8)],
)


def tiny_vae_kwargs(kind: str, **overrides) -> dict:
    """The ``AutoencoderKLWan`` keyword arguments of the tiny test VAE of ``kind`` ("2.1" or "2.2")."""
    if kind not in ("2.1", "2.2"):
        raise ValueError(f"kind must be '2.1' or '2.2', got {kind!r}")
    return {**(TINY_21 if kind == "2.1" else TINY_22), **overrides}


def make_tiny_diffusers_vae(kind: str = "2.1", seed: int = 0, **overrides):
    """A tiny fp32 diffusers ``AutoencoderKLWan`` with every parameter perturbed by N(0, 0.1) noise.

    Norm gammas start at ones and biases at zeros; the noise makes sure a wrong mapping or op order shows up.
    """
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    vae = AutoencoderKLWan(**tiny_vae_kwargs(kind, **overrides)).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return vae
