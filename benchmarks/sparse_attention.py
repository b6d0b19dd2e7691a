"""Structured sparse attention on CPU: time and FLOPs against dense, ring bytes dense against windowed.

    PYTHONPATH=. python benchmarks/sparse_attention.py time --threads 1        # one process, growing tokens
    PYTHONPATH=. torchrun --nproc-per-node 4 benchmarks/sparse_attention.py bytes  # ring=4, bytes from the counter
    PYTHONPATH=. python benchmarks/sparse_attention.py model                   # Wan-14B grids, modeled

``time``: one layer's attention shapes scaled down (B=1, H=4, D=64, fp32) on token grids of growing size with
each pattern's default tile/window scaled to the grid; dense is the same LSE kernel (``sdpa_cpu``) on all
tokens. FLOPs = 4 * (query, key) pairs computed * D * H. SVG includes its online per-head profile.
``bytes``: ``ctx.comm_stats()["ring"]`` of one attention call on every rank, dense ring vs windowed ring, next to
``predict_sparse_ring_bytes`` (they must agree exactly), plus wall time (median of --repeats).
``model``: the same prediction functions at Wan2.1-14B token grids (40 heads x 128, bf16), ring=8.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time

import torch
import torch.distributed as dist

from vidpar.kernels import attention_with_lse
from vidpar.parallel import ParallelConfig, attention, init_parallel, split_sizes
from vidpar.parallel.sparse import (
    LayoutCache,
    SparseAttention,
    SparseCall,
    TokenGrid,
    attended_fraction,
    mask_density,
    predict_sparse_ring_bytes,
)

HEADS, HEAD_DIM = 4, 64
SCALED = {  # patterns for the scaled-down grids: 128-token tiles (as the papers' blocks), windows in proportion
    "window": "window:tile=2x8x8,window=3x3x3",
    "radial": "radial:tile=1x4x32,min_width=64,decay_factor=0.2",
    "svg": "svg:tile=1x4x32,density=0.25",
}
TIME_GRIDS = [(4, 16, 16), (8, 16, 16), (8, 32, 32), (16, 32, 32)]
BYTES_GRIDS = [(16, 16, 16), (32, 16, 16)]


def machine() -> str:
    load = "/".join(f"{x:.1f}" for x in os.getloadavg())
    return (f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}, "
            f"{torch.get_num_threads()} threads, load avg {load}")


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up (builds and caches layouts)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def interleaved_medians(fns: dict, repeats: int) -> dict:
    """Median seconds of each function, timed in turn round by round (a shared machine's load hits all alike)."""
    for fn in fns.values():
        fn()  # warm-up (builds and caches layouts)
    times: dict = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    return {name: statistics.median(t) for name, t in times.items()}


def run_time(repeats: int) -> None:
    ctx = init_parallel(ParallelConfig())
    print(f"# sparse attention time, one process: {machine()}; B=1 H={HEADS} D={HEAD_DIM} fp32, "
          f"median of {repeats}, methods interleaved")
    print(f"{'grid':>10} {'tokens':>7} {'pattern':>7} {'computed':>8} {'kept':>6} {'GFLOP':>7} {'ms':>9} "
          f"{'vs dense':>8}")
    for shape in TIME_GRIDS:
        grid = TokenGrid(*shape)
        g = torch.Generator().manual_seed(0)
        q, k, v = (torch.randn(1, grid.tokens, HEADS, HEAD_DIM, generator=g) for _ in range(3))
        configs = {name: SparseAttention.from_cli(spec) for name, spec in SCALED.items()}
        fns = {"dense": lambda: attention_with_lse(q, k, v, "sdpa_cpu")}
        for name, config in configs.items():
            call = SparseCall(config, grid, LayoutCache())
            fns[name] = lambda call=call: attention(q, k, v, ctx, sparse=call)
        med = interleaved_medians(fns, repeats)
        dense_gflop = 4 * grid.tokens ** 2 * HEAD_DIM * HEADS / 1e9
        for name, seconds in med.items():
            config = configs.get(name)
            half = [h % 2 for h in range(HEADS)] if config is not None and config.per_head else None
            computed = 1.0 if config is None else attended_fraction(config, grid, half)
            kept = 1.0 if config is None else mask_density(config, grid, half)
            label = "x".join(map(str, shape)) if name == "dense" else ""
            tokens = str(grid.tokens) if name == "dense" else ""
            print(f"{label:>10} {tokens:>7} {name:>7} {computed:>8.3f} {kept:>6.3f} {dense_gflop * computed:>7.2f} "
                  f"{1e3 * seconds:>9.1f} {med['dense'] / seconds:>7.2f}x")
    print("(svg: computed/kept shown for half spatial, half temporal heads; its time includes the online profile)")


def run_bytes(repeats: int) -> None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    ctx = init_parallel(ParallelConfig(ring=world))
    parallel = ctx.config
    rows = []
    for shape in BYTES_GRIDS:
        grid = TokenGrid(*shape)
        lens = split_sizes(grid.tokens, world)
        g = torch.Generator().manual_seed(ctx.rank)
        q, k, v = (torch.randn(1, lens[ctx.rank], HEADS, HEAD_DIM, generator=g) for _ in range(3))

        def measure(call):
            ctx.reset_comm_stats()
            attention(q, k, v, ctx, seq_lens=lens, sparse=call)
            sent = ctx.comm_stats().get("ring", 0)

            def once():
                dist.barrier()
                attention(q, k, v, ctx, seq_lens=lens, sparse=call)

            return sent, median_time(once, repeats)

        dense_bytes, dense_s = measure(None)
        for name, spec in [("window", SCALED["window"]), ("radial", SCALED["radial"]),
                           ("svg-spatial", SCALED["svg"])]:
            config = SparseAttention.from_cli(spec)
            choice = (0,) * HEADS if config.per_head else None  # all spatial heads: the local case of SVG
            sent, sparse_s = measure(SparseCall(config, grid, LayoutCache(), choice))
            predicted = predict_sparse_ring_bytes(config, grid, 1, HEADS, HEAD_DIM, parallel, 4, rank=ctx.rank,
                                                  head_choice=list(choice) if choice else None,
                                                  profiled=False)["ring"]
            rows.append((shape, name, dense_bytes, sent, predicted, dense_s, sparse_s))
    gathered = [None] * world
    dist.all_gather_object(gathered, rows)
    if ctx.rank == 0:
        print(f"# ring bytes per rank, one attention call, ring={world} (gloo): {machine()}; "
              f"B=1 H={HEADS} D={HEAD_DIM} fp32, median of {repeats}")
        print(f"{'grid':>10} {'pattern':>11} {'rank':>4} {'dense KiB':>9} {'sparse KiB':>10} {'predicted':>9} "
              f"{'ratio':>6} {'dense ms':>8} {'sparse ms':>9}")
        for i in range(len(rows)):
            for rank in range(world):
                shape, name, d, s, p, ds, ss = gathered[rank][i]
                print(f"{'x'.join(map(str, shape)):>10} {name:>11} {rank:>4} {d / 1024:>9.1f} {s / 1024:>10.1f} "
                      f"{'==' if s == p else 'DIFF ' + str(p):>9} {s / d:>6.2f} {1e3 * ds:>8.1f} {1e3 * ss:>9.1f}")
    dist.destroy_process_group()


def run_model() -> None:
    """Planner-scale numbers from the same functions the planner calls (no attention is run)."""
    grids = {"720p x 81": (21, 45, 80), "720p x 241": (61, 45, 80), "4K x 81": (21, 135, 240)}
    parallel = ParallelConfig(ring=8)
    heads, hd = 40, 128
    print("# modeled, Wan2.1-14B (40 heads x 128, bf16), ring=8: per attention call and rank (busiest)")
    print(f"{'clip':>11} {'tokens':>7} {'pattern':>13} {'computed':>8} {'kept':>6} {'ring MiB':>9} {'dense MiB':>9}")
    for clip, shape in grids.items():
        grid = TokenGrid(*shape)
        blocks = split_sizes(grid.tokens, 8)
        dense = 2 * max(blocks) * 7 * heads * 2 * hd  # the dense ring: 7 sends of the block held (k and v)
        for name, spec, choice in [("window", "window", None), ("radial", "radial", None),
                                   ("svg half/half", "svg", [h % 2 for h in range(heads)]),
                                   ("svg spatial", "svg", [0] * heads)]:
            config = SparseAttention.from_cli(spec)
            t0 = time.perf_counter()
            computed = attended_fraction(config, grid, choice)
            kept = mask_density(config, grid, choice)
            ring = predict_sparse_ring_bytes(config, grid, 1, heads, hd, parallel, 2, head_choice=choice,
                                             profiled=False)["ring"]
            print(f"{clip:>11} {grid.tokens:>7} {name:>13} {computed:>8.3f} {kept:>6.3f} {ring / 2**20:>9.1f} "
                  f"{dense / 2**20:>9.1f}   ({time.perf_counter() - t0:.1f} s to model)")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("mode", choices=["time", "bytes", "model"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    {"time": lambda: run_time(args.repeats), "bytes": lambda: run_bytes(args.repeats), "model": run_model}[
        args.mode]()


if __name__ == "__main__":
    main()
