"""Sequence-parallel attention: vidpar against DeepSpeed-Ulysses and yunchang on the same shapes (CPU/gloo).

    torchrun --nproc-per-node 4 benchmarks/peers_attention.py                       # timing, S=4096 H=8 D=64
    torchrun --nproc-per-node 4 benchmarks/peers_attention.py --check 1024x5 1001x8  # correctness only

Every rank builds the same full q, k, v ``[1, S, H, D]`` (fp32, fixed seed) and takes its shard the way each
library expects (vidpar: ``ctx.shard_sequence``; the peers: ``tensor.chunk(world)``, yunchang's
``basic_extract_local``). The error is ``max |out - ref|`` over all ranks' rows, with ``ref`` fp64 attention of
this rank's query rows against the full keys; ``rel`` divides by ``max |ref|``. Timing: median of ``--repeats``
calls after one warm-up, barrier before each call. A method that raises is reported as FAIL with its exception;
a result with rel error > 1e-4 is reported as WRONG.

Peer workaround (benchmark-only, never in vidpar): yunchang's torch ring backend calls the CUDA-only op
``aten._scaled_dot_product_flash_attention``; ``_yunchang_cpu_workaround`` points yunchang's module-level alias at
the CPU op ``aten._scaled_dot_product_flash_attention_for_cpu``, which has the same (out, lse) contract.
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import timedelta
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F

from vidpar.parallel import ParallelConfig, ParallelContext, attention, init_parallel, split_sizes

Method = tuple[str, Callable[[int], tuple[int, int]], Callable[..., torch.Tensor]]  # name, rows(S), run(q,k,v)
WRONG_REL = 1e-4


def _chunk_rows(rank: int, world: int) -> Callable[[int], tuple[int, int]]:
    """Rows of ``torch.chunk(world)[rank]`` along a length-S dim (how the peers expect inputs to be split)."""

    def rows(s: int) -> tuple[int, int]:
        step = -(-s // world)
        start = min(rank * step, s)
        return start, min(start + step, s)

    return rows


def _vidpar_rows(ctx: ParallelContext) -> Callable[[int], tuple[int, int]]:
    def rows(s: int) -> tuple[int, int]:
        x = torch.arange(s).view(1, s)
        piece = ctx.shard_sequence(x, dim=1)[0]
        return (int(piece[0]), int(piece[-1]) + 1) if piece.numel() else (0, 0)

    return rows


def vidpar_methods(world: int, current: dict) -> list[Method]:
    """vidpar Ulysses, ring and (world 4) USP 2x2; contexts are built here, collectively, in a fixed order.

    Each also runs as "+lens": given the shard lengths (``current["S"]``, the shape being run), as inside a model
    whose plan knows the full length, so no length exchange precedes the call (the peers assume equal chunks).
    """
    configs = {"vidpar ulysses": ParallelConfig(ulysses=world), "vidpar ring": ParallelConfig(ring=world)}
    if world == 4:
        configs["vidpar usp 2x2"] = ParallelConfig(ulysses=2, ring=2)
    methods: list[Method] = []
    for name, cfg in configs.items():
        ctx = init_parallel(cfg)
        methods.append((name, _vidpar_rows(ctx), lambda q, k, v, ctx=ctx: attention(q, k, v, ctx)))
        methods.append((name + " +lens", _vidpar_rows(ctx), lambda q, k, v, ctx=ctx: attention(
            q, k, v, ctx, seq_lens=split_sizes(current["S"], ctx.sp_size))))
    return methods


def deepspeed_methods(rank: int, world: int) -> list[Method]:
    """DeepSpeed-Ulysses (``DistributedAttention``) over the whole world, local attention = SDPA."""
    try:
        import deepspeed
        from deepspeed.sequence.layer import DistributedAttention
    except ImportError:
        return []
    deepspeed.init_distributed(dist_backend="gloo")  # wraps the existing torch process group

    def local(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:  # [B, S, h, D]
        return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)

    class Local(torch.nn.Module):
        def forward(self, q, k, v):  # noqa: D401 - DistributedAttention wants a module
            return local(q, k, v)

    layer = DistributedAttention(Local(), dist.group.WORLD, scatter_idx=2, gather_idx=1)
    return [("deepspeed ulysses", _chunk_rows(rank, world), lambda q, k, v: layer(q, k, v, batch_dim_idx=0))]


def _yunchang_cpu_workaround() -> None:
    """Documented peer workaround: yunchang's torch backend calls the CUDA flash op; use the CPU one."""
    import yunchang.kernels.attention as yka

    yka._scaled_dot_product_flash_attention = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu


def yunchang_methods(rank: int, world: int) -> list[Method]:
    """yunchang ``LongContextAttention``: Ulysses, ring (``basic_pytorch``) and (world 4) hybrid 2x2."""
    try:
        from yunchang import LongContextAttention, set_seq_parallel_pg
        from yunchang.kernels import AttnType
    except ImportError:
        return []
    _yunchang_cpu_workaround()
    layouts = {"yunchang ulysses": (world, 1), "yunchang ring": (1, world)}
    if world == 4:
        layouts["yunchang usp 2x2"] = (2, 2)
    methods: list[Method] = []
    for name, (u, r) in layouts.items():
        set_seq_parallel_pg(u, r, rank, world)  # yunchang keeps its groups in a global; the layer copies them
        layer = LongContextAttention(ring_impl_type="basic_pytorch", attn_type=AttnType.TORCH_FLASH)
        methods.append((name, _chunk_rows(rank, world), lambda q, k, v, layer=layer: layer(q, k, v)))
    return methods


