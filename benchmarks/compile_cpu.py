"""Compiled vs eager Wan DiT forward on CPU: vidpar, vidpar with its 1-rank plan, and diffusers, in one run.

    python benchmarks/compile_cpu.py                              # dim 256, 4 heads, 4 layers, 2048 tokens
    python benchmarks/compile_cpu.py --frames 16 --repeats 7 --threads 2

One random Wan DiT is written as a diffusers-layout folder and loaded by vidpar (twice: one copy gets
``vidpar.parallelize`` with a 1-rank context, the world-size-1 path of a parallel run) and by diffusers
(``WanTransformer3DModel``), all fp32. Each of the three gets an eager copy and a copy whose blocks are compiled
the same way (inductor, ``vidpar.compile.compile_regions``: every block on its own). After one warm-up call (the
compile) the six are timed round by round in alternating order (machine noise hits all alike); printed: median and
minimum per forward, the compile time, the ratios, and the largest difference of each output to vidpar eager.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]

import torch  # noqa: E402

import vidpar  # noqa: E402
from suite_parts.common import rel_err  # noqa: E402
from suite_parts.dit import _load_diffusers, write_diffusers_folder  # noqa: E402
from vidpar.compile import CompileOptions, compile_regions  # noqa: E402
from vidpar.models.wan import WanTransformer3D, WanTransformerConfig  # noqa: E402
from vidpar.parallel import ParallelConfig, init_parallel  # noqa: E402


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
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--backend", default="inductor", help="torch.compile backend")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cpu = torch.device("cpu")
    config = WanTransformerConfig(dim=args.heads * args.head_dim, num_heads=args.heads, num_layers=args.layers,
                                  ffn_dim=args.ffn, text_dim=args.text_dim, freq_dim=256)
    ctx = init_parallel(ParallelConfig())  # world size 1: no torch.distributed
    models = {}
    with tempfile.TemporaryDirectory() as tmp:
        write_diffusers_folder(config, Path(tmp), cpu)
        for mode in ("eager", "compiled"):
            models[("vidpar", mode)] = WanTransformer3D.from_pretrained(tmp, dtype=torch.float32)
            models[("vidpar+plan", mode)] = vidpar.parallelize(WanTransformer3D.from_pretrained(tmp, dtype=torch.float32), ctx)
            models[("diffusers", mode)] = _load_diffusers(Path(tmp), torch.float32, cpu)
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(1, 16, args.frames, 32, 32, generator=g)
    text = torch.randn(1, args.text_tokens, args.text_dim, generator=g)
    t = torch.tensor([700.0])

    def call(key):
        model = models[key]
        if key[0] == "diffusers":
            return model(hidden_states=latents, timestep=t, encoder_hidden_states=text, return_dict=False)[0]
        return model(latents, t, text)

    first, outs = {}, {}
    for key, model in models.items():
        if key[1] == "compiled":
            compile_regions(model.blocks, CompileOptions(backend=args.backend, dynamic=False))
        t0 = time.perf_counter()
        outs[key] = call(key)
        first[key] = time.perf_counter() - t0
    keys = list(models)
    times = {k: [] for k in keys}
    for i in range(args.repeats):
        for key in keys if i % 2 else keys[::-1]:
            t0 = time.perf_counter()
            call(key)
            times[key].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) * 1e3 for k, v in times.items()}
    best = {k: min(v) * 1e3 for k, v in times.items()}
    ratio = lambda a, b: statistics.median(x / y for x, y in zip(times[a], times[b]))  # noqa: E731
    tokens = args.frames * 16 * 16
    print(f"Wan DiT dim={config.dim} heads={args.heads} layers={args.layers} ffn={args.ffn} tokens={tokens} "
          f"text={args.text_tokens} fp32 cpu, {torch.get_num_threads()} threads, torch {torch.__version__}, "
          f"compile backend {args.backend} (regional), median of {args.repeats}")
    for key in keys:
        compile_s = f"   compile {first[key] - med[key] / 1e3:6.1f} s" if key[1] == "compiled" else ""
        print(f"  {key[0]:12s} {key[1]:9s} median {med[key]:8.1f} ms   min {best[key]:8.1f} ms{compile_s}   "
              f"max rel diff vs vidpar eager {rel_err(outs[key], outs[('vidpar', 'eager')]):.1e}")
    for impl in ("vidpar", "vidpar+plan", "diffusers"):
        print(f"  {impl:12s} compiled / eager      {ratio((impl, 'compiled'), (impl, 'eager')):.3f}")
    for mode in ("eager", "compiled"):
        print(f"  vidpar / diffusers ({mode:8s})    {ratio(('vidpar', mode), ('diffusers', mode)):.3f}")
        print(f"  vidpar+plan / vidpar ({mode:8s})  {ratio(('vidpar+plan', mode), ('vidpar', mode)):.3f} "
              f"(world-size-1 overhead {100 * (ratio(('vidpar+plan', mode), ('vidpar', mode)) - 1):+.1f} %)")
    print("  (ratios: median of per-round ratios)")


if __name__ == "__main__":
    main()
