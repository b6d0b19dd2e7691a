"""Step caching on every mesh: the same skipped steps and the same video on 1, 2 and 4 processes (Ulysses, ring,
USP, CFG-parallel, FSDP, two experts), identical decisions on every rank (recorded per rank and compared), no hang
and the global decision when one rank's shard alone would decide otherwise, resume equal to an uninterrupted run,
and the HunyuanVideo-1.5 DiT's two-stream loop under the same policies."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vidpar.cache import CacheGuard, FBCache, MagCache, TaylorSeer, TeaCache
from vidpar.checkpoint import GenerationInterrupted, StopRequest
from vidpar.parallel import ParallelConfig, init_parallel

from cache_loop import cached_loop
from test_pipeline import make_pipeline  # the tiny pipeline, optionally with a Wan 2.2-style expert pair

REQUEST = dict(prompt="a red fox in snow", height=32, width=32, num_frames=5, num_steps=10, seed=7)
# Thresholds that make each policy skip some (not all) of the tiny model's 10 steps.
POLICIES = {
    "fbcache": FBCache(0.2),
    "teacache": TeaCache(0.5),
    "magcache": MagCache(0.08, ratios=(1.0, 0.99, 0.985, 0.98, 0.975, 0.97, 0.96, 0.95, 0.93, 0.9)),
    "taylorseer": TaylorSeer(interval=3),
}
FLOAT32_POLICIES = ("fbcache", "teacache")  # the two whose decisions come from reduced activations / embeddings
MESHES = [(2, (2, 1, 1)), (2, (1, 2, 1)), (2, (1, 1, 2)), (4, (2, 2, 1)), (4, (1, 2, 2)), (4, (2, 1, 2))]


def decisions(meta: dict) -> list[int]:
    return meta["skipped_steps"]


def generate_task(env, degrees, dtype_name, names, experts=False, fsdp=False):
    """``{policy: (frames or None, cache metadata, its decisions [step, expert, skip, forced, metric])}``; each
    rank returns its own metadata, so the test compares the ranks' decisions."""
    ctx = env.context(ParallelConfig(*degrees)) if env is not None else init_parallel(ParallelConfig())
    pipe = make_pipeline(ctx, getattr(torch, dtype_name), experts, fsdp)
    out = {}
    for name in names:
        video = pipe.generate(**REQUEST, cache=POLICIES[name])
        meta = video.metadata["cache"]
        out[name] = (video.frames, meta, [tuple(d) for d in meta["decisions"]])
    return out


@pytest.fixture(scope="module")
def reference():
    """Single-process cached runs (float64: every policy; float32: the two compared in float32) and the uncached
    float64 video."""
    ref = {"float64": generate_task(None, None, "float64", tuple(POLICIES)),
           "float32": generate_task(None, None, "float32", FLOAT32_POLICIES)}
    ctx = init_parallel(ParallelConfig())
    ref["uncached"] = make_pipeline(ctx, torch.float64).generate(**REQUEST).frames
    return ref


def test_every_policy_skips_some_steps_and_changes_the_video_a_little(reference):
    for name, (frames, meta, _trace) in reference["float64"].items():
        assert 0 < meta["steps_skipped"] < meta["steps"] - 2, (name, meta)
        diff = np.abs(frames.astype(int) - reference["uncached"].astype(int))
        assert 0 < diff.mean() < 20, (name, diff.mean())  # really skipped, still the same video


def check_same(results, ref, exact: bool, label: str):
    for name, (frames, meta, trace) in ref.items():
        per_rank = [r[name] for r in results]
        assert all(r[2] == per_rank[0][2] for r in per_rank), f"{label} {name}: ranks decided differently"
        assert all(r[1] == per_rank[0][1] for r in per_rank), f"{label} {name}: metadata differs between ranks"
        assert [t[:4] for t in per_rank[0][2]] == [t[:4] for t in trace], f"{label} {name}: decisions differ"
        assert decisions(per_rank[0][1]) == decisions(meta)
        got = per_rank[0][0]
        if exact:
            assert np.array_equal(got, frames), f"{label} {name}: float64 frames differ"
        else:
            diff = np.abs(got.astype(int) - frames.astype(int))
            assert diff.max() <= 1 and (diff > 0).mean() < 1e-3, f"{label} {name}: fp32 pixel rule"


@pytest.mark.parametrize("world,degrees", MESHES, ids=[str(m[1]) for m in MESHES])
def test_same_decisions_and_video_on_every_mesh(pools, reference, world, degrees):
    results = pools(world).run(generate_task, degrees, "float64", tuple(POLICIES), timeout=180)
    check_same(results, reference["float64"], True, str(degrees))


