"""The sparse core of ``vidpar.parallel.attention``: what replaces its step 3 when a ``SparseCall`` is given.

``attention`` has already done the Ulysses exchange: this rank holds its ring block of video tokens (a contiguous
range of the grid) for its heads, plus its heads of the joint tokens. Here:

- the per-head pattern is fixed (SVG: ``choose_heads``, identical on every rank; otherwise one pattern);
- ``ring == 1``: block-sparse attention of the whole block over itself, merged with the joint keys;
- ``ring > 1``: the windowed ring (``schedule.py``) brings only the K/V rows this rank needs, from the blocks it
  needs, and only the kept (query piece, key piece) pairs of each are computed;
- joint queries attend densely to every key: each ring rank computes them (all rows, its heads) over its own
  video block, and one all-to-all over the ring hands every rank the partials of its rows to merge, instead of
  sending every video block everywhere.

The result has the dense path's layout: ``[B, joint rows of this ring rank + block tokens, H_mine, Dv]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vidpar.kernels import attention_with_lse
from vidpar.kernels.block_sparse import block_sparse_attention

from ..context import ParallelContext
from ..split import split_offsets
from .config import SparseAttention
from .grid import TokenGrid
from .layout import LayoutCache, block_need_keys, token_range
from .merge import MaskedPartial
from .profile import choose_heads
from .ring_window import run_windowed_ring
from .schedule import RingSchedule, windowed_schedule


@dataclass(frozen=True)
class SparseCall:
    """What ``attention(..., sparse=...)`` needs: the config, this forward's token grid and a layout cache.

    ``head_choice`` fixes the per-head pattern (candidate index per head) instead of profiling it (tests and
    planning); None profiles SVG online and uses the single pattern otherwise.
    """

    config: SparseAttention
    grid: TokenGrid
    cache: LayoutCache
    head_choice: tuple[int, ...] | None = None

    def check(self, video_tokens: int, num_heads: int) -> None:
        """Raise ``ValueError`` (identically on every rank: the inputs are global) if the grid does not fit."""
        if self.grid.tokens != video_tokens:
            raise ValueError(
                f"sparse attention: the token grid {self.grid.shape()} has {self.grid.tokens} tokens but the "
                f"sequence has {video_tokens} video tokens"
            )
        if self.head_choice is not None:
            n = len(self.config.patterns(self.grid))
            if len(self.head_choice) != num_heads or any(not 0 <= c < n for c in self.head_choice):
                raise ValueError(
                    f"sparse attention: head_choice {self.head_choice} must give one of {n} patterns for each "
                    f"of {num_heads} heads"
                )


def schedule_for(cache: LayoutCache, bound: list, block_lengths: list[int]) -> RingSchedule:
    """The windowed-ring schedule of the union of ``bound`` patterns for these ring blocks (cached)."""
    key = (tuple((b.pattern, b.grid) for b in bound), tuple(block_lengths))
    if key not in cache.schedules:
        keys = block_need_keys(bound, block_lengths)
        needs = [[bool(k.any()) for k in line] for line in keys]
        cache.schedules[key] = windowed_schedule(needs, block_lengths, keys, key)
    return cache.schedules[key]


def sparse_attend(
    ctx: ParallelContext,
    call: SparseCall,
    qh: torch.Tensor,
    kh: torch.Tensor,
    vh: torch.Tensor,
    joint: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None,
    block_lengths: list[int],
    head_lo: int,
    num_heads: int,
    backend: str,
) -> torch.Tensor:
    """Sparse attention of this rank's queries; see the module docstring.

    Args:
        qh, kh: ``[B, L, H_mine, D]``; vh: ``[B, L, H_mine, Dv]`` — this ring rank's video block, my heads
            (``H_mine`` heads starting at global head ``head_lo``).
        joint: my heads of the joint ``(q, k, v)``, ``[B, T, H_mine, D|Dv]`` (all T rows), or None.
        block_lengths: video tokens of every ring rank's block.
        backend: an LSE backend name (``vidpar.kernels``).
    Returns:
        ``[B, rows + L, H_mine, Dv]`` in q's dtype, ``rows`` = this ring rank's share of the joint rows.
    """
    r, ring_rank = ctx.config.ring, ctx.coords["ring"]
    starts = [sum(block_lengths[:i]) for i in range(r)]
    my_range = (starts[ring_rank], starts[ring_rank] + block_lengths[ring_rank])
    bound = [call.cache.bind(p, call.grid) for p in call.config.patterns(call.grid)]

    if call.head_choice is not None:
        choice = list(call.head_choice)
    elif call.config.per_head:
        choice = choose_heads(ctx.comm, tuple(b.pattern for b in bound), call.grid, qh, kh, vh,
                              None if joint is None else joint[1:], block_lengths, num_heads,
                              call.config.num_samples)
    else:
        choice = [0] * num_heads
    mine = choice[head_lo : head_lo + qh.shape[2]]
    groups = {pid: [i for i, c in enumerate(mine) if c == pid] for pid in sorted(set(mine))}

    def block_partial(block: int, k: torch.Tensor, v: torch.Tensor, rows: torch.Tensor | None,
                      key: tuple) -> tuple[torch.Tensor, torch.Tensor]:
        lo = starts[block]
        k_tokens = token_range(lo, lo + block_lengths[block]) if rows is None else rows + lo
        if len(groups) == 1:
            (pid,) = groups
            works = bound[pid].works(my_range, k_tokens, key, qh.device, qh.dtype)
            return block_sparse_attention(qh, k, v, works, backend)
        b, length, _, _ = qh.shape
        out = qh.new_zeros(b, length, qh.shape[2], v.shape[-1])
        lse = torch.full((b, qh.shape[2], length), float("-inf"), device=qh.device,
                         dtype=torch.float64 if qh.dtype == torch.float64 else torch.float32)
        for pid, heads in groups.items():
            idx = torch.tensor(heads, device=qh.device)
            works = bound[pid].works(my_range, k_tokens, key, qh.device, qh.dtype)
            o, l = block_sparse_attention(qh[:, :, idx], k[:, :, idx], v[:, :, idx], works, backend)
            out[:, :, idx], lse[:, idx] = o, l
        return out, lse

    acc = MaskedPartial()
    if joint is not None:
        acc.merge(*attention_with_lse(qh, joint[1], joint[2], backend))
    if r == 1:
        acc.merge(*block_partial(0, kh, vh, None, ("own", 0)))
    else:
        active = [bound[pid] for pid in sorted(set(choice))]
        schedule = schedule_for(call.cache, active, block_lengths)
        d_k = kh.shape[-1]

        def compute(block: int, kv: torch.Tensor, rows: torch.Tensor | None, key: tuple) -> None:
            acc.merge(*block_partial(block, kv[..., :d_k], kv[..., d_k:], rows, key))

        run_windowed_ring(ctx.comm, torch.cat([kh, vh], dim=-1), schedule, compute)
    video = acc.result(qh.dtype, (*qh.shape[:3], vh.shape[-1]), qh.device)
    if joint is None:
        return video
    return torch.cat([_joint_rows(ctx, joint, kh, vh, backend), video], dim=1)


def _joint_rows(ctx: ParallelContext, joint, kh, vh, backend: str) -> torch.Tensor:
    """This ring rank's rows of the (dense) joint-query output, ``[B, rows, H_mine, Dv]``."""
    jq, jk, jv = joint
    r, me = ctx.config.ring, ctx.coords["ring"]
    if r == 1:
        return attention_with_lse(jq, torch.cat([jk, kh], dim=1), torch.cat([jv, vh], dim=1), backend)[0]
    row_off = split_offsets(jq.shape[1], r)
    out, lse = attention_with_lse(jq, kh, vh, backend)  # all joint rows over my video block
    acc_dtype = lse.dtype
    packed = torch.cat([out.to(acc_dtype), lse.transpose(1, 2).unsqueeze(-1)], dim=-1)  # [B, T, H, Dv+1]
    pieces = [packed[:, row_off[j] : row_off[j + 1]].reshape(-1) for j in range(r)]
    mine = row_off[me + 1] - row_off[me]
    b, _, h, width = packed.shape
    recv = ctx.comm.all_to_all(torch.cat(pieces), [p.numel() for p in pieces], [b * mine * h * width] * r, "ring")
    recv = recv.view(r, b, mine, h, width)
    acc = MaskedPartial()
    acc.merge(*attention_with_lse(jq[:, row_off[me] : row_off[me + 1]], jk, jv, backend))
    dv = vh.shape[-1]
    for i in range(r):
        acc.merge(recv[i][..., :dv], recv[i][..., dv].transpose(1, 2))
    return acc.result(jq.dtype, (jq.shape[0], mine, jq.shape[2], dv), jq.device)
