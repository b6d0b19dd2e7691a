"""Step caching (``vidpar.cache``): what it skips, what it saves, what it changes; and cache-dit beside it (CPU).

    python benchmarks/step_cache.py                    # tiny-shapes (6 held-out prompts), a bigger random Wan,
                                                       # and vidpar vs cache-dit on diffusers' WanPipeline
    python benchmarks/step_cache.py --adherence        # + tiny-shapes prompt adherence on all 36 held-out prompts
    python benchmarks/step_cache.py --calibrate        # tiny-shapes calibration (MagCache ratios, TeaCache fit)
    python benchmarks/step_cache.py --sweep            # tiny-shapes thresholds on training prompts
    python benchmarks/step_cache.py --only wan,cachedit --threads 2

Per model and policy (each at its default for that model unless a threshold is given): DiT forwards and blocks
run vs skipped, wall time of the generation and of the DiT forwards alone, and the frames' difference to the
uncached video of the same prompt and seed (PSNR over all frames, max pixel error). Prompt adherence uses the
detector of ``tests/test_tiny_shapes.py`` (colour present and dominant in every frame, centroid moving the named
way). The side-by-side saves one random-weight diffusers ``WanPipeline`` folder; vidpar loads the same folder
(same weights, same scheduler) and runs FBCache; cache-dit's DBCache ``F1B0`` (its FBCache) runs on diffusers'
pipeline with the same threshold and warm-up, one decision per step for both branches
(``cfg_diff_compute_separate=False``) as vidpar makes it.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))  # the adherence detector and the tiny diffusers parts of the tests

from vidpar.cache import FBCache, MagCache, TaylorSeer, TeaCache, calibrate  # noqa: E402
from vidpar.data.shapes import DIRECTIONS, caption, held_out_prompts, training_triples  # noqa: E402
from vidpar.models.wan.components import load_components  # noqa: E402
from vidpar.parallel import ParallelConfig, init_parallel  # noqa: E402
from vidpar.pipeline import Pipeline  # noqa: E402

DEFAULT_POLICIES = {"fbcache": FBCache(), "teacache": TeaCache(), "magcache": MagCache(), "taylorseer": TaylorSeer()}


def machine() -> str:
    return (f"{platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, Python {platform.python_version()}")


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


class DiTTimer:
    """Wall time inside the denoisers' forwards (forward hooks; the VAE decode dominates tiny models on CPU)."""

    def __init__(self, modules) -> None:
        self.total, self._t0 = 0.0, None
        for m in modules:
            m.register_forward_pre_hook(self._start)
            m.register_forward_hook(self._stop)

    def _start(self, *_):
        self._t0 = time.perf_counter()

    def _stop(self, *_):
        self.total += time.perf_counter() - self._t0


def run_policies(pipe: Pipeline, prompts, policies: dict, sampling: dict, score=None) -> list[dict]:
    """Every policy (and None) on every prompt: one row per policy with the means and extremes."""
    timer = DiTTimer(pipe.comps.denoisers())
    rows = []
    uncached = {}
    for name, policy in [("none", None), *policies.items()]:
        acc = {"policy": name, "wall_s": 0.0, "dit_s": 0.0, "psnr": [], "max_err": 0, "adherent": 0,
               "steps_skipped": 0, "steps": 0, "forwards_computed": 0, "forwards_skipped": 0, "blocks_run": 0,
               "blocks_total": 0}
        for i, prompt in enumerate(prompts):
            timer.total = 0.0
            t0 = time.perf_counter()
            video = pipe.generate(prompt, seed=1000 + i, cache=policy, **sampling)
            acc["wall_s"] += time.perf_counter() - t0
            acc["dit_s"] += timer.total
            meta = video.metadata.get("cache")
            if meta is None:
                uncached[prompt] = video.frames
                f = 2 * sampling.get("num_steps", pipe.card.defaults.num_steps)
                n = len(pipe.comps.block_loop(pipe.comps.denoisers()[0]))
                meta = {"steps_skipped": 0, "steps": f // 2, "forwards_computed": f, "forwards_skipped": 0,
                        "blocks_run": f * n, "blocks_total": f * n}
            else:
                acc["settings"] = meta["settings"]["experts"][0]
            for k in ("steps_skipped", "steps", "forwards_computed", "forwards_skipped", "blocks_run",
                      "blocks_total"):
                acc[k] += meta[k]
            acc["psnr"].append(psnr(video.frames, uncached[prompt]))
            acc["max_err"] = max(acc["max_err"], int(np.abs(video.frames.astype(int)
                                                            - uncached[prompt].astype(int)).max()))
            if score is not None:
                acc["adherent"] += int(score(i, video.frames))
        finite = [p for p in acc["psnr"] if np.isfinite(p)]
        acc["psnr_mean"] = float(np.mean(finite)) if finite else float("inf")
        acc["psnr_min"] = float(min(finite)) if finite else float("inf")
        del acc["psnr"]
        acc["prompts"] = len(prompts)
        rows.append(acc)
        print(f"  {format_row(acc)}", flush=True)
    return rows


