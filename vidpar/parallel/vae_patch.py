"""Spatially split VAE decoding: row bands, halo exchange overlapped with the interior conv, band gathering.

Layout: the world's ranks form ``pipe`` groups of ``patch`` consecutive ranks (``rank = pipe_index * patch +
band_index``; consecutive ranks share the fastest links and exchange halos every conv). A latent of ``h`` rows is
split into ``split_sizes(h, patch)`` row bands; with ``h < patch`` only the first ``h`` band ranks are *active*
(one row each) and the others idle, since convolutions cannot run on empty tensors. Every spatial op of a decoder
either is per pixel, scales every band by the same factor (x2 upsampling, unpatchify), or is a "same" conv with
stride 1 that needs ``pad_top`` rows from the band above and ``pad_bottom`` rows from the band below: the halo.

All traffic goes through a :class:`VaeComm`, a ``Comm`` that books bytes under ``"vae.<axis>"`` in the parent
context's counters (``"vae.sp"``: halos, ``"vae.ring"``/``"vae.control"``: mid-block attention, ``"vae.world"``:
pipeline hand-offs and output gathering).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F

from .comm import AxisGroup, Comm
from .config import ParallelConfig
from .context import SP_AXIS, WORLD_AXIS, ParallelContext
from .split import split_offsets, split_sizes

HALO_AXIS = SP_AXIS


@dataclass
class VaeComm(Comm):
    """A ``Comm`` whose byte counts go to ``prefix + axis`` (sharing the parent context's counter dict)."""

    prefix: str = "vae."

    def _count(self, axis: str, nbytes: int) -> None:
        self.stats[self.prefix + axis] += int(nbytes)


@dataclass
class PatchGroup:
    """This rank's place in a ``pipe x patch`` decode layout for one latent height.

    ``attn_ctx`` is a ring-only ``ParallelContext`` over the active band ranks of this rank's pipe group (its
    "sp"/"ring" axes are those ranks), so ``vidpar.parallel.attention`` runs sequence-parallel over the bands.
    ``comm`` also knows the whole world (axis "world") for pipeline hand-offs and output gathering.
    """

    pipe: int
    patch: int
    active: int  # band ranks holding rows (min(h, patch))
    pipe_index: int
    band_index: int
    comm: VaeComm
    attn_ctx: ParallelContext | None  # None on idle ranks

    @property
    def is_active(self) -> bool:
        return self.band_index < self.active

    @property
    def has_up(self) -> bool:
        return self.band_index > 0

    @property
    def has_down(self) -> bool:
        return self.band_index + 1 < self.active

    def band_rows(self, h: int) -> tuple[int, int]:
        """``(start, stop)`` of this rank's rows of an ``h``-row latent."""
        offsets = split_offsets(h, self.active)
        return offsets[self.band_index], offsets[self.band_index + 1]


def build_patch_group(ctx: ParallelContext, pipe: int, patch: int, active: int) -> PatchGroup:
    """Create the process groups of a ``pipe x patch`` layout with ``active`` band ranks per pipe group.

    Collective over the world (``new_group`` for every pipe group, in the same order on every rank): call it on
    every rank with the same arguments.
    """
    world = ctx.world_size
    if pipe * patch != world:
        raise ValueError(f"VAE layout pipe={pipe} x patch={patch} needs {pipe * patch} ranks, world has {world}")
    if not 1 <= active <= patch:
        raise ValueError(f"active band ranks must be in [1, {patch}], got {active}")
    pipe_index, band_index = divmod(ctx.rank, patch)
    lists = [[p * patch + i for i in range(active)] for p in range(pipe)]
    mine = None
    for ranks in lists:  # every rank creates every group, in order (new_group is collective)
        group = dist.new_group(ranks) if active > 1 else None
        if ctx.rank in ranks:
            mine = (ranks, group)
    world_group = ctx.comm.group(WORLD_AXIS)
    groups = {WORLD_AXIS: world_group}
    single = AxisGroup("single", None, [ctx.rank], 0)
    if mine is not None:
        ranks, group = mine
        band = AxisGroup(SP_AXIS, group, ranks, band_index)
        groups.update({SP_AXIS: band, "ring": band, "ulysses": single, "cfg": single})
    comm = VaeComm(groups, stats=ctx.comm.stats)
    attn_ctx = None
    if mine is not None:
        coords = {"cfg": 0, "ring": band_index, "ulysses": 0}
        attn_ctx = ParallelContext(ParallelConfig(ring=active), ctx.rank, world, ctx.device, coords, comm)
    return PatchGroup(pipe, patch, active, pipe_index, band_index, comm, attn_ctx)


PAD_MODES = ("zeros", "replicate")


def _pad_width(t: torch.Tensor, left: int, right: int, pad_mode: str) -> torch.Tensor:
    """Pad the last dim (W) of ``[..., H, W]`` by ``left``/``right`` columns: zeros or copies of the edge column."""
    if not (left or right):
        return t
    if pad_mode == "zeros":
        return F.pad(t, (left, right, 0, 0))
    # Replicate padding covers the last (ndim - 2) dims of a 3-/4-/5-D tensor: give W its columns, 0 for the rest.
    return F.pad(t, (left, right) + (0, 0) * (t.dim() - 3), mode="replicate")


def _edge_rows(x: torch.Tensor, rows: int, top: bool, pad_mode: str) -> torch.Tensor:
    """The ``rows`` rows beyond the image's top (``top``) or bottom edge of ``x [..., H, W]``."""
    if pad_mode == "zeros":
        return x.new_zeros(*x.shape[:-2], rows, x.shape[-1])
    edge = x[..., :1, :] if top else x[..., -1:, :]
    return edge.expand(*x.shape[:-2], rows, x.shape[-1])


def halo_conv(
    x: torch.Tensor,
    conv: Callable[[torch.Tensor], torch.Tensor],
    spatial_padding: tuple[int, int, int, int],
    group: PatchGroup,
    pad_mode: str = "zeros",
) -> torch.Tensor:
    """A stride-1 "same" convolution of this rank's row band, with the missing rows taken from its neighbours.

    Issue -> compute -> wait: the halo rows are sent/received asynchronously while the rows that need no halo
    (``pad_top <= j < H_local - pad_bottom``) are convolved; the border rows are convolved after the wait.

    Args:
        x: ``[..., H_local, W]`` this rank's band (any leading dims, e.g. ``[B, C, T, H, W]`` after the causal
            time padding, or ``[N, C, H, W]``); ``H_local >= max(pad_top, pad_bottom)``.
        conv: the convolution with zero padding, ``[..., H + pad_top + pad_bottom, W + pad_l + pad_r] ->
            [..., H, W']``.
        spatial_padding: ``(left, right, top, bottom)`` of the single-device conv; the band above supplies
            ``top`` rows, the band below ``bottom`` rows; at the image edges and in W the padding is ``pad_mode``'s.
        pad_mode: ``"zeros"`` (zero padding) or ``"replicate"`` (copies of the edge row / column, as
            ``F.pad(..., mode="replicate")``; replicate padding is separable, so H then W gives the same corners).
    Returns:
        ``[..., H_local, W']``: equal to the rows of the single-device conv that belong to this band.
    """
    if pad_mode not in PAD_MODES:
        raise ValueError(f"halo_conv: pad_mode must be one of {PAD_MODES}, got {pad_mode!r}")
    pl, pr, pt, pb = spatial_padding
    if not (pt or pb):
        return conv(_pad_width(x, pl, pr, pad_mode))
    h = x.shape[-2]
    if h < max(pt, pb):
        raise ValueError(f"halo_conv: a band of {h} rows cannot supply a halo of {max(pt, pb)} rows")
    edge = list(x.shape)
    sends, recvs = [], []
    top = bottom = None
    if group.has_up:
        sends.append((x[..., :pb, :], group.band_index - 1))  # the band above needs my first rows
        top = x.new_empty(*edge[:-2], pt, edge[-1])
        recvs.append((top, group.band_index - 1))
    if group.has_down:
        sends.append((x[..., h - pt :, :], group.band_index + 1))
        bottom = x.new_empty(*edge[:-2], pb, edge[-1])
        recvs.append((bottom, group.band_index + 1))
    pending = group.comm.start_exchange(sends, recvs, HALO_AXIS) if sends else None

    def pad_w(t: torch.Tensor) -> torch.Tensor:
        return _pad_width(t, pl, pr, pad_mode)

    # Rows [pt, h - pb) need no halo: convolved while the halo is in flight. (The W-padded copy is dropped at
    # once, so the peak stays that of the single-device pad + conv.)
    interior = conv(pad_w(x)) if h > pt + pb else None

    if pending is not None:
        pending.wait()
    if top is None:
        top = _edge_rows(x, pt, True, pad_mode)
    if bottom is None:
        bottom = _edge_rows(x, pb, False, pad_mode)
    if h < pt + pb:  # too thin to split into border and interior rows
        return conv(pad_w(torch.cat([top, x, bottom], dim=-2)))
    parts = []
    if pt:
        parts.append(conv(pad_w(torch.cat([top, x[..., : pt + pb, :]], dim=-2))))  # rows [0, pt)
    if interior is not None:
        parts.append(interior)
    if pb:
        parts.append(conv(pad_w(torch.cat([x[..., h - pt - pb :, :], bottom], dim=-2))))  # rows [h - pb, h)
    return torch.cat(parts, dim=-2) if len(parts) > 1 else parts[0]


def collect_bands(
    comm: Comm,
    local: torch.Tensor | None,
    sources: list[int],
    sizes: list[int],
    dim: int,
    output: str,
    rank: int,
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor | None:
    """Assemble bands held by world ranks ``sources`` (band order) along ``dim``, on every rank or on rank 0.

    Args:
        local: this rank's band if it is a source (``sizes[i]`` long along ``dim``), else None.
        sizes: band lengths along ``dim``, identical on every rank.
        output: ``"all"`` (each band is broadcast from its source) or ``"rank0"`` (bands sent to rank 0 only;
            other ranks return None and never hold the whole tensor).
        dtype, device: of the bands (identical on every rank).
    Returns:
        the full tensor on the receiving ranks, None elsewhere.
    """
    # Only the sources know the band shape but for ``dim``: the first source broadcasts it (a control message).
    meta = torch.zeros(8, dtype=torch.int64, device=device)
    if rank == sources[0]:
        meta[: local.dim()] = torch.tensor(local.shape, device=device)
        meta[7] = local.dim()
    meta = comm.broadcast(meta, sources[0], WORLD_AXIS).tolist()
    ndim = int(meta[7])
    shape = [int(v) for v in meta[:ndim]]
    dim = dim % ndim

    def empty(n: int) -> torch.Tensor:
        return torch.empty(*shape[:dim], n, *shape[dim + 1 :], dtype=dtype, device=device)

    if output == "all":
        pieces = []
        for src, n in zip(sources, sizes):  # same order on every rank
            buf = local.contiguous() if rank == src else empty(n)
            pieces.append(comm.broadcast(buf, src, WORLD_AXIS))
        return torch.cat(pieces, dim=dim)
    if output != "rank0":
        raise ValueError(f"output must be 'all' or 'rank0', got {output!r}")
    if rank == 0:
        pieces = [local if src == 0 else empty(n) for src, n in zip(sources, sizes)]
        recvs = [(buf, src) for buf, src in zip(pieces, sources) if src != 0]
        if recvs:
            comm.start_exchange([], recvs, WORLD_AXIS).wait()
        return torch.cat(pieces, dim=dim)
    if rank in sources:
        comm.start_exchange([(local, 0)], [], WORLD_AXIS).wait()
    return None
