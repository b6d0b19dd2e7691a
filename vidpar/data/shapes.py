"""Synthetic moving-shapes clips with captions from a small grammar.

A scene is one (sometimes two) coloured shapes (circle, square, triangle) moving in a straight line in one of
eight directions, or bouncing off the borders, over a plain or gradient dark background. Captions:

    "a red circle moving left"
    "a blue square moving up-right"
    "a white triangle bouncing"
    "a red circle moving left and a blue square moving down"      (two shapes)

Everything is drawn with numpy from a ``numpy.random.Generator``: the same seed gives the same clips. Frames are
``[F, H, W, 3]`` uint8. ``HELD_OUT`` lists (colour, shape, direction) triples never used for training, so the
prompt-adherence test (``tests/test_tiny_shapes.py``) scores prompts the model has not seen.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "green": (35, 195, 55),
    "blue": (40, 85, 235),
    "yellow": (235, 215, 35),
    "purple": (155, 55, 215),
    "white": (240, 240, 240),
}
SHAPES = ("circle", "square", "triangle")
# Unit steps in image coordinates (x right, y down).
DIRECTIONS: dict[str, tuple[int, int]] = {
    "left": (-1, 0),
    "right": (1, 0),
    "up": (0, -1),
    "down": (0, 1),
    "up-left": (-1, -1),
    "up-right": (1, -1),
    "down-left": (-1, 1),
    "down-right": (1, 1),
}
MOTIONS = tuple(DIRECTIONS) + ("bouncing",)


def _held_out() -> frozenset[tuple[str, str, str]]:
    # Two directions per (colour, shape), a cardinal one and a diagonal one; every colour x direction and
    # shape x direction pair is still seen in training with some other shape or colour.
    dirs = tuple(DIRECTIONS)
    out = set()
    for c, color in enumerate(COLORS):
        for s, shape in enumerate(SHAPES):
            k = (c + s) % 4
            out.update({(color, shape, dirs[k]), (color, shape, dirs[k + 4])})
    return frozenset(out)


HELD_OUT: frozenset[tuple[str, str, str]] = _held_out()


def caption(color: str, shape: str, motion: str) -> str:
    """The grammar's caption for one shape: ``"a <colour> <shape> moving <direction>"`` or ``"... bouncing"``."""
    return f"a {color} {shape} bouncing" if motion == "bouncing" else f"a {color} {shape} moving {motion}"


def vocabulary() -> list[str]:
    """Every word the grammar can produce (for a word-level tokenizer)."""
    return ["a", "and", "moving", "bouncing", *COLORS, *SHAPES, *DIRECTIONS]


def held_out_prompts() -> list[tuple[str, str, str, str]]:
    """``(prompt, colour, shape, direction)`` for every held-out triple, in a fixed order."""
    order = {d: i for i, d in enumerate(DIRECTIONS)}
    keyed = sorted(HELD_OUT, key=lambda t: (list(COLORS).index(t[0]), SHAPES.index(t[1]), order[t[2]]))
    return [(caption(*t), *t) for t in keyed]


def training_triples() -> list[tuple[str, str, str]]:
    """All (colour, shape, motion) triples used for training (bouncing included, held-out triples excluded)."""
    return [(c, s, m) for c in COLORS for s in SHAPES for m in MOTIONS if (c, s, m) not in HELD_OUT]


@dataclass(frozen=True)
class ShapeTrack:
    """One shape's appearance and its centre ``xy`` ``[F, 2]`` (pixels) per frame."""

    color: str
    shape: str
    motion: str
    size: float  # half-extent in pixels
    xy: np.ndarray


