"""One denoiser's cache within a generation: its rule, its guard, and what it has cached.

Two kinds of state, kept apart on purpose:

- replicated (identical on every rank, decided from replicated values only): the rule's numbers, consecutive
  skips, which guidance branches hold a cache, the steps the blocks last ran, whether an indicator was recorded;
- local tensors (this rank's pieces): per guidance branch the residual of the skipped blocks (or TaylorSeer's
  factors), and the conditional branch's last indicator.
"""

from __future__ import annotations

import torch

from vidpar.models.block_loop import BlockLoop

from .guard import ResolvedGuard
from .rules import Rule, taylor_predict, taylor_update

Residual = tuple[torch.Tensor, ...]  # one tensor per output stream of the loop, e.g. ([B, S_local, dim],)


class ExpertCache:
    """The cache of one denoiser (one Wan 2.2 A14B expert, or the only DiT)."""

    def __init__(self, rule: Rule, guard: ResolvedGuard, loop: BlockLoop) -> None:
        self.rule = rule
        self.guard = guard
        self.loop = loop
        self.out_sharded = tuple(loop.streams[i].sharded for i in loop.output_streams)
        # replicated
        self.consecutive_skips = 0
        self.cached_branches: frozenset[str] = frozenset()
        self.last_fresh: int | None = None  # last step whose blocks ran
        self.prev_fresh: int | None = None  # the one before it (TaylorSeer's finite-difference distance)
        self.indicator_ready = False
        self.indicator_sharded = False
        # local
        self.residuals: dict[str, Residual] = {}
        self.taylor: dict[str, list[Residual]] = {}  # branch -> factors [f0, f1, ...], each one per stream
        self.indicator: torch.Tensor | None = None  # the conditional branch's (this rank's piece)

    # ---- replicated bookkeeping

    def mark(self, index: int, skip: bool, branches: tuple[str, ...]) -> None:
        """Record the decision of step ``index`` (called on every rank)."""
        if skip:
            self.consecutive_skips += 1
            return
        self.consecutive_skips = 0
        self.cached_branches = frozenset(branches)
        self.prev_fresh, self.last_fresh = self.last_fresh, index

    def replicated_state(self) -> dict:
        return {
            "rule": self.rule.state_dict(), "consecutive_skips": self.consecutive_skips,
            "cached_branches": sorted(self.cached_branches), "last_fresh": self.last_fresh,
            "prev_fresh": self.prev_fresh, "indicator_ready": self.indicator_ready,
            "indicator_sharded": self.indicator_sharded,
        }

    def load_replicated_state(self, state: dict) -> None:
        self.rule.load_state_dict(state["rule"])
        self.consecutive_skips = int(state["consecutive_skips"])
        self.cached_branches = frozenset(state["cached_branches"])
        self.last_fresh, self.prev_fresh = state["last_fresh"], state["prev_fresh"]
        self.indicator_ready = bool(state["indicator_ready"])
        self.indicator_sharded = bool(state["indicator_sharded"])

    # ---- cached residuals of one branch

    def store(self, branch: str, index: int, residual: Residual) -> None:
        """The residual of the skippable blocks of computed step ``index``."""
        order = self.rule.extrapolate_order
        if order is None:
            self.residuals[branch] = residual
            return
        old = self.taylor.get(branch)
        distance = None if self.prev_fresh is None else index - self.prev_fresh
        per_stream = [taylor_update(None if old is None else [f[k] for f in old], r, distance, order)
                      for k, r in enumerate(residual)]
        self.taylor[branch] = [tuple(s[i] for s in per_stream) for i in range(len(per_stream[0]))]

    def cached_residual(self, branch: str, index: int) -> Residual:
        """What replaces the skipped blocks' residual at step ``index``: the last one, or its extrapolation."""
        if self.rule.extrapolate_order is None:
            return self.residuals[branch]
        factors = self.taylor[branch]
        offset = index - self.last_fresh
        return tuple(taylor_predict([f[k] for f in factors], offset) for k in range(len(factors[0])))

    def entries(self, expert: int) -> dict[str, tuple[torch.Tensor, bool]]:
        """This rank's tensors for a snapshot: ``"expert/branch/kind/k" -> (tensor, sharded)``."""
        out = {}
        for branch, residual in self.residuals.items():
            for k, t in enumerate(residual):
                out[f"{expert}/{branch}/residual/{k}"] = (t, self.out_sharded[k])
        for branch, factors in self.taylor.items():
            for i, f in enumerate(factors):
                for k, t in enumerate(f):
                    out[f"{expert}/{branch}/taylor{i}/{k}"] = (t, self.out_sharded[k])
        if self.indicator is not None:
            out[f"{expert}/cond/indicator/0"] = (self.indicator, self.indicator_sharded)
        return out

    def sharded(self, kind: str, k: int) -> bool:
        return self.indicator_sharded if kind == "indicator" else self.out_sharded[k]

    def put(self, branch: str, kind: str, k: int, tensor: torch.Tensor) -> None:
        """Place one restored tensor (inverse of ``entries``)."""
        if kind == "indicator":
            self.indicator = tensor
            return
        if kind == "residual":
            target = list(self.residuals.get(branch, ()))
            self.residuals[branch] = tuple(_set(target, k, tensor))
            return
        i = int(kind.removeprefix("taylor"))
        factors = self.taylor.setdefault(branch, [])
        while len(factors) <= i:
            factors.append(())
        factors[i] = tuple(_set(list(factors[i]), k, tensor))


def _set(items: list, k: int, value) -> list:
    while len(items) <= k:
        items.append(None)
    items[k] = value
    return items


__all__ = ["ExpertCache", "Residual"]
