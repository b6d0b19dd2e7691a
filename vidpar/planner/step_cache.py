"""What step caching (``vidpar.cache``) saves in the planner's time prediction: a model-neutral skip ratio.

A policy skips a share of the denoiser's block work (whole steps, or all but the probe blocks of a step); the
communication inside the skipped blocks is skipped with it (every rank takes the same decision). The embedding,
the head and the cfg exchange still run on every step; they are a small part of a step and are not discounted.
The ratio to plan with is what a run reports: ``video.metadata["cache"]["blocks_skipped"] / ["blocks_total"]``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class StepCacheEstimate:
    """``skip_ratio``: expected share of the denoiser's block forwards that a cache policy skips, in [0, 1)."""

    skip_ratio: float = 0.0

    def __post_init__(self) -> None:
        r = self.skip_ratio
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not math.isfinite(r) or not 0 <= r < 1:
            raise ValueError(f"skip_ratio must be in [0, 1), got {r!r}")

    @property
    def step_factor(self) -> float:
        """Predicted denoising time with the cache / without it."""
        return 1.0 - self.skip_ratio

    @classmethod
    def from_metadata(cls, meta: dict) -> "StepCacheEstimate":
        """From a generation's ``video.metadata["cache"]``."""
        return cls(meta["blocks_skipped"] / meta["blocks_total"] if meta["blocks_total"] else 0.0)


__all__ = ["StepCacheEstimate"]
