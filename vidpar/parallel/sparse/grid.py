"""The token grid of a patchified video latent and its tiling into blocks.

Video tokens are the row-major ``(frame, row, column)`` grid of the patchified latent: token ``t`` sits at
``(t // (H*W), (t // W) % H, t % W)``. A *tile* is a ``(tf, th, tw)`` box of that grid (the last tile along an axis
may be smaller); tiles are numbered row-major over the tile grid. Sparse patterns decide, per (query tile, key
tile) pair, whether the pair is empty, partial (an exact token mask decides inside) or full.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

EMPTY, PARTIAL, FULL = 0, 1, 2  # tile-pair classes; AND of conditions is the min, OR is the max


@dataclass(frozen=True)
class TokenGrid:
    """``(frames, rows, cols)`` of the token grid; ``tokens = frames * rows * cols``."""

    frames: int
    rows: int
    cols: int

    def __post_init__(self) -> None:
        for name in ("frames", "rows", "cols"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"TokenGrid.{name} must be a positive int, got {value!r}")

    @classmethod
    def of(cls, grid: "TokenGrid | tuple[int, int, int]") -> "TokenGrid":
        if isinstance(grid, TokenGrid):
            return grid
        try:
            f, h, w = (int(n) for n in grid)
        except (TypeError, ValueError):
            raise ValueError(f"a token grid is (frames, rows, cols), got {grid!r}") from None
        return cls(f, h, w)

    @property
    def tokens(self) -> int:
        return self.frames * self.rows * self.cols

    @property
    def frame_tokens(self) -> int:
        return self.rows * self.cols

    def shape(self) -> tuple[int, int, int]:
        return (self.frames, self.rows, self.cols)

    def coords(self, index: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Global token indices ``[n]`` -> ``(frame, row, col)``, each ``[n]`` int64."""
        return index // self.frame_tokens, (index // self.cols) % self.rows, index % self.cols


def ceil_div(a: int, b: int) -> int:
    return -(-a // b)


@dataclass(frozen=True)
class Tiling:
    """``grid`` cut into ``tile = (tf, th, tw)`` boxes; a tile larger than the grid is clipped to it."""

    grid: TokenGrid
    tile: tuple[int, int, int]

    def __post_init__(self) -> None:
        if len(self.tile) != 3 or any(isinstance(t, bool) or not isinstance(t, int) or t < 1 for t in self.tile):
            raise ValueError(f"a tile is three positive ints (tf, th, tw), got {self.tile!r}")

    @property
    def counts(self) -> tuple[int, int, int]:
        """Tiles per axis ``(nf, nh, nw)``."""
        return tuple(ceil_div(n, t) for n, t in zip(self.grid.shape(), self.tile))  # type: ignore[return-value]

    @property
    def num_tiles(self) -> int:
        return math.prod(self.counts)

    def axis_ranges(self, axis: int) -> tuple[torch.Tensor, torch.Tensor]:
        """First and last coordinate (inclusive) of every tile along ``axis``: two ``[n_axis]`` int64 tensors."""
        n, t = self.grid.shape()[axis], self.tile[axis]
        lo = torch.arange(0, n, t, dtype=torch.int64)
        return lo, torch.clamp(lo + t - 1, max=n - 1)

    def axis_sizes(self, axis: int) -> torch.Tensor:
        lo, hi = self.axis_ranges(axis)
        return hi - lo + 1

    def tile_sizes(self) -> torch.Tensor:
        """Tokens in every tile, ``[num_tiles]`` int64 (row-major tile order)."""
        f, h, w = (self.axis_sizes(a) for a in range(3))
        return (f[:, None, None] * h[None, :, None] * w[None, None, :]).reshape(-1)

    def tile_of(self, index: torch.Tensor) -> torch.Tensor:
        """Tile id of every global token index ``[n]`` -> ``[n]`` int64."""
        f, h, w = self.grid.coords(index)
        _, nh, nw = self.counts
        tf, th, tw = self.tile
        return ((f // tf) * nh + h // th) * nw + w // tw


def band_classes(q_lo: torch.Tensor, q_hi: torch.Tensor, k_lo: torch.Tensor, k_hi: torch.Tensor,
                 width: int | torch.Tensor) -> torch.Tensor:
    """Class of ``|x_q - x_k| <= width`` for x_q in ``[q_lo, q_hi]`` and x_k in ``[k_lo, k_hi]`` (integer ranges).

    Args:
        q_lo, q_hi: ``[n]``; k_lo, k_hi: ``[m]`` (inclusive bounds). ``width`` broadcasts against ``[n, m]``.
    Returns:
        ``[n, m]`` int8: FULL when every pair satisfies it, EMPTY when no pair can, PARTIAL otherwise. With
        ranges that are bounding intervals of non-contiguous sets the answer stays safe (never FULL or EMPTY
        wrongly): FULL is decided by the attained extremes, EMPTY by the gap between the intervals.
    """
    far = torch.maximum(q_hi[:, None] - k_lo[None, :], k_hi[None, :] - q_lo[:, None])
    gap = torch.maximum(q_lo[:, None] - k_hi[None, :], k_lo[None, :] - q_hi[:, None])
    width = torch.as_tensor(width, dtype=torch.int64)
    out = torch.full(far.shape, PARTIAL, dtype=torch.int8)
    out[(far <= width).expand(far.shape)] = FULL
    out[((gap > width) | (width < 0)).expand(far.shape)] = EMPTY
    return out
