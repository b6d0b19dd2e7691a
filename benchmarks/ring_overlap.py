"""Ring attention with and without communication/compute overlap.

    torchrun --nproc-per-node 4 benchmarks/ring_overlap.py --seq-len 8192 --heads 8 --head-dim 64

Times ``ring_attention`` (the K/V rotation of vidpar's ring path) with the next block's transfer issued before
the current block's compute (overlap) and after it (no overlap), interleaved, median of ``--repeats``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.distributed as dist

from vidpar.kernels import attention_with_lse
from vidpar.parallel import ParallelConfig, init_parallel, split_sizes
from vidpar.parallel.ring import ring_attention


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seq-len", type=int, default=8192)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--repeats", type=int, default=7)
    args = p.parse_args()
    world = int(os.environ.get("WORLD_SIZE", "1"))
    ctx = init_parallel(ParallelConfig(ring=world))
    lengths = split_sizes(args.seq_len, world)
    g = torch.Generator().manual_seed(ctx.rank)
    q, k, v = (torch.randn(1, lengths[ctx.rank], args.heads, args.head_dim, generator=g).to(ctx.device) for _ in range(3))
    times: dict[bool, list[float]] = {True: [], False: []}
    for i in range(args.repeats + 1):
        for overlap in (True, False):
            dist.barrier()
            t0 = time.perf_counter()
            ring_attention(ctx.comm, q, k, v, lengths, attention_with_lse, overlap=overlap)
            if ctx.device.type == "cuda":
                torch.cuda.synchronize()
            if i:  # first round is warm-up
                times[overlap].append(time.perf_counter() - t0)
    med = {o: statistics.median(t) * 1e3 for o, t in times.items()}
    if ctx.rank == 0:
        print(f"ring={world} S={args.seq_len} H={args.heads} D={args.head_dim} fp32 {ctx.device.type}, "
              f"median of {args.repeats}")
        print(f"overlap    {med[True]:8.1f} ms")
        print(f"no overlap {med[False]:8.1f} ms")
        print(f"saved      {100 * (1 - med[True] / med[False]):8.1f} %")
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
