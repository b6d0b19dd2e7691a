"""Ulysses exchange: sequence-sharded q/k/v <-> head-sharded full-block q/k/v, any head and token counts.

Heads are split over the ulysses ranks with ``split_sizes`` (uneven when H % ulysses != 0, empty when H is smaller
than the degree), tokens arrive with whatever lengths each rank holds. q, k and v travel in one all-to-all;
``start_seq_to_heads`` / ``start_heads_to_seq`` start the same exchanges without waiting (for overlap).
"""

from __future__ import annotations

from typing import Callable

import torch

from .comm import Comm
from .split import split_offsets, split_sizes

AXIS = "ulysses"


class PendingUlysses:
    """A started Ulysses exchange; ``wait()`` returns what the blocking call would have returned."""

    def __init__(self, pending, finish: Callable[[torch.Tensor], object]) -> None:
        self._pending = pending
        self._finish = finish

    def wait(self):
        return self._finish(self._pending.wait())


def _pack_seq_to_heads(comm: Comm, tensors: list[torch.Tensor], token_counts: list[int], num_heads: int):
    """The send buffer and splits of ``seq_to_heads``, and the function that unpacks the received buffer."""
    g = comm.group(AXIS)
    me = g.rank_in_group
    heads = split_sizes(num_heads, g.size)
    head_off = split_offsets(num_heads, g.size)
    batch, s_local = tensors[0].shape[:2]
    dims = [t.shape[-1] for t in tensors]
    per_token_head = sum(dims)

    send_splits = [batch * s_local * h * per_token_head for h in heads]
    send = tensors[0].new_empty(sum(send_splits))
    offset = 0
    for j, h in enumerate(heads):
        for t, d in zip(tensors, dims):
            n = batch * s_local * h * d
            send[offset : offset + n].view(batch, s_local, h, d).copy_(t[:, :, head_off[j] : head_off[j] + h])
            offset += n
    recv_splits = [batch * s * heads[me] * per_token_head for s in token_counts]

    def unpack(recv: torch.Tensor) -> list[torch.Tensor]:
        total = sum(token_counts)
        outs = [recv.new_empty(batch, total, heads[me], d) for d in dims]
        offset, tok = 0, 0
        for s in token_counts:
            for out, d in zip(outs, dims):
                n = batch * s * heads[me] * d
                out[:, tok : tok + s].copy_(recv[offset : offset + n].view(batch, s, heads[me], d))
                offset += n
            tok += s
        return outs

    return send, send_splits, recv_splits, unpack


def seq_to_heads(
    comm: Comm, tensors: list[torch.Tensor], token_counts: list[int], num_heads: int
) -> list[torch.Tensor]:
    """Trade sequence shards for head shards inside the ulysses group, all tensors in one all-to-all.

    Args:
        tensors: each ``[B, S_local, H, D_i]`` (same B, S_local, H; D_i may differ, e.g. v's head dim).
        token_counts: ``S_local`` of every ulysses rank, in group-rank order.
        num_heads: H.
    Returns:
        each ``[B, sum(token_counts), H_mine, D_i]``: the ulysses block's tokens (in rank order) for this rank's
        heads ``split_sizes(H, ulysses)[rank]``.
    """
    send, send_splits, recv_splits, unpack = _pack_seq_to_heads(comm, tensors, token_counts, num_heads)
    return unpack(comm.all_to_all(send, send_splits, recv_splits, AXIS))


def start_seq_to_heads(
    comm: Comm, tensors: list[torch.Tensor], token_counts: list[int], num_heads: int
) -> PendingUlysses:
    """``seq_to_heads`` started, not awaited: ``wait()`` returns its list of ``[B, sum(token_counts), H_mine, D_i]``."""
    send, send_splits, recv_splits, unpack = _pack_seq_to_heads(comm, tensors, token_counts, num_heads)
    return PendingUlysses(comm.start_all_to_all(send, send_splits, recv_splits, AXIS), unpack)


def _pack_heads_to_seq(comm: Comm, x: torch.Tensor, token_counts: list[int], num_heads: int):
    """The send buffer and splits of ``heads_to_seq``, and the function that unpacks the received buffer."""
    g = comm.group(AXIS)
    me = g.rank_in_group
    heads = split_sizes(num_heads, g.size)
    head_off = split_offsets(num_heads, g.size)
    batch, _, h_mine, d = x.shape

    send_splits = [batch * s * h_mine * d for s in token_counts]
    send = x.new_empty(sum(send_splits))
    offset, tok = 0, 0
    for s, n in zip(token_counts, send_splits):
        send[offset : offset + n].view(batch, s, h_mine, d).copy_(x[:, tok : tok + s])
        offset += n
        tok += s
    s_mine = token_counts[me]
    recv_splits = [batch * s_mine * h * d for h in heads]

    def unpack(recv: torch.Tensor) -> torch.Tensor:
        out = x.new_empty(batch, s_mine, num_heads, d)
        offset = 0
        for j, (h, n) in enumerate(zip(heads, recv_splits)):
            out[:, :, head_off[j] : head_off[j] + h].copy_(recv[offset : offset + n].view(batch, s_mine, h, d))
            offset += n
        return out

    return send, send_splits, recv_splits, unpack


def heads_to_seq(comm: Comm, x: torch.Tensor, token_counts: list[int], num_heads: int) -> torch.Tensor:
    """Inverse of ``seq_to_heads`` for one tensor.

    Args:
        x: ``[B, sum(token_counts), H_mine, D]``.
    Returns:
        ``[B, token_counts[rank], H, D]``: this rank's tokens with all heads.
    """
    send, send_splits, recv_splits, unpack = _pack_heads_to_seq(comm, x, token_counts, num_heads)
    return unpack(comm.all_to_all(send, send_splits, recv_splits, AXIS))


def start_heads_to_seq(comm: Comm, x: torch.Tensor, token_counts: list[int], num_heads: int) -> PendingUlysses:
    """``heads_to_seq`` started, not awaited: ``wait()`` returns ``[B, token_counts[rank], H, D]``."""
    send, send_splits, recv_splits, unpack = _pack_heads_to_seq(comm, x, token_counts, num_heads)
    return PendingUlysses(comm.start_all_to_all(send, send_splits, recv_splits, AXIS), unpack)