def _track(rng: np.random.Generator, motion: str, frames: int, h: int, w: int, size: float) -> np.ndarray:
    m = size + 1.0
    if motion == "bouncing":
        angle = rng.uniform(0, 2 * np.pi)
        speed = rng.uniform(5.0, 7.0)
        v = np.array([np.cos(angle), np.sin(angle)]) * speed
        p = np.array([rng.uniform(m, w - m), rng.uniform(m, h - m)])
        out = []
        for _ in range(frames):
            out.append(p.copy())
            p = p + v
            for i, lim in ((0, w), (1, h)):  # reflect off the borders
                if p[i] < m:
                    p[i], v[i] = 2 * m - p[i], -v[i]
                elif p[i] > lim - m:
                    p[i], v[i] = 2 * (lim - m) - p[i], -v[i]
        return np.stack(out)
    d = np.array(DIRECTIONS[motion], dtype=np.float64)
    speed = rng.uniform(2.6, 4.2)
    travel = speed * (frames - 1)
    start = np.empty(2)
    for i, lim in ((0, w), (1, h)):
        if d[i] > 0:
            start[i] = rng.uniform(m, max(m, lim - m - travel))
        elif d[i] < 0:
            start[i] = rng.uniform(min(lim - m, m + travel), lim - m)
        else:
            start[i] = rng.uniform(m, lim - m)
    return start + d[None] * speed * np.arange(frames)[:, None]


