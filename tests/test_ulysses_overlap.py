"""Ulysses overlap (``vidpar.parallel.ulysses_overlap``): the all-to-alls run between the projections and the
output exchange in pieces overlaps the output projection; results and bytes sent equal the plain path.

References: the plain sequence-parallel path (same ranks) and a float64 full attention written here. Heads (3, 5)
do not divide the degrees, token counts (45, 105) do not divide the ranks, and joint tokens are covered.
"""

from __future__ import annotations

import pytest
import torch

import vidpar
from vidpar.kernels import set_fused_qkv
from vidpar.parallel import ParallelConfig, attention, split_sizes
from vidpar.parallel.plan import set_ulysses_overlap
from vidpar.parallel.ulysses_overlap import overlapped_attention

TOL = 1e-5
MESHES = {2: [(2, 1, 1)], 4: [(4, 1, 1), (2, 2, 1)]}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def reference(x, wq, wk, wv, wo, joint_x, heads):
    """float64 ``wo(attention(x wq, x wk, x wv))`` over all tokens, joint tokens first; returns (video, joint)."""
    xs = torch.cat([joint_x, x], dim=1).double() if joint_x is not None else x.double()
    q, k, v = ((xs @ w.double().T).unflatten(-1, (heads, -1)) for w in (wq, wk, wv))
    logits = torch.einsum("bqhd,bkhd->bhqk", q, k) / q.shape[-1] ** 0.5
    out = torch.einsum("bhqk,bkhd->bqhd", logits.softmax(-1), v)
    t = joint_x.shape[1] if joint_x is not None else 0
    return out[:, t:].flatten(2) @ wo.double().T, out[:, :t]


@torch.no_grad()
def attention_task(env, degrees, heads, tokens, joint_tokens):
    ctx = env.context(ParallelConfig(*degrees))
    g = torch.Generator().manual_seed(3)
    dim = heads * 8
    x = torch.randn(2, tokens, dim, generator=g)
    joint_x = torch.randn(2, joint_tokens, dim, generator=g) if joint_tokens else None
    wq, wk, wv, wo = (torch.randn(dim, dim, generator=g) / dim**0.5 for _ in range(4))
    lens = split_sizes(tokens, ctx.sp_size)
    xl = ctx.shard_sequence(x, 1)
    proj = [lambda w=w: (xl @ w.T).unflatten(-1, (heads, -1)) for w in (wq, wk, wv)]
    joint = {}
    if joint_x is not None:
        joint = {n: (joint_x @ w.T).unflatten(-1, (heads, -1)) for n, w in zip(("joint_q", "joint_k", "joint_v"),
                                                                                  (wq, wk, wv))}
    out_proj = lambda o: o.flatten(2) @ wo.T  # noqa: E731

    ctx.reset_comm_stats()
    plain = attention(*(p() for p in proj), ctx, seq_lens=lens, **joint)
    plain_stats = ctx.comm_stats()
    ctx.reset_comm_stats()
    trace: list = []
    over = overlapped_attention(proj, ctx, out_proj=out_proj, seq_lens=lens, trace=trace, out_chunks=3, **joint)
    over_stats = ctx.comm_stats()
    # Without an output projection the overlapped path only moves values: bit for bit the plain result.
    moved = overlapped_attention(proj, ctx, seq_lens=lens, out_chunks=3, **joint)
    bitwise = all(torch.equal(a, b) for a, b in zip(_tuple(moved), _tuple(plain)))
    ref_video, ref_joint = reference(x, wq, wk, wv, wo, joint_x, heads)
    ref_local = ctx.shard_sequence(ref_video, 1)
    if joint_x is not None:
        plain_video, over_video = out_proj(plain[0]), over[0]
        joint_errs = (rel(over[1], ref_joint), torch.equal(over[1], plain[1]))
    else:
        plain_video, over_video, joint_errs = out_proj(plain), over, None
    # With one, each piece of rows goes through the GEMM on its own: equal up to the GEMM's rounding.
    return (rel(over_video, ref_local), bitwise, rel(over_video, plain_video), joint_errs, plain_stats, over_stats,
            trace)


def _tuple(x):
    return x if isinstance(x, tuple) else (x,)


@pytest.mark.parametrize("world", [2, 4])
@pytest.mark.parametrize("joint_tokens", [0, 5])
def test_overlapped_attention_equals_plain(pools, world, joint_tokens):
    for degrees in MESHES[world]:
        for heads, tokens in ((3, 45), (5, 7)):
            results = pools(world).run(attention_task, degrees, heads, tokens, joint_tokens)
            for rank, (err, bitwise, err_plain, joint_errs, plain_stats, over_stats, trace) in enumerate(results):
                where = f"{degrees} H={heads} S={tokens} rank {rank}"
                assert err <= TOL, f"{where}: rel err {err:.2e}"
                assert bitwise, f"{where}: the overlapped exchange changed a value"
                assert err_plain <= 1e-6, f"{where}: {err_plain:.2e} from the plain path"
                if joint_errs is not None:
                    assert joint_errs[0] <= TOL and joint_errs[1], (where, joint_errs)
                assert over_stats == plain_stats, (where, over_stats, plain_stats)  # same bytes on every axis
                events = [e for e in trace if e[0] != "attend"]
                # issue -> compute -> wait: q travels while k is projected, k while v is
                assert events[:6] == [("project", "q"), ("issue", "q"), ("project", "k"), ("issue", "k"),
                                      ("project", "v"), ("issue", "v")], (where, trace)
                assert trace.index(("issue", "out1")) < trace.index(("project", "out0")), (where, trace)


@torch.no_grad()
def dit_task(env, degrees, family):
    from test_hy15_parallel import BRANCHES, build_model as build_hy15
    from test_wan_parallel import build_model as build_wan, make_inputs as wan_inputs
    from hy15_reference import make_inputs as hy15_inputs

    ctx = env.context(ParallelConfig(*degrees))
    if family == "wan":
        model = build_wan("t2v_3heads")
        args, kwargs = wan_inputs(model, "t2v_3heads"), {}
    else:
        model = build_hy15("3heads")
        args, kwargs = (), hy15_inputs(model.config, grid=(3, 5, 7), **BRANCHES[0])
    ref = model(*args, **kwargs)
    vidpar.parallelize(model, ctx)
    try:
        plain = model(*args, **kwargs)
        set_ulysses_overlap(model, True)
        set_fused_qkv(model, True)  # both options together: fused projections, overlapped exchanges
        over = model(*args, **kwargs)
    finally:
        set_fused_qkv(model, False)
        vidpar.unparallelize(model)
    return rel(over, ref), rel(over, plain)


@pytest.mark.parametrize("family", ["wan", "hy15"])
def test_dit_with_overlap_and_fused_qkv_equals_single_process(pools, family):
    for world, degrees in ((2, (2, 1, 1)), (4, (2, 2, 1))):
        for rank, (err, err_plain) in enumerate(pools(world).run(dit_task, degrees, family)):
            assert err <= TOL and err_plain <= TOL, (family, degrees, rank, err, err_plain)
