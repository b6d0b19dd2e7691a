"""Structured sparse attention over the video token grid, exact to its own mask, under Ulysses, ring and USP.

- ``SparseAttention`` (``config``): the pattern (``window`` / ``radial`` / ``svg``), its parameters, dense steps
  and layers; ``SparseAttention.from_cli("radial:decay_factor=0.2")``.
- ``patterns``: the masks on ``(frame, row, col)`` coordinates, with the papers they follow.
- ``enable_sparse_attention`` (``module``): turn it on for a model; the handle's ``set_step`` is the per-step switch.
- ``SparseCall``: what ``vidpar.parallel.attention(..., sparse=...)`` takes to run one call sparse.
- ``predict``: attended fraction, exact density, sparse share of calls, windowed-ring schedule and bytes.
"""

from .attend import SparseCall
from .config import PATTERNS, SparseAttention
from .grid import TokenGrid
from .layout import LayoutCache
from .module import SparseHandle, enable_sparse_attention
from .predict import (
    attended_fraction,
    mask_density,
    predict_sparse_ring_bytes,
    ring_blocks,
    ring_schedule,
    sparse_share,
)

__all__ = [
    "PATTERNS",
    "LayoutCache",
    "SparseAttention",
    "SparseCall",
    "SparseHandle",
    "TokenGrid",
    "attended_fraction",
    "enable_sparse_attention",
    "mask_density",
    "predict_sparse_ring_bytes",
    "ring_blocks",
    "ring_schedule",
    "sparse_share",
]
