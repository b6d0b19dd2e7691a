"""How the Wan VAE decode is spread over every rank of the world (applied by ``vidpar.parallelize(vae, ctx, ...)``).

- ``"patch"``: the latent's rows are split into bands (``vidpar.parallel.vae_patch``). Every decoder conv with a
  spatial kernel becomes a :class:`HaloConv` (same parameters) that takes its missing rows from the neighbouring
  bands, the mid-block attention runs sequence-parallel over the bands (ring attention, 1 head), and everything
  else is per pixel or scales every band alike (x2 upsampling, DupUp3D, unpatchify). Exact.
- ``"pipeline"``: the decoder's stages (conv_in, mid block, up blocks, head) are split into contiguous ranges
  balanced by :func:`stage_costs`; latent frames stream through the ranks (``vidpar.parallel.vae_pipeline``).
- ``"combined"``: ``pipeline_degree`` stage groups (default 2) of ``world / pipeline_degree`` band ranks.
- ``"auto"``: chosen per call from the latent shape: ``"combined"`` with 2 stage groups when the world has at
  least 4 ranks (an even count) and the clip has at least 8 latent frames (enough chunks to fill a 2-deep
  pipeline), otherwise ``"patch"``. Pure pipelining is never chosen automatically: it does not shrink the largest
  activations (the last up block at full resolution), which is what runs out of memory.

The swapped ``decode_loop`` takes the full latent on every rank and returns the full video on every rank
(``output="all"``) or on rank 0 only (``output="rank0"``; other ranks get None).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from vidpar.parallel.attention import attention
from vidpar.parallel.context import WORLD_AXIS, ParallelContext
from vidpar.parallel.plan import AxisPlan
from vidpar.parallel.split import split_sizes
from vidpar.parallel.vae_patch import PatchGroup, build_patch_group, collect_bands, halo_conv
from vidpar.parallel.vae_pipeline import balance_stages, stream_chunks

from .vae_blocks import CACHE_T, CausalConv3d, FeatureCache, Resample, SpatialConv2d

MODES = ("auto", "patch", "pipeline", "combined")
OUTPUTS = ("all", "rank0")
AUTO_MIN_FRAMES = 8  # latent frames from which "auto" pipelines (2 stage groups)


@dataclass
class _Runtime:
    """State shared by the swapped modules of one parallelized VAE: the layout of the decode in progress."""

    group: PatchGroup | None = None
    groups: dict = field(default_factory=dict)  # (pipe, patch, active) -> PatchGroup; keys identical on all ranks


class HaloConv(nn.Module):
    """A decoder conv (``CausalConv3d`` or ``SpatialConv2d``, same parameters) on a row band with halo exchange."""

    def __init__(self, conv: nn.Module, runtime: _Runtime) -> None:
        super().__init__()
        kh = conv.kernel_size[-2]
        pl, pr, pt, pb = conv.spatial_padding
        if conv.stride[-1] != 1 or conv.stride[-2] != 1 or pt + pb != kh - 1:
            raise ValueError(f"HaloConv needs a stride-1 'same' conv, got {conv}")
        self.weight, self.bias = conv.weight, conv.bias  # shared: state_dict keys and values unchanged
        self.stride = conv.stride
        self.spatial_padding = conv.spatial_padding
        self.time_padding = getattr(conv, "time_padding", 0)
        self.is_3d = isinstance(conv, CausalConv3d)
        self.runtime = runtime

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_3d:
            return F.conv3d(x, self.weight, self.bias, self.stride)
        return F.conv2d(x, self.weight, self.bias, self.stride)

    def forward(self, x: torch.Tensor, cache: FeatureCache | None = None) -> torch.Tensor:
        """x ``[B, C_in, T, H_band, W]`` -> ``[B, C_out, T', H_band, W]`` (this rank's rows)."""
        group = self.runtime.group
        if not self.is_3d:  # SpatialConv2d: per frame
            b, c, t, h, w = x.shape
            y = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
            y = halo_conv(y, self._conv, self.spatial_padding, group)
            return y.view(b, t, *y.shape[1:]).permute(0, 2, 1, 3, 4)
        if self.time_padding > 0:  # the causal time padding of CausalConv3d.forward, on this rank's band
            prev = cache.get(self) if cache is not None else None
            x_ext = torch.cat([prev.to(x.device), x], dim=2) if prev is not None else x
            if cache is not None:
                cache.put(self, x_ext[:, :, -CACHE_T:].clone())  # own band only, before spatial padding
            missing = self.time_padding - (x_ext.shape[2] - x.shape[2])
            x = F.pad(x_ext, (0, 0, 0, 0, missing, 0)) if missing > 0 else x_ext
        # The halo is exchanged on the time-extended input: neighbours' cached frames come with it.
        return halo_conv(x, self._conv, self.spatial_padding, group)


class BandAttention(nn.Module):
    """The mid-block attention op over the pixels of all bands: ``vidpar.parallel.attention`` on the band ranks."""

    def __init__(self, runtime: _Runtime, backend: str) -> None:
        super().__init__()
        self.runtime, self.backend = runtime, backend

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q, k, v ``[B*T, H_band*W, 1, C]`` (row-major band pixels, contiguous in the frame) -> same shape."""
        return attention(q, k, v, self.runtime.group.attn_ctx, backend=self.backend)


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


