"""The steps a step-cache policy may never skip: warm-up steps, a cap on consecutive skips, the final steps."""

from __future__ import annotations

from dataclasses import dataclass


def _check_count(name: str, value: int | None, minimum: int) -> None:
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


@dataclass(frozen=True)
class CacheGuard:
    """Limits every policy obeys; None takes the policy's published default (see each policy).

    Args:
        warmup_steps: the first steps are always computed (the model lays out the video's structure there).
        max_skips: at most this many consecutive skipped steps of one denoiser (None: no cap beyond the policy's).
        final_steps: the last steps are always computed (they set the fine detail); vidpar's default is 1.
    """

    warmup_steps: int | None = None
    max_skips: int | None = None
    final_steps: int = 1

    def __post_init__(self) -> None:
        _check_count("warmup_steps", self.warmup_steps, 0)
        _check_count("max_skips", self.max_skips, 1)
        _check_count("final_steps", self.final_steps, 0)


@dataclass(frozen=True)
class ResolvedGuard:
    """A ``CacheGuard`` with the policy defaults filled in for one generation of ``num_steps`` steps."""

    warmup_steps: int
    max_skips: int | None
    final_steps: int

    def forced(self, index: int, num_steps: int, consecutive_skips: int) -> str | None:
        """Why step ``index`` must be computed (``"warmup"``, ``"final"``, ``"max_skips"``), or None."""
        if index < self.warmup_steps:
            return "warmup"
        if index >= num_steps - self.final_steps:
            return "final"
        if self.max_skips is not None and consecutive_skips >= self.max_skips:
            return "max_skips"
        return None

    def as_dict(self) -> dict:
        return {"warmup_steps": self.warmup_steps, "max_skips": self.max_skips, "final_steps": self.final_steps}


__all__ = ["CacheGuard", "ResolvedGuard"]
