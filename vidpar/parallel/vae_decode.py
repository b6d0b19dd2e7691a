"""A VAE decode spread over every rank of the world: the swapped modules and the plan that installs them.

Model-neutral; a family's VAE opts in by following a small protocol and calling :func:`vae_decode_plan`:

- its decode runs through a parameterless ``decode_loop`` submodule called as ``decode_loop(decoder, x)`` with
  ``x [B, C, T, h, w]`` (the decoder's input for the whole clip, identical on every rank);
- the decoder is a list of stages, ``decoder.num_stages`` and ``decoder.forward_stage(i, chunk, cache,
  first_chunk)``, run over latent frames one at a time with a rank-local temporal cache;
- every spatial conv of the decoder is a stride-1 "same" conv that pads as a separate step and declares
  ``spatial_padding = (left, right, top, bottom)``, optionally ``pad_mode`` (``"zeros"``, the default, or
  ``"replicate"``) and, if the same module also adds causal time context, ``time_padding`` and a static
  ``extend_time(owner, x, cache, time_padding)``; its weight is 5-D (a 3-D conv) or 4-D (a 2-D conv applied
  to every frame of ``[B, C, T, H, W]``). Such a conv becomes a :class:`HaloConv` (same parameters);
- the mid-block attention calls an attention op ``attn_op(q, k, v)`` (``[B, S, H, D]``; k/v may be longer than
  q, e.g. cached keys of earlier frames), which becomes a :class:`BandAttention`;
- everything else is per pixel or scales every band alike (channel-to-space shuffles, nearest upsampling).

Modes (``vae_mode``): ``"patch"`` (latent rows in bands over the ranks: halo exchange for every conv,
ring attention over the bands), ``"pipeline"`` (decoder stages in contiguous groups balanced by cost, latent
frames streamed through them), ``"combined"`` (``pipeline_degree`` stage groups of band ranks) and ``"auto"``:
``"combined"`` with 2 stage groups when the world has at least 4 ranks (an even count) and the clip has at least
``AUTO_MIN_FRAMES`` latent frames (enough chunks to fill a 2-deep pipeline), otherwise ``"patch"``. Pure
pipelining is never chosen automatically: it does not shrink the largest activations (the last up block at full
resolution), which is what runs out of memory. ``output``: the video on every rank (``"all"``) or on rank 0 only
(``"rank0"``; other ranks get None).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from vidpar.kernels import attention_plain, attention_with_lse, resolve_backend

from .context import SP_AXIS, WORLD_AXIS, ParallelContext
from .plan import AxisPlan
from .ring import ring_attention
from .split import split_sizes
from .vae_patch import PatchGroup, build_patch_group, collect_bands, halo_conv
from .vae_pipeline import balance_stages, stream_chunks

MODES = ("auto", "patch", "pipeline", "combined")
OUTPUTS = ("all", "rank0")
AUTO_MIN_FRAMES = 8  # latent frames from which "auto" pipelines (2 stage groups)
ATTN_META_INTS = 7  # the band attention's control row: [S_k, B, H, D, Dv, S_q, dtype code]

StageCosts = Callable[[nn.Module, tuple[int, ...]], list[float]]  # (decoder, latent shape) -> cost per stage


@dataclass
class DecodeRuntime:
    """State shared by the swapped modules of one parallelized VAE: the layout of the decode in progress."""

    group: PatchGroup | None = None
    groups: dict = field(default_factory=dict)  # (pipe, patch, active) -> PatchGroup; keys identical on all ranks
    attention_backends: list = field(default_factory=list)  # of the swapped attention ops, checked before decoding


class HaloConv(nn.Module):
    """A decoder conv (same parameters, see the module docstring) run on a row band with halo exchange."""

    def __init__(self, conv: nn.Module, runtime: DecodeRuntime) -> None:
        super().__init__()
        kh = conv.kernel_size[-2]
        _, _, pt, pb = conv.spatial_padding
        if conv.stride[-1] != 1 or conv.stride[-2] != 1 or pt + pb != kh - 1:
            raise ValueError(f"HaloConv needs a stride-1 'same' conv, got {conv}")
        self.weight, self.bias = conv.weight, conv.bias  # shared: state_dict keys and values unchanged
        self.stride = conv.stride
        self.kernel_size = conv.kernel_size
        self.spatial_padding = conv.spatial_padding
        self.pad_mode = getattr(conv, "pad_mode", "zeros")
        self.time_padding = getattr(conv, "time_padding", 0)
        self.extend_time = getattr(conv, "extend_time", None)  # a plain function: the model's causal time context
        self.is_3d = conv.weight.dim() == 5
        self.runtime = runtime

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        if self.is_3d:
            return F.conv3d(x, self.weight, self.bias, self.stride)
        return F.conv2d(x, self.weight, self.bias, self.stride)

    def forward(self, x: torch.Tensor, cache=None) -> torch.Tensor:
        """x ``[B, C_in, T, H_band, W]`` -> ``[B, C_out, T', H_band, W]`` (this rank's rows)."""
        group = self.runtime.group
        if not self.is_3d:  # a 2-D conv on every frame
            b, c, t, h, w = x.shape
            y = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
            y = halo_conv(y, self._conv, self.spatial_padding, group, self.pad_mode)
            return y.view(b, t, *y.shape[1:]).permute(0, 2, 1, 3, 4)
        if self.time_padding > 0 and self.extend_time is not None:
            # The model's causal time context, on this rank's band only (the cache keeps its own rows).
            x = self.extend_time(self, x, cache, self.time_padding)
        # The halo is exchanged on the time-extended input: neighbours' cached frames come with it.
        return halo_conv(x, self._conv, self.spatial_padding, group, self.pad_mode)


def band_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group: PatchGroup, backend: str) -> torch.Tensor:
    """Softmax attention of this band's queries over the keys of every band (exact, one merge in fp32).

    Args:
        q: ``[B, Sq, H, D]`` this band's queries; k: ``[B, Sk, H, D]``, v: ``[B, Sk, H, Dv]`` this band's keys and
            values (``Sk`` may differ from ``Sq``, and between bands, e.g. cached keys of earlier frames).
        group: the band layout of the decode in progress (ring over its active band ranks).
        backend: local attention backend name or ``"auto"``.
    Returns:
        ``[B, Sq, H, Dv]``.

    One control row (``ATTN_META_INTS`` int64) is exchanged first: every band's key count, and a check that all
    bands agree on B, H, D, Dv and dtype, so a mismatch is a ``ValueError`` on every rank, never a hang.
    """
    ctx = group.attn_ctx
    if ctx.sp_size == 1:
        return attention_plain(q, k, v, resolve_backend(backend, q.device, q.dtype, need_lse=False).name)
    spec = resolve_backend(backend, q.device, q.dtype, need_lse=True)
    b, sq, h, d = q.shape
    meta = [k.shape[1], b, h, d, v.shape[-1], sq, _DTYPE_CODES.get(q.dtype, -1)]
    rows = ctx.comm.exchange_ints(meta, SP_AXIS, q.device)
    if any(row[1:5] != meta[1:5] or row[6] != meta[6] for row in rows):
        raise ValueError(f"band attention: ranks disagree on (B, H, D, Dv, dtype): {[r[1:5] + r[6:] for r in rows]}")

    def attn_lse(qq, kk, vv):
        return attention_with_lse(qq, kk, vv, backend=spec.name)

    return ring_attention(ctx.comm, q, k, v, [row[0] for row in rows], attn_lse)


_DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}


class BandAttention(nn.Module):
    """Replaces a mid-block attention op: :func:`band_attention` on the band ranks of the decode in progress."""

    def __init__(self, runtime: DecodeRuntime, backend: str) -> None:
        super().__init__()
        self.runtime, self.backend = runtime, backend

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q ``[B', Sq, H, D]``, k/v ``[B', Sk, H, D]`` (row-major band pixels) -> ``[B', Sq, H, D]``."""
        return band_attention(q, k, v, self.runtime.group, self.backend)


