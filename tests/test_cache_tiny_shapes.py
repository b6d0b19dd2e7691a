"""The shipped ``tiny-shapes`` model still follows held-out prompts with step caching at its default settings.

A cheap subset for CI: the first two held-out prompts, FBCache and MagCache at the model's defaults (the score on
all 36 held-out prompts, every policy, is ``benchmarks/step_cache.py --adherence``). Each run must really skip
steps and pass the adherence detector of ``test_tiny_shapes.py``.
"""

from __future__ import annotations

import pytest
import torch

from vidpar.cache import FBCache, MagCache
from vidpar.data.shapes import held_out_prompts

from test_tiny_shapes import SAMPLING, colour_ok, direction_ok, single_pipeline


@pytest.fixture(scope="module")
def pipe():
    torch.set_num_threads(2)
    return single_pipeline()


@pytest.mark.parametrize("policy", [FBCache(), MagCache()], ids=["fbcache", "magcache"])
def test_held_out_prompts_stay_adherent_with_the_default_cache(pipe, policy):
    for i, (prompt, color, _shape, direction) in enumerate(held_out_prompts()[:2]):
        video = pipe.generate(prompt, seed=1000 + i, cache=policy, **SAMPLING)
        meta = video.metadata["cache"]
        assert meta["steps_skipped"] >= 3, meta
        assert colour_ok(video.frames, color) and direction_ok(video.frames, color, direction), (prompt, meta)
