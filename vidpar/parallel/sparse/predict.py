"""Planner-facing numbers of a sparse pattern, computed by the same code that runs it.

- ``attended_fraction``: the share of video (query, key) token pairs the kernel computes (kept tile pairs,
  partial ones in full) — what attention FLOPs and time scale with;
- ``mask_density``: the exact share of pairs the mask keeps (<= attended fraction);
- ``sparse_share``: the share of (step, layer) attention calls that run sparse (dense warm-up/final/first layers);
- ``ring_schedule`` / ``predict_sparse_ring_bytes``: the windowed ring and the bytes one rank sends through
  ``Comm`` in one sparse attention call, key by key as ``ParallelContext.comm_stats()`` counts them.
"""

from __future__ import annotations

import torch

from ..config import ParallelConfig
from ..split import split_sizes
from .attend import schedule_for
from .config import SparseAttention
from .grid import EMPTY, TokenGrid
from .layout import LayoutCache
from .profile import sample_tokens
from .schedule import RingSchedule


def _heads(config: SparseAttention, head_choice: list[int] | None) -> list[int]:
    """Candidate index per head; single-pattern configs need no choice (``[0]``)."""
    if head_choice is not None:
        return list(head_choice)
    if config.per_head:
        raise ValueError("svg chooses a pattern per head online: pass head_choice (candidate index per head)")
    return [0]


def attended_fraction(config: SparseAttention, grid, head_choice: list[int] | None = None) -> float:
    """Computed share of the video-video attention pairs, averaged over heads (``head_choice`` for svg)."""
    grid = TokenGrid.of(grid)
    cache = LayoutCache()
    fractions = []
    for p in config.patterns(grid):
        bound = cache.bind(p, grid)
        sizes = bound.tiling.tile_sizes().double()
        fractions.append(float(sizes @ (bound.classes != EMPTY).double() @ sizes) / float(grid.tokens) ** 2)
    choice = _heads(config, head_choice)
    return sum(fractions[c] for c in choice) / len(choice)


def mask_density(config: SparseAttention, grid, head_choice: list[int] | None = None) -> float:
    """Exact share of video-video token pairs the mask keeps, averaged over heads."""
    grid = TokenGrid.of(grid)
    patterns = config.patterns(grid)
    choice = _heads(config, head_choice)
    return sum(patterns[c].density(grid) for c in choice) / len(choice)


def sparse_share(config: SparseAttention, num_steps: int, num_layers: int) -> float:
    """Share of the ``num_steps * num_layers`` self-attention calls that run sparse."""
    calls = [config.is_sparse(s, num_steps, layer, num_layers) for s in range(num_steps) for layer in range(num_layers)]
    return sum(calls) / len(calls)


def ring_blocks(tokens: int, parallel: ParallelConfig) -> list[int]:
    """Video tokens of every ring rank's block (the union of its ulysses group's shards)."""
    lengths = split_sizes(tokens, parallel.sp_degree)
    u = parallel.ulysses
    return [sum(lengths[i * u : (i + 1) * u]) for i in range(parallel.ring)]


def ring_schedule(config: SparseAttention, grid, parallel: ParallelConfig,
                  head_choice: list[int] | None = None) -> RingSchedule:
    """The windowed-ring schedule the sparse path runs for this grid and mesh (patterns chosen by any head)."""
    grid = TokenGrid.of(grid)
    cache = LayoutCache()
    patterns = config.patterns(grid)
    used = sorted(set(_heads(config, head_choice)))
    return schedule_for(cache, [cache.bind(patterns[c], grid) for c in used], ring_blocks(grid.tokens, parallel))


def predict_sparse_ring_bytes(
    config: SparseAttention,
    grid,
    batch: int,
    num_heads: int,
    head_dim: int,
    parallel: ParallelConfig,
    dtype_bytes: int,
    *,
    rank: int | None = None,
    joint_tokens: int = 0,
    value_dim: int | None = None,
    head_choice: list[int] | None = None,
    profiled: bool = True,
) -> dict[str, int]:
    """Bytes one rank sends in ONE sparse ``attention`` call, per ``comm_stats()`` key (``"ring"``, ``"control"``).

    ``ulysses`` bytes are those of the dense path (the all-to-alls are unchanged) and are not included.
    For svg, ``head_choice`` is the per-head choice (needed for the schedule); with ``profiled`` (the default,
    as when ``SparseCall.head_choice`` is None) the online profile's own gathers are included. ``rank`` is a
    global rank; None gives the maximum over ranks (the busiest rank).
    """
    grid = TokenGrid.of(grid)
    dv = head_dim if value_dim is None else value_dim
    u, r = parallel.ulysses, parallel.ring
    blocks = ring_blocks(grid.tokens, parallel)
    schedule = ring_schedule(config, grid, parallel, head_choice) if r > 1 else None
    heads = split_sizes(num_heads, u)
    acc_bytes = 8 if dtype_bytes == 8 else 4
    ranks = range(parallel.world_size) if rank is None else [rank]
    best: dict[str, int] = {}
    for g in ranks:
        ring_rank, uly = (g // u) % r, g % u
        mine = heads[uly]
        out: dict[str, int] = {}
        if r > 1:
            ring = dtype_bytes * batch * mine * (head_dim + dv) * schedule.sent_tokens(ring_rank)
            if joint_tokens:
                rows = split_sizes(joint_tokens, r)
                ring += acc_bytes * batch * mine * (dv + 1) * (joint_tokens - rows[ring_rank])
            if config.per_head and profiled:
                ring += _profile_ring_bytes(config, grid, blocks, batch, mine, head_dim, dv, dtype_bytes, r)
            out["ring"] = ring
        if config.per_head and profiled and u > 1:
            out["control"] = 8 * max(heads) * (u - 1)
        for k, v in out.items():
            best[k] = max(best.get(k, 0), v)
    return best


def _profile_ring_bytes(config, grid, blocks, batch, mine, head_dim, dv, dtype_bytes, r) -> int:
    samples = sample_tokens(grid.tokens, config.num_samples)
    starts = [0] + torch.cumsum(torch.tensor(blocks), 0).tolist()
    counts = [int(((samples >= starts[i]) & (samples < starts[i + 1])).sum()) for i in range(r)]
    queries = dtype_bytes * max(counts) * batch * mine * head_dim * (r - 1)
    variants = 1 + len(config.patterns(grid))
    partials = 8 * variants * batch * samples.numel() * mine * (dv + 1) * (r - 1)
    return queries + partials
