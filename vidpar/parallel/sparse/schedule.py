"""The windowed ring: K/V travel only as far as some rank needs them, in both directions, and only the rows needed.

Ring rank ``i`` holds video block ``i`` (contiguous tokens, in rank order). ``needs[i][j]`` says whether block
``i``'s queries attend to any key of block ``j``. Each needed pair is served the shorter way round the ring
(forward ``i - j`` hops, backward ``j - i`` hops, modulo the ring; ties go forward), so block ``j`` travels
``fwd[j]`` hops forward and ``bwd[j]`` hops backward, relayed one hop per step. With ``fwd[j] <= r // 2`` and
``bwd[j] < r / 2`` a block never reaches a rank twice (and never comes back). A dense pattern costs what the dense
ring costs (``r - 1`` blocks sent per rank) in about half the steps; a local one sends only to its neighbours.

With ``need_keys`` (which keys of block ``j`` block ``i`` needs, at tile granularity), hop ``s`` of block
``j`` carries only the rows needed by the ranks at distance ``>= s`` in that direction — a subset of what the
previous hop carried, so relays select from what they hold.

The schedule is a pure function of its inputs (computed from the pattern, the grid and the global block lengths),
identical on every rank, so every rank posts matching transfers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

FWD, BWD = 0, 1


@dataclass(frozen=True)
class RingSchedule:
    """``fwd[j]`` / ``bwd[j]``: hops block ``j`` travels forward (to ``j+1, j+2, ...``) and backward.

    ``rows[(j, direction, step)]`` (sorted, relative to block ``j``'s start) are the rows sent at that hop; a
    missing entry means the whole block. ``key`` names the inputs it was built from (for caches of work built
    on its rows).
    """

    needs: tuple[tuple[bool, ...], ...]
    fwd: tuple[int, ...]
    bwd: tuple[int, ...]
    block_lengths: tuple[int, ...]
    rows: dict = field(default_factory=dict)
    key: tuple = ()

    @property
    def size(self) -> int:
        return len(self.fwd)

    @property
    def steps(self) -> int:
        """Transfer steps (0: every block is only needed where it lives)."""
        return max([0, *self.fwd, *self.bwd])

    def sends(self, rank: int, step: int) -> list[tuple[int, int, int]]:
        """``(block, direction, peer)`` this rank sends at ``step`` (1-based): forward first, then backward."""
        r, out = self.size, []
        jf = (rank - step + 1) % r
        if self.fwd[jf] >= step:
            out.append((jf, FWD, (rank + 1) % r))
        jb = (rank + step - 1) % r
        if self.bwd[jb] >= step:
            out.append((jb, BWD, (rank - 1) % r))
        return out

    def recvs(self, rank: int, step: int) -> list[tuple[int, int, int]]:
        """``(block, direction, peer)`` this rank receives at ``step``: forward first, then backward."""
        r, out = self.size, []
        jf = (rank - step) % r
        if self.fwd[jf] >= step:
            out.append((jf, FWD, (rank - 1) % r))
        jb = (rank + step) % r
        if self.bwd[jb] >= step:
            out.append((jb, BWD, (rank + 1) % r))
        return out

    def rows_at(self, block: int, direction: int, step: int) -> torch.Tensor | None:
        """Rows of ``block`` carried by hop ``step`` (None: the whole block)."""
        return self.rows.get((block, direction, step))

    def count(self, block: int, direction: int, step: int) -> int:
        rows = self.rows_at(block, direction, step)
        return self.block_lengths[block] if rows is None else rows.numel()

    def select(self, block: int, direction: int, step: int) -> torch.Tensor | None:
        """Positions, in what the sender holds (hop ``step - 1``; the whole block at step 1), of the rows hop
        ``step`` carries; None when it carries everything it holds."""
        rows = self.rows_at(block, direction, step)
        held = self.rows_at(block, direction, step - 1) if step > 1 else None
        if rows is None or (held is not None and torch.equal(rows, held)):
            return None
        if held is None:
            return None if rows.numel() == self.block_lengths[block] else rows
        return torch.searchsorted(held, rows)

    def sent_tokens(self, rank: int) -> int:
        """K/V rows this rank sends over the whole schedule."""
        return sum(self.count(j, d, s) for s in range(1, self.steps + 1) for j, d, _ in self.sends(rank, s))


def windowed_schedule(needs: list[list[bool]], block_lengths: list[int] | None = None,
                      need_keys: list[list[torch.Tensor]] | None = None, key: tuple = ()) -> RingSchedule:
    """The schedule delivering every needed block (``needs[i][j]``: rank i needs block j) the shorter way.

    Args:
        needs: ``[r][r]`` bools (the diagonal is ignored).
        block_lengths: tokens of every block (default 0: only the hop structure is used).
        need_keys: optional ``[r][r]`` bool tensors ``[block_lengths[j]]``: which keys of block j rank i needs;
            hops then carry only the union of what the ranks beyond them need.
        key: a hashable name of these inputs, kept on the schedule.
    """
    r = len(needs)
    lengths = tuple(block_lengths) if block_lengths is not None else (0,) * r
    fwd, bwd = [0] * r, [0] * r
    served: dict[tuple[int, int], list[tuple[int, int]]] = {}  # (block, direction) -> [(distance, rank)]
    for i in range(r):
        for j in range(r):
            if i == j or not needs[i][j]:
                continue
            df, db = (i - j) % r, (j - i) % r
            direction, dist = (FWD, df) if df <= db else (BWD, db)
            if direction == FWD:
                fwd[j] = max(fwd[j], df)
            else:
                bwd[j] = max(bwd[j], db)
            served.setdefault((j, direction), []).append((dist, i))
    rows = {}
    if need_keys is not None:
        for (j, direction), ranks in served.items():
            reach = fwd[j] if direction == FWD else bwd[j]
            for step in range(1, reach + 1):
                union = torch.zeros_like(need_keys[j][j])
                for dist, i in ranks:
                    if dist >= step:
                        union |= need_keys[i][j]
                rows[(j, direction, step)] = torch.nonzero(union).flatten()  # sorted
    needs_t = tuple(tuple(bool(x) for x in row) for row in needs)
    return RingSchedule(needs_t, tuple(fwd), tuple(bwd), lengths, rows, key)