def full_qkv(s: int, h: int, d: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1234)
    return [torch.randn(1, s, h, d, generator=g) for _ in range(3)]


def reference_rows(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """fp64 softmax attention of query rows ``lo:hi`` against all keys: ``[1, hi-lo, H, D]``."""
    qd, kd, vd = (t.double().transpose(1, 2) for t in (q[:, lo:hi], k, v))
    p = torch.softmax(qd @ kd.transpose(-1, -2) / q.shape[-1] ** 0.5, dim=-1)
    return (p @ vd).transpose(1, 2)


def run_method(method: Method, qkv: list[torch.Tensor], repeats: int, report_group) -> dict:
    """Errors (always) and median time (``repeats`` > 0, only if every rank succeeded) of one method."""
    name, rows, fn = method
    lo, hi = rows(qkv[0].shape[1])
    shards = [t[:, lo:hi].contiguous() for t in qkv]
    status, err, ref_max = "ok", 0.0, 0.0
    try:
        out = fn(*shards)
        if tuple(out.shape) != tuple(shards[0].shape):
            raise RuntimeError(f"output shape {tuple(out.shape)} != shard shape {tuple(shards[0].shape)}")
        ref = reference_rows(*qkv, lo, hi)
        err = (out.double() - ref).abs().max().item() if ref.numel() else 0.0
        ref_max = ref.abs().max().item() if ref.numel() else 0.0
    except Exception as exc:  # noqa: BLE001 - a peer failing is a result
        msg = str(exc).strip().splitlines()
        status = f"FAIL {type(exc).__name__}: {msg[0][:160] if msg else ''}"
    every: list = [None] * dist.get_world_size()
    dist.all_gather_object(every, (status, err, ref_max), group=report_group)  # agree before timing
    fails = sorted({s for s, _, _ in every if s != "ok"})
    if fails:
        return dict(name=name, verdict="; ".join(fails), abs=float("nan"), rel=float("nan"), ms=float("nan"))
    abs_err = max(e for _, e, _ in every)
    rel = abs_err / max(m for _, _, m in every)
    times = []
    for _ in range(repeats):
        dist.barrier(group=report_group)
        t0 = time.perf_counter()
        fn(*shards)
        times.append(time.perf_counter() - t0)
    slowest: list = [None] * dist.get_world_size()
    dist.all_gather_object(slowest, times, group=report_group)
    med = statistics.median(max(t[i] for t in slowest) for i in range(repeats)) * 1e3 if repeats else float("nan")
    return dict(name=name, verdict="WRONG" if rel > WRONG_REL else "ok", abs=abs_err, rel=rel, ms=med)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--seq-len", type=int, default=4096)
    p.add_argument("--heads", type=int, default=8)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--check", nargs="*", default=None, help="SxH shapes to check (no timing), e.g. 1001x8 1024x5")
    p.add_argument("--only", nargs="*", default=None, help="run only methods whose name contains one of these")
    p.add_argument("--timeout", type=float, default=60.0, help="collective timeout (default group), seconds")
    args = p.parse_args()
    dist.init_process_group("gloo", timeout=timedelta(seconds=args.timeout))
    rank, world = dist.get_rank(), dist.get_world_size()
    # Results travel on their own group, with a longer deadline than the peers' collectives: a rank stuck in a
    # peer's collective times out there first, and then reports FAIL instead of breaking the report.
    report_group = dist.new_group(timeout=timedelta(seconds=3 * args.timeout + 30))
    current: dict = {}  # the shape being run, for the "+lens" methods
    methods = vidpar_methods(world, current) + yunchang_methods(rank, world) + deepspeed_methods(rank, world)
    if args.only:  # every method is still built (its groups are collective), only the chosen ones run
        methods = [m for m in methods if any(word in m[0] for word in args.only)]
    threads = torch.get_num_threads()

    if args.check is None:
        shapes, repeats = [(args.seq_len, args.heads)], args.repeats
    else:
        shapes, repeats = [tuple(int(x) for x in s.split("x")) for s in args.check], 0
    for s, h in shapes:
        current["S"] = s
        qkv = full_qkv(s, h, args.head_dim)
        if rank == 0:
            what = f"median of {repeats}" if repeats else "correctness only"
            print(f"world={world} S={s} H={h} D={args.head_dim} fp32 cpu/gloo, {threads} threads/rank, {what}")
        for method in methods:
            r = run_method(method, qkv, repeats, report_group)
            if rank == 0:
                ms = f"{r['ms']:8.1f} ms" if repeats and r["ms"] == r["ms"] else " " * 11
                print(f"  {r['name']:18s} {ms}  max abs {r['abs']:.2e}  rel {r['rel']:.2e}  {r['verdict']}", flush=True)
    dist.barrier(group=report_group)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
