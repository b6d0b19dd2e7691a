"""``SparseAttention``: which structured sparse pattern to run, its parameters, and when to stay dense.

A value with no side effects, parsed from the CLI with ``SparseAttention.from_cli("radial:decay_factor=0.2")``.
Dense warm-up steps, dense final steps and dense first layers are counts (``12``) or fractions of the total
(``0.2`` or ``20%``), as the papers state them. Defaults are each paper's published settings (see
``vidpar.parallel.sparse.patterns`` for the citations).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from .grid import TokenGrid, Tiling
from .patterns import RadialPattern, SlidingTilePattern, spatial_temporal_pair

PATTERNS = ("window", "radial", "svg")

# Per-pattern defaults. window: STA's tile/window (no fixed dense warm-up is part of STA's kernel API).
# radial: Radial Attention's Wan 2.1 setting (12 of 50 steps and 1 layer dense, decay 0.2, first-frame sink).
# svg: Sparse VideoGen's Wan 2.1 T2V 720p setting (first 20% of steps and 3% of layers dense, density 0.25).
_DEFAULTS = {
    "window": dict(tile=(6, 8, 8), sink_frames=0, dense_first=0, dense_layers=0),
    "radial": dict(tile=(1, 1, 128), sink_frames=1, dense_first=0.24, dense_layers=1),
    "svg": dict(tile=(1, 1, 128), sink_frames=1, dense_first=0.2, dense_layers=0.03),
}

Count = int | float  # a count, or a fraction in [0, 1] of the total


@dataclass(frozen=True)
class SparseAttention:
    """Structured sparse self-attention over the video tokens (joint/text tokens always dense).

    Attributes:
        pattern: ``"window"`` (STA sliding tiles), ``"radial"`` (Radial Attention) or ``"svg"`` (per-head
            spatial/temporal choice, Sparse VideoGen).
        tile: ``(tf, th, tw)`` tokens per block (the unit that is computed or skipped and that travels).
        window: window in tiles (odd per axis), ``window`` only.
        decay_factor, dense_radius, min_width: ``radial`` only (see ``RadialPattern``).
        sink_frames: leading frames every query attends to (``radial``, ``svg``).
        density: target kept fraction of each SVG head pattern; num_samples: sampled queries per decision.
        dense_first, dense_last: denoising steps run dense at the start / end (count or fraction of steps).
        dense_layers: first layers run dense (count or fraction of layers).
    """

    pattern: str
    tile: tuple[int, int, int] | None = None
    window: tuple[int, int, int] = (3, 3, 3)
    decay_factor: float = 0.2
    dense_radius: int = 1
    min_width: int = 128
    sink_frames: int | None = None
    density: float = 0.25
    num_samples: int = 64
    dense_first: Count | None = None
    dense_last: Count = 0
    dense_layers: Count | None = None

    def __post_init__(self) -> None:
        if self.pattern not in PATTERNS:
            raise ValueError(f"sparse attention pattern must be one of {PATTERNS}, got {self.pattern!r}")
        for name, value in _DEFAULTS[self.pattern].items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        for name in ("tile", "window"):
            try:
                object.__setattr__(self, name, tuple(getattr(self, name)))
            except TypeError:
                raise ValueError(f"sparse attention {name} must be three ints, got {getattr(self, name)!r}") from None
        Tiling(TokenGrid(1, 1, 1), self.tile)
        for name in ("dense_first", "dense_last", "dense_layers"):
            _check_count(name, getattr(self, name))
        if not 0.0 < self.density <= 1.0:
            raise ValueError(f"sparse attention density must be in (0, 1], got {self.density!r}")
        if not isinstance(self.num_samples, int) or self.num_samples < 1:
            raise ValueError(f"sparse attention num_samples must be a positive int, got {self.num_samples!r}")
        if not isinstance(self.sink_frames, int) or self.sink_frames < 0:
            raise ValueError(f"sparse attention sink_frames must be an int >= 0, got {self.sink_frames!r}")
        self.patterns(TokenGrid(1, 1, 1))  # the pattern classes validate their own parameters

    # ---- patterns ----
    @property
    def per_head(self) -> bool:
        """Whether heads choose between candidate patterns online (SVG)."""
        return self.pattern == "svg"

    def patterns(self, grid: TokenGrid) -> tuple:
        """The candidate patterns for ``grid`` (one for window/radial; SVG's spatial and temporal heads)."""
        if self.pattern == "window":
            return (SlidingTilePattern(self.window, self.tile),)
        if self.pattern == "radial":
            return (RadialPattern(self.decay_factor, self.dense_radius, self.sink_frames, self.min_width, self.tile),)
        return spatial_temporal_pair(grid, self.density, self.sink_frames, self.tile)

    # ---- when to be sparse ----
    def is_sparse(self, step: int | None, num_steps: int | None, layer: int, num_layers: int) -> bool:
        """Whether attention layer ``layer`` of ``num_layers`` runs sparse at denoising ``step`` of ``num_steps``
        (``step=None``: outside a denoising loop, only the dense-layers rule applies)."""
        if layer < _resolve(self.dense_layers, num_layers):
            return False
        if step is None:
            return True
        return _resolve(self.dense_first, num_steps) <= step < num_steps - _resolve(self.dense_last, num_steps)

    # ---- CLI ----
    @classmethod
    def from_cli(cls, spec: str) -> "SparseAttention":
        """Parse ``NAME[:key=value,...]``, e.g. ``"window:window=3x3x5,tile=6x8x8,dense_first=10"``.

        Keys are the field names (``-`` or ``_``); tuples are written ``AxBxC``; counts are ints, fractions are
        floats or percentages (``0.2``, ``20%``). Raises ``ValueError`` naming the bad key or value.
        """
        if not isinstance(spec, str) or not spec.strip():
            raise ValueError(f"--sparse-attention: expected NAME[:key=value,...], got {spec!r}")
        name, _, rest = spec.strip().partition(":")
        known = {f.name: f for f in fields(cls) if f.name != "pattern"}
        kwargs = {}
        for item in filter(None, (s.strip() for s in rest.split(","))):
            key, eq, raw = item.partition("=")
            key = key.strip().replace("-", "_")
            if not eq or key not in known:
                raise ValueError(f"--sparse-attention {spec!r}: unknown option {item!r}; known: {sorted(known)}")
            kwargs[key] = _parse_value(spec, key, raw.strip())
        return cls(name.strip(), **kwargs)

    def describe(self) -> str:
        base = {f.name: getattr(self, f.name) for f in fields(self)}
        used = {"window": ("tile", "window"), "radial": ("tile", "decay_factor", "dense_radius", "min_width",
                "sink_frames"), "svg": ("tile", "density", "num_samples", "sink_frames")}[self.pattern]
        keys = used + ("dense_first", "dense_last", "dense_layers")
        return f"{self.pattern}(" + ", ".join(f"{k}={_fmt(base[k])}" for k in keys) + ")"


def _fmt(value) -> str:
    return "x".join(map(str, value)) if isinstance(value, tuple) else str(value)


def _check_count(name: str, value) -> None:
    ok = (isinstance(value, int) and not isinstance(value, bool) and value >= 0) or (
        isinstance(value, float) and 0.0 <= value <= 1.0)
    if not ok:
        raise ValueError(f"sparse attention {name} must be a count (int >= 0) or a fraction in [0, 1], got {value!r}")


def _resolve(value: Count, total: int) -> int:
    return value if isinstance(value, int) else math.floor(value * total)


_INT_FIELDS = {"dense_radius", "min_width", "sink_frames", "num_samples"}
_FLOAT_FIELDS = {"decay_factor", "density"}
_TUPLE_FIELDS = {"tile", "window"}


def _parse_value(spec: str, key: str, raw: str):
    try:
        if key in _TUPLE_FIELDS:
            parts = tuple(int(p) for p in raw.lower().split("x"))
            if len(parts) != 3:
                raise ValueError
            return parts
        if key in _INT_FIELDS:
            return int(raw)
        if key in _FLOAT_FIELDS:
            return float(raw)
        if raw.endswith("%"):
            return float(raw[:-1]) / 100.0
        return float(raw) if any(c in raw for c in ".eE") else int(raw)
    except ValueError:
        kind = "AxBxC" if key in _TUPLE_FIELDS else "a number"
        raise ValueError(f"--sparse-attention {spec!r}: {key}={raw!r} is not {kind}") from None
