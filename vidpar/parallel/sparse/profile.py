"""Online per-head choice between candidate patterns (Sparse VideoGen's profiling), identical on every rank.

For a fixed, evenly spaced set of sampled video queries (the same global token indices whatever the mesh), every
head's attention output is computed exactly (all keys) and under each candidate mask; the candidate with the
smaller mean squared error wins (ties: the first candidate). SVG samples random rows each call; vidpar samples
evenly spaced rows so the choice depends only on the inputs, not on a random state per rank.

Distributed, in float64: the ring ranks all-gather the sampled queries (each holds those in its block), each
computes partial results of all samples over its own key block, the partials are all-gathered and merged in ring
order, so every ring rank derives the same errors; the per-head choices are then all-gathered over the ulysses
axis. The result is identical on every rank of the sequence group; across meshes it can differ only where two
candidates' errors agree to float64 rounding (the key blocks, hence the summation order, differ).
"""

from __future__ import annotations

import torch

from vidpar.kernels import attention_with_lse
from vidpar.kernels.block_sparse import masked_attention_with_lse

from ..comm import Comm
from ..split import split_sizes
from .grid import TokenGrid
from .merge import MaskedPartial

KEY_CHUNK = 8192  # keys per float64 partial (bounds the sampled-query logits' memory)


def sample_tokens(num_tokens: int, num_samples: int) -> torch.Tensor:
    """``min(num_samples, num_tokens)`` evenly spaced global token indices (centres of equal strata)."""
    n = min(num_samples, num_tokens)
    return (torch.arange(n, dtype=torch.int64) * 2 + 1) * num_tokens // (2 * n)


def _partials(q, k, v, masks) -> torch.Tensor:
    """float64 ``[V, B, n, H, Dv + 1]`` (out, lse) of ``q [B, n, H, D]`` over ``k``/``v`` under each mask
    (``None``: every key)."""
    b, n, h, _ = q.shape
    dv = v.shape[-1]
    res = []
    for mask in masks:
        acc = MaskedPartial()
        for lo in range(0, k.shape[1], KEY_CHUNK):
            hi = min(lo + KEY_CHUNK, k.shape[1])
            if mask is None:
                acc.merge(*attention_with_lse(q, k[:, lo:hi], v[:, lo:hi]))
            else:
                acc.merge(*masked_attention_with_lse(q, k[:, lo:hi], v[:, lo:hi], mask[:, lo:hi]))
        if acc.out is None:
            out = q.new_zeros(b, n, h, dv)
            lse = q.new_full((b, n, h, 1), float("-inf"))
        else:
            out, lse = acc.out, acc.lse
        res.append(torch.cat([out, lse], dim=-1))
    return torch.stack(res)


def choose_heads(
    comm: Comm,
    candidates: tuple,
    grid: TokenGrid,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    joint_kv: tuple[torch.Tensor, torch.Tensor] | None,
    block_lengths: list[int],
    num_heads: int,
    num_samples: int,
) -> list[int]:
    """Index of the chosen candidate for every head (all ``num_heads``), the same list on every sp rank.

    Args:
        candidates: patterns with ``token_mask(grid, q_index, k_index)``.
        q, k: ``[B, L, H_mine, D]``; v: ``[B, L, H_mine, Dv]`` — this ring rank's video block for this ulysses
            rank's heads (``split_sizes(num_heads, ulysses)``).
        joint_kv: joint keys/values ``[B, T, H_mine, D|Dv]`` (dense in every candidate), or None.
        block_lengths: video tokens of every ring rank's block.
    """
    ring, uly = comm.group("ring"), comm.group("ulysses")
    me = ring.rank_in_group
    starts = [0] + [sum(block_lengths[: i + 1]) for i in range(len(block_lengths))]
    lo, hi = starts[me], starts[me + 1]
    samples = sample_tokens(sum(block_lengths), num_samples)
    b, _, h, d = q.shape
    dv = v.shape[-1]
    f64 = torch.float64

    # 1. The sampled queries, from the ring ranks that hold them.
    counts = [int(((samples >= starts[i]) & (samples < starts[i + 1])).sum()) for i in range(ring.size)]
    mine = samples[(samples >= lo) & (samples < hi)] - lo
    padded = q.new_zeros(max(counts), b, h, d)
    padded[: mine.numel()] = q[:, mine.to(q.device)].transpose(0, 1)
    gathered = comm.all_gather(padded, "ring")  # [ring, n_max, B, H, D]
    sq = torch.cat([gathered[i, : counts[i]] for i in range(ring.size)]).transpose(0, 1).to(f64)  # [B, n, H, D]

    # 2. Partials of every sample over my key block (exact, and under each candidate), merged in ring order.
    keys = torch.arange(lo, hi, dtype=torch.int64)
    masks = [None] + [c.mask_fn(grid)(samples, keys).to(q.device) for c in candidates]
    parts = comm.all_gather(_partials(sq, k.to(f64), v.to(f64), masks), "ring")  # [ring, V, B, n, H, Dv+1]
    outs = []
    for variant in range(len(masks)):
        acc = MaskedPartial()
        if joint_kv is not None:
            acc.merge(*attention_with_lse(sq, joint_kv[0].to(f64), joint_kv[1].to(f64)))
        for i in range(ring.size):
            p = parts[i, variant]
            acc.merge(p[..., :dv], p[..., dv].transpose(1, 2))
        outs.append(acc.result(f64, (b, samples.numel(), h, dv), q.device))
    errors = torch.stack([((o - outs[0]) ** 2).mean(dim=(0, 1, 3)) for o in outs[1:]])  # [candidates, H_mine]
    choice = torch.argmin(errors, dim=0).tolist() if h else []  # argmin takes the first of equal errors

    # 3. Every head's choice, from the ulysses rank that owns it.
    heads = split_sizes(num_heads, uly.size)
    rows = comm.exchange_ints(choice + [-1] * (max(heads) - len(choice)), "ulysses", q.device)
    return [c for row, n in zip(rows, heads) for c in row[:n]]
