"""Ulysses attention with and without its all-to-alls overlapped with the projections (one attention layer).

    torchrun --nproc-per-node 4 benchmarks/ulysses_overlap.py --seq-len 8192 --heads 8 --head-dim 64

Times one self-attention layer as the DiTs run it (``q/k/v`` Linear projections, Ulysses attention, output Linear)
through ``vidpar.parallel.ulysses_overlap.overlapped_attention``, with ``overlap=True`` (q's all-to-all in flight
while k is projected, k's while v is, the output exchange in ``--out-chunks`` pieces overlapping the output
projection) and ``overlap=False`` (the plain path: projections, one all-to-all, attention, one all-to-all, output
projection), interleaved, median of ``--repeats`` of the slowest rank. Prints rank 0's event trace of one
overlapped call with times (ms since the call started), as ``ring_attention(..., trace=...)`` records for ring.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vidpar.parallel import ParallelConfig, init_parallel, split_sizes  # noqa: E402
from vidpar.parallel.ulysses_overlap import overlapped_attention  # noqa: E402


class TimedTrace(list):
    """A trace list that stamps every event with ``time.perf_counter()``."""

    def append(self, item) -> None:
        super().append((*item, time.perf_counter()))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seq-len", type=int, default=8192)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--out-chunks", type=int, default=2)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    ctx = init_parallel(ParallelConfig(ulysses=world))
    lens = split_sizes(args.seq_len, world)
    dim = args.heads * args.head_dim
    g = torch.Generator().manual_seed(0)
    weights = [torch.randn(dim, dim, generator=g) / dim**0.5 for _ in range(4)]
    x = torch.randn(1, lens[ctx.sp_rank], dim, generator=torch.Generator().manual_seed(1 + ctx.rank)).to(ctx.device)
    wq, wk, wv, wo = (w.to(ctx.device) for w in weights)
    proj = [lambda w=w: (x @ w.T).unflatten(-1, (args.heads, -1)) for w in (wq, wk, wv)]
    out_proj = lambda o: o.flatten(2) @ wo.T  # noqa: E731

    def call(overlap: bool, trace=None) -> torch.Tensor:
        return overlapped_attention(proj, ctx, out_proj=out_proj, seq_lens=lens, overlap=overlap,
                                    out_chunks=args.out_chunks, trace=trace)

    times: dict[bool, list[float]] = {True: [], False: []}
    with torch.no_grad():
        same = torch.equal(call(True), call(False))
        for i in range(args.repeats + 1):
            for overlap in (True, False) if i % 2 else (False, True):
                dist.barrier()
                t0 = time.perf_counter()
                call(overlap)
                if ctx.device.type == "cuda":
                    torch.cuda.synchronize()
                dt = torch.tensor([time.perf_counter() - t0])
                dist.all_reduce(dt, op=dist.ReduceOp.MAX)  # the slowest rank decides
                if i:
                    times[overlap].append(dt.item())
        trace = TimedTrace()
        dist.barrier()
        start = time.perf_counter()
        trace.append(("start", ""))
        call(True, trace)
    med = {o: statistics.median(t) * 1e3 for o, t in times.items()}
    if ctx.rank == 0:
        print(f"ulysses={world} S={args.seq_len} H={args.heads} D={args.head_dim} fp32 {ctx.device.type}, "
              f"{torch.get_num_threads()} threads/rank, out_chunks={args.out_chunks}, median of {args.repeats} "
              f"(slowest rank)")
        print(f"overlap    {med[True]:8.1f} ms")
        print(f"no overlap {med[False]:8.1f} ms")
        print(f"saved      {100 * (1 - med[True] / med[False]):8.1f} %")
        print(f"outputs bit-identical (overlap vs plain): {same}")
        print("rank 0 trace of one overlapped call (ms since start):")
        print("  " + "  ".join(f"{e}:{w}@{(t - start) * 1e3:.1f}" for e, w, t in trace[1:]))
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
