"""The step-cache policies a user chooses: settings, their published defaults, and ``make_policy`` by name.

Each policy binds to one denoiser (its ``CacheProfile``, the step count, the block count) as a ``Rule`` of
``vidpar.cache.rules`` plus a ``ResolvedGuard``. Defaults cite their source; where vidpar departs from it, it says
so. Every policy also obeys the guard: warm-up steps, a cap on consecutive skips, and the final step(s), which are
always computed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar, Sequence

from vidpar.models.family import CacheProfile

from .guard import CacheGuard, ResolvedGuard
from .rules import CalibrationRule, FirstBlockRule, MagCacheRule, Rule, TaylorRule, TeaCacheRule, nearest_interp


def _check_threshold(value: float | None, name: str = "threshold") -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")


@dataclass(frozen=True)
class StepCachePolicy:
    """Base of the policies; ``bind`` turns the settings into one denoiser's rule and guard."""

    name: ClassVar[str] = ""
    guard: CacheGuard = field(default_factory=CacheGuard, kw_only=True)  # keyword-only: FBCache(0.1) is a threshold

    def default_warmup(self, num_steps: int, profile: CacheProfile) -> int:
        raise NotImplementedError

    def default_max_skips(self, profile: CacheProfile) -> int | None:
        return None

    def resolve_guard(self, profile: CacheProfile, num_steps: int) -> ResolvedGuard:
        g = self.guard
        warmup = self.default_warmup(num_steps, profile) if g.warmup_steps is None else g.warmup_steps
        max_skips = self.default_max_skips(profile) if g.max_skips is None else g.max_skips
        return ResolvedGuard(warmup, max_skips, g.final_steps)

    def bind(self, profile: CacheProfile, num_steps: int, num_blocks: int) -> tuple[Rule, ResolvedGuard]:
        """This policy's rule and guard for a denoiser of ``num_blocks`` blocks; ``ValueError`` if it cannot apply."""
        raise NotImplementedError

    def settings(self, profile: CacheProfile, num_steps: int, num_blocks: int) -> dict:
        """The resolved settings (part of a snapshot's key and of the video's metadata)."""
        rule, guard = self.bind(profile, num_steps, num_blocks)
        return {"policy": self.name, **self._rule_settings(rule), **guard.as_dict()}

    def _rule_settings(self, rule: Rule) -> dict:
        return {}


@dataclass(frozen=True)
class FBCache(StepCachePolicy):
    """First-block residual cache (ParaAttention's FBCache; cache-dit's DBCache with ``Fn`` probe blocks, ``B0``).

    Every step runs the first ``probe_blocks`` blocks; when the relative L1 change of their residual
    (``mean|r_t - r_c| / mean|r_c|``, ``r_c`` of the last computed step) is under ``threshold``, the other blocks
    are skipped and their cached residual is added instead. Defaults: the model's ``fbcache_threshold`` if its
    profile has one, else cache-dit's ``DBCacheConfig`` (``residual_diff_threshold=0.08``,
    ``max_warmup_steps=8``, no cap: ``max_continuous_cached_steps=-1``) with ``F1`` (one probe block,
    ParaAttention's FBCache); the 8 warm-up steps are scaled as 8 of 50 steps (16%) so that short schedules
    still cache.
    """

    name: ClassVar[str] = "fbcache"
    threshold: float | None = None
    probe_blocks: int = 1
    DEFAULT_THRESHOLD: ClassVar[float] = 0.08

    def __post_init__(self) -> None:
        _check_threshold(self.threshold)
        if isinstance(self.probe_blocks, bool) or not isinstance(self.probe_blocks, int) or self.probe_blocks < 1:
            raise ValueError(f"probe_blocks must be an int >= 1, got {self.probe_blocks!r}")

    def default_warmup(self, num_steps: int, profile: CacheProfile) -> int:
        return max(1, round(num_steps * 8 / 50))

    def bind(self, profile, num_steps, num_blocks):
        if self.probe_blocks >= num_blocks:
            raise ValueError(f"fbcache probe_blocks={self.probe_blocks} leaves none of the denoiser's "
                             f"{num_blocks} blocks to skip")
        threshold = self.threshold
        if threshold is None:
            threshold = profile.fbcache_threshold if profile.fbcache_threshold is not None else \
                self.DEFAULT_THRESHOLD
        return FirstBlockRule(threshold, self.probe_blocks), self.resolve_guard(profile, num_steps)

    def _rule_settings(self, rule):
        return {"threshold": rule.threshold, "probe_blocks": rule.probe_blocks}


