"""Run a ``RingSchedule``: relay K/V rows hop by hop, computing on each block while the next hop is in flight.

Overlap follows issue -> compute -> wait, as in ``vidpar.parallel.ring``: the transfers of step ``s + 1`` are
started before the blocks received at step ``s`` are computed on. All transfers go through ``Comm`` on the
``"ring"`` axis, so their bytes are counted there.
"""

from __future__ import annotations

from typing import Callable

import torch

from ..comm import Comm
from .schedule import RingSchedule

AXIS = "ring"

# compute(block, kv [B, n, H, Dk + Dv], rows [n] of the block or None (whole block), cache key of those rows)
Compute = Callable[[int, torch.Tensor, "torch.Tensor | None", tuple], None]


def run_windowed_ring(
    comm: Comm,
    own: torch.Tensor,
    schedule: RingSchedule,
    compute: Compute,
) -> None:
    """Deliver every block this rank needs and call ``compute`` once per needed block (its own first).

    Args:
        own: ``[B, block_lengths[me], H, C]`` this rank's block (k and v concatenated on the last dim).
        schedule: from ``windowed_schedule`` on the same inputs on every rank.
    """
    g = comm.group(AXIS)
    me = g.rank_in_group
    if g.size != schedule.size:
        raise ValueError(f"windowed ring: schedule for {schedule.size} ranks on a ring of {g.size}")

    def issue(step: int, held: dict[tuple[int, int], torch.Tensor]):
        sends = []
        for block, direction, peer in schedule.sends(me, step):
            buf = held[(block, direction)]
            pick = schedule.select(block, direction, step)
            sends.append((buf if pick is None else buf.index_select(1, pick.to(buf.device)), peer))
        plan = schedule.recvs(me, step)
        recvs = [(own.new_empty(own.shape[0], schedule.count(b, d, step), *own.shape[2:]), peer)
                 for b, d, peer in plan]
        return comm.start_exchange(sends, recvs, AXIS), plan

    pending = issue(1, {(me, 0): own, (me, 1): own}) if schedule.steps >= 1 else None
    compute(me, own, None, ("own", me))
    for step in range(1, schedule.steps + 1):
        handle, plan = pending
        held = {(b, d): buf for (b, d, _), buf in zip(plan, handle.wait())}
        pending = issue(step + 1, held) if step < schedule.steps else None
        for (block, direction), kv in held.items():
            if schedule.needs[me][block]:
                compute(block, kv, schedule.rows_at(block, direction, step),
                        ("hop", schedule.key, block, direction, step))
