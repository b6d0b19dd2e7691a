"""The decision rules of the step-cache policies: pure functions of replicated values.

A rule holds one denoiser's decision state for one generation. Its inputs are values identical on every rank (the
step index, a calibrated curve, a metric the session has already reduced over the ranks), so every rank takes the
same decision; the tensors (cached residuals, previous indicators) live in the session. State is plain numbers, so
it goes into a checkpoint snapshot as it is.
"""

from __future__ import annotations

import math
from typing import Sequence


class Rule:
    """Base: how a policy decides, and what the session must compute for it.

    ``probe_blocks``: blocks always run before deciding (their residual is the ``"probe"`` indicator).
    ``indicator``: None, ``"probe"`` (the probe blocks' residual of the first output stream) or ``"modulation"``
    (the loop's timestep modulation); the session passes ``decide`` its relative L1 change, reduced over the ranks.
    ``indicator_every_step``: remember the indicator on skipped steps too (TeaCache) rather than on computed steps
    only (FBCache compares with the last computed step).
    ``extrapolate_order``: skipped steps get a Taylor extrapolation of this order (TaylorSeer); None reuses the
    last computed residual.
    """

    name = "rule"
    probe_blocks = 0
    indicator: str | None = None
    indicator_every_step = False
    extrapolate_order: int | None = None
    records_residuals = False  # the session reports each computed step's residual statistics (calibration)

    def decide(self, index: int, metric: float | None) -> bool:
        """Whether step ``index`` (not forced by the guard) skips its blocks."""
        raise NotImplementedError

    def computed(self, index: int) -> None:
        """Step ``index`` ran its blocks (by decision or forced): reset what accumulates between computes."""

    def record(self, index: int, stats: dict[str, float]) -> None:
        """Residual statistics of computed step ``index`` (only if ``records_residuals``)."""

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


class FirstBlockRule(Rule):
    """Skip the remaining blocks when the probe residual's relative L1 change is under ``threshold``."""

    name = "fbcache"
    indicator = "probe"

    def __init__(self, threshold: float, probe_blocks: int) -> None:
        self.threshold = threshold
        self.probe_blocks = probe_blocks

    def decide(self, index: int, metric: float | None) -> bool:
        return metric is not None and metric < self.threshold


def polynomial(coefficients: Sequence[float], x: float) -> float:
    """``numpy.poly1d(coefficients)(x)`` (highest power first), in Python floats (identical on every rank)."""
    y = 0.0
    for c in coefficients:
        y = y * x + c
    return y


class TeaCacheRule(Rule):
    """Accumulate the rescaled relative L1 change of the modulation; skip while the sum stays under ``threshold``."""

    name = "teacache"
    indicator = "modulation"
    indicator_every_step = True

    def __init__(self, threshold: float, coefficients: Sequence[float] | None) -> None:
        self.threshold = threshold
        self.coefficients = tuple(coefficients) if coefficients is not None else None
        self.accumulated = 0.0

    def rescale(self, x: float) -> float:
        return x if self.coefficients is None else polynomial(self.coefficients, x)

    def decide(self, index: int, metric: float | None) -> bool:
        if metric is None:
            return False
        self.accumulated += self.rescale(metric)
        return self.accumulated < self.threshold

    def computed(self, index: int) -> None:
        self.accumulated = 0.0

    def state_dict(self) -> dict:
        return {"accumulated": self.accumulated}


class MagCacheRule(Rule):
    """Multiply the calibrated magnitude ratios since the last compute; skip while the accumulated error
    ``sum |1 - prod ratio|`` stays under ``threshold`` (the cap on consecutive skips is the guard's)."""

    name = "magcache"

    def __init__(self, threshold: float, ratios: Sequence[float]) -> None:
        self.threshold = threshold
        self.ratios = tuple(float(r) for r in ratios)
        self.ratio = 1.0
        self.error = 0.0

    def decide(self, index: int, metric: float | None) -> bool:
        self.ratio *= self.ratios[index]
        self.error += abs(1.0 - self.ratio)
        return self.error < self.threshold

    def computed(self, index: int) -> None:
        self.ratio, self.error = 1.0, 0.0

    def state_dict(self) -> dict:
        return {"ratio": self.ratio, "error": self.error}


class TaylorRule(Rule):
    """Skip every step the guard allows (a fixed schedule: fresh every ``interval`` steps via the guard's cap) and
    extrapolate the residual with Taylor factors of ``order``."""

    name = "taylorseer"

    def __init__(self, order: int) -> None:
        self.extrapolate_order = order

    def decide(self, index: int, metric: float | None) -> bool:
        return True


class CalibrationRule(Rule):
    """Never skips; records per step the modulation's relative L1 change and the residual statistics (for
    ``vidpar.cache.calibrate``)."""

    name = "calibration"
    indicator = "modulation"
    indicator_every_step = True
    records_residuals = True

    def __init__(self) -> None:
        self.modulation_change: dict[int, float] = {}
        self.residual_stats: dict[int, dict[str, float]] = {}

    def decide(self, index: int, metric: float | None) -> bool:
        if metric is not None:
            self.modulation_change[index] = metric
        return False

    def record(self, index: int, stats: dict[str, float]) -> None:
        self.residual_stats[index] = dict(stats)

    def state_dict(self) -> dict:
        return {"modulation_change": dict(self.modulation_change), "residual_stats": dict(self.residual_stats)}


def nearest_interp(values: Sequence[float], length: int) -> tuple[float, ...]:
    """Resample a per-step curve to ``length`` steps by nearest index (MagCache's ``nearest_interp``)."""
    if length < 1:
        raise ValueError(f"length must be >= 1, got {length}")
    if length == 1:
        return (float(values[-1]),)
    scale = (len(values) - 1) / (length - 1)
    return tuple(float(values[int(_round_half_even(i * scale))]) for i in range(length))


def _round_half_even(x: float) -> int:
    """``numpy.round`` (half to even), as the reference resamples."""
    return int(round(x))


def taylor_update(old: Sequence | None, new, distance: float | None, order: int) -> list:
    """TaylorSeer's finite-difference update of one branch's factors: ``f0 = new``, ``f[i+1] = (f[i] - old[i]) /
    distance`` while the old factor exists (tensors or numbers)."""
    factors = [new]
    if old is None or distance is None:
        return factors
    for i in range(order):
        if i >= len(old):
            break
        factors.append((factors[i] - old[i]) / distance)
    return factors


def taylor_predict(factors: Sequence, offset: float):
    """``sum_i f[i] * offset**i / i!``: the extrapolation ``offset`` steps after the last computed one."""
    out = factors[0]
    for i in range(1, len(factors)):
        out = out + factors[i] * (offset ** i / math.factorial(i))
    return out


__all__ = [
    "CalibrationRule", "FirstBlockRule", "MagCacheRule", "Rule", "TaylorRule", "TeaCacheRule", "nearest_interp",
    "polynomial", "taylor_predict", "taylor_update",
]