@dataclass(frozen=True)
class TeaCache(StepCachePolicy):
    """Timestep-embedding aware cache (TeaCache, Liu et al., CVPR 2025).

    The relative L1 change of the block loop's modulation signal between consecutive steps, rescaled by the
    model's published polynomial, is accumulated; while the sum stays under ``threshold`` the whole block loop is
    skipped (the cached residual is added), otherwise it runs and the sum restarts. Defaults: the model's
    published coefficients and threshold (``CacheProfile``; Wan 2.1: TeaCache4Wan2.1's ``use_ret_steps`` mode,
    whose indicator is ``e0``, 5 of 50 warm-up steps, i.e. 10%). Without published coefficients the change is
    used unscaled and the threshold defaults to 0.05 (the published Wan2.1 t2v-1.3B setting); pass
    ``coefficients=`` from ``vidpar.cache.calibrate`` for a calibrated rescaling.
    """

    name: ClassVar[str] = "teacache"
    threshold: float | None = None
    coefficients: tuple[float, ...] | None = None
    DEFAULT_THRESHOLD: ClassVar[float] = 0.05

    def __post_init__(self) -> None:
        _check_threshold(self.threshold)
        if self.coefficients is not None and (not self.coefficients or not all(
                isinstance(c, (int, float)) and math.isfinite(c) for c in self.coefficients)):
            raise ValueError(f"coefficients must be finite numbers (highest power first), got {self.coefficients}")

    def default_warmup(self, num_steps: int, profile: CacheProfile) -> int:
        return max(1, round(num_steps * 5 / 50))

    def bind(self, profile, num_steps, num_blocks):
        coefficients = self.coefficients if self.coefficients is not None else profile.teacache_coefficients
        threshold = self.threshold
        if threshold is None:
            threshold = profile.teacache_threshold if profile.teacache_threshold is not None else \
                self.DEFAULT_THRESHOLD
        return TeaCacheRule(threshold, coefficients), self.resolve_guard(profile, num_steps)

    def _rule_settings(self, rule):
        return {"threshold": rule.threshold, "coefficients": list(rule.coefficients or [])}


@dataclass(frozen=True)
class MagCache(StepCachePolicy):
    """Magnitude-aware cache (MagCache, Ma et al., 2025).

    The block loop's residual shrinks by a model-specific, prompt-independent ratio per step; skipping is allowed
    while the accumulated error ``sum |1 - prod ratio|`` since the last computed step stays under ``threshold``
    and at most ``max_skips`` (MagCache's K) steps in a row are skipped. The ratios are a calibrated per-step
    curve (the model's published one, or ``ratios=`` from ``vidpar.cache.calibrate``), resampled to the step
    count by nearest index as the reference does. Decisions depend on the step index alone, so they are identical
    on every rank by construction. Defaults: the model's published settings, else MagCache4Wan2.1's 1.3B ones
    (E012K2R02: threshold 0.12, K 2, the first 20% of steps computed).
    """

    name: ClassVar[str] = "magcache"
    threshold: float | None = None
    ratios: tuple[float, ...] | None = None
    DEFAULT_THRESHOLD: ClassVar[float] = 0.12
    DEFAULT_MAX_SKIPS: ClassVar[int] = 2

    def __post_init__(self) -> None:
        _check_threshold(self.threshold)
        if self.ratios is not None and (len(self.ratios) < 1 or not all(
                isinstance(r, (int, float)) and math.isfinite(r) and r > 0 for r in self.ratios)):
            raise ValueError("ratios must be positive finite numbers, one per calibrated step")

    def default_warmup(self, num_steps: int, profile: CacheProfile) -> int:
        return int(num_steps * 0.2)  # retention_ratio=0.2, as the reference rounds (down)

    def default_max_skips(self, profile):
        return profile.magcache_max_skips or self.DEFAULT_MAX_SKIPS

    def bind(self, profile, num_steps, num_blocks):
        ratios = self.ratios if self.ratios is not None else profile.magcache_ratios
        if ratios is None:
            raise ValueError("magcache needs the model's calibrated magnitude ratios and this model publishes none; "
                             "compute them with vidpar.cache.calibrate(pipe, prompts) and pass MagCache(ratios=...)")
        threshold = self.threshold
        if threshold is None:
            threshold = profile.magcache_threshold if profile.magcache_threshold is not None else \
                self.DEFAULT_THRESHOLD
        return MagCacheRule(threshold, nearest_interp(ratios, num_steps)), self.resolve_guard(profile, num_steps)

    def _rule_settings(self, rule):
        return {"threshold": rule.threshold, "ratios": list(rule.ratios)}


