"""World size 1: vidpar's parallelized Wan DiT vs the plain model, and vidpar's Wan DiT vs diffusers' (CPU).

    python benchmarks/overhead_world1.py                       # dim 256, 4 heads, 4 layers, 2048 tokens
    python benchmarks/overhead_world1.py --frames 4 --repeats 7 --threads 2

One diffusers ``WanTransformer3DModel`` with random weights is saved with ``save_pretrained`` and loaded into
vidpar's ``WanTransformer3D.from_pretrained`` (same weights). Three forwards are timed, interleaved round by
round in alternating order (so machine noise hits all of them alike), after one warm-up round:

- ``plain``: vidpar's model as built (single device, no plan);
- ``parallelized``: the same model object after ``vidpar.parallelize(model, ctx)`` with a 1-rank
  ``ParallelContext`` (no torch.distributed), called directly;
- ``diffusers``: diffusers' model on the same inputs.

Printed: median and minimum per-forward times, the median of per-round ratios, the ratio of minima, and the max relative difference of the
outputs (the three must agree: same weights, same math).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import torch
from diffusers import WanTransformer3DModel

import vidpar
from vidpar.models.wan import WanTransformer3D
from vidpar.parallel import ParallelConfig, init_parallel


def diffusers_model(heads: int, head_dim: int, layers: int, ffn: int, text_dim: int, seed: int = 0) -> WanTransformer3DModel:
    """A diffusers Wan T2V DiT whose every parameter is perturbed (diffusers zero-initialises some layers)."""
    torch.manual_seed(seed)
    model = WanTransformer3DModel(
        patch_size=(1, 2, 2), num_attention_heads=heads, attention_head_dim=head_dim, in_channels=16,
        out_channels=16, text_dim=text_dim, freq_dim=256, ffn_dim=ffn, num_layers=layers, cross_attn_norm=True,
        qk_norm="rms_norm_across_heads", eps=1e-6, image_dim=None, added_kv_proj_dim=None, rope_max_seq_len=1024,
    )
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.02)
    return model.float().eval()


def rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


@torch.no_grad()
def fixed_cost_ms(model: WanTransformer3D, ctx, text_dim: int, repeats: int = 30) -> float:
    """Per-forward cost the world-1 plan adds (hooks, the attention wrapper's checks), on a 16-token input where
    it is not hidden by compute: min parallelized time minus min plain time, in ms."""
    g = torch.Generator().manual_seed(2)
    latents, text, t = torch.randn(1, 16, 1, 8, 8, generator=g), torch.randn(1, 8, text_dim, generator=g), torch.tensor([700.0])
    best = {}
    for parallel in (False, True, False, True):
        if parallel:
            vidpar.parallelize(model, ctx)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            model(latents, t, text)
            times.append(time.perf_counter() - t0)
        if parallel:
            vidpar.unparallelize(model)
        best[parallel] = min(best.get(parallel, float("inf")), min(times))
    return (best[True] - best[False]) * 1e3


@torch.no_grad()
def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--ffn", type=int, default=1024)
    p.add_argument("--text-dim", type=int, default=256)
    p.add_argument("--text-tokens", type=int, default=512)
    p.add_argument("--frames", type=int, default=8, help="latent frames; tokens = frames * (32/2) * (32/2)")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 is least disturbed by a busy machine)")
    args = p.parse_args()
    torch.set_num_threads(args.threads)

    ref = diffusers_model(args.heads, args.head_dim, args.layers, args.ffn, args.text_dim)
    with tempfile.TemporaryDirectory() as folder:
        ref.save_pretrained(folder, safe_serialization=True)
        native = WanTransformer3D.from_pretrained(folder).eval()
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(1, 16, args.frames, 32, 32, generator=g)
    text = torch.randn(1, args.text_tokens, args.text_dim, generator=g)
    t = torch.tensor([700.0])
    tokens = args.frames * 16 * 16

    ctx = init_parallel(ParallelConfig())  # world size 1: no torch.distributed

    def diffusers_forward() -> torch.Tensor:
        return ref(hidden_states=latents, timestep=t, encoder_hidden_states=text, return_dict=False)[0]

    names = ("plain", "parallelized", "diffusers")
    times: dict[str, list[float]] = {k: [] for k in names}
    outs: dict[str, torch.Tensor] = {}
    for i in range(args.repeats + 1):
        for name in names if i % 2 else names[::-1]:  # alternate the order so drifts in load cancel
            if name == "parallelized":  # the plan is applied in place to the same object, outside the timing
                vidpar.parallelize(native, ctx)
            t0 = time.perf_counter()
            outs[name] = diffusers_forward() if name == "diffusers" else native(latents, t, text)
            dt = time.perf_counter() - t0
            if name == "parallelized":
                vidpar.unparallelize(native)
            if i:  # round 0 is warm-up
                times[name].append(dt)
    out_plain, out_par, out_diff = (outs[k] for k in names)

    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    best = {k: min(v) * 1e3 for k, v in times.items()}
    ratio = lambda a, b: statistics.median(x / y for x, y in zip(times[a], times[b]))  # noqa: E731
    print(f"Wan DiT dim={args.heads * args.head_dim} heads={args.heads} layers={args.layers} ffn={args.ffn} "
          f"tokens={tokens} text={args.text_tokens} fp32 cpu, {torch.get_num_threads()} threads, "
          f"median of {args.repeats}")
    for k in names:
        print(f"  {k:13s} median {med[k]:8.1f} ms   min {best[k]:8.1f} ms")
    print(f"  parallelized / plain  {ratio('parallelized', 'plain'):.4f} (median of per-round ratios), "
          f"overhead {100 * (ratio('parallelized', 'plain') - 1):+.2f} %")
    print(f"  parallelized / plain  {best['parallelized'] / best['plain']:.4f} (ratio of minima)")
    print(f"  vidpar / diffusers    {ratio('plain', 'diffusers'):.4f} (median of per-round ratios)")
    fixed = fixed_cost_ms(native, ctx, args.text_dim)
    print(f"  fixed cost of the plan per forward (16 tokens, 8 text, min of 30): {fixed:+.3f} ms = "
          f"{100 * fixed / best['plain']:+.3f} % of the fastest plain forward above")
    print(f"  max rel diff: parallelized vs plain {rel_diff(out_par, out_plain):.2e}, "
          f"vidpar vs diffusers {rel_diff(out_plain, out_diff):.2e}")


if __name__ == "__main__":
    main()
