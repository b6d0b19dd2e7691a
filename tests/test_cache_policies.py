"""Step-cache decision logic without process groups: the guard, each policy's rule against the published reference
algorithm re-written here, Taylor extrapolation, MagCache resampling, the Wan profiles, the block-loop hook, and
single-process generations (a policy that never skips is bit-identical to no cache)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from vidpar.cache import CacheGuard, FBCache, MagCache, TaylorSeer, TeaCache, as_policy, make_policy
from vidpar.cache.guard import ResolvedGuard
from vidpar.cache.rules import (
    FirstBlockRule, TeaCacheRule, nearest_interp, polynomial, taylor_predict, taylor_update,
)
from vidpar.models.block_loop import BlockLoop, Stream
from vidpar.models.family import CacheProfile
from vidpar.models.wan import WanTransformerConfig
from vidpar.models.wan.cache_profile import TEACACHE_COEFFICIENTS, wan21_variant, wan_cache_profile


def test_guard_reasons():
    g = ResolvedGuard(warmup_steps=2, max_skips=2, final_steps=1)
    assert [g.forced(i, 6, 0) for i in range(6)] == ["warmup", "warmup", None, None, None, "final"]
    assert g.forced(3, 6, 2) == "max_skips" and g.forced(3, 6, 1) is None
    assert ResolvedGuard(0, None, 0).forced(5, 6, 100) is None
    for bad in (dict(warmup_steps=-1), dict(max_skips=0), dict(final_steps=1.5), dict(warmup_steps=True)):
        with pytest.raises(ValueError):
            CacheGuard(**bad)


def test_policy_defaults_cite_the_references():
    none = CacheProfile()
    rule, guard = FBCache().bind(none, 50, 30)
    assert (rule.threshold, rule.probe_blocks, guard.warmup_steps, guard.max_skips) == (0.08, 1, 8, None)
    rule, guard = TeaCache().bind(none, 50, 30)
    assert (rule.threshold, rule.coefficients, guard.warmup_steps) == (0.05, None, 5)
    wan13 = wan_cache_profile(WanTransformerConfig.preset("wan2.1-t2v-1.3b"))
    rule, guard = TeaCache().bind(wan13, 50, 30)
    assert rule.coefficients == TEACACHE_COEFFICIENTS["t2v-1.3B"] and rule.threshold == 0.05
    rule, guard = MagCache().bind(wan13, 50, 30)
    assert (rule.threshold, guard.warmup_steps, guard.max_skips, len(rule.ratios)) == (0.12, 10, 2, 50)
    rule, guard = TaylorSeer().bind(none, 50, 30)
    assert (rule.extrapolate_order, guard.warmup_steps, guard.max_skips) == (1, 1, 4)
    assert all(g.final_steps == 1 for g in (guard, FBCache().bind(none, 50, 30)[1]))


def test_bad_settings_are_value_errors():
    with pytest.raises(ValueError, match="unknown cache policy 'nope'"):
        make_policy("nope")
    with pytest.raises(ValueError, match="taylorseer takes no threshold"):
        make_policy("taylorseer", 0.1)
    with pytest.raises(ValueError, match="threshold"):
        FBCache(-1.0)
    with pytest.raises(ValueError, match="probe_blocks"):
        FBCache(probe_blocks=0)
    with pytest.raises(ValueError, match="leaves none"):
        FBCache(probe_blocks=2).bind(CacheProfile(), 10, 2)
    with pytest.raises(ValueError, match="publishes none"):
        MagCache().bind(CacheProfile(), 10, 2)
    with pytest.raises(ValueError, match="interval"):
        TaylorSeer(interval=1)
    with pytest.raises(ValueError, match="cache must be"):
        as_policy(3)
    assert as_policy(("fbcache", 0.2)) == FBCache(0.2) and as_policy("teacache") == TeaCache()


def test_fbcache_rule():
    rule = FirstBlockRule(0.1, 1)
    assert [rule.decide(i, m) for i, m in enumerate([None, 0.05, 0.1, 0.2])] == [False, True, False, False]


def teacache_reference(metrics, coefficients, thresh, ret_steps, cutoff):
    """TeaCache4Wan2.1's conditional-branch decisions (``should_calc``), re-written from the published code."""
    acc, out = 0.0, []
    for cnt, m in enumerate(metrics):
        if cnt < ret_steps or cnt >= cutoff:
            calc, acc = True, 0.0
        else:
            acc += np.poly1d(coefficients)(m)
            calc = not acc < thresh
            if calc:
                acc = 0.0
        out.append(calc)
    return out


