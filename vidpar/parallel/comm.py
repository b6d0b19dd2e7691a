"""The one communication layer: every collective and point-to-point transfer of vidpar goes through ``Comm``.

``Comm`` counts the payload bytes this rank sends, per mesh axis, so benchmarks and the planner can compare
measured and predicted traffic. Conventions for "bytes sent" (what leaves this rank, logically):

- all-to-all: the bytes of every split addressed to another rank (the split to itself is a local copy);
- all-gather of ``n`` bytes per rank over ``P`` ranks: ``n * (P - 1)``;
- send / recv pairs: the bytes of each send;
- broadcast: ``n * (P - 1)`` on the source, 0 elsewhere;
- all-reduce of ``n`` bytes: ``2 * n * (P - 1) / P`` (ring algorithm).

Small control messages (lengths exchanged before a collective) are counted under ``"control"``.
A group of size 1 never communicates and counts nothing.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.distributed as dist

from .heartbeat import PeerFailure


@dataclass
class AxisGroup:
    """A process group and its member global ranks, in group-rank order. ``group`` is None for size 1."""

    name: str
    group: object | None
    ranks: list[int]
    rank_in_group: int

    @property
    def size(self) -> int:
        return len(self.ranks)


class PendingExchange:
    """In-flight point-to-point transfers; ``wait()`` returns the received tensors (in request order)."""

    def __init__(self, works: list, received: list[torch.Tensor], comm: "Comm | None" = None,
                 axis: str = "") -> None:
        self._works = works
        self._received = received
        self._comm = comm
        self._axis = axis

    def wait(self) -> list[torch.Tensor]:
        def wait_all():
            for work in self._works:
                work.wait()

        if self._comm is not None:
            self._comm._call("exchange wait", self._axis, wait_all)
        else:
            wait_all()
        self._works = []
        return self._received


class PendingCollective:
    """An in-flight functional collective (see ``Comm.start_all_to_all``); ``wait()`` returns its output."""

    def __init__(self, out: torch.Tensor, functional: bool) -> None:
        self._out = out
        self._functional = functional

    def wait(self) -> torch.Tensor:
        return torch.ops._c10d_functional.wait_tensor(self._out) if self._functional else self._out


@torch.compiler.assume_constant_result
def group_name(g: AxisGroup) -> str:
    """The registered name of an axis' process group (functional collectives and custom ops take names; a
    constant to ``torch.compile``)."""
    return g.group.group_name


@dataclass
class Comm:
    """Collectives over named mesh axes, with byte accounting per axis."""

    groups: dict[str, AxisGroup]
    stats: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    monitor: Any = None  # a ``heartbeat.PeerMonitor``: names the ranks at fault when a collective fails

    def _call(self, op: str, axis: str, fn: Callable[[], Any]) -> Any:
        """Run one collective; if it raises, re-raise as ``PeerFailure`` naming the ranks that failed or stopped
        answering (from the heartbeat channel) and the collective and axis."""
        mon = self.monitor
        if mon is None or torch.compiler.is_compiling():
            # Compiled code cannot update the monitor's Python state (its counter would become a guard: a recompile
            # per collective); a collective inside a compiled block that fails is reported by the process group.
            return fn()
        mon.enter(op, axis)
        try:
            return fn()
        except RuntimeError as e:  # gloo/NCCL transport errors and timeouts: say whose fault it was
            raise PeerFailure(mon.explain(e, op, axis)) from e
        finally:
            mon.leave()

    def __post_init__(self) -> None:
        # Code being compiled counts into a tensor: a Python counter it read and wrote would become a guard of the
        # compiled graph (a recompile at every change). One slot per name; read back by ``snapshot``.
        self._traced_names = sorted({*self.groups, "control", "fsdp"})
        self._traced = torch.zeros(len(self._traced_names), dtype=torch.int64)

    def group(self, axis: str) -> AxisGroup:
        if axis not in self.groups:
            raise KeyError(f"unknown mesh axis {axis!r}; known: {sorted(self.groups)}")
        return self.groups[axis]

    def _count(self, axis: str, nbytes: int) -> None:
        if torch.compiler.is_compiling() and axis in self._traced_names:
            self._traced[self._traced_names.index(axis)] += nbytes
            return
        self.stats[axis] += int(nbytes)

    def all_to_all(
        self, send: torch.Tensor, send_splits: list[int], recv_splits: list[int], axis: str
    ) -> torch.Tensor:
        """All-to-all of a 1-D buffer with per-rank element counts (uneven and empty splits allowed).

        Args:
            send: ``[sum(send_splits)]``, the piece for group rank j at ``send_splits[j]``.
            send_splits / recv_splits: element counts per group rank.
        Returns:
            ``[sum(recv_splits)]``, the piece from group rank j at ``recv_splits[j]``.
        """
        g = self.group(axis)
        if g.size == 1:
            return send
        recv = send.new_empty(sum(recv_splits))
        self._call("all_to_all", axis, lambda: dist.all_to_all_single(recv, send, recv_splits, send_splits,
                                                                      group=g.group))
        elem = send.element_size()
        self._count(axis, elem * (sum(send_splits) - send_splits[g.rank_in_group]))
        return recv

    def start_all_to_all(
        self, send: torch.Tensor, send_splits: list[int], recv_splits: list[int], axis: str
    ) -> PendingCollective:
        """``all_to_all`` without waiting: compute can run until ``wait()`` (issue -> compute -> wait).

        A functional collective, so it traces under ``torch.compile`` as a start node and a wait node; counted as
        ``all_to_all`` is.
        """
        g = self.group(axis)
        if g.size == 1:
            return PendingCollective(send, functional=False)
        out = torch.ops._c10d_functional.all_to_all_single(send, list(recv_splits), list(send_splits), group_name(g))
        self._count(axis, send.element_size() * (sum(send_splits) - send_splits[g.rank_in_group]))
        return PendingCollective(out, functional=True)

    def all_gather(self, x: torch.Tensor, axis: str, control: bool = False) -> torch.Tensor:
        """All-gather equal-shaped tensors: ``x [*shape]`` -> ``[P, *shape]`` in group-rank order."""
        g = self.group(axis)
        if g.size == 1:
            return x.unsqueeze(0)
        flat = x.contiguous().view(-1)
        out = flat.new_empty(g.size * flat.numel())
        gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor  # new name in torch 2.13
        self._call("all_gather", axis, lambda: gather(out, flat, group=g.group))
        self._count("control" if control else axis, x.numel() * x.element_size() * (g.size - 1))
        return out.view(g.size, *x.shape)

    def exchange_ints(self, values: list[int], axis: str, device: torch.device) -> list[list[int]]:
        """All-gather a short list of ints from every rank of ``axis`` (a control message)."""
        t = torch.tensor(values, dtype=torch.int64, device=device)
        return self.all_gather(t, axis, control=True).tolist()

    def start_exchange(
        self,
        sends: list[tuple[torch.Tensor, int]],
        recvs: list[tuple[torch.Tensor, int]],
        axis: str,
    ) -> PendingExchange:
        """Start point-to-point transfers inside the group of ``axis`` without waiting.

        Args:
            sends: ``(tensor, peer group rank)`` pairs to send.
            recvs: ``(buffer, peer group rank)`` pairs to receive into.
        Returns:
            a handle whose ``wait()`` returns the receive buffers.
        """
        g = self.group(axis)
        ops = [dist.P2POp(dist.isend, t.contiguous(), g.ranks[p], g.group) for t, p in sends if t.numel()]
        ops += [dist.P2POp(dist.irecv, b, g.ranks[p], g.group) for b, p in recvs if b.numel()]
        for t, _ in sends:
            self._count(axis, t.numel() * t.element_size())
        # Counted as one collective on every rank even when this rank has nothing to send (the sequence numbers
        # the heartbeat compares must agree).
        works = self._call("exchange start", axis, lambda: dist.batch_isend_irecv(ops) if ops else [])
        return PendingExchange(works, [b for b, _ in recvs], self, axis)

    def broadcast(self, x: torch.Tensor, src_group_rank: int, axis: str) -> torch.Tensor:
        """Broadcast ``x`` (in place) from group rank ``src_group_rank`` of ``axis``."""
        g = self.group(axis)
        if g.size == 1:
            return x
        self._call("broadcast", axis, lambda: dist.broadcast(x, g.ranks[src_group_rank], group=g.group))
        if g.rank_in_group == src_group_rank:
            self._count(axis, x.numel() * x.element_size() * (g.size - 1))
        return x

    def all_reduce(self, x: torch.Tensor, axis: str, control: bool = False) -> torch.Tensor:
        """Sum ``x`` in place over ``axis`` (``control``: a small bookkeeping message, counted under "control")."""
        g = self.group(axis)
        if g.size == 1:
            return x
        self._call("all_reduce", axis, lambda: dist.all_reduce(x, group=g.group))
        self._count("control" if control else axis, 2 * x.numel() * x.element_size() * (g.size - 1) // g.size)
        return x

    def snapshot(self) -> dict[str, int]:
        out = dict(self.stats)
        for name, n in zip(self._traced_names, self._traced.tolist()):
            if n:
                out[name] = out.get(name, 0) + n
        return out

    def reset(self) -> None:
        self.stats.clear()
        self._traced.zero_()
