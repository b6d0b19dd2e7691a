"""How the Wan VAE decode is spread over every rank of the world (applied by ``vidpar.parallelize(vae, ctx, ...)``).

The machinery is model-neutral (``vidpar.parallel.vae_decode``); this file declares what Wan hands it:

- ``"patch"``: the latent's rows are split into bands (``vidpar.parallel.vae_patch``). Every decoder conv with a
  spatial kernel becomes a :class:`HaloConv` (same parameters; zero padding at the image edges) that takes its
  missing rows from the neighbouring bands, the mid-block attention (per frame, over its h*w pixels) runs
  sequence-parallel over the bands (ring attention, 1 head), and everything else is per pixel or scales every
  band alike (x2 upsampling, DupUp3D, unpatchify). Exact.
- ``"pipeline"``: the decoder's stages (conv_in, mid block, up blocks, head) are split into contiguous ranges
  balanced by :func:`stage_costs`; latent frames stream through the ranks (``vidpar.parallel.vae_pipeline``).
- ``"combined"`` and ``"auto"``: see ``vidpar.parallel.vae_decode``.

The swapped ``decode_loop`` takes the full latent on every rank and returns the full video on every rank
(``output="all"``) or on rank 0 only (``output="rank0"``; other ranks get None); like the single-process
:class:`~vidpar.models.wan.vae.FrameDecodeLoop` it unpatchifies and clamps.
"""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from vidpar.parallel.plan import AxisPlan
from vidpar.parallel.vae_decode import (  # noqa: F401  (re-exported: Wan's names for the shared pieces)
    AUTO_MIN_FRAMES,
    MODES,
    OUTPUTS,
    BandAttention,
    HaloConv,
    ParallelDecodeLoop,
    check_layout,
    vae_decode_plan,
)
from vidpar.parallel.vae_decode import DecodeRuntime as _Runtime  # noqa: F401

from .vae_blocks import CausalConv3d, FeatureCache, SpatialConv2d


def _is_conv(m: nn.Module) -> bool:
    """A decoder conv, whether original or already swapped for a ``HaloConv`` (same weight), so that the stage
    balance is the same before and after ``parallelize``."""
    return isinstance(m, (nn.Conv3d, nn.Conv2d, HaloConv))


def stage_costs(decoder: nn.Module, h: int, w: int) -> list[float]:
    """Relative cost of each decoder stage for one steady-state latent frame of ``h x w``.

    Conv FLOPs (weight elements x output pixels x frames) plus the mid-block attention's ``2 * S^2 * C`` (S =
    ``h*w``); up blocks double the pixels (x4 per spatial upsample) and temporal upsamples double the frames.
    """
    pixels = float(h * w)
    costs = [decoder.conv_in.weight.numel() * pixels]
    mid = decoder.mid_block
    attn_dim = mid.attentions[0].proj.weight.shape[0]
    mid_convs = sum(m.weight.numel() for m in mid.modules() if _is_conv(m))
    costs.append(mid_convs * pixels + 2.0 * pixels * pixels * attn_dim)
    for block in decoder.up_blocks:
        up = block.upsampler if block.residual else (block.upsamplers[0] if block.upsamplers is not None else None)
        up_convs = set(up.modules()) if up is not None else set()
        cost = sum(
            m.weight.numel() for m in block.modules() if _is_conv(m) and m.weight.dim() == 5 and m not in up_convs
        )
        cost *= pixels
        if up is not None:
            frames = 2.0 if up.mode == "upsample3d" else 1.0
            if hasattr(up, "time_conv"):
                cost += up.time_conv.weight.numel() * pixels
            pixels *= 4.0 * frames
            cost += up.resample[1].weight.numel() * pixels
        costs.append(cost)
    costs.append(decoder.conv_out.weight.numel() * pixels)
    return costs


def _stage_costs_of_shape(decoder: nn.Module, shape: tuple[int, ...]) -> list[float]:
    """:func:`stage_costs` for a latent of ``shape = (B, C, T, h, w)`` (the costs do not depend on T)."""
    return stage_costs(decoder, shape[3], shape[4])


def _finish(x: torch.Tensor, patch: int) -> torch.Tensor:
    """A decoded band ``[B, C*p*p, F, rows, w]`` -> pixels ``[B, C, F, rows*p, w*p]`` in [-1, 1]."""
    from .vae import unpatchify

    return unpatchify(x, patch).clamp(-1.0, 1.0)


def wan_vae_plan(vae: nn.Module, vae_mode: str = "auto", output: str = "all",
                 pipeline_degree: int | None = None) -> AxisPlan:
    """The plan for ``vae`` (a ``WanVAE``); see the module docstring. Validated here, before any collective."""
    convs = [f"decoder.{name}" for name, m in vae.decoder.named_modules()
             if isinstance(m, (CausalConv3d, SpatialConv2d)) and any(m.spatial_padding)]
    cfg = vae.config
    return vae_decode_plan(
        loop_path="decode_loop",
        halo_convs=convs,
        attention_ops=["decoder.mid_block.attentions.0.attn_op"],
        num_stages=vae.decoder.num_stages,
        stage_costs=_stage_costs_of_shape,
        new_cache=FeatureCache,
        finish=partial(_finish, patch=cfg.patch),
        spatial_factor=cfg.spatial_factor,
        vae_mode=vae_mode,
        output=output,
        pipeline_degree=pipeline_degree,
    )
