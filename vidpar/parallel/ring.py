"""Ring attention: K/V blocks rotate around the ring group while each rank attends to the block it holds.

Overlap follows issue -> compute -> wait: the transfer of the next block is started before the current block is
computed and awaited after. Block lengths may differ between ranks (uneven shards); every rank knows all of them,
so every rank posts the same transfers in the same order.
"""

from __future__ import annotations

from typing import Callable

import torch

from .comm import Comm
from .lse import PartialAttention

AXIS = "ring"
AttnLse = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], "tuple[torch.Tensor, torch.Tensor]"]


def ring_attention(
    comm: Comm,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_lengths: list[int],
    attn_lse: AttnLse,
    local_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
    overlap: bool = True,
    trace: list[tuple[str, int]] | None = None,
) -> torch.Tensor:
    """Attention of ``q`` over the union of every ring rank's K/V block (plus optional extra local K/V).

    Args:
        q: ``[B, Sq, H, D]`` this rank's queries.
        k, v: ``[B, block_lengths[rank], H, D]`` / ``[..., Dv]`` this rank's key/value block.
        block_lengths: key-block length of every ring rank, identical on all ranks.
        attn_lse: local attention returning ``(out [B, Sq, H, Dv], lse [B, H, Sq])``.
        local_kv: extra keys/values every rank holds in full (joint tokens), attended once per rank.
        overlap: start the next transfer before computing the current block (False: transfer after compute,
            for measuring what overlap buys).
        trace: if given, ``("issue"|"compute"|"wait", step)`` events are appended in the order they happen.
    Returns:
        ``[B, Sq, H, Dv]`` in q's dtype (merged in fp32).
    """
    g = comm.group(AXIS)
    size, me = g.size, g.rank_in_group
    d_k = k.shape[-1]
    kv = torch.cat([k, v], dim=-1)  # one buffer per transfer
    acc = PartialAttention()

    def log(event: str, step: int) -> None:
        if trace is not None:
            trace.append((event, step))

    def compute(step: int, block: torch.Tensor) -> None:
        log("compute", step)
        if step == 0 and local_kv is not None and local_kv[0].shape[1] > 0:
            acc.merge(*attn_lse(q, *local_kv))
        if block.shape[1] > 0 and q.shape[1] > 0:
            acc.merge(*attn_lse(q, block[..., :d_k], block[..., d_k:]))

    def issue(step: int, block: torch.Tensor):
        # At step s this rank holds block (me - s); it passes it on and receives block (me - s - 1).
        log("issue", step)
        incoming = block_lengths[(me - step - 1) % size]
        buf = block.new_empty(block.shape[0], incoming, *block.shape[2:])
        return comm.start_exchange([(block, (me + 1) % size)], [(buf, (me - 1) % size)], AXIS)

    block = kv
    for step in range(size):
        last = step == size - 1
        if overlap:
            pending = None if last else issue(step, block)
            compute(step, block)
        else:
            compute(step, block)
            pending = None if last else issue(step, block)
        if pending is not None:
            log("wait", step)
            block = pending.wait()[0]

    if acc.out is None:  # this rank has no queries (or every block was empty): nothing to merge
        return q.new_zeros(*q.shape[:3], v.shape[-1])
    return acc.result(q.dtype)
