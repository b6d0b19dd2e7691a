"""A structured sparse-attention pattern's effect on one request's step time: the share of attention work kept, and
the ring bytes of the windowed schedule (``vidpar.parallel.sparse.predict``, exact to the implementation).

Computing them walks the pattern's mask over the token grid (seconds for 4K grids), so one ``SparseCosts`` per
request memoises them per mesh. SVG's per-head choice is made online; the planner assumes half the heads spatial
and half temporal.
"""

from __future__ import annotations

from typing import Any

from vidpar.parallel.config import ParallelConfig


class SparseCosts:
    """Sparse figures of one request (pattern, token grid, denoiser shape, steps)."""

    def __init__(self, sparse: Any, grid: tuple[int, int, int], num_heads: int, head_dim: int, num_layers: int,
                 steps: int, joint_tokens: int = 0) -> None:
        from vidpar.parallel.sparse import attended_fraction, sparse_share

        self.sparse, self.grid, self.joint_tokens = sparse, tuple(grid), joint_tokens
        self.num_heads, self.head_dim, self.num_layers = num_heads, head_dim, num_layers
        self.head_choice = [h % 2 for h in range(num_heads)] if sparse.pattern == "svg" else None
        self.share = sparse_share(sparse, steps, num_layers)  # of (step, layer) attention calls that run sparse
        self.kept = attended_fraction(sparse, self.grid, self.head_choice)  # of query-key pairs computed
        self._ring: dict[tuple[int, int], int] = {}

    @property
    def attention_factor(self) -> float:
        """Expected video-attention work per forward relative to dense."""
        return 1.0 - self.share * (1.0 - self.kept)

    def ring_bytes(self, parallel: ParallelConfig, dense_bytes: float, dtype_bytes: int) -> float:
        """Expected ring bytes of one forward (all layers; busiest rank): the dense calls' share of
        ``dense_bytes`` plus the sparse calls' windowed-schedule bytes."""
        from vidpar.parallel.sparse import predict_sparse_ring_bytes

        key = (parallel.ulysses, parallel.ring)
        if key not in self._ring:
            mesh = ParallelConfig(ulysses=parallel.ulysses, ring=parallel.ring)
            self._ring[key] = predict_sparse_ring_bytes(
                self.sparse, self.grid, 1, self.num_heads, self.head_dim, mesh, dtype_bytes,
                joint_tokens=self.joint_tokens, head_choice=self.head_choice)["ring"]
        return (1.0 - self.share) * dense_bytes + self.share * self._ring[key] * self.num_layers

    def describe(self) -> str:
        return (f"{self.sparse.describe()}: {100 * self.share:.0f}% of attention calls sparse, keeping "
                f"{100 * self.kept:.1f}% of query-key pairs")


__all__ = ["SparseCosts"]
