"""Check vidpar's distributed attention against single-process attention on every mesh shape of this world.

    torchrun --nproc-per-node 2 examples/attention_parity.py
    torchrun --nproc-per-node 4 examples/attention_parity.py --seq-len 4096 --heads 12 --dtype bfloat16

For each (ulysses, ring, cfg) whose product is the world size it prints the max relative error of the gathered
output against SDPA on the full tensors (computed on one rank) and the median time of the distributed call.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torch.distributed as dist
import torch.nn.functional as F

from vidpar.parallel import ParallelConfig, attention, init_parallel


def mesh_shapes(world: int) -> list[ParallelConfig]:
    return [
        ParallelConfig(ulysses=u, ring=r, cfg=c)
        for c in (1, 2)
        for r in range(1, world + 1)
        for u in range(1, world + 1)
        if u * r * c == world
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seq-len", type=int, default=2001, help="video tokens (any length)")
    p.add_argument("--heads", type=int, default=5, help="attention heads (need not divide the degrees)")
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--joint-tokens", type=int, default=0, help="text tokens attended jointly (0: none)")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args()
    dtype = getattr(torch, args.dtype)

    base = init_parallel(ParallelConfig(ulysses=int(__import__("os").environ.get("WORLD_SIZE", "1"))))
    device, world = base.device, base.world_size
    g = torch.Generator(device="cpu").manual_seed(0)
    q, k, v = (torch.randn(1, args.seq_len, args.heads, args.head_dim, generator=g).to(device, dtype) for _ in range(3))
    joint = None
    if args.joint_tokens:
        joint = [torch.randn(1, args.joint_tokens, args.heads, args.head_dim, generator=g).to(device, dtype) for _ in range(3)]

    def sdpa(x, y, z):
        return F.scaled_dot_product_attention(*(t.transpose(1, 2).float() for t in (x, y, z))).transpose(1, 2)

    ref = sdpa(*(torch.cat([a, b], 1) for a, b in zip(joint, (q, k, v)))) if joint else sdpa(q, k, v)
    if base.rank == 0:
        print(f"world={world} S={args.seq_len} H={args.heads} D={args.head_dim} T={args.joint_tokens} {args.dtype}")
        print(f"{'ulysses':>7} {'ring':>4} {'cfg':>3} {'max rel err':>12} {'time ms':>9}")
    for cfg in mesh_shapes(world):
        ctx = init_parallel(cfg)
        shards = [ctx.shard_sequence(t, 1) for t in (q, k, v)]
        kwargs = dict(zip(("joint_q", "joint_k", "joint_v"), joint)) if joint else {}
        times = []
        for _ in range(args.repeats):
            dist.barrier() if world > 1 else None
            t0 = time.perf_counter()
            res = attention(*shards, ctx, **kwargs)
            if device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - t0)
        out_local, joint_out = res if joint else (res, None)
        out = ctx.gather_sequence(out_local, 1, length=args.seq_len)
        if joint:
            out = torch.cat([joint_out, out], 1)
        err = ((out.float() - ref).abs().max() / ref.abs().max()).item()
        if ctx.rank == 0:
            print(f"{cfg.ulysses:>7} {cfg.ring:>4} {cfg.cfg:>3} {err:>12.2e} {1e3 * statistics.median(times):>9.2f}")
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
