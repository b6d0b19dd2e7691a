"""``CacheSession``: one generation's step caching, attached to the block loops of a model's denoisers.

The pipeline drives it::

    session = CacheSession(policy, comps, ctx, num_steps)
    with session.attached():
        for each step:
            session.begin_step(step, branches)          # ("cond",) or ("cond", "uncond")
            for each branch this rank evaluates:
                session.enter(branch_step); comps.predict_flow(...)   # the DiT's block loop calls the session

In a block-loop call the session runs the policy's probe blocks, takes the step's decision in the step's first call
on this rank (the conditional branch with ``cfg=1``; with ``cfg=2`` each half's only call, the two halves taking
part in one reduction), and either runs the remaining blocks (caching their residual per branch) or adds the cached
residual. The decision is made from the conditional branch and covers both, so the result is the same whether the
branches run one after the other or on two rank groups. All collectives of a decision happen in that first call,
at the same point on every rank, and only when the replicated state says a metric is needed.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterator

import torch

from vidpar.models.block_loop import BlockLoop, LoopSignals
from vidpar.models.family import LoadedModel, StepInfo
from vidpar.parallel import ParallelContext

from .expert import ExpertCache
from .policies import StepCachePolicy, as_policy
from .reduce import contributes, global_sums, norm_ratio_parts, ratio, rel_l1_parts
from .snapshot import gather_entries, restore_entry, runs_branch


@dataclass
class CacheStats:
    """What ran and what was skipped (identical on every rank; a forward is one branch's DiT call)."""

    steps: int = 0
    steps_computed: int = 0
    steps_skipped: int = 0
    forwards_computed: int = 0
    forwards_skipped: int = 0
    blocks_run: int = 0
    blocks_total: int = 0
    skipped_steps: list[int] = field(default_factory=list)
    forced: dict[str, int] = field(default_factory=dict)  # computed steps by reason (warmup, final, ...)
    # one [step, expert, skip, forced reason, reduced metric] per decision: identical on every rank and mesh
    decisions: list[list] = field(default_factory=list)

    @property
    def blocks_skipped(self) -> int:
        return self.blocks_total - self.blocks_run


@dataclass(frozen=True)
class Decision:
    skip: bool
    forced: str | None  # why the step had to be computed, or None
    metric: float | None  # the reduced indicator change (None without one)
    local_metric: float | None  # this rank's own piece alone (diagnostics: what a rank-local rule would see)
    had_cache: frozenset[str]  # branches cached before this step


class _Runner:
    """What the session attaches to one denoiser's block loop."""

    def __init__(self, session: "CacheSession", expert: int) -> None:
        self.session, self.expert = session, expert

    def run_loop(self, loop: BlockLoop, states, args, signals: LoopSignals):
        return self.session._run(self.expert, loop, states, args, signals)


class CacheSession:
    """Step caching for one generation of ``num_steps`` steps with ``policy`` (a policy, name or ``(name,
    threshold)``) on the denoisers of ``comps``. Raises ``ValueError`` (on every rank, before any collective) if the
    policy cannot apply to the model."""

    def __init__(self, policy: StepCachePolicy | str | tuple, comps: LoadedModel, ctx: ParallelContext,
                 num_steps: int) -> None:
        self.policy = as_policy(policy)
        self.ctx = ctx
        self.num_steps = num_steps
        self.experts: list[ExpertCache] = []
        settings = []
        for module in comps.denoisers():
            loop = comps.block_loop(module)
            if loop is None:
                raise ValueError(f"{comps.card.name}: its denoiser {type(module).__name__} has no block loop, so "
                                 "step caching cannot act on it")
            profile = comps.cache_profile(module)
            rule, guard = self.policy.bind(profile, num_steps, len(loop))
            self.experts.append(ExpertCache(rule, guard, loop))
            settings.append({**self.policy.settings(profile, num_steps, len(loop)), "profile": profile.source})
        self.settings = {"policy": self.policy.name, "experts": settings}
        self.stats = CacheStats()
        self.trace: list[dict] = []  # per decision on this rank, with ``local_metric``: this rank's piece alone
        self._step: StepInfo | None = None
        self._branches: tuple[str, ...] = ()
        self._branch: str | None = None
        self._decisions: dict[int, Decision] = {}
        self._calls: set[tuple[int, str]] = set()

    # ---- driving the session

    @property
    def is_attached(self) -> bool:
        return all(isinstance(ex.loop.runner, _Runner) and ex.loop.runner.session is self for ex in self.experts)

    @contextmanager
    def attached(self) -> Iterator["CacheSession"]:
        """Attach to every denoiser's block loop for the duration (detached again even on errors)."""
        loops = [ex.loop for ex in self.experts]
        if any(loop.runner is not None for loop in loops):
            raise RuntimeError("a block loop already has a runner attached (two cached generations at once?)")
        try:
            for e, loop in enumerate(loops):
                loop.runner = _Runner(self, e)
            yield self
        finally:
            for loop in loops:
                loop.runner = None

    def begin_step(self, step: StepInfo, branches: tuple[str, ...]) -> None:
        """Step ``step.index`` starts; ``branches`` are the guidance branches it evaluates (every rank: all)."""
        if step.num_steps != self.num_steps or not 0 <= step.index < self.num_steps:
            raise ValueError(f"step {step.index} of {step.num_steps} does not belong to this {self.num_steps}-step "
                             "cache session")
        if not branches or branches[0] != "cond" or not set(branches) <= {"cond", "uncond"}:
            raise ValueError(f"branches must start with 'cond' (got {branches})")
        self._step, self._branches, self._branch = step, tuple(branches), None
        self._decisions, self._calls = {}, set()

    def enter(self, step: StepInfo) -> None:
        """The next DiT call evaluates ``step.branch`` of the current step."""
        if self._step is None or step.index != self._step.index or step.branch not in self._branches:
            raise RuntimeError(f"enter({step.index}, {step.branch!r}) outside the current step")
        self._branch = step.branch

    def predictor(self, predict: Callable) -> Callable:
        """``predict(latents, step, ...)`` that enters ``step``'s branch first."""
        def call(latents, step, *args, **kwargs):
            self.enter(step)
            return predict(latents, step, *args, **kwargs)

        return call

    # ---- the block-loop call

    def _run(self, expert: int, loop: BlockLoop, states, args, signals: LoopSignals):
        if self._step is None or self._branch is None:
            raise RuntimeError("a cached block loop ran outside a denoising step (CacheSession.enter not called)")
        key = (expert, self._branch)
        if key in self._calls:
            raise RuntimeError("step caching needs one block-loop call per forward (a batch whose samples have "
                               "different text lengths runs the loop once per sample)")
        self._calls.add(key)
        ex = self.experts[expert]
        probe = ex.rule.probe_blocks
        probed = loop.run(states, args, 0, probe) if probe else states
        decision = self._decisions.get(expert)
        first = decision is None
        if first:
            decision = self._decisions[expert] = self._decide(expert, ex, loop, states, probed, signals)
        outs = loop.output_streams
        index = self._step.index
        if decision.skip:
            cached = ex.cached_residual(self._branch, index)
            result = list(probed)
            for k, i in enumerate(outs):
                result[i] = probed[i] + cached[k]
            return tuple(result)
        result = loop.run(probed, args, probe)
        residual = tuple(result[i] - probed[i] for i in outs)
        if first and ex.rule.records_residuals:
            self._record(ex, residual, decision)
        ex.store(self._branch, index, residual)
        return result

    def _decide(self, expert: int, ex: ExpertCache, loop: BlockLoop, states, probed,
                signals: LoopSignals) -> Decision:
        step, branch = self._step, self._branch
        if self.ctx.config.cfg == 1 and branch != "cond":
            raise RuntimeError("the conditional branch must be evaluated first in every step")
        is_cond = branch == "cond"
        index = step.index
        had_cache = ex.cached_branches
        forced = ex.guard.forced(index, step.num_steps, ex.consecutive_skips)
        if forced is None and not set(self._branches) <= had_cache:
            forced = "no_cache"  # first step of this denoiser, or a branch it has not cached
        indicator = self._indicator(ex, loop, states, probed, signals)
        if forced is None and indicator is not None and not ex.indicator_ready:
            forced = "no_indicator"
        metric = local = None
        if forced is None and indicator is not None:
            tensor, sharded = indicator
            parts = rel_l1_parts(tensor, ex.indicator) if is_cond else [0.0, 0.0]
            local = ratio(*parts) if is_cond else None
            metric = ratio(*global_sums(self.ctx, parts, contributes(self.ctx, is_cond, sharded)))
        skip = forced is None and ex.rule.decide(index, metric)
        if not skip:
            ex.rule.computed(index)
        if indicator is not None and (not skip or ex.rule.indicator_every_step):
            if is_cond:
                ex.indicator = indicator[0]
            ex.indicator_sharded, ex.indicator_ready = indicator[1], True
        ex.mark(index, skip, self._branches)
        self._count(ex, skip, forced)
        self.stats.decisions.append([index, expert, skip, forced, metric])
        self.trace.append({"step": index, "expert": expert, "skip": skip, "forced": forced, "metric": metric,
                           "local_metric": local})
        return Decision(skip, forced, metric, local, had_cache)

    def _indicator(self, ex: ExpertCache, loop: BlockLoop, states, probed,
                   signals: LoopSignals) -> tuple[torch.Tensor, bool] | None:
        """The rule's indicator in this call and whether it is split over the sequence ranks, or None."""
        kind = ex.rule.indicator
        if kind is None:
            return None
        if kind == "probe":
            i = loop.output_streams[0]
            return probed[i] - states[i], loop.streams[i].sharded
        if signals.modulation is None:
            raise ValueError(f"the {self.policy.name} policy compares the timestep modulation between steps, and "
                             "this denoiser's block loop receives none")
        return signals.modulation, signals.modulation_sharded

    def _record(self, ex: ExpertCache, residual, decision: Decision) -> None:
        """Calibration: the magnitude ratio and relative change of the conditional residual (reduced)."""
        if "cond" not in decision.had_cache:
            return
        is_cond = self._branch == "cond"
        parts = [0.0] * 4
        if is_cond:
            previous = ex.residuals["cond"][0]
            parts = norm_ratio_parts(residual[0], previous) + rel_l1_parts(residual[0], previous)
        sums = global_sums(self.ctx, parts, contributes(self.ctx, is_cond, ex.out_sharded[0]))
        ex.rule.record(self._step.index, {"mag_ratio": ratio(sums[0], sums[1]),
                                          "residual_change": ratio(sums[2], sums[3])})

    def _count(self, ex: ExpertCache, skip: bool, forced: str | None) -> None:
        s, n = self.stats, len(self._branches)
        blocks = len(ex.loop)
        s.steps += 1
        s.blocks_total += n * blocks
        if skip:
            s.steps_skipped += 1
            s.forwards_skipped += n
            s.blocks_run += n * ex.rule.probe_blocks
            s.skipped_steps.append(self._step.index)
        else:
            s.steps_computed += 1
            s.forwards_computed += n
            s.blocks_run += n * blocks
            if forced is not None:
                s.forced[forced] = s.forced.get(forced, 0) + 1

    # ---- snapshots (collective: every rank calls both at the same point)

    def state_dict(self) -> dict:
        """Everything a resumed run needs to continue identically: replicated state, and the cached tensors
        gathered to full tensors on rank 0 (``tensors`` is empty on other ranks)."""
        entries = {}
        for e, ex in enumerate(self.experts):
            entries.update(ex.entries(e))
        return {"settings": self.settings, "stats": asdict(self.stats),
                "experts": [ex.replicated_state() for ex in self.experts],
                "tensors": gather_entries(self.ctx, entries)}

    def load_state_dict(self, state: dict) -> None:
        """Continue from a snapshot's ``state_dict`` (any mesh): every rank takes its pieces of its branches."""
        if state.get("settings") != self.settings:
            raise ValueError("the snapshot's step-cache state belongs to other cache settings")
        self.stats = CacheStats(**state["stats"])
        for ex, replicated in zip(self.experts, state["experts"]):
            ex.load_replicated_state(replicated)
        for key, full in state["tensors"].items():
            e, branch, kind, k = key.split("/")
            if not runs_branch(self.ctx, branch):
                continue
            ex = self.experts[int(e)]
            ex.put(branch, kind, int(k), restore_entry(self.ctx, full, ex.sharded(kind, int(k))))

    # ---- reporting

    def summary(self) -> dict:
        """Plain values for ``Video.metadata["cache"]`` and logs."""
        s = self.stats
        out = {"policy": self.policy.name, **asdict(s), "blocks_skipped": s.blocks_skipped,
               "settings": self.settings}
        if any(ex.rule.records_residuals for ex in self.experts):
            out["calibration"] = [ex.rule.state_dict() for ex in self.experts]
        return out

    def describe(self) -> str:
        s = self.stats
        share = s.blocks_skipped / s.blocks_total if s.blocks_total else 0.0
        return (f"step cache {self.policy.name}: {s.steps_computed} of {s.steps} steps computed, {s.steps_skipped} "
                f"skipped {s.skipped_steps}; blocks run {s.blocks_run} of {s.blocks_total} ({share:.0%} skipped)")


__all__ = ["CacheSession", "CacheStats", "Decision"]
