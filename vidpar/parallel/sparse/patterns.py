"""Structured sparse attention masks defined on token coordinates of the ``(frame, row, col)`` grid.

Every pattern gives, for a grid:

- ``token_mask(grid, q_index, k_index)``: the exact mask ``[n, m]`` (True = attend) between global video token
  indices — the definition the sparse result is exact to (``mask_fn(grid)`` returns it with the grid's tables
  precomputed, for repeated use);
- ``tile_classes(grid)``: ``[num_tiles, num_tiles]`` int8 EMPTY / PARTIAL / FULL per (query tile, key tile) — a
  conservative summary of the token mask (FULL only if every token pair is kept, EMPTY only if none is), which
  decides what is computed and what travels;
- ``density(grid)``: the exact fraction of video token pairs kept.

Joint (text) tokens are not part of any pattern: they always attend and are attended densely.

Patterns and the papers they follow (defaults are the published ones, cited per class):

- ``SlidingTilePattern``: Sliding Tile Attention (STA), Zhang et al. 2025, "Fast Video Generation with Sliding
  Tile Attention", arXiv:2502.04507 (ICML 2025).
- ``RadialPattern``: Radial Attention, Li et al. 2025, "Radial Attention: O(n log n) Sparse Attention with Energy
  Decay for Long Video Generation", arXiv:2506.19852.
- ``spatial_temporal_pair``: the spatial and temporal heads of Sparse VideoGen (SVG), Xi et al. 2025, "Sparse
  VideoGen: Accelerating Video Diffusion Transformers with Spatial-Temporal Sparsity", arXiv:2502.01776; the
  per-head choice between them is made online (``vidpar.parallel.sparse.profile``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .grid import EMPTY, FULL, TokenGrid, Tiling, band_classes


@dataclass(frozen=True)
class SlidingTilePattern:
    """STA: a query tile attends to the ``window`` (in tiles, odd per axis) of key tiles centred on it.

    As in STA's kernels, the window centre is clamped so that the window stays inside the tile grid (every query
    tile sees the same number of key tiles); an axis with fewer tiles than the window is dense. The mask is exact
    at tile granularity, so there are no partial tile pairs. Published defaults (FastVideo's STA kernel API and
    tests for HunyuanVideo/Wan at 768x1280): tile ``(6, 8, 8)`` tokens, window ``(3, 3, 3)`` tiles.
    """

    window: tuple[int, int, int] = (3, 3, 3)
    tile: tuple[int, int, int] = (6, 8, 8)
    name: str = "window"

    def __post_init__(self) -> None:
        if len(self.window) != 3 or any(not isinstance(w, int) or w < 1 or w % 2 == 0 for w in self.window):
            raise ValueError(f"window: three odd positive tile counts (t, h, w), got {self.window!r}")
        Tiling(TokenGrid(1, 1, 1), self.tile)  # validates the tile

    def _axis_keep(self, n_tiles: int, window: int) -> torch.Tensor:
        """``[n_tiles, n_tiles]`` bool: key tile j in the (clamped) window of query tile i along one axis."""
        idx = torch.arange(n_tiles)
        if window >= n_tiles:
            return torch.ones(n_tiles, n_tiles, dtype=torch.bool)
        half = window // 2
        centre = idx.clamp(half, n_tiles - 1 - half)
        return (centre[:, None] - idx[None, :]).abs() <= half

    def _keeps(self, grid: TokenGrid) -> list[torch.Tensor]:
        return [self._axis_keep(n, w) for n, w in zip(Tiling(grid, self.tile).counts, self.window)]

    def tile_classes(self, grid: TokenGrid) -> torch.Tensor:
        kf, kh, kw = self._keeps(grid)
        both = kf[:, None, None, :, None, None] & kh[None, :, None, None, :, None] & kw[None, None, :, None, None, :]
        n = Tiling(grid, self.tile).num_tiles
        return (both.reshape(n, n).to(torch.int8) * FULL).to(torch.int8)

    def token_mask(self, grid: TokenGrid, q_index: torch.Tensor, k_index: torch.Tensor) -> torch.Tensor:
        return self.mask_fn(grid)(q_index, k_index)

    def mask_fn(self, grid: TokenGrid):
        keeps = self._keeps(grid)

        def mask(q_index: torch.Tensor, k_index: torch.Tensor) -> torch.Tensor:
            out = None
            for axis, (qc, kc) in enumerate(zip(grid.coords(q_index.cpu()), grid.coords(k_index.cpu()))):
                t = self.tile[axis]
                part = keeps[axis][(qc // t)[:, None], (kc // t)[None, :]]
                out = part if out is None else out & part
            return out.to(q_index.device)

        return mask

    def density(self, grid: TokenGrid) -> float:
        tiling = Tiling(grid, self.tile)
        kept = 1.0
        for axis, keep in enumerate(self._keeps(grid)):
            n = tiling.axis_sizes(axis).double()
            kept *= float(n @ keep.double() @ n)
        return kept / float(grid.tokens) ** 2


class FrameBandPattern:
    """A mask of the form ``|s_q - s_k| <= width[f_q, f_k]`` on the flattened in-frame index ``s = row * W + col``.

    ``width_table(grid)`` gives ``[F, F]`` int64 widths: ``-1`` keeps no pair of that frame pair, anything
    ``>= H*W - 1`` keeps all of them. Radial Attention and both SVG heads have this form.
    """

    tile: tuple[int, int, int]
    name: str

    def width_table(self, grid: TokenGrid) -> torch.Tensor:
        raise NotImplementedError

    def token_mask(self, grid: TokenGrid, q_index: torch.Tensor, k_index: torch.Tensor) -> torch.Tensor:
        return self.mask_fn(grid)(q_index, k_index)

    def mask_fn(self, grid: TokenGrid):
        table = self.width_table(grid)
        p = grid.frame_tokens

        def mask(q_index: torch.Tensor, k_index: torch.Tensor) -> torch.Tensor:
            qi, ki = q_index.cpu(), k_index.cpu()
            keep = (qi[:, None] % p - ki[None, :] % p).abs() <= table[(qi // p)[:, None], (ki // p)[None, :]]
            return keep.to(q_index.device)

        return mask

    def tile_classes(self, grid: TokenGrid) -> torch.Tensor:
        tiling = Tiling(grid, self.tile)
        nf, nh, nw = tiling.counts
        tf = self.tile[0]
        table = self.width_table(grid)
        # Spatial tiles: bounding interval of s (exact extremes: s grows with row and with col).
        (h_lo, h_hi), (w_lo, w_hi) = tiling.axis_ranges(1), tiling.axis_ranges(2)
        s_lo = (h_lo[:, None] * grid.cols + w_lo[None, :]).reshape(-1)
        s_hi = (h_hi[:, None] * grid.cols + w_hi[None, :]).reshape(-1)
        # Which widths occur in each (query frame tile, key frame tile) pair.
        pad = nf * tf - grid.frames
        padded = torch.nn.functional.pad(table, (0, pad, 0, pad), value=-2)  # -2: no frame there
        blocks = padded.view(nf, tf, nf, tf).permute(0, 2, 1, 3).reshape(nf, nf, tf * tf)
        all_full = torch.ones(nf, nf, nh * nw, nh * nw, dtype=torch.bool)
        all_empty = torch.ones_like(all_full)
        for width in torch.unique(table).tolist():
            present = (blocks == width).any(-1)[:, :, None, None]  # [nf, nf, 1, 1]
            cls = band_classes(s_lo, s_hi, s_lo, s_hi, width)[None, None]
            all_full &= ~present | (cls == FULL)
            all_empty &= ~present | (cls == EMPTY)
        out = torch.full(all_full.shape, 1, dtype=torch.int8)
        out[all_full] = FULL
        out[all_empty] = EMPTY
        n = tiling.num_tiles
        return out.permute(0, 2, 1, 3).reshape(n, n).contiguous()

    def density(self, grid: TokenGrid) -> float:
        p = grid.frame_tokens
        w = self.width_table(grid).clamp(max=p - 1).double()
        pairs = torch.where(w < 0, torch.zeros_like(w), p + 2 * (w * p - w * (w + 1) / 2))
        return float(pairs.sum()) / float(grid.tokens) ** 2


@dataclass(frozen=True)
class RadialPattern(FrameBandPattern):
    """Radial Attention: dense near the temporal diagonal, a spatial band that halves with each doubling of the
    frame distance, and frame pairs dropped once the band falls below ``min_width``.

    For frame distance ``d = |f_q - f_k|`` (following the authors' ``radial_attn/attn_mask.py``):
    ``d <= dense_radius`` or key frame ``< sink_frames`` -> the whole frame pair; otherwise with
    ``g = d.bit_length()`` and ``base = 2**(H*W).bit_length() / 2**g``: the band is
    ``max(base * decay_factor, min_width)`` tokens, and if ``base < min_width`` only frame pairs with
    ``d % int(min_width / base) == 0`` are kept. (The authors then coarsen the token mask to 128-token blocks
    with a density heuristic; vidpar keeps the token mask exact and runs it on tiles.)
    Published defaults: Wan 2.1 ``decay_factor=0.2``, first frame as attention sink, 12 of 50 steps and the first
    layer dense; HunyuanVideo ``decay_factor=0.95``, no sink, 12 dense steps; block (``min_width``) 128 tokens.
    """

    decay_factor: float = 0.2
    dense_radius: int = 1
    sink_frames: int = 1
    min_width: int = 128
    tile: tuple[int, int, int] = (1, 1, 128)
    name: str = "radial"

    def __post_init__(self) -> None:
        if not self.decay_factor > 0:
            raise ValueError(f"radial decay_factor must be > 0, got {self.decay_factor!r}")
        for field in ("dense_radius", "sink_frames", "min_width"):
            if not isinstance(getattr(self, field), int) or getattr(self, field) < 0:
                raise ValueError(f"radial {field} must be an int >= 0, got {getattr(self, field)!r}")
        if self.min_width < 1:
            raise ValueError(f"radial min_width must be >= 1, got {self.min_width}")
        Tiling(TokenGrid(1, 1, 1), self.tile)

    def width_table(self, grid: TokenGrid) -> torch.Tensor:
        p, frames = grid.frame_tokens, grid.frames
        table = torch.empty(frames, frames, dtype=torch.int64)
        for i in range(frames):
            for j in range(frames):
                table[i, j] = self._width(abs(i - j), j, p)
        return table

    def _width(self, d: int, key_frame: int, p: int) -> int:
        if key_frame < self.sink_frames or d <= self.dense_radius:
            return p
        base = 2 ** p.bit_length() / 2 ** d.bit_length()
        if base < self.min_width and d % int(self.min_width / base) != 0:
            return -1
        return min(p, int(max(base * self.decay_factor, self.min_width)))


@dataclass(frozen=True)
class _FrameWindowHead(FrameBandPattern):
    """SVG spatial head: key frames within ``frame_radius`` of the query frame (all positions), plus sink frames."""

    frame_radius: int
    sink_frames: int
    tile: tuple[int, int, int]
    name: str = "svg-spatial"

    def width_table(self, grid: TokenGrid) -> torch.Tensor:
        f = torch.arange(grid.frames)
        keep = ((f[:, None] - f[None, :]).abs() <= self.frame_radius) | (f[None, :] < self.sink_frames)
        return torch.where(keep, grid.frame_tokens, -1).to(torch.int64)


@dataclass(frozen=True)
class _PositionBandHead(FrameBandPattern):
    """SVG temporal head: keys within ``spatial_radius`` of the query's in-frame index in every frame, plus sinks."""

    spatial_radius: int
    sink_frames: int
    tile: tuple[int, int, int]
    name: str = "svg-temporal"

    def width_table(self, grid: TokenGrid) -> torch.Tensor:
        f = torch.arange(grid.frames)
        sink = (f[None, :] < self.sink_frames).expand(grid.frames, grid.frames)
        return torch.where(sink, grid.frame_tokens, self.spatial_radius).to(torch.int64)


def spatial_temporal_pair(grid: TokenGrid, density: float, sink_frames: int,
                          tile: tuple[int, int, int]) -> tuple[FrameBandPattern, FrameBandPattern]:
    """SVG's two candidate head patterns for ``grid`` at a target ``density`` (fraction of pairs kept).

    As in SVG's ``sparsity_to_width``, a band of half-width ``n * (1 - sqrt(1 - density))`` over ``n`` items keeps
    about ``density`` of the pairs: the spatial head uses it over frames (same and nearby frames, every position),
    the temporal head over in-frame positions (same and nearby positions, every frame); both keep the first
    ``sink_frames`` frames (SVG's "first frame sink"). SVG's published defaults: ``sparsity`` (density) 0.25
    (``wan_t2v_inference.py``; 0.3 in its Wan 720p script), 64 sampled query rows, the first 20% of steps and
    ``floor(0.03 * layers)`` first layers dense (Wan 2.1 T2V 720p script).
    """
    shrink = 1.0 - math.sqrt(1.0 - density)
    spatial = _FrameWindowHead(int(grid.frames * shrink), sink_frames, tile)
    temporal = _PositionBandHead(int(grid.frame_tokens * shrink), sink_frames, tile)
    return spatial, temporal