def format_row(r: dict) -> str:
    skipped = r["blocks_total"] - r["blocks_run"]
    text = (f"{r['policy']:>10}: steps skipped {r['steps_skipped']}/{r['steps']}, forwards run/skipped "
            f"{r['forwards_computed']}/{r['forwards_skipped']}, blocks run {r['blocks_run']}/{r['blocks_total']} "
            f"({skipped / r['blocks_total']:.0%} skipped), wall {r['wall_s']:.1f} s (DiT {r['dit_s']:.1f} s), "
            f"PSNR mean {r['psnr_mean']:.1f} dB / min {r['psnr_min']:.1f} dB, max pixel err {r['max_err']}")
    if "score" in r:
        text += f", adherence {r['adherent']}/{r['prompts']}"
    return text


def single_pipeline(name_or_comps, dtype=torch.float32) -> Pipeline:
    ctx = init_parallel(ParallelConfig())
    comps = load_components(name_or_comps, dtype, ctx.device) if isinstance(name_or_comps, str) else name_or_comps
    return Pipeline(comps, ctx, dtype)


# ---- tiny-shapes

def adherence_scorer(prompts):
    from test_tiny_shapes import colour_ok, direction_ok

    def score(i, frames):
        _prompt, color, _shape, direction = prompts[i]
        return colour_ok(frames, color) and direction_ok(frames, color, direction)

    return score