def test_teacache_rule_matches_the_reference():
    rng = np.random.default_rng(0)
    coefficients = TEACACHE_COEFFICIENTS["t2v-1.3B"]
    metrics = list(rng.uniform(0.005, 0.03, size=30))
    guard = ResolvedGuard(5, None, 0)  # use_ret_steps: 5 retention steps, no cutoff
    rule = TeaCacheRule(0.05, coefficients)
    ours = []
    for i, m in enumerate(metrics):
        forced = guard.forced(i, 30, 0)
        skip = forced is None and rule.decide(i, m)
        if not skip:
            rule.computed(i)
        ours.append(not skip)
    assert ours == teacache_reference(metrics, coefficients, 0.05, 5, 30)
    assert 3 < ours.count(False) < 25  # the comparison exercises both outcomes
    assert polynomial(coefficients, 0.0123) == pytest.approx(np.poly1d(coefficients)(0.0123), rel=1e-12)


def magcache_reference(ratios, thresh, k, retention):
    """MagCache4Wan2.1's conditional-branch decisions (``skip_forward``), re-written from the published code."""
    acc_ratio, acc_err, acc_steps, out = 1.0, 0.0, 0, []
    for cnt, r in enumerate(ratios):
        skip = False
        if cnt >= int(len(ratios) * retention):
            acc_ratio *= r
            acc_steps += 1
            acc_err += abs(1 - acc_ratio)
            if acc_err < thresh and acc_steps <= k:
                skip = True
            else:
                acc_ratio, acc_err, acc_steps = 1.0, 0.0, 0
        out.append(skip)
    return out


def test_magcache_rule_matches_the_reference():
    wan13 = wan_cache_profile(WanTransformerConfig.preset("wan2.1-t2v-1.3b"))
    for threshold, k in ((0.12, 2), (0.24, 6)):
        rule, guard = MagCache(threshold, guard=CacheGuard(max_skips=k, final_steps=0)).bind(wan13, 50, 30)
        consecutive, ours = 0, []
        for i in range(50):
            forced = guard.forced(i, 50, consecutive)
            skip = forced is None and rule.decide(i, None)
            if not skip:
                rule.computed(i)
            consecutive = consecutive + 1 if skip else 0
            ours.append(skip)
        assert ours == magcache_reference(wan13.magcache_ratios, threshold, k, 0.2)
        assert sum(ours) > 10


def test_nearest_interp_as_the_reference():
    src = np.linspace(1.0, 0.8, 50)
    for n in (1, 2, 7, 20, 49, 50, 80):
        ref = src[np.round(np.arange(n) * ((len(src) - 1) / (n - 1))).astype(int)] if n > 1 else src[-1:]
        assert nearest_interp(src, n) == tuple(ref)