@dataclass(frozen=True)
class TaylorSeer(StepCachePolicy):
    """Taylor-series forecasting of the block loop's residual (TaylorSeer, Liu et al., 2025).

    The blocks run every ``interval`` steps; in between, the residual is extrapolated from finite differences of
    the computed ones (``order`` 1: linear). The schedule depends on the step index alone (identical on every rank
    by construction). Defaults: the model's ``taylorseer_interval`` and ``taylorseer_warmup`` if its profile has
    them, else TaylorSeer-Wan2.1's ``cache_init`` (``fresh_threshold=5``, ``max_order=1``, ``first_enhance=1``: one
    warm-up step).
    """

    name: ClassVar[str] = "taylorseer"
    interval: int | None = None
    order: int = 1
    DEFAULT_INTERVAL: ClassVar[int] = 5

    def __post_init__(self) -> None:
        for key, low in (("interval", 2), ("order", 0)):
            value = getattr(self, key)
            if value is None and key == "interval":
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"taylorseer {key} must be an int >= {low}, got {value!r}")
        if self.guard.max_skips is not None:
            raise ValueError("taylorseer skips interval - 1 steps in a row by design; set interval, not max_skips")

    def default_warmup(self, num_steps: int, profile: CacheProfile) -> int:
        if profile.taylorseer_warmup is not None:
            return max(1, round(num_steps * profile.taylorseer_warmup))
        return 1

    def interval_for(self, profile: CacheProfile) -> int:
        if self.interval is not None:
            return self.interval
        return profile.taylorseer_interval or self.DEFAULT_INTERVAL

    def default_max_skips(self, profile):
        return self.interval_for(profile) - 1

    def bind(self, profile, num_steps, num_blocks):
        return TaylorRule(self.order), self.resolve_guard(profile, num_steps)

    def _rule_settings(self, rule):
        return {"order": self.order}


@dataclass(frozen=True)
class Calibration(StepCachePolicy):
    """Never skips; records what ``vidpar.cache.calibrate`` fits (used through that function)."""

    name: ClassVar[str] = "calibration"

    def default_warmup(self, num_steps: int, profile: CacheProfile) -> int:
        return 0

    def bind(self, profile, num_steps, num_blocks):
        return CalibrationRule(), ResolvedGuard(0, None, 0)  # its rule never skips; every step is measured


POLICIES: dict[str, type[StepCachePolicy]] = {p.name: p for p in (FBCache, TeaCache, MagCache, TaylorSeer)}


def make_policy(name: str, threshold: float | None = None, *, warmup_steps: int | None = None,
                max_skips: int | None = None, final_steps: int = 1, probe_blocks: int | None = None,
                interval: int | None = None, order: int | None = None,
                ratios: Sequence[float] | None = None) -> StepCachePolicy:
    """A policy by name (``fbcache``, ``teacache``, ``magcache``, ``taylorseer``) with the options it takes;
    ``ValueError`` naming an unknown policy or an option the policy does not have."""
    if name not in POLICIES:
        raise ValueError(f"unknown cache policy {name!r}; known: {', '.join(POLICIES)}")
    guard = CacheGuard(warmup_steps, max_skips, final_steps)
    given = {"threshold": threshold, "probe_blocks": probe_blocks, "interval": interval, "order": order,
             "ratios": tuple(ratios) if ratios is not None else None}
    accepted = {"fbcache": ("threshold", "probe_blocks"), "teacache": ("threshold",),
                "magcache": ("threshold", "ratios"), "taylorseer": ("interval", "order")}[name]
    wrong = [k for k, v in given.items() if v is not None and k not in accepted]
    if wrong:
        raise ValueError(f"{name} takes no {', '.join(wrong)} (its options: {', '.join(accepted)})")
    return POLICIES[name](guard=guard, **{k: v for k, v in given.items() if v is not None})


def as_policy(cache) -> StepCachePolicy:
    """``generate(cache=...)``: a policy, a policy name, or ``(name, threshold)``."""
    if isinstance(cache, StepCachePolicy):
        return cache
    if isinstance(cache, str):
        return make_policy(cache)
    if isinstance(cache, tuple) and len(cache) == 2 and isinstance(cache[0], str):
        return make_policy(cache[0], cache[1])
    raise ValueError(f"cache must be a policy (vidpar.cache.FBCache(...), ...), a name ({', '.join(POLICIES)}) "
                     f"or (name, threshold); got {cache!r}")


__all__ = ["Calibration", "FBCache", "MagCache", "POLICIES", "StepCachePolicy", "TaylorSeer", "TeaCache",
           "as_policy", "make_policy"]