def decode_layout(world: int, frames: int, mode: str, pipeline_degree: int) -> tuple[int, int]:
    """``(pipe, patch)`` degrees for a latent of ``frames`` frames (``"auto"`` resolved; identical on every rank)."""
    if mode == "auto":
        mode = "combined" if world >= 4 and world % 2 == 0 and frames >= AUTO_MIN_FRAMES else "patch"
    if mode == "patch":
        return 1, world
    if mode == "pipeline":
        return world, 1
    return pipeline_degree, world // pipeline_degree


class ParallelDecodeLoop(nn.Module):
    """Replaces a VAE's ``decode_loop``: patch / pipeline / combined decoding over every rank of the world.

    Args:
        stage_costs: ``(decoder, latent shape) -> [cost per stage]`` for balancing the pipeline stages.
        new_cache: makes the empty rank-local temporal cache the decoder's stages take.
        finish: applied to this rank's decoded band (all frames), e.g. unpatchify and clamp; per pixel.
        spatial_factor: output rows per latent row.
    """

    def __init__(self, ctx: ParallelContext, runtime: DecodeRuntime, mode: str, output: str, pipeline_degree: int,
                 stage_costs: StageCosts, new_cache: Callable[[], object],
                 finish: Callable[[torch.Tensor], torch.Tensor], spatial_factor: int) -> None:
        super().__init__()
        self.ctx, self.runtime = ctx, runtime
        self.mode, self.output, self.pipeline_degree = mode, output, pipeline_degree
        self.stage_costs, self.new_cache, self.finish = stage_costs, new_cache, finish
        self.spatial_factor = spatial_factor

    def layout(self, frames: int, num_stages: int) -> tuple[int, int]:
        """``(pipe, patch)`` degrees for a latent of ``frames`` frames (identical on every rank)."""
        return decode_layout(self.ctx.world_size, frames, self.mode, self.pipeline_degree)

    def _group(self, pipe: int, patch: int, active: int) -> PatchGroup:
        key = (pipe, patch, active)
        if key not in self.runtime.groups:  # every rank reaches this with the same key: collective-safe
            self.runtime.groups[key] = build_patch_group(self.ctx, pipe, patch, active)
        return self.runtime.groups[key]

    def forward(self, decoder: nn.Module, x: torch.Tensor) -> torch.Tensor | None:
        """x ``[B, C, T, h, w]`` (the decoder's input, identical on every rank) -> video or None.

        Returns:
            the decoded video (``finish`` applied; rows ``h * spatial_factor``) on every rank (``output="all"``)
            or on rank 0 (``"rank0"``; None elsewhere).
        """
        ctx = self.ctx
        shape = list(x.shape)
        rows = ctx.comm.exchange_ints(shape, WORLD_AXIS, x.device)
        if any(r != shape for r in rows):  # every rank sees the same rows, so every rank raises
            raise ValueError(f"parallel VAE decode: ranks were given latents of different shapes: {rows}")
        frames, h = shape[2], shape[3]
        pipe, patch = self.layout(frames, decoder.num_stages)
        active = min(patch, h)
        for backend in self.runtime.attention_backends:  # same answer on every rank, idle ones included
            resolve_backend(backend, x.device, x.dtype, need_lse=active > 1)
        group = self._group(pipe, patch, active)
        ranges = balance_stages(self.stage_costs(decoder, tuple(shape)), pipe)
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
        cache = self.new_cache()  # this rank's stages and rows only

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
        return self.finish(torch.cat(outs, dim=2))