def tiny_shapes(args) -> dict:
    from test_tiny_shapes import SAMPLING

    pipe = single_pipeline("tiny-shapes")
    held = held_out_prompts()
    chosen = held if args.adherence else held[:: max(1, len(held) // 6)][:6]
    print(f"tiny-shapes: {len(chosen)} held-out prompts, {SAMPLING}, float32", flush=True)
    rows = run_policies(pipe, [p[0] for p in chosen], DEFAULT_POLICIES, SAMPLING, adherence_scorer(chosen))
    for r in rows:
        r["score"] = r["adherent"] / r["prompts"]
        print(f"    {r['policy']:>10}: adherence {r['adherent']}/{r['prompts']} = {r['score']:.1%}")
    return {"model": "tiny-shapes", "sampling": SAMPLING, "rows": rows}


def training_prompts(n: int) -> list[tuple[str, str, str, str]]:
    """``n`` training (colour, shape, direction) prompts spread over the set (straight motions: the detector's)."""
    triples = [t for t in training_triples() if t[2] in DIRECTIONS]
    step = max(1, len(triples) // n)
    return [(caption(c, s, d), c, s, d) for c, s, d in triples[::step][:n]]


def calibrate_tiny_shapes(args) -> None:
    from test_tiny_shapes import SAMPLING

    pipe = single_pipeline("tiny-shapes")
    prompts = [p[0] for p in training_prompts(args.calibration_prompts)]
    profile = calibrate(pipe, prompts, seed=5, **SAMPLING)[0]
    print(json.dumps({"source": profile.source, "magcache_ratios": profile.magcache_ratios,
                      "teacache_coefficients": profile.teacache_coefficients}, indent=1))


def sweep(args) -> None:
    from test_tiny_shapes import SAMPLING

    pipe = single_pipeline("tiny-shapes")
    chosen = training_prompts(args.sweep_prompts)
    grid = {f"fbcache@{t}": FBCache(t) for t in (0.12, 0.15, 0.2)}
    grid.update({f"teacache@{t}": TeaCache(t) for t in (0.1, 0.2, 0.3)})
    grid.update({f"magcache@{t}": MagCache(t) for t in (0.12, 0.24)})
    grid.update({f"taylorseer@{n}": TaylorSeer(interval=n) for n in (3, 4, 5)})
    print(f"tiny-shapes sweep on {len(chosen)} training prompts", flush=True)
    rows = run_policies(pipe, [p[0] for p in chosen], grid, SAMPLING, adherence_scorer(chosen))
    for r in rows:
        print(f"    {r['policy']:>16}: adherence {r['adherent']}/{r['prompts']}")


# ---- a bigger random-weight Wan

def bigger_wan(args) -> dict:
    from vidpar.models.wan import WanTransformer3D, WanTransformerConfig

    comps = load_components("tiny", torch.float32, "cpu")
    cfg = WanTransformerConfig(dim=args.wan_dim, num_heads=args.wan_dim // 64, num_layers=args.wan_layers,
                               ffn_dim=4 * args.wan_dim, text_dim=comps.transformer.config.text_dim, freq_dim=256,
                               text_len=comps.transformer.config.text_len)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        dit = WanTransformer3D(cfg).eval()
        with torch.no_grad():
            for p in dit.parameters():
                p.add_(torch.randn_like(p) * 0.02)
    comps.transformer = dit
    pipe = single_pipeline(comps)
    sampling = dict(height=args.wan_size, width=args.wan_size, num_frames=args.wan_frames, num_steps=args.wan_steps,
                    guidance_scale=5.0)
    tokens = pipe.card.geometry.num_tokens(args.wan_size, args.wan_size, args.wan_frames)
    print(f"random Wan: dim {cfg.dim}, {cfg.num_heads} heads, {cfg.num_layers} layers, {tokens} tokens, "
          f"{sampling}, float32", flush=True)
    prompts = ["a red fox in snow", "a boat on a lake"]
    policies = dict(DEFAULT_POLICIES)
    policies.pop("magcache")  # no published ratios for a random model: calibrated below
    profile = calibrate(pipe, prompts[:1], seed=99, **sampling)[0]
    policies["magcache"] = MagCache(ratios=profile.magcache_ratios)
    policies["fbcache@0.2"] = FBCache(0.2)
    policies["teacache@0.2"] = TeaCache(0.2, coefficients=profile.teacache_coefficients)
    rows = run_policies(pipe, prompts, policies, sampling)
    return {"model": f"random Wan dim {cfg.dim} x {cfg.num_layers} layers, {tokens} tokens", "sampling": sampling,
            "rows": rows}


# ---- vidpar vs cache-dit on the same weights

def build_diffusers_folder(folder: Path, args) -> None:
    import diffusers
    from text_reference import build_tiny_text_encoder
    from vae_reference import make_tiny_diffusers_vae
    from wan_reference import make_tiny_diffusers_wan

    text_encoder, tokenizer = build_tiny_text_encoder(folder)
    heads = args.wan_dim // 64
    transformer = make_tiny_diffusers_wan({"text_dim": 32, "num_layers": args.wan_layers, "num_attention_heads": heads,
                                           "attention_head_dim": 64, "ffn_dim": 4 * args.wan_dim,
                                           "rope_max_seq_len": 1024}, seed=1, std=0.02)
    pipe = diffusers.WanPipeline(tokenizer=tokenizer, text_encoder=text_encoder,
                                 vae=make_tiny_diffusers_vae("2.1", seed=2), transformer=transformer,
                                 scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0))
    pipe.save_pretrained(folder, safe_serialization=True)


def side_by_side(args) -> dict:
    import cache_dit
    import diffusers
    from cache_dit import DBCacheConfig

    threshold, warmup, steps = args.cdit_threshold, args.cdit_warmup, args.wan_steps
    sampling = dict(height=args.wan_size, width=args.wan_size, num_frames=args.wan_frames, num_steps=steps,
                    guidance_scale=5.0, seed=3)
    prompt = "a red fox in snow"
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "wan"
        build_diffusers_folder(folder, args)
        ours = Pipeline.from_pretrained(folder, dtype=torch.float32)
        timer = DiTTimer(ours.comps.denoisers())
        t0 = time.perf_counter()
        v0 = ours.generate(prompt, **sampling).frames
        v_t = (time.perf_counter() - t0, timer.total)
        timer.total = 0.0
        t0 = time.perf_counter()
        cached = ours.generate(prompt, cache=FBCache(threshold, guard=_guard(warmup)), **sampling)
        v_ct = (time.perf_counter() - t0, timer.total)
        v1, meta = cached.frames, cached.metadata["cache"]

        pipe = diffusers.WanPipeline.from_pretrained(folder, dtype=torch.float32)
        call = dict(prompt=prompt, negative_prompt="", height=sampling["height"], width=sampling["width"],
                    num_frames=sampling["num_frames"], num_inference_steps=steps, guidance_scale=5.0,
                    output_type="np")
        t0 = time.perf_counter()
        d0 = _uint8(pipe(**call, generator=torch.Generator().manual_seed(3)).frames[0])
        d_t = time.perf_counter() - t0
        cache_dit.enable_cache(pipe, cache_config=DBCacheConfig(
            Fn_compute_blocks=1, Bn_compute_blocks=0, residual_diff_threshold=threshold, max_warmup_steps=warmup,
            enable_separate_cfg=True, cfg_diff_compute_separate=False, num_inference_steps=steps))
        t0 = time.perf_counter()
        d1 = _uint8(pipe(**call, generator=torch.Generator().manual_seed(3)).frames[0])
        d_ct = time.perf_counter() - t0
        stats = cache_dit.summary(pipe, logging=False)[0]
    result = {
        "threshold": threshold, "warmup": warmup, "steps": steps, "prompt": prompt,
        "vidpar": {"skipped_steps": meta["skipped_steps"], "blocks_run": meta["blocks_run"],
                   "blocks_total": meta["blocks_total"], "psnr_vs_uncached": psnr(v1, v0),
                   "max_err_vs_uncached": int(np.abs(v1.astype(int) - v0.astype(int)).max()),
                   "wall_s": [round(v_t[0], 2), round(v_ct[0], 2)], "dit_s": [round(v_t[1], 2), round(v_ct[1], 2)]},
        "cache_dit": {"cached_steps": list(stats.cached_steps), "cfg_cached_steps": list(stats.cfg_cached_steps),
                      "psnr_vs_uncached": psnr(d1, d0),
                      "max_err_vs_uncached": int(np.abs(d1.astype(int) - d0.astype(int)).max()),
                      "wall_s": [round(d_t, 2), round(d_ct, 2)]},
        "uncached_vidpar_vs_diffusers_max_err": int(np.abs(v0.astype(int) - d0.astype(int)).max()),
        "cached_vidpar_vs_cache_dit_max_err": int(np.abs(v1.astype(int) - d1.astype(int)).max()),
        "cached_vidpar_vs_cache_dit_psnr": psnr(v1, d1),
    }
    print(json.dumps(result, indent=1), flush=True)
    return result


def _guard(warmup: int):
    from vidpar.cache import CacheGuard

    return CacheGuard(warmup_steps=warmup)


def _uint8(frames: np.ndarray) -> np.ndarray:
    return np.round(np.clip(frames, 0, 1) * 255).astype(np.uint8)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default="shapes,wan,cachedit", help="sections: shapes, wan, cachedit")
    parser.add_argument("--adherence", action="store_true", help="tiny-shapes: all 36 held-out prompts")
    parser.add_argument("--calibrate", action="store_true", help="print the tiny-shapes calibration and exit")
    parser.add_argument("--calibration-prompts", type=int, default=8)
    parser.add_argument("--sweep", action="store_true", help="tiny-shapes thresholds on training prompts, exit")
    parser.add_argument("--sweep-prompts", type=int, default=12)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--wan-dim", type=int, default=256)
    parser.add_argument("--wan-layers", type=int, default=8)
    parser.add_argument("--wan-size", type=int, default=128)
    parser.add_argument("--wan-frames", type=int, default=9)
    parser.add_argument("--wan-steps", type=int, default=20)
    parser.add_argument("--cdit-threshold", type=float, default=0.2)
    parser.add_argument("--cdit-warmup", type=int, default=3)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"machine: {machine()}\ncommand: {' '.join(sys.argv)}", flush=True)
    if args.calibrate:
        calibrate_tiny_shapes(args)
        return 0
    if args.sweep:
        sweep(args)
        return 0
    out = {"machine": machine(), "command": " ".join(sys.argv)}
    sections = set(args.only.split(","))
    if "shapes" in sections:
        out["tiny_shapes"] = tiny_shapes(args)
    if "wan" in sections:
        out["wan"] = bigger_wan(args)
    if "cachedit" in sections:
        out["side_by_side"] = side_by_side(args)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