def _coverage(shape: str, xy: np.ndarray, size: float, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage in [0, 1] of one shape centred at ``xy`` (one-pixel soft edge)."""
    dx, dy = xx - xy[0], yy - xy[1]
    if shape == "circle":
        sd = np.sqrt(dx * dx + dy * dy) - size
    elif shape == "square":
        sd = np.maximum(np.abs(dx), np.abs(dy)) - size * 0.85
    else:  # upward triangle: base at dy = +0.8 size, apex at dy = -1.1 size
        base = dy - 0.8 * size
        slope = 1.9 * size / (1.15 * size)  # apex height / half base
        side = (np.abs(dx) * slope + (dy + 1.1 * size) * -1.0) / np.sqrt(1 + slope * slope)
        sd = np.maximum(base, side)
    return np.clip(0.5 - sd, 0.0, 1.0)


def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """A dark, low-saturation plain or gradient background ``[H, W, 3]`` float."""
    def tone() -> np.ndarray:
        return rng.uniform(15, 85) + rng.uniform(-12, 12, size=3)

    a = tone()
    if rng.random() < 0.4:
        return np.broadcast_to(a, (h, w, 3)).astype(np.float64)
    b = tone()
    angle = rng.uniform(0, 2 * np.pi)
    yy, xx = np.mgrid[0:h, 0:w]
    t = (np.cos(angle) * (xx / (w - 1) - 0.5) + np.sin(angle) * (yy / (h - 1) - 0.5)) + 0.5
    t = np.clip(t, 0, 1)[..., None]
    return a * (1 - t) + b * t


def render(tracks: list[ShapeTrack], background: np.ndarray) -> np.ndarray:
    """Draw ``tracks`` (later ones on top) over ``background`` ``[H, W, 3]``: frames ``[F, H, W, 3]`` uint8."""
    h, w = background.shape[:2]
    frames = tracks[0].xy.shape[0]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
    out = np.empty((frames, h, w, 3), dtype=np.uint8)
    for f in range(frames):
        img = background.copy()
        for tr in tracks:
            cov = _coverage(tr.shape, tr.xy[f], tr.size, yy, xx)[..., None]
            img = img * (1 - cov) + np.array(COLORS[tr.color], dtype=np.float64) * cov
        out[f] = np.clip(np.rint(img), 0, 255).astype(np.uint8)
    return out


def _random_tracks(
    rng: np.random.Generator, count: int, triples: list[tuple[str, str, str]] | None, frames: int, h: int, w: int
) -> list[ShapeTrack]:
    """``count`` shapes drawn from ``triples`` (default: training ones), each of its own colour (two shapes of one
    colour would make a caption ambiguous)."""
    triples = training_triples() if triples is None else triples
    tracks: list[ShapeTrack] = []
    while len(tracks) < count:
        color, shape, motion = triples[rng.integers(len(triples))]
        if any(t.color == color for t in tracks):
            continue
        size = rng.uniform(6.0, 9.0)
        tracks.append(ShapeTrack(color, shape, motion, size, _track(rng, motion, frames, h, w, size)))
    return tracks


def sample_clip(
    rng: np.random.Generator,
    frames: int = 9,
    height: int = 64,
    width: int = 64,
    two_shapes_prob: float = 0.15,
    triples: list[tuple[str, str, str]] | None = None,
) -> tuple[np.ndarray, str]:
    """One random clip ``[F, H, W, 3]`` uint8 and its caption, drawn from ``triples`` (default: training ones)."""
    n = 2 if rng.random() < two_shapes_prob else 1
    tracks = _random_tracks(rng, n, triples, frames, height, width)
    text = " and ".join(caption(t.color, t.shape, t.motion) for t in tracks)
    return render(tracks, _background(rng, height, width)), text


def sample_scene(
    rng: np.random.Generator,
    shapes: int,
    frames: int = 9,
    height: int = 64,
    width: int = 64,
    triples: list[tuple[str, str, str]] | None = None,
) -> np.ndarray:
    """A clip ``[F, H, W, 3]`` uint8 of ``shapes`` shapes of distinct colours (no caption: for training a decoder,
    where busier scenes put more coloured pixels in every batch)."""
    if not 1 <= shapes <= len(COLORS):
        raise ValueError(f"shapes must be in 1..{len(COLORS)}, got {shapes}")
    return render(_random_tracks(rng, shapes, triples, frames, height, width), _background(rng, height, width))


def sample_dataset(
    seed: int, count: int, frames: int = 9, height: int = 64, width: int = 64, two_shapes_prob: float = 0.15
) -> tuple[np.ndarray, list[str]]:
    """``count`` clips ``[N, F, H, W, 3]`` uint8 and captions, reproducible from ``seed``."""
    rng = np.random.default_rng(seed)
    clips, texts = [], []
    for _ in range(count):
        clip, text = sample_clip(rng, frames, height, width, two_shapes_prob)
        clips.append(clip)
        texts.append(text)
    return np.stack(clips), texts


def color_centroids(frames: np.ndarray, color: str, tol: float = 70.0) -> tuple[np.ndarray, np.ndarray]:
    """Per frame: the number of pixels within ``tol`` (RGB distance) of ``color`` and their centroid ``(x, y)``.

    Args:
        frames: ``[F, H, W, 3]`` uint8.
    Returns:
        counts ``[F]`` int and centroids ``[F, 2]`` float (NaN where no pixel matched).
    """
    ref = np.array(COLORS[color], dtype=np.float64)
    dist = np.linalg.norm(frames.astype(np.float64) - ref, axis=-1)  # [F, H, W]
    mask = dist < tol
    counts = mask.sum(axis=(1, 2))
    yy, xx = np.mgrid[0 : frames.shape[1], 0 : frames.shape[2]]
    with np.errstate(invalid="ignore", divide="ignore"):
        cx = (mask * xx).sum(axis=(1, 2)) / counts
        cy = (mask * yy).sum(axis=(1, 2)) / counts
    return counts, np.stack([cx, cy], axis=1)


# ---- prompt adherence: the named colour present and moving the named way (what tests/benchmarks score) ----

ADHERENCE_MIN_PIXELS = 12  # a shape is ~150 pixels; fewer matches than this is no shape
ADHERENCE_MARGIN = 6.0  # pixels the centroid must travel along each named axis, first frame -> last frame


def colour_ok(frames: np.ndarray, color: str) -> bool:
    """The named colour is in every frame and covers more pixels than any other palette colour."""
    counts = {c: color_centroids(frames, c)[0] for c in COLORS}
    return bool(counts[color].min() >= ADHERENCE_MIN_PIXELS and all(
        counts[color].sum() > counts[c].sum() for c in COLORS if c != color
    ))


def direction_ok(frames: np.ndarray, color: str, direction: str) -> bool:
    """The colour centroid moved by >= ``ADHERENCE_MARGIN`` px the named way on each named axis; on an axis the
    direction does not name, it moved less than half the distance covered along the named one."""
    _, xy = color_centroids(frames, color)
    if np.isnan(xy[[0, -1]]).any():
        return False
    d = xy[-1] - xy[0]
    want = np.array(DIRECTIONS[direction], dtype=np.float64)
    named = want != 0
    if not np.all(d[named] * want[named] >= ADHERENCE_MARGIN):
        return False
    return bool(np.all(np.abs(d[~named]) < 0.5 * np.abs(d[named]).min()))