@dataclass(frozen=True)
class _SwapLoop:
    runtime: DecodeRuntime
    mode: str
    output: str
    pipeline_degree: int
    num_stages: int
    stage_costs: StageCosts
    new_cache: Callable[[], object]
    finish: Callable[[torch.Tensor], torch.Tensor]
    spatial_factor: int

    def apply(self, module, ctx, applied, path) -> None:
        check_layout(ctx.world_size, self.num_stages, self.mode, self.pipeline_degree)  # before any swap
        loop = ParallelDecodeLoop(ctx, self.runtime, self.mode, self.output, self.pipeline_degree, self.stage_costs,
                                  self.new_cache, self.finish, self.spatial_factor)
        applied.swap(path, loop)


@dataclass(frozen=True)
class _SwapHaloConv:
    runtime: DecodeRuntime

    def apply(self, module, ctx, applied, path) -> None:
        applied.swap(path, HaloConv(module, self.runtime))


@dataclass(frozen=True)
class _SwapAttention:
    runtime: DecodeRuntime

    def apply(self, module, ctx, applied, path) -> None:
        self.runtime.attention_backends.append(module.backend)
        applied.swap(path, BandAttention(self.runtime, module.backend))


def vae_decode_plan(
    *,
    loop_path: str,
    halo_convs: list[str],
    attention_ops: list[str],
    num_stages: int,
    stage_costs: StageCosts,
    new_cache: Callable[[], object],
    finish: Callable[[torch.Tensor], torch.Tensor],
    spatial_factor: int,
    vae_mode: str = "auto",
    output: str = "all",
    pipeline_degree: int | None = None,
) -> AxisPlan:
    """The plan ``vidpar.parallelize(vae, ctx, ...)`` applies to a VAE following the module docstring's protocol.

    Args:
        loop_path: path of the ``decode_loop`` submodule (swapped for a :class:`ParallelDecodeLoop`).
        halo_convs: paths of the decoder's spatial convs (swapped for :class:`HaloConv` unless pipelining only).
        attention_ops: paths of the decoder's attention ops (swapped for :class:`BandAttention`, likewise).
        num_stages, stage_costs, new_cache, finish, spatial_factor: see :class:`ParallelDecodeLoop`.
        vae_mode, output: see the module docstring; pipeline_degree: stage groups of ``"combined"`` (default 2).
    Validated here, before any collective (the world-dependent checks run in ``apply``, also before any swap).
    """
    if vae_mode not in MODES:
        raise ValueError(f"vae_mode must be one of {MODES}, got {vae_mode!r}")
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    degree = 2 if pipeline_degree is None else pipeline_degree
    if isinstance(degree, bool) or not isinstance(degree, int) or not 2 <= degree <= num_stages:
        raise ValueError(f"pipeline_degree must be an int in [2, {num_stages}], got {pipeline_degree!r}")
    runtime = DecodeRuntime()
    # The loop first: a layout that cannot run on this world raises before anything is swapped.
    plan: dict = {loop_path: _SwapLoop(runtime, vae_mode, output, degree, num_stages, stage_costs, new_cache, finish,
                                       spatial_factor)}
    if vae_mode != "pipeline":
        for path in halo_convs:
            plan[path] = _SwapHaloConv(runtime)
        for path in attention_ops:
            plan[path] = _SwapAttention(runtime)
    return AxisPlan(WORLD_AXIS, plan)


def check_layout(world: int, stages: int, vae_mode: str, d: int) -> None:
    """Raise ``ValueError`` if ``vae_mode`` cannot run on ``world`` ranks (same answer on every rank)."""
    if vae_mode == "pipeline" and world > stages:
        raise ValueError(f"vae_mode='pipeline' places {stages} decoder stages on {world} ranks: use 'combined'")
    if vae_mode == "combined":
        if world % d or world // d < 2:
            raise ValueError(f"vae_mode='combined' needs a world divisible by {d} into groups of >= 2, got {world}")
