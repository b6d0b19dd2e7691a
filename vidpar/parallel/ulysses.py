"""Ulysses exchange: sequence-sharded q/k/v <-> head-sharded full-block q/k/v, any head and token counts.

Heads are split over the ulysses ranks with ``split_sizes`` (uneven when H % ulysses != 0, empty when H is smaller
than the degree), tokens arrive with whatever lengths each rank holds. q, k and v travel in one all-to-all.
"""

from __future__ import annotations

import torch

from .comm import Comm
from .split import split_offsets, split_sizes

AXIS = "ulysses"


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
    recv = comm.all_to_all(send, send_splits, recv_splits, AXIS)

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


def heads_to_seq(comm: Comm, x: torch.Tensor, token_counts: list[int], num_heads: int) -> torch.Tensor:
    """Inverse of ``seq_to_heads`` for one tensor.

    Args:
        x: ``[B, sum(token_counts), H_mine, D]``.
    Returns:
        ``[B, token_counts[rank], H, D]``: this rank's tokens with all heads.
    """
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
    recv = comm.all_to_all(send, send_splits, recv_splits, AXIS)

    out = x.new_empty(batch, s_mine, num_heads, d)
    offset = 0
    for j, (h, n) in enumerate(zip(heads, recv_splits)):
        out[:, :, head_off[j] : head_off[j] + h].copy_(recv[offset : offset + n].view(batch, s_mine, h, d))
        offset += n
    return out
