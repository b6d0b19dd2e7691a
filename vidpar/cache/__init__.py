"""Step caching: skip (part of) the denoiser on steps where its output barely changes, identically on every rank.

Policies (``policies``): ``FBCache`` (first-block residual), ``TeaCache`` (timestep-embedding estimator),
``MagCache`` (calibrated magnitude ratios), ``TaylorSeer`` (Taylor forecast on a fixed schedule), each with a
``CacheGuard`` (warm-up steps, a cap on consecutive skips, the final steps always computed). They act on every
family through ``vidpar.models.block_loop.BlockLoop`` and ``LoadedModel.cache_profile``; ``CacheSession`` runs one
generation (``Pipeline.generate(cache=...)`` builds it). Decisions are made once per step from the conditional
branch, from values identical on every rank (``reduce``), so the skipped steps and the video do not depend on
the mesh; the session's state goes into checkpoint snapshots (``snapshot``).
"""

from .calibrate import calibrate, fit_profile
from .guard import CacheGuard
from .policies import (
    POLICIES, Calibration, FBCache, MagCache, StepCachePolicy, TaylorSeer, TeaCache, as_policy, make_policy,
)
from .session import CacheSession, CacheStats

__all__ = [
    "POLICIES", "CacheGuard", "CacheSession", "CacheStats", "Calibration", "FBCache", "MagCache", "StepCachePolicy",
    "TaylorSeer", "TeaCache", "as_policy", "calibrate", "fit_profile", "make_policy",
]