def test_taylor_extrapolation():
    """Order 1 is exact for a residual linear in the step index; order 2 improves on reuse for a quadratic one."""
    f = lambda s: 3.0 - 0.5 * s  # noqa: E731 - a residual linear in the step index
    factors = None
    prev = None
    for s in (0, 4, 8):
        factors = taylor_update(factors, torch.tensor(f(s)), None if prev is None else s - prev, order=1)
        prev = s
    for k in (1, 2, 3):
        assert taylor_predict(factors, k).item() == pytest.approx(f(8 + k))
    q = lambda s: 1.0 + 0.25 * s * s  # noqa: E731
    factors, prev = None, None
    for s in (0, 2, 4, 6):
        factors = taylor_update(factors, q(s), None if prev is None else s - prev, order=2)
        prev = s
    # TaylorSeer's backward differences: order 2 reproduces a quadratic up to its finite-difference error
    assert abs(taylor_predict(factors, 1) - q(7)) < abs(factors[0] - q(7))


def test_wan_profiles_from_configs():
    assert wan21_variant(WanTransformerConfig.preset("wan2.1-t2v-1.3b")) == "t2v-1.3B"
    assert wan21_variant(WanTransformerConfig.preset("wan2.1-t2v-14b")) == "t2v-14B"
    i2v = WanTransformerConfig.preset("wan2.1-i2v-14b")
    assert wan21_variant(i2v, "/ckpt/Wan2.1-I2V-14B-480P") == "i2v-14B-480P"
    assert wan21_variant(i2v, "/ckpt/Wan2.1-I2V-14B-720P-Diffusers") == "i2v-14B-720P"
    assert wan_cache_profile(WanTransformerConfig.preset("wan2.1-t2v-14b"), experts=2) == CacheProfile()
    assert wan21_variant(WanTransformerConfig(dim=48, num_heads=3, num_layers=2, ffn_dim=96)) is None
    shapes = wan_cache_profile(WanTransformerConfig(dim=128, num_heads=4, num_layers=4, ffn_dim=384), "tiny-shapes")
    assert len(shapes.magcache_ratios) == 20 and len(shapes.teacache_coefficients) == 5  # vidpar's calibration


class _Add(torch.nn.Module):
    def __init__(self, k: float) -> None:
        super().__init__()
        self.k = k

    def forward(self, x, y, scale):
        return x + self.k * scale, y * 2


def test_block_loop_without_runner_is_the_plain_loop():
    blocks = torch.nn.ModuleList(_Add(k) for k in (1.0, 2.0, 3.0))
    loop = BlockLoop(blocks, (Stream("a", True), Stream("b", False, output=False)))
    x, y = torch.randn(2, 3, dtype=torch.float64), torch.randn(2, dtype=torch.float64)
    ref_x, ref_y = x, y
    for block in blocks:
        ref_x, ref_y = block(ref_x, ref_y, 0.5)
    out_x, out_y = loop((x, y), 0.5)
    assert torch.equal(out_x, ref_x) and torch.equal(out_y, ref_y)
    assert loop.output_streams == (0,) and len(loop) == 3
    assert torch.equal(loop.run((x, y), (0.5,), 1, 2)[0], x + 1.0)
    with pytest.raises(ValueError, match="got 1 states"):
        loop((x,), 0.5)
    with pytest.raises(ValueError, match="output stream"):
        BlockLoop(blocks, (Stream("b", False, output=False),))


# ---- single process, the tiny Wan model (cheap): a policy that never skips changes nothing

def tiny_pipeline(dtype=torch.float64):
    from vidpar.models.wan.components import load_components
    from vidpar.parallel import ParallelConfig, init_parallel
    from vidpar.pipeline import Pipeline

    ctx = init_parallel(ParallelConfig())
    return Pipeline(load_components("tiny", dtype, ctx.device), ctx, dtype)


REQUEST = dict(prompt="a red fox in snow", height=32, width=32, num_frames=5, num_steps=8, seed=7)


