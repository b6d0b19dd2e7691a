"""How the HunyuanVideo-1.5 VAE decode is spread over every rank (``vidpar.parallelize(vae, ctx, vae_mode=...)``).

The machinery is model-neutral (``vidpar.parallel.vae_decode``); this file declares what this VAE hands it. The
decode runs over latent frames one at a time in every mode (as the single-process decode does; see
``vae_blocks`` for why that is exact), so:

- ``"patch"``: the latent's rows are split into bands. Every 3x3x3 conv's spatial part (a ``ReplicatePadConv3d``)
  becomes a ``HaloConv`` with replicate padding at the image edges; its causal time context stays in the model
  (each band caches its own rows). The channel-to-space shuffles of the upsamplers and the latent's channel
  repeat are per pixel (a band of rows becomes a band of twice the rows). The mid-block attention, causal across
  frames, attends one frame's queries over every earlier frame's keys, kept per band: ring attention over the bands
  with key blocks of ``(t + 1) * rows * w`` pixels at latent frame ``t``. Exact.
- ``"pipeline"``: stages (conv_in, mid block, each up block, head) in contiguous groups balanced by
  :func:`stage_costs`; latent frames stream through; the mid block's past keys live on the rank that owns it.
- ``"combined"`` and ``"auto"``: pipeline x patch, and the automatic choice, as for every VAE.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from vidpar.parallel.plan import AxisPlan
from vidpar.parallel.vae_decode import vae_decode_plan

from .vae_blocks import ReplicatePadConv3d
from .vae_config import HunyuanVideo15VAEConfig

K3 = 27  # 3x3x3 kernels


def stage_costs(cfg: HunyuanVideo15VAEConfig, latent_shape: tuple[int, ...]) -> list[float]:
    """Relative cost of each decoder stage for one steady-state latent frame of a ``(..., T, h, w)`` latent.

    Conv FLOPs (weight elements x output pixels x frames; the upsampler's conv at its input resolution) plus the
    mid-block attention's ``2 * S * S_k * C`` with ``S = h*w`` and the mean key count over the clip,
    ``S_k = S * (T + 1) / 2``. Temporal upsamples double the frames, spatial ones quadruple the pixels.
    """
    frames, h, w = (int(v) for v in latent_shape[-3:])
    levels = cfg.decoder_levels()
    pixels = float(h * w)
    c0 = levels[0].in_dim
    costs = [cfg.latent_channels * c0 * K3 * pixels]
    mid_convs = 4 * c0 * c0 * K3 + 4 * c0 * c0  # 2 resnets x 2 convs; to_q, to_k, to_v, proj_out (1x1x1)
    costs.append(mid_convs * pixels + 2.0 * pixels * (pixels * (frames + 1) / 2.0) * c0)
    t = 1.0
    for lv in levels:
        n = 0
        for j in range(cfg.layers_per_block + 1):
            cin = lv.in_dim if j == 0 else lv.out_dim
            n += cin * lv.out_dim * K3 + lv.out_dim * lv.out_dim * K3 + (cin * lv.out_dim if cin != lv.out_dim else 0)
        cost = n * pixels * t
        if lv.up_dim is not None:
            factor = 8 if lv.temporal else 4
            cost += lv.out_dim * lv.up_dim * factor * K3 * pixels * t
            pixels *= 4.0
            if lv.temporal:
                t *= 2.0
        costs.append(cost)
    last = levels[-1].up_dim or levels[-1].out_dim
    costs.append(cfg.out_channels * last * K3 * pixels * t)
    return costs


def num_stages(cfg: HunyuanVideo15VAEConfig) -> int:
    """Decoder stages: conv_in, mid block, each up block, head (``Decoder.num_stages``)."""
    return len(cfg.decoder_levels()) + 3


def _stage_costs_of(decoder: nn.Module, shape: tuple[int, ...], cfg: HunyuanVideo15VAEConfig) -> list[float]:
    return stage_costs(cfg, shape)


def _finish(x: torch.Tensor) -> torch.Tensor:
    """The decoded band is the video band (no clamp, as diffusers' decode)."""
    return x


def _new_cache() -> dict:
    return {}


def hunyuanvideo15_vae_plan(vae: nn.Module, vae_mode: str = "auto", output: str = "all",
                            pipeline_degree: int | None = None) -> AxisPlan:
    """The plan for ``vae`` (a ``HunyuanVideo15VAE``); see the module docstring. Validated before any collective."""
    convs = [f"decoder.{name}" for name, m in vae.decoder.named_modules()
             if isinstance(m, ReplicatePadConv3d) and any(m.spatial_padding)]
    cfg = vae.config
    return vae_decode_plan(
        loop_path="decode_loop",
        halo_convs=convs,
        attention_ops=["decoder.mid_block.attentions.0.attn_op"],
        num_stages=vae.decoder.num_stages,
        stage_costs=partial(_stage_costs_of, cfg=cfg),
        new_cache=_new_cache,
        finish=_finish,
        spatial_factor=cfg.spatial_factor,
        vae_mode=vae_mode,
        output=output,
        pipeline_degree=pipeline_degree,
    )