@pytest.mark.parametrize("world,degrees", [(2, (1, 1, 2)), (4, (2, 2, 1))], ids=["cfg2", "usp"])
def test_float32_within_the_pixel_rule(pools, reference, world, degrees):
    results = pools(world).run(generate_task, degrees, "float32", FLOAT32_POLICIES, timeout=180)
    check_same(results, reference["float32"], False, str(degrees))


def test_fsdp_with_cfg_parallel(pools, reference):
    # FSDP all-gathers weights over the whole world: a cfg half that skipped while the other computed would hang
    results = pools(4).run(generate_task, (2, 1, 2), "float64", ("fbcache", "taylorseer"), False, True,
                           timeout=180)
    check_same(results, {k: reference["float64"][k] for k in ("fbcache", "taylorseer")}, True, "fsdp")


def test_two_experts_cache_separately(pools):
    names = ("fbcache", "taylorseer")
    ref = generate_task(None, None, "float64", names, True)
    for name in names:
        trace = ref[name][2]
        switch = next(t for t in trace if t[1] == 1)  # the low-noise expert's first step starts its own cache
        assert switch[3] in ("no_cache", "warmup") and not switch[2]
        assert any(t[2] for t in trace if t[1] == 1) or any(t[2] for t in trace if t[1] == 0)
    results = pools(4).run(generate_task, (1, 2, 2), "float64", names, True, timeout=180)
    check_same(results, ref, True, "experts")


# ---- one rank's shard alone would decide otherwise