class ParallelDecodeLoop(nn.Module):
    """Replaces ``WanVAE.decode_loop``: patch / pipeline / combined decoding over every rank of the world."""

    def __init__(self, ctx: ParallelContext, runtime: _Runtime, mode: str, output: str, pipeline_degree: int,
                 patch: int, spatial_factor: int) -> None:
        super().__init__()
        self.ctx, self.runtime = ctx, runtime
        self.mode, self.output, self.pipeline_degree = mode, output, pipeline_degree
        self.patch, self.spatial_factor = patch, spatial_factor

    def layout(self, frames: int, num_stages: int) -> tuple[int, int]:
        """``(pipe, patch)`` degrees for a latent of ``frames`` frames (identical on every rank)."""
        world = self.ctx.world_size
        mode = self.mode
        if mode == "auto":
            mode = "combined" if world >= 4 and world % 2 == 0 and frames >= AUTO_MIN_FRAMES else "patch"
        if mode == "patch":
            return 1, world
        if mode == "pipeline":
            return world, 1
        return self.pipeline_degree, world // self.pipeline_degree

    def _group(self, pipe: int, patch: int, active: int) -> PatchGroup:
        key = (pipe, patch, active)
        if key not in self.runtime.groups:  # every rank reaches this with the same key: collective-safe
            self.runtime.groups[key] = build_patch_group(self.ctx, pipe, patch, active)
        return self.runtime.groups[key]

    def forward(self, decoder: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
        """x ``[B, z_dim, T, h, w]`` (after post_quant_conv, identical on every rank) -> video or None.

        Returns:
            ``[B, C_out / patch^2, 1 + 4*(T-1), h*s, w*s]`` on every rank (``output="all"``) or on rank 0
            (``"rank0"``; None elsewhere).
        """
        ctx = self.ctx
        shape = list(x.shape)
        rows = ctx.comm.exchange_ints(shape, WORLD_AXIS, x.device)
        if any(r != shape for r in rows):  # every rank sees the same rows, so every rank raises
            raise ValueError(f"parallel VAE decode: ranks were given latents of different shapes: {rows}")
        frames, h = shape[2], shape[3]
        pipe, patch = self.layout(frames, decoder.num_stages)
        active = min(patch, h)
        group = self._group(pipe, patch, active)
        ranges = balance_stages(stage_costs(decoder, h, shape[4]), pipe)
        self.runtime.group = group
        try:
            local = self._decode_band(decoder, x, group, ranges) if group.is_active else None
        finally:
            self.runtime.group = None
        sources = [(pipe - 1) * patch + i for i in range(active)]
        sizes = [n * self.spatial_factor for n in split_sizes(h, active)]
        return collect_bands(group.comm, local, sources, sizes, 3, self.output, ctx.rank, x.dtype, x.device)

    def _decode_band(self, decoder, x, group: PatchGroup, ranges) -> torch.Tensor | None:
        r0, r1 = group.band_rows(x.shape[3])
        band = x[:, :, :, r0:r1].contiguous()
        stages = range(*ranges[group.pipe_index])
        cache = FeatureCache()  # this rank's stages and rows only

        def compute(chunk: torch.Tensor, t: int) -> torch.Tensor:
            for i in stages:
                chunk = decoder.forward_stage(i, chunk, cache, first_chunk=(t == 0))
            return chunk

        def chunk_at(t: int) -> torch.Tensor:
            return band[:, :, t : t + 1]

        frames = band.shape[2]
        if group.pipe == 1:
            outs = [compute(chunk_at(t), t) for t in range(frames)]
        else:
            p, rank = group.pipe_index, self.ctx.rank
            prev = rank - group.patch if p > 0 else None
            nxt = rank + group.patch if p < group.pipe - 1 else None
            outs = stream_chunks(group.comm, frames, chunk_at, compute, prev, nxt, x.dtype, x.device)
        if not outs:
            return None
        from .vae import unpatchify

        return unpatchify(torch.cat(outs, dim=2), self.patch).clamp(-1.0, 1.0)


@dataclass(frozen=True)
class _SwapLoop:
    runtime: _Runtime
    mode: str
    output: str
    pipeline_degree: int
    patch: int
    spatial_factor: int
    num_stages: int

    def apply(self, module, ctx, applied, path) -> None:
        check_layout(ctx.world_size, self.num_stages, self.mode, self.pipeline_degree)  # before any swap
        loop = ParallelDecodeLoop(ctx, self.runtime, self.mode, self.output, self.pipeline_degree, self.patch,
                                  self.spatial_factor)
        applied.swap(path, loop)


@dataclass(frozen=True)
class _SwapHaloConv:
    runtime: _Runtime

    def apply(self, module, ctx, applied, path) -> None:
        applied.swap(path, HaloConv(module, self.runtime))


@dataclass(frozen=True)
class _SwapAttention:
    runtime: _Runtime

    def apply(self, module, ctx, applied, path) -> None:
        applied.swap(path, BandAttention(self.runtime, module.backend))


def wan_vae_plan(vae: nn.Module, vae_mode: str = "auto", output: str = "all",
                 pipeline_degree: int | None = None) -> AxisPlan:
    """The plan for ``vae`` (a ``WanVAE``); see the module docstring. Validated here, before any collective."""
    if vae_mode not in MODES:
        raise ValueError(f"vae_mode must be one of {MODES}, got {vae_mode!r}")
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    stages = vae.decoder.num_stages
    degree = 2 if pipeline_degree is None else pipeline_degree
    if isinstance(degree, bool) or not isinstance(degree, int) or not 2 <= degree <= stages:
        raise ValueError(f"pipeline_degree must be an int in [2, {stages}], got {pipeline_degree!r}")
    runtime = _Runtime()
    cfg = vae.config
    plan: dict = {"decode_loop": _SwapLoop(runtime, vae_mode, output, degree, cfg.patch, cfg.spatial_factor, stages)}
    if vae_mode != "pipeline":
        for name, m in vae.decoder.named_modules():
            if isinstance(m, (CausalConv3d, SpatialConv2d)) and any(m.spatial_padding):
                plan[f"decoder.{name}"] = _SwapHaloConv(runtime)
        plan["decoder.mid_block.attentions.0.attn_op"] = _SwapAttention(runtime)
    return AxisPlan(WORLD_AXIS, plan)


def check_layout(world: int, stages: int, vae_mode: str, d: int) -> None:
    """Raise ``ValueError`` if ``vae_mode`` cannot run on ``world`` ranks (same answer on every rank)."""
    if vae_mode == "pipeline" and world > stages:
        raise ValueError(f"vae_mode='pipeline' places {stages} decoder stages on {world} ranks: use 'combined'")
    if vae_mode == "combined":
        if world % d or world // d < 2:
            raise ValueError(f"vae_mode='combined' needs a world divisible by {d} into groups of >= 2, got {world}")
