"""Calibrate a model for the policies that need per-model numbers (MagCache's ratios, TeaCache's rescaling).

``calibrate(pipe, prompts, ...)`` runs uncached generations (``Calibration`` never skips) that record, per step,
from the conditional branch and reduced over every rank:

- the mean over tokens of ``|r_t| / |r_(t-1)|``, ``r`` the block loop's residual (MagCache's magnitude ratio,
  computed as in ``MagCache4Wan2.1``'s ``magcache_calibration``);
- the relative L1 change of the loop's modulation signal (TeaCache's input) and of its residual.

MagCache's ratios are the per-step means over the prompts (1.0 at step 0). TeaCache's coefficients fit, as its
authors do, a degree-4 polynomial from the input change to the output change; vidpar fits to the block loop's
residual rather than the model output (the part the cache replaces).
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from vidpar.models.family import CacheProfile

from .policies import Calibration

TEACACHE_DEGREE = 4


def fit_profile(records: Sequence[dict], num_steps: int, source: str) -> CacheProfile:
    """A profile from ``Calibration`` records (one ``{"modulation_change": {step: x}, "residual_stats": {step:
    {"mag_ratio", "residual_change"}}}`` per generation of one denoiser). Steps the denoiser never ran (the
    other expert's) get ratio 1.0: a policy never consults them."""
    ratios = [1.0]
    xs, ys = [], []
    for i in range(1, num_steps):
        values = [r["residual_stats"][i]["mag_ratio"] for r in records if i in r["residual_stats"]]
        if not values:
            ratios.append(1.0)
            continue
        ratios.append(round(float(np.mean(values)), 5))
        for r in records:
            if i in r["modulation_change"] and i in r["residual_stats"]:
                xs.append(r["modulation_change"][i])
                ys.append(r["residual_stats"][i]["residual_change"])
    coefficients = None
    if len(set(xs)) > TEACACHE_DEGREE:
        coefficients = tuple(float(c) for c in np.polyfit(xs, ys, TEACACHE_DEGREE))
    return CacheProfile(source=source, teacache_coefficients=coefficients, magcache_ratios=tuple(ratios))


def calibrate(pipe, prompts: Sequence[str], source: str = "", **generate: Any) -> list[CacheProfile]:
    """One ``CacheProfile`` per denoiser of ``pipe`` (expert order), from uncached generations of ``prompts``
    with ``generate``'s settings (seed, size, steps...; the step count should be the one the profile will serve,
    though MagCache resamples its ratios to any count). Same arguments on every rank."""
    if not prompts:
        raise ValueError("calibrate needs at least one prompt")
    per_expert: list[list[dict]] = []
    steps = None
    for prompt in prompts:
        video = pipe.generate(prompt, cache=Calibration(), **generate)
        meta = video.metadata["cache"]
        steps = meta["steps"]
        for e, record in enumerate(meta["calibration"]):
            if len(per_expert) <= e:
                per_expert.append([])
            per_expert[e].append(record)
    name = source or f"vidpar calibration of {pipe.card.name} ({len(prompts)} prompts, {steps} steps)"
    return [fit_profile(records, steps, name) for records in per_expert]


__all__ = ["TEACACHE_DEGREE", "calibrate", "fit_profile"]
