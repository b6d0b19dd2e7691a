"""The mesh, sequence sharding, byte accounting, ring overlap and hang-free errors, on gloo worker pools."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

from vidpar.parallel import ParallelConfig, attention, init_parallel
from vidpar.parallel.ring import ring_attention
from vidpar.kernels import attention_with_lse

MESHES_4 = [(4, 1, 1), (1, 4, 1), (2, 2, 1), (2, 1, 2), (1, 2, 2), (1, 1, 4)]


def mesh_task(env, degrees):
    ctx = env.context(ParallelConfig(*degrees))
    u, r, c = degrees
    return {
        "coords": ctx.coords,
        "names": tuple(ctx.mesh.mesh_dim_names),
        "sizes": {a: ctx.axis_size(a) for a in ("cfg", "ring", "ulysses", "sp")},
        "sp_rank": ctx.sp_rank,
        "expected": {"cfg": ctx.rank // (r * u), "ring": ctx.rank // u % r, "ulysses": ctx.rank % u},
    }


@pytest.mark.parametrize("degrees", MESHES_4)
def test_mesh_layout_ulysses_innermost(pools, degrees):
    u, r, c = degrees
    for res in pools(4).run(mesh_task, degrees):
        assert res["names"] == ("cfg", "ring", "ulysses")
        assert res["coords"] == res["expected"]
        assert res["sizes"] == {"cfg": c, "ring": r, "ulysses": u, "sp": u * r}
        assert res["sp_rank"] == res["coords"]["ring"] * u + res["coords"]["ulysses"]


def shard_gather_task(env, degrees):
    ctx = env.context(ParallelConfig(*degrees))
    out = []
    for length in (1, 3, 64, 1001):
        for dim in (0, 1, -1):
            shape = [2, 3, 4]
            shape[dim] = length
            full = torch.arange(torch.Size(shape).numel(), dtype=torch.float32).view(shape)
            piece = ctx.shard_sequence(full, dim)
            back_known = ctx.gather_sequence(piece, dim, length=length)
            back_exchanged = ctx.gather_sequence(piece, dim)
            out.append((length, dim, piece.clone(), torch.equal(back_known, full), torch.equal(back_exchanged, full)))
    return out


@pytest.mark.parametrize("degrees", [(4, 1, 1), (1, 2, 2), (2, 1, 2)])
def test_shard_gather_roundtrip_any_length(pools, degrees):
    results = pools(4).run(shard_gather_task, degrees)
    u, r, c = degrees
    for rank, res in enumerate(results):
        for length, dim, piece, ok_known, ok_exchanged in res:
            assert ok_known and ok_exchanged, (rank, length, dim)
    # ranks differing only in the cfg axis hold the same piece
    sp = u * r
    for rank in range(sp, 4):
        for (_, _, a, *_), (_, _, b, *_) in zip(results[rank], results[rank - sp]):
            assert torch.equal(a, b)


def comm_bytes_task(env):
    ctx = env.context(ParallelConfig(ulysses=2))
    q = torch.randn(1, 4, 2, 8)  # 4 local tokens, 2 heads -> 1 head per rank
    attention(q, q, q, ctx)
    return ctx.comm_stats()


def test_comm_stats_count_ulysses_bytes(pools):
    for stats in pools(2).run(comm_bytes_task):
        # seq->heads: 4 tokens x 1 head x (q+k+v = 24 floats) to the peer; heads->seq: 4 tokens x 1 head x 8 floats
        assert stats["ulysses"] == 4 * (4 * 24 + 4 * 8)
        assert stats["control"] == 7 * 8  # one length/shape exchange: 7 int64 to the one peer
        assert set(stats) == {"ulysses", "control"}


def ring_trace_task(env, overlap):
    ctx = env.context(ParallelConfig(ring=4))
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 6, 2, 8, generator=g) for _ in range(3))
    trace: list = []
    ring_attention(ctx.comm, q, k, v, [6, 6, 6, 6], attention_with_lse, overlap=overlap, trace=trace)
    return trace


def test_ring_starts_next_transfer_before_computing_current_block(pools):
    for trace in pools(4).run(ring_trace_task, True):
        for step in range(3):
            issue, compute, wait = (trace.index((e, step)) for e in ("issue", "compute", "wait"))
            assert issue < compute < wait, trace
        assert trace[-1] == ("compute", 3) and ("issue", 3) not in trace


def test_ring_without_overlap_computes_first(pools):
    for trace in pools(4).run(ring_trace_task, False):
        for step in range(3):
            assert trace.index(("compute", step)) < trace.index(("issue", step)) < trace.index(("wait", step))


def bad_input_task(env, case):
    """Every rank gets the same bad input: every rank must raise before any collective."""
    ctx = env.context(ParallelConfig(ulysses=2, ring=2))
    q = torch.randn(1, 4, 2, 8)
    kwargs = {}
    if case == "shape":
        args = (q, torch.randn(1, 5, 2, 8), q)
    elif case == "dtype":
        args = (q, q.double(), q)
    elif case == "ndim":
        args = (q[0], q[0], q[0])
    elif case == "joint_partial":
        args, kwargs = (q, q, q), {"joint_q": q}
    elif case == "backend":
        args, kwargs = (q, q, q), {"backend": "sdpa"}  # no LSE: refused for ring
    else:
        raise AssertionError(case)
    try:
        attention(*args, ctx, **kwargs)
    except ValueError as e:
        return str(e), ctx.comm_stats()
    return None, ctx.comm_stats()


@pytest.mark.parametrize("case", ["shape", "dtype", "ndim", "joint_partial", "backend"])
def test_bad_inputs_fail_on_every_rank_before_any_collective(pools, case):
    for message, stats in pools(4).run(bad_input_task, case, timeout=30):
        assert message, "no error raised"
        assert stats == {}, f"a collective was started: {stats}"


def divergent_task(env):
    """Rank 1 alone has a different head count: the shape exchange must stop every rank, not hang."""
    ctx = env.context(ParallelConfig(ulysses=2))
    heads = 3 if env.rank == 1 else 2
    q = torch.randn(1, 4, heads, 8)
    try:
        attention(q, q, q, ctx)
    except ValueError as e:
        return str(e)
    return None


def test_ranks_disagreeing_on_shapes_all_raise(pools):
    for message in pools(2).run(divergent_task, timeout=30):
        assert message and "disagree" in message


def wrong_world_task(env):
    try:
        init_parallel(ParallelConfig(ulysses=3))
    except ValueError as e:
        message = str(e)
    else:
        message = None
    # the pool must still be usable: a collective right after proves no rank is stuck
    t = torch.ones(1)
    dist.all_reduce(t)
    return message, t.item()


def test_init_parallel_wrong_degrees_raise_on_every_rank(pools):
    for message, total in pools(4).run(wrong_world_task, timeout=30):
        assert message and "needs 3 ranks" in message and "world size is 4" in message
        assert total == 4.0


def seq_lens_task(env):
    """Known shard lengths skip the exchange (no control bytes) and give the same result; wrong ones raise."""
    ctx = env.context(ParallelConfig(ulysses=2, ring=2))
    g = torch.Generator().manual_seed(0)
    full = [torch.randn(1, 7, 3, 8, generator=g) for _ in range(3)]
    shards = [ctx.shard_sequence(t, 1) for t in full]
    exchanged = attention(*shards, ctx)
    ctx.reset_comm_stats()
    known = attention(*shards, ctx, seq_lens=[2, 2, 2, 1])
    stats = ctx.comm_stats()
    try:
        attention(*shards, ctx, seq_lens=[7])  # wrong on every rank (identical input): all raise, no hang
        error = None
    except ValueError as e:
        error = str(e)
    return torch.equal(exchanged, known), stats, error


def test_known_shard_lengths_skip_the_exchange(pools):
    for same, stats, error in pools(4).run(seq_lens_task):
        assert same and "control" not in stats and stats["ring"] > 0
        assert error and "seq_lens" in error
