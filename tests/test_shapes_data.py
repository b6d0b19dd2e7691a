"""The synthetic moving-shapes data that trains ``tiny-shapes``: reproducible, captions from the grammar, held-out
triples never drawn, and the colour detector the adherence test relies on finds a drawn shape where it is."""

from __future__ import annotations

import numpy as np
import pytest

from vidpar.data.shapes import (
    COLORS,
    DIRECTIONS,
    HELD_OUT,
    SHAPES,
    ShapeTrack,
    caption,
    color_centroids,
    held_out_prompts,
    render,
    sample_clip,
    sample_dataset,
    sample_scene,
    training_triples,
    vocabulary,
)


def test_same_seed_same_clips():
    a, ta = sample_dataset(5, 6)
    b, tb = sample_dataset(5, 6)
    assert a.shape == (6, 9, 64, 64, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and ta == tb
    c, _ = sample_dataset(6, 6)
    assert not np.array_equal(a, c)


def test_captions_use_only_the_vocabulary_and_never_a_held_out_triple():
    words = set(vocabulary())
    rng = np.random.default_rng(0)
    held = {caption(*t) for t in HELD_OUT}
    for _ in range(300):
        _, text = sample_clip(rng)
        assert set(text.split()) <= words
        assert not any(part in held for part in text.split(" and "))
    assert not set(training_triples()) & HELD_OUT
    assert len(held_out_prompts()) == len(HELD_OUT) >= 20


def test_held_out_triples_leave_every_pair_in_training():
    train = training_triples()
    for color, shape, direction in HELD_OUT:
        assert any(c == color and d == direction for c, _, d in train)
        assert any(s == shape and d == direction for _, s, d in train)
        assert any(c == color and s == shape for c, s, _ in train)


@pytest.mark.parametrize("direction", list(DIRECTIONS))
def test_detector_follows_a_rendered_shape(direction):
    size = 7.0
    xy = np.array([32.0, 32.0]) + np.array(DIRECTIONS[direction], dtype=np.float64) * np.arange(-4, 5)[:, None] * 3
    background = np.full((64, 64, 3), 40.0)
    frames = render([ShapeTrack("green", "circle", direction, size, xy)], background)
    counts, centroids = color_centroids(frames, "green")
    assert counts.min() > 100 and color_centroids(frames, "red")[0].max() == 0
    np.testing.assert_allclose(centroids, xy - 0.5, atol=0.5)  # pixel centres sit at +0.5


def test_scene_has_distinct_colours():
    rng = np.random.default_rng(1)
    for n in (1, 4):
        seen = []
        for _ in range(8):
            frames = sample_scene(rng, n)
            assert frames.shape == (9, 64, 64, 3)
            seen.append(sum(color_centroids(frames, c, tol=30)[0].max() > 20 for c in COLORS))
        assert max(seen) == n and min(seen) >= 1  # shapes may occlude each other, never share a colour
    with pytest.raises(ValueError, match="shapes"):
        sample_scene(rng, len(COLORS) + 1)
    assert set(SHAPES) == {"circle", "square", "triangle"}
