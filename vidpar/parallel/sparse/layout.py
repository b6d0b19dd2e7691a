"""From a pattern to work: the kept (query piece, key piece) pairs between a token range and a set of keys.

A rank holds a contiguous range of video tokens (vidpar's split order is the row-major grid order, and a ring
block is the union of one ulysses group's consecutive shards). Tokens are grouped by tile: a *piece* is the part
of one tile present in a token set (tiles cut by a block boundary give partial pieces). The tile classes of the
pattern say which piece pairs are computed, and for PARTIAL pairs the exact token mask is evaluated on the
pieces' coordinates.

Everything here is a function of the pattern, the grid and global token indices (identical on every rank), so
results are cached by those values in a ``LayoutCache`` owned by one runtime (never module-level).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vidpar.kernels.block_sparse import SparseWork

from .grid import EMPTY, FULL, TokenGrid, Tiling


@dataclass(frozen=True)
class Pieces:
    """``tokens [n]`` (global indices) grouped by tile: ``tiles [p]`` ids and, per piece, positions into
    ``tokens`` (``index[offsets[i]:offsets[i + 1]]``, in token order); ``token_tiles [n]`` is each token's tile."""

    tokens: torch.Tensor
    tiles: torch.Tensor
    index: torch.Tensor
    offsets: list[int]
    token_tiles: torch.Tensor

    def piece(self, i: int) -> torch.Tensor:
        return self.index[self.offsets[i] : self.offsets[i + 1]]


def pieces_of(tiling: Tiling, tokens: torch.Tensor) -> Pieces:
    """Group global token indices ``[n]`` by tile (a stable sort, so each piece keeps token order)."""
    tile = tiling.tile_of(tokens)
    order = torch.argsort(tile, stable=True)
    tiles, counts = torch.unique_consecutive(tile[order], return_counts=True)
    return Pieces(tokens, tiles, order, [0] + torch.cumsum(counts, 0).tolist(), tile)


def token_range(lo: int, hi: int) -> torch.Tensor:
    return torch.arange(lo, hi, dtype=torch.int64)


class PatternTiles:
    """A pattern bound to a grid: its tiling and tile classes (computed once), and the layouts derived from them."""

    def __init__(self, pattern, grid: TokenGrid) -> None:
        self.pattern = pattern
        self.grid = grid
        self.tiling = Tiling(grid, pattern.tile)
        self.classes = pattern.tile_classes(grid)  # [T, T] int8
        self.mask = pattern.mask_fn(grid)  # exact token mask, tables precomputed
        self._pieces: dict[tuple, Pieces] = {}
        self._works: dict[tuple, list[SparseWork]] = {}
        self._kept_tiles: dict[tuple[int, int], torch.Tensor] = {}

    def range_pieces(self, lo: int, hi: int) -> Pieces:
        if (lo, hi) not in self._pieces:
            self._pieces[(lo, hi)] = pieces_of(self.tiling, token_range(lo, hi))
        return self._pieces[(lo, hi)]

    def needed_keys(self, q_range: tuple[int, int], k_range: tuple[int, int]) -> torch.Tensor:
        """``[len(k_range)]`` bool: the keys of block ``k_range`` some query of ``q_range`` may attend to, at tile
        granularity (whole key pieces) — what a rank holding ``q_range`` must receive of that block."""
        if q_range[0] >= q_range[1] or k_range[0] >= k_range[1]:
            return torch.zeros(max(0, k_range[1] - k_range[0]), dtype=torch.bool)
        if q_range not in self._kept_tiles:  # [T]: key tiles some query tile of q_range keeps
            self._kept_tiles[q_range] = (self.classes[self.range_pieces(*q_range).tiles] != EMPTY).any(dim=0)
        return self._kept_tiles[q_range][self.range_pieces(*k_range).token_tiles]

    def works(self, q_range: tuple[int, int], k_tokens: torch.Tensor, key: tuple, device: torch.device,
              dtype: torch.dtype) -> list[SparseWork]:
        """Work items for the queries ``q_range`` over the keys ``k_tokens [m]`` (global indices, the rows of the
        K/V buffer in hand), prepared for ``dtype`` on ``device``; ``key`` names ``k_tokens`` for the cache.
        Rows are relative to each."""
        full_key = (q_range, key, str(device), dtype)
        if full_key not in self._works:
            if (q_range, key) not in self._works:
                self._works[(q_range, key)] = self._build(q_range, k_tokens)
            self._works[full_key] = [w.prepared(device, dtype) for w in self._works[(q_range, key)]]
        return self._works[full_key]

    def _build(self, q_range: tuple[int, int], k_tokens: torch.Tensor) -> list[SparseWork]:
        if q_range[0] >= q_range[1] or k_tokens.numel() == 0:
            return []
        qp, kp = self.range_pieces(*q_range), pieces_of(self.tiling, k_tokens)
        sub = self.classes[qp.tiles][:, kp.tiles]  # [pq, pk]
        works = []
        for i in range(len(qp.tiles)):
            kept = torch.nonzero(sub[i] != EMPTY).flatten().tolist()
            if not kept:
                continue
            q_idx = qp.piece(i)
            k_parts = [kp.piece(j) for j in kept]
            keep = None
            if any(int(sub[i, j]) != FULL for j in kept):
                q_tok = qp.tokens[q_idx]
                masks = [torch.ones(q_idx.numel(), part.numel(), dtype=torch.bool) if int(sub[i, j]) == FULL
                         else self.mask(q_tok, kp.tokens[part])
                         for j, part in zip(kept, k_parts)]
                keep = torch.cat(masks, dim=1)
                if bool(keep.all()):
                    keep = None
            works.append(SparseWork(q_idx, torch.cat(k_parts), keep))
        return works


class LayoutCache:
    """Bound patterns by (pattern, grid) and ring schedules: owned by one sparse-attention runtime."""

    def __init__(self) -> None:
        self._bound: dict[tuple[object, TokenGrid], PatternTiles] = {}
        self.schedules: dict[tuple, object] = {}

    def bind(self, pattern, grid: TokenGrid) -> PatternTiles:
        key = (pattern, grid)
        if key not in self._bound:
            self._bound[key] = PatternTiles(pattern, grid)
        return self._bound[key]


def block_need_keys(bound: list[PatternTiles], block_lengths: list[int]) -> list[list[torch.Tensor]]:
    """``keys[i][j]`` ``[block_lengths[j]]`` bool: keys of block j that block i's queries may attend to, under any
    of the ``bound`` patterns."""
    starts = [sum(block_lengths[:i]) for i in range(len(block_lengths))]
    ranges = [(s, s + n) for s, n in zip(starts, block_lengths)]
    out = []
    for qr in ranges:
        row = []
        for kr in ranges:
            need = bound[0].needed_keys(qr, kr)
            for b in bound[1:]:
                need = need | b.needed_keys(qr, kr)
            row.append(need)
        out.append(row)
    return out
