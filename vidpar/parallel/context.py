"""``ParallelContext``: the mesh, its process groups and this rank's coordinates; ``init_parallel`` builds it."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist

from .comm import AxisGroup, Comm
from .heartbeat import PeerMonitor
from .config import AXES, ParallelConfig
from .split import split_offsets, split_sizes

SP_AXIS = "sp"  # the flattened ring x ulysses axis over which tokens are split
WORLD_AXIS = "world"  # every rank, in rank order (e.g. for the parallel VAE decode)


@dataclass
class ParallelContext:
    """Where this rank sits in the ``(cfg, ring, ulysses)`` mesh, and how to talk to its neighbours.

    Created by ``init_parallel``; holds no global state, pass it explicitly. ``mesh`` is a named
    ``torch.distributed.DeviceMesh`` (None when running on one process without torch.distributed).
    """

    config: ParallelConfig
    rank: int
    world_size: int
    device: torch.device
    coords: dict[str, int]
    comm: Comm
    mesh: object | None = None
    groups: dict[str, object | None] = field(default_factory=dict)

    # ---- ranks and sizes per axis ----
    def axis_size(self, axis: str) -> int:
        """Number of ranks along ``axis`` ("cfg", "ring", "ulysses", "sp" = ring x ulysses, or "world")."""
        return self.comm.group(axis).size

    def axis_rank(self, axis: str) -> int:
        """This rank's index along ``axis``."""
        return self.comm.group(axis).rank_in_group

    @property
    def sp_size(self) -> int:
        """Ranks one sequence is split over (``ring * ulysses``)."""
        return self.config.sp_degree

    @property
    def sp_rank(self) -> int:
        """This rank's piece of the sequence: ``ring_rank * ulysses + ulysses_rank``."""
        return self.coords["ring"] * self.config.ulysses + self.coords["ulysses"]

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def monitor(self) -> PeerMonitor | None:
        """The heartbeat channel that names failed peers (None on one process)."""
        return self.comm.monitor

    def close(self) -> None:
        """Stop this context's heartbeat thread (the process group itself is left as it is)."""
        if self.comm.monitor is not None:
            self.comm.monitor.stop()

    # ---- sequence sharding ----
    def shard_sequence(self, x: torch.Tensor, dim: int) -> torch.Tensor:
        """This rank's contiguous piece of ``x`` along ``dim`` (no communication).

        Args:
            x: the full tensor, identical on every rank; ``x.shape[dim]`` may be any length (also < ranks).
        Returns:
            ``x.narrow(dim, offset, size)`` with sizes from ``split_sizes(length, sp_size)``; ranks differing
            only in the cfg axis get the same piece.
        """
        dim = dim % x.dim()
        offsets = split_offsets(x.shape[dim], self.sp_size)
        start, stop = offsets[self.sp_rank], offsets[self.sp_rank + 1]
        piece = x.narrow(dim, start, stop - start).contiguous()
        # A size-1 dim lets a narrowed view count as contiguous with its parent's strides; compiled blocks guard on
        # strides (the first block would compile twice), so such a piece gets the standard ones.
        if piece.stride() != _standard_strides(piece.shape):
            piece = piece.clone(memory_format=torch.contiguous_format)
        return piece

    def gather_sequence(self, x: torch.Tensor, dim: int, length: int | None = None) -> torch.Tensor:
        """Inverse of ``shard_sequence``: the full tensor on every rank.

        Args:
            x: this rank's piece (its ``dim`` may be empty).
            length: the full length along ``dim`` if the caller knows it (same on every rank); without it the
                piece lengths are exchanged first (a small control message).
        """
        if self.sp_size == 1:
            return x
        dim = dim % x.dim()
        if length is None:
            sizes = [row[0] for row in self.comm.exchange_ints([x.shape[dim]], SP_AXIS, x.device)]
        else:
            sizes = split_sizes(length, self.sp_size)
            if sizes[self.sp_rank] != x.shape[dim]:
                raise ValueError(
                    f"gather_sequence: this rank holds {x.shape[dim]} items along dim {dim} but a length of "
                    f"{length} over {self.sp_size} ranks gives it {sizes[self.sp_rank]}"
                )
        return gather_padded(self.comm, x, dim, sizes, SP_AXIS)

    # ---- accounting ----
    def comm_stats(self) -> dict[str, int]:
        """Payload bytes this rank has sent per mesh axis since the last reset (see ``vidpar.parallel.comm``)."""
        return self.comm.snapshot()

    def reset_comm_stats(self) -> None:
        self.comm.reset()


def _standard_strides(shape: torch.Size) -> tuple[int, ...]:
    """The strides of a freshly allocated contiguous tensor of ``shape``."""
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))