def test_never_skipping_policy_is_bit_identical_and_counts_blocks():
    pipe = tiny_pipeline()
    ref = pipe.generate(**REQUEST)
    assert ref.metadata == {}
    for policy in (FBCache(0.0), TeaCache(0.0), MagCache(0.0, ratios=(1.0, 0.9)), TaylorSeer(
            guard=CacheGuard(warmup_steps=8))):
        video = pipe.generate(**REQUEST, cache=policy)
        meta = video.metadata["cache"]
        assert np.array_equal(video.frames, ref.frames), policy
        assert meta["steps_skipped"] == 0 and meta["blocks_run"] == meta["blocks_total"] == 8 * 2 * 2
    skipping = pipe.generate(**REQUEST, cache=FBCache(0.3)).metadata["cache"]
    assert skipping["steps_skipped"] > 0
    assert skipping["blocks_run"] == 2 * 2 * skipping["steps_computed"] + 2 * 1 * skipping["steps_skipped"]
    assert skipping["forwards_skipped"] == 2 * skipping["steps_skipped"]
    for block_loop in (pipe.comps.transformer.block_loop,):
        assert block_loop.runner is None  # detached after the generation


def test_cache_errors_come_before_any_work():
    pipe = tiny_pipeline(torch.float32)
    with pytest.raises(ValueError, match="publishes none"):
        pipe.generate(**REQUEST, cache="magcache")
    with pytest.raises(ValueError, match="leaves none"):
        pipe.generate(**REQUEST, cache=FBCache(probe_blocks=2))
    assert math.isfinite(pipe.generate(**REQUEST, cache=("teacache", 0.2)).metadata["cache"]["steps"])


# ---- interface: CLI flags and the planner

def test_cli_flags_build_the_policy_or_refuse(tmp_path):
    from vidpar.cli import build_parser
    from vidpar.cli.common import UsageError
    from vidpar.cli.generate import plan_jobs

    def planned(*flags):
        ns = build_parser().parse_args(["generate", "--model", "tiny", "--prompt", "x", "--out",
                                        str(tmp_path / "v.npy"), *flags])
        plan_jobs(ns, 1)
        return ns.cache_policy

    assert planned() is None
    assert planned("--cache", "fbcache", "--cache-threshold", "0.2", "--cache-warmup", "3") == FBCache(
        0.2, guard=CacheGuard(warmup_steps=3))
    assert planned("--cache", "taylorseer", "--cache-interval", "3") == TaylorSeer(interval=3)
    for flags, message in ((("--cache-threshold", "0.2"), "need --cache"),
                           (("--cache", "taylorseer", "--cache-threshold", "0.1"), "takes no threshold"),
                           (("--cache", "fbcache", "--cache-threshold", "-1"), "threshold"),
                           (("--cache", "teacache", "--cache-interval", "3"), "takes no interval")):
        with pytest.raises(UsageError, match=message):
            planned(*flags)


def test_cli_generate_logs_what_the_cache_skipped(tmp_path):
    from cli_run import TINY, run_vidpar

    res = run_vidpar(["generate", *TINY, "--steps", "8", "--out", "v.npy", "--cache", "fbcache",
                      "--cache-threshold", "0.3"], tmp_path)
    assert res.returncode == 0, res.stdout
    assert "step cache fbcache:" in res.stdout and "skipped" in res.stdout, res.stdout


def test_planner_takes_the_expected_skip_ratio():
    from vidpar.planner import StepCacheEstimate, make_request, plan_layouts

    base = plan_layouts(make_request("wan2.1-t2v-1.3b", 480, 832, 81, 2, 2))[0][0]
    cached = plan_layouts(make_request("wan2.1-t2v-1.3b", 480, 832, 81, 2, 2, skip_ratio=0.5))[0][0]
    assert cached.step_time_s == base.step_time_s
    assert cached.denoise_time_s == pytest.approx(0.5 * base.denoise_time_s)
    assert StepCacheEstimate.from_metadata({"blocks_skipped": 30, "blocks_total": 120}).skip_ratio == 0.25
    with pytest.raises(ValueError, match="skip_ratio"):
        make_request("wan2.1-t2v-1.3b", 480, 832, 81, 2, 2, skip_ratio=1.0)