def wan_dit(dtype=torch.float64):
    from vidpar.models.wan import WanTransformer3D, WanTransformerConfig

    cfg = WanTransformerConfig(num_heads=2, dim=16, num_layers=3, ffn_dim=32, text_dim=8, freq_dim=16)
    torch.manual_seed(0)
    model = WanTransformer3D(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.to(dtype).eval()


def disagreement_inputs(model):
    """Latents of 2 latent frames (frame 0's tokens on rank 0 of 2, frame 1's on rank 1) and a step-2 change of
    frame 1 only: rank 1's piece of the probe residual changes a lot, rank 0's a little (through attention)."""
    g = torch.Generator().manual_seed(3)
    latents = torch.randn(1, 16, 2, 4, 4, generator=g, dtype=torch.float64)
    text = {"cond": {"text_states": torch.randn(1, 5, 8, generator=g, dtype=torch.float64)}}
    bump = torch.zeros_like(latents)
    bump[:, :, 1] = 3.0 * torch.randn(1, 16, 4, 4, generator=g, dtype=torch.float64)
    return latents, text, {2: bump}


def disagreement_task(env, degrees, threshold):
    ctx = env.context(ParallelConfig(*degrees)) if env is not None else init_parallel(ParallelConfig())
    import vidpar

    model = wan_dit()
    latents, inputs, perturb = disagreement_inputs(model)
    if ctx.world_size > 1:
        vidpar.parallelize(model, ctx)
    policy = FBCache(threshold, guard=CacheGuard(warmup_steps=0, final_steps=0))
    try:
        out, trace, stats = cached_loop(model, ctx, policy, latents, inputs, 4, perturb=perturb)
    finally:
        if ctx.world_size > 1:
            vidpar.unparallelize(model)
    return out, trace, stats.skipped_steps


def test_a_rank_that_alone_would_decide_otherwise_follows_the_global_decision(pools):
    probe = pools(2).run(disagreement_task, (2, 1, 1), 0.0)  # threshold 0: compute every step, record metrics
    step2 = [next(t for t in trace if t["step"] == 2) for _, trace, _ in probe]
    local0, local1, metric = step2[0]["local_metric"], step2[1]["local_metric"], step2[0]["metric"]
    assert local0 < metric < local1 and step2[1]["metric"] == metric, step2
    for threshold, skip in (((local0 + metric) / 2, False), ((metric + local1) / 2, True)):
        # rank 0 alone would skip (local0 < threshold) / rank 1 alone would compute (local1 > threshold)
        ref_out, ref_trace, ref_skipped = disagreement_task(None, None, threshold)
        results = pools(2).run(disagreement_task, (2, 1, 1), threshold, timeout=60)  # no hang
        for out, trace, skipped in results:
            assert (2 in skipped) is skip and skipped == ref_skipped
            assert [t["skip"] for t in trace] == [t["skip"] for t in ref_trace]
            assert (out - ref_out).abs().max().item() <= 1e-12 * ref_out.abs().max().item()


# ---- resume: interrupted + resumed = uninterrupted (also on another mesh)

def interrupt_task(env, degrees, folder, name, stop_after):
    ctx = env.context(ParallelConfig(*degrees))
    pipe = make_pipeline(ctx, torch.float64)
    stop = StopRequest()
    if stop_after is not None and ctx.rank == ctx.world_size - 1:
        calls = {"n": 0}

        def count(_m, _a, _o):
            calls["n"] += 1
            if calls["n"] == stop_after:
                stop.request("SIGTERM")

        pipe.comps.transformer.register_forward_hook(count)
    try:
        video = pipe.generate(**REQUEST, cache=POLICIES[name], checkpoint_dir=folder, stop=stop)
    except GenerationInterrupted as e:
        return ("interrupted", e.step)
    return ("done", video.frames, video.metadata["cache"])


@pytest.mark.parametrize("name", ["fbcache", "taylorseer"])
def test_resume_equals_uninterrupted(pools, reference, tmp_path, name):
    folder = str(tmp_path / "ckpt")
    # stopped on the cfg mesh in step 5 (one forward per step and rank there), resumed on the Ulysses mesh
    first = pools(2).run(interrupt_task, (1, 1, 2), folder, name, 6)
    assert all(r == ("interrupted", 6) for r in first), first
    second = pools(2).run(interrupt_task, (2, 1, 1), folder, name, None)
    frames, meta = reference["float64"][name][0], reference["float64"][name][1]
    assert second[0][0] == "done" and np.array_equal(second[0][1], frames)
    assert second[0][2]["skipped_steps"] == meta["skipped_steps"] and second[0][2]["steps"] == 10


def other_settings_task(env, folder):
    ctx = env.context(ParallelConfig(ulysses=2))
    pipe = make_pipeline(ctx, torch.float64)
    try:
        pipe.generate(**REQUEST, cache=FBCache(0.21), checkpoint_dir=folder)
    except ValueError as e:
        return str(e)
    return None


def test_snapshot_of_other_cache_settings_is_refused(pools, tmp_path):
    folder = str(tmp_path / "ckpt")
    assert all(r[0] == "interrupted" for r in pools(2).run(interrupt_task, (2, 1, 1), folder, "fbcache", 4))
    assert all("different generation" in r for r in pools(2).run(other_settings_task, folder))


# ---- HunyuanVideo-1.5: video stream split, text stream full on every rank

def hy_task(env, degrees, names):
    ctx = env.context(ParallelConfig(*degrees)) if env is not None else init_parallel(ParallelConfig())
    import vidpar
    from vidpar.models.hunyuanvideo15 import HunyuanVideo15Transformer3D, HunyuanVideo15TransformerConfig

    from hy15_reference import make_inputs

    cfg = HunyuanVideo15TransformerConfig(num_layers=3, mlp_ratio=2.0, in_channels=9, out_channels=9, text_dim=20,
                                          glyph_dim=12, image_dim=8, task="t2v", hidden_size=48, num_heads=3,
                                          rope_axes_dim=(4, 6, 6))
    torch.manual_seed(0)
    model = HunyuanVideo15Transformer3D(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    model = model.double().eval()
    branch = lambda text, seed: {k: (v.double() if v is not None and v.is_floating_point() else v)  # noqa: E731
                                 for k, v in make_inputs(cfg, grid=(2, 3, 5), batch=1, text_valid=(text,),
                                                         glyph_valid=(0,), image_tokens=None, seed=seed).items()
                                 if k not in ("latents", "timestep")}
    inputs = {"cond": branch(6, 1), "uncond": branch(3, 2)}  # the branches differ in text length too
    latents = torch.randn(1, 9, 2, 3, 5, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    # the random tiny DiT changes a lot from step to step: thresholds large enough to skip some steps
    policies = {"fbcache": FBCache(0.75, guard=CacheGuard(warmup_steps=1)),
                "teacache": TeaCache(1.0, guard=CacheGuard(warmup_steps=1)),
                "taylorseer": TaylorSeer(interval=3)}
    if ctx.world_size > 1:
        vidpar.parallelize(model, ctx)
    out = {}
    try:
        for name in names:
            x, trace, stats = cached_loop(model, ctx, policies[name], latents, inputs, 8)
            out[name] = (x, [(t["step"], t["skip"], t["forced"], t["metric"]) for t in trace], stats.skipped_steps)
    finally:
        if ctx.world_size > 1:
            vidpar.unparallelize(model)
    return out


@pytest.mark.parametrize("world,degrees", [(2, (2, 1, 1)), (4, (1, 2, 2))], ids=["ulysses", "ring+cfg"])
def test_hunyuanvideo15_two_stream_loop_on_every_mesh(pools, world, degrees):
    names = ("fbcache", "teacache", "taylorseer")
    ref = hy_task(None, None, names)
    for name in names:
        assert 0 < len(ref[name][2]) < 7, (name, ref[name][2])
    for rank, result in enumerate(pools(world).run(hy_task, degrees, names, timeout=120)):
        for name in names:
            x, trace, skipped = result[name]
            assert [t[:3] for t in trace] == [t[:3] for t in ref[name][1]], (degrees, rank, name)
            err = ((x - ref[name][0]).abs().max() / ref[name][0].abs().max()).item()
            assert err <= 1e-12, (degrees, rank, name, err)
