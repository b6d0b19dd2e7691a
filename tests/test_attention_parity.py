"""Distributed attention equals single-process attention for every mesh shape, head count and length.

The reference is float64 softmax attention written out here on the full tensors, independent of vidpar.
Error = max |out - ref| / max |ref| (fp32 <= 1e-5, bf16 <= 2e-2).
"""

from __future__ import annotations

import itertools

import pytest
import torch

from vidpar.parallel import ParallelConfig, attention, init_parallel

HEADS = (1, 2, 3, 5, 8)
LENGTHS = (1, 3, 64, 1001)
JOINT_TOKENS = 5
HEAD_DIM = 16
TOL = {"float32": 1e-5, "bfloat16": 2e-2}

CONFIGS = [
    (u, r, c)
    for u, r, c in itertools.product((1, 2, 4), repeat=3)
    if u * r * c in (1, 2, 4)
]  # (ulysses, ring, cfg): 10 shapes


def reference_attention(q, k, v):
    """float64 softmax(q k^T / sqrt(D)) v on [B, S, H, D] tensors."""
    q, k, v = (t.double() for t in (q, k, v))
    logits = torch.einsum("bqhd,bkhd->bhqk", q, k) / q.shape[-1] ** 0.5
    return torch.einsum("bhqk,bkhd->bqhd", logits.softmax(-1), v)


def make_inputs(seed: int, batch: int, length: int, heads: int, joint: bool, dtype: torch.dtype):
    g = torch.Generator().manual_seed(seed)
    full = [torch.randn(batch, length, heads, HEAD_DIM, generator=g).to(dtype) for _ in range(3)]
    jnt = [torch.randn(batch, JOINT_TOKENS, heads, HEAD_DIM, generator=g).to(dtype) for _ in range(3)] if joint else None
    return full, jnt


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    return ((out.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item()


def cases():
    for i, (h, s, joint, dt) in enumerate(itertools.product(HEADS, LENGTHS, (False, True), ("float32", "bfloat16"))):
        yield i, h, s, joint, dt


def parity_task(env, degrees):
    """Runs every case on this rank; rank 0 returns the errors, every rank returns its joint outputs."""
    ctx = env.context(ParallelConfig(*degrees)) if env is not None else init_parallel(ParallelConfig(*degrees))
    report = []
    for i, h, s, joint, dt in cases():
        dtype = getattr(torch, dt)
        batch = 2 if s <= 64 else 1
        (q, k, v), jnt = make_inputs(1000 + i, batch, s, h, joint, dtype)
        shards = [ctx.shard_sequence(t, dim=1) for t in (q, k, v)]
        if joint:
            out_local, joint_out = attention(*shards, ctx, joint_q=jnt[0], joint_k=jnt[1], joint_v=jnt[2])
        else:
            out_local, joint_out = attention(*shards, ctx), None
        assert out_local.shape == shards[0].shape and out_local.dtype == dtype
        out = ctx.gather_sequence(out_local, dim=1, length=s)
        entry = {"case": (h, s, joint, dt), "joint_out": joint_out}
        if ctx.rank == 0:
            if joint:
                ref = reference_attention(*(torch.cat([a, b], dim=1) for a, b in zip(jnt, (q, k, v))))
                entry["joint_ref"], ref = ref[:, :JOINT_TOKENS], ref[:, JOINT_TOKENS:]
            else:
                ref = reference_attention(q, k, v)
            entry["err"] = rel_err(out, ref)
        report.append(entry)
    return report


def check_reports(reports) -> None:
    failures = []
    for entry in reports[0]:
        tol = TOL[entry["case"][3]]
        if not entry["err"] <= tol:
            failures.append(f"{entry['case']}: output rel err {entry['err']:.2e} > {tol}")
    for rank, report in enumerate(reports):
        for entry, ref_entry in zip(report, reports[0]):
            if entry["joint_out"] is None:
                continue
            err = rel_err(entry["joint_out"], ref_entry["joint_ref"])
            tol = TOL[entry["case"][3]]
            if not err <= tol:
                failures.append(f"rank {rank} {entry['case']}: joint rel err {err:.2e} > {tol}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("degrees", CONFIGS, ids=lambda d: "u{}r{}c{}".format(*d))
def test_attention_parity(pools, degrees):
    world = degrees[0] * degrees[1] * degrees[2]
    reports = [parity_task(None, degrees)] if world == 1 else pools(world).run(parity_task, degrees, timeout=240)
    assert len(reports[0]) == len(HEADS) * len(LENGTHS) * 4
    check_reports(reports)