def gather_padded(comm: Comm, x: torch.Tensor, dim: int, sizes: list[int], axis: str) -> torch.Tensor:
    """All-gather pieces of uneven ``sizes`` along ``dim`` by padding to the largest and trimming.

    (gloo cannot all-gather unequal tensors, and an equal-size gather is the fastest path on NCCL too.)
    """
    longest = max(sizes)
    pad = longest - x.shape[dim]
    if pad:
        shape = list(x.shape)
        shape[dim] = pad
        x = torch.cat([x, x.new_zeros(shape)], dim=dim)
    stacked = comm.all_gather(x, axis)  # [P, ..., longest, ...]
    pieces = [stacked[i].narrow(dim, 0, n) for i, n in enumerate(sizes)]
    return torch.cat(pieces, dim=dim)


def _env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _local_context(config: ParallelConfig, device: torch.device) -> ParallelContext:
    groups = {name: AxisGroup(name, None, [0], 0) for name in (*AXES, SP_AXIS, WORLD_AXIS)}
    return ParallelContext(config, 0, 1, device, {a: 0 for a in AXES}, Comm(groups))


def init_parallel(
    config: ParallelConfig,
    backend: str | None = None,
    timeout: timedelta | None = None,
    heartbeat: bool = True,
) -> ParallelContext:
    """Set up the ``(cfg, ring, ulysses)`` mesh for ``config``.

    Uses the default process group if one is initialized, otherwise initializes it from the torchrun /
    ``RANK``-``WORLD_SIZE`` environment (``backend`` defaults to nccl with CUDA, else gloo). With a world size of 1
    and no process group, torch.distributed is not touched at all.

    ``heartbeat``: start a ``PeerMonitor`` (one store write per rank per second from a side thread), so that a
    collective failing because a peer died or hangs raises ``PeerFailure`` naming that peer.

    Raises:
        ValueError: the degrees do not multiply to the world size (raised on every rank before any collective).
    """
    if not isinstance(config, ParallelConfig):
        raise TypeError(f"init_parallel expects a ParallelConfig, got {type(config).__name__}")
    initialized = dist.is_available() and dist.is_initialized()
    world = dist.get_world_size() if initialized else _env_world_size()
    config.check_world_size(world)

    if not initialized:
        if world == 1:
            return _local_context(config, torch.device("cpu"))
        if backend is None:
            backend = "nccl" if torch.cuda.is_available() else "gloo"
        if "nccl" in backend:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend=backend, timeout=timeout)

    uses_cuda = "nccl" in str(dist.get_backend()) and torch.cuda.is_available()
    device = torch.device("cuda", torch.cuda.current_device()) if uses_cuda else torch.device("cpu")
    return _build_context(config, device, heartbeat)


def _build_context(config: ParallelConfig, device: torch.device, heartbeat: bool = True) -> ParallelContext:
    from torch.distributed.device_mesh import init_device_mesh

    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh(device.type, config.mesh_shape(), mesh_dim_names=AXES)
    coords = dict(zip(AXES, mesh.get_coordinate()))
    mesh_ranks = mesh.mesh  # [cfg, ring, ulysses] tensor of global ranks

    axis_groups: dict[str, AxisGroup] = {}
    for i, name in enumerate(AXES):
        index = [coords[a] for a in AXES]
        index[i] = slice(None)
        ranks = mesh_ranks[tuple(index)].tolist()
        group = mesh.get_group(name) if len(ranks) > 1 else None
        axis_groups[name] = AxisGroup(name, group, ranks, coords[name])

    # Tokens are split over ring x ulysses: one flattened group per cfg slice, created on every rank in order.
    sp_lists = [mesh_ranks[c].flatten().tolist() for c in range(config.cfg)]
    sp_ranks = sp_lists[coords["cfg"]]
    sp_group = None
    if len(sp_ranks) > 1:
        sp_group, _ = dist.new_subgroups_by_enumeration(sp_lists)
    sp_rank = coords["ring"] * config.ulysses + coords["ulysses"]
    axis_groups[SP_AXIS] = AxisGroup(SP_AXIS, sp_group, sp_ranks, sp_rank)
    axis_groups[WORLD_AXIS] = AxisGroup(WORLD_AXIS, dist.group.WORLD if world > 1 else None, list(range(world)), rank)

    groups = {name: g.group for name, g in axis_groups.items()}
    monitor = PeerMonitor.start_for_default_group() if heartbeat and world > 1 else None
    return ParallelContext(config, rank, world, device, coords, Comm(axis_groups, monitor=monitor), mesh, groups)
