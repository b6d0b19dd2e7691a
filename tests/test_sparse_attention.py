"""Sparse attention is exact to its own mask on 1, 2 and 4 ranks (Ulysses, ring, USP), and the windowed ring
sends what its schedule predicts, less than the dense ring.

The reference is float64 softmax attention over joint + video tokens written here, with the video-video block of
the mask from each pattern's token mask (itself checked against per-token definitions in
``test_sparse_masks.py``) and joint rows/columns dense. SVG's per-head choice is recomputed here in float64 from
its definition (evenly spaced sampled queries, smaller squared error than exact attention wins, ties to the
first candidate). Error = max |out - ref| / max |ref| (fp32 <= 1e-5, bf16 <= 2e-2).
"""

from __future__ import annotations

import math

import pytest
import torch

from vidpar.kernels.block_sparse import SparseWork, block_sparse_attention, masked_attention_with_lse
from vidpar.parallel import ParallelConfig, attention, init_parallel, split_sizes
from vidpar.parallel.sparse import (
    LayoutCache,
    SparseAttention,
    SparseCall,
    TokenGrid,
    predict_sparse_ring_bytes,
)

GRID = TokenGrid(5, 3, 5)  # 75 video tokens: odd, not divisible by 2 or 4
HEAD_DIM = 8
JOINT = 5
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}
SPECS = {
    "window": "window:tile=2x2x2,window=3x1x3",
    "radial": "radial:tile=1x1x4,min_width=4,decay_factor=0.5",
    "svg": "svg:tile=1x2x2,density=0.4",
}
# (name, heads, joint, dtype, head_choice): svg with None profiles online; a tuple fixes the per-head choice.
CASES = [
    ("window", 3, True, torch.float32, None),
    ("window", 5, False, torch.bfloat16, None),
    ("radial", 5, True, torch.float32, None),
    ("svg", 5, True, torch.float32, None),
    ("svg", 3, False, torch.float32, None),
    ("svg", 5, False, torch.float32, (1, 0, 1, 1, 0)),
]
MESHES = {1: [(1, 1, 1)], 2: [(2, 1, 1), (1, 2, 1)], 4: [(4, 1, 1), (1, 4, 1), (2, 2, 1), (1, 2, 2)]}


def make_inputs(seed: int, heads: int, joint: bool, dtype: torch.dtype):
    """q/k/v whose even heads favour nearby frames and odd heads the same position across frames (so SVG's
    choice is mixed), plus noise; joint tokens random."""
    g = torch.Generator().manual_seed(seed)
    n = GRID.tokens
    frame = torch.arange(n) // GRID.frame_tokens
    pos = torch.arange(n) % GRID.frame_tokens
    frame_code = torch.randn(GRID.frames, HEAD_DIM, generator=g)[frame]
    pos_code = torch.randn(GRID.frame_tokens, HEAD_DIM, generator=g)[pos]
    q, k, v = (torch.randn(2, n, heads, HEAD_DIM, generator=g) * 0.5 for _ in range(3))
    for h in range(heads):
        code = frame_code if h % 2 == 0 else pos_code
        q[:, :, h] += 1.5 * code
        k[:, :, h] += 1.5 * code
    jnt = [torch.randn(2, JOINT, heads, HEAD_DIM, generator=g) for _ in range(3)] if joint else None
    return [t.to(dtype) for t in (q, k, v)], None if jnt is None else [t.to(dtype) for t in jnt]


def masked_softmax_attention(q, k, v, mask):
    """float64 attention of ``q [B, n, H, D]`` over ``k/v [B, m, H, D]`` with ``mask [H, n, m]``."""
    logits = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) / math.sqrt(q.shape[-1])
    return torch.einsum("bhqk,bkhd->bqhd", logits.masked_fill(~mask, float("-inf")).softmax(-1), v.double())


def reference_choice(config, q, k, v, jnt) -> list[int]:
    """SVG's choice per head, from its definition, on the full tensors in float64."""
    candidates = config.patterns(GRID)
    n = GRID.tokens
    m = min(config.num_samples, n)
    samples = torch.tensor([((2 * i + 1) * n) // (2 * m) for i in range(m)])
    keys_k = torch.cat([jnt[1], k], 1) if jnt else k
    keys_v = torch.cat([jnt[2], v], 1) if jnt else v
    t = jnt[0].shape[1] if jnt else 0
    choice = []
    for h in range(q.shape[2]):
        qs = q[:, samples, h : h + 1]
        full = torch.ones(1, m, t + n, dtype=torch.bool)
        exact = masked_softmax_attention(qs, keys_k[:, :, h : h + 1], keys_v[:, :, h : h + 1], full)
        errors = []
        for c in candidates:
            mask = full.clone()
            mask[0, :, t:] = c.token_mask(GRID, samples, torch.arange(n))
            approx = masked_softmax_attention(qs, keys_k[:, :, h : h + 1], keys_v[:, :, h : h + 1], mask)
            errors.append(((approx - exact) ** 2).mean().item())
        choice.append(0 if errors[0] <= errors[1] else 1)
    return choice


def reference(name, heads, joint, dtype, head_choice, seed):
    config = SparseAttention.from_cli(SPECS[name])
    (q, k, v), jnt = make_inputs(seed, heads, joint, dtype)
    if config.per_head:
        choice = list(head_choice) if head_choice is not None else reference_choice(config, q, k, v, jnt)
    else:
        choice = [0] * heads
    patterns = config.patterns(GRID)
    t = JOINT if joint else 0
    idx = torch.arange(GRID.tokens)
    mask = torch.ones(heads, t + GRID.tokens, t + GRID.tokens, dtype=torch.bool)
    for h in range(heads):
        mask[h, t:, t:] = patterns[choice[h]].token_mask(GRID, idx, idx)
    full = [torch.cat([a, b], 1) for a, b in zip(jnt, (q, k, v))] if joint else (q, k, v)
    ref = masked_softmax_attention(*full, mask)
    return ref[:, t:], (ref[:, :t] if joint else None), choice


def sparse_task(env, degrees):
    ctx = env.context(ParallelConfig(*degrees)) if env is not None else init_parallel(ParallelConfig(*degrees))
    results = []
    for i, (name, heads, joint, dtype, head_choice) in enumerate(CASES):
        (q, k, v), jnt = make_inputs(100 + i, heads, joint, dtype)
        call = SparseCall(SparseAttention.from_cli(SPECS[name]), GRID, LayoutCache(), head_choice)
        shards = [ctx.shard_sequence(t, dim=1) for t in (q, k, v)]
        kw = dict(joint_q=jnt[0], joint_k=jnt[1], joint_v=jnt[2]) if joint else {}
        res = attention(*shards, ctx, sparse=call, **kw)
        out_local, joint_out = res if joint else (res, None)
        assert out_local.shape == shards[0].shape and out_local.dtype == dtype
        results.append((ctx.gather_sequence(out_local, dim=1, length=GRID.tokens), joint_out))
    return results


def run_here(fn, *args):
    """World 1 in the test process, on one thread like the pool's workers (tiny ops oversubscribe otherwise)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return fn(None, *args)
    finally:
        torch.set_num_threads(threads)


def cache_reuse_task(env, degrees):
    """Two calls sharing one LayoutCache with different SVG head choices (different windowed-ring rows)."""
    ctx = env.context(ParallelConfig(*degrees))
    (q, k, v), _ = make_inputs(300, 5, False, torch.float32)
    config, cache = SparseAttention.from_cli(SPECS["svg"]), LayoutCache()
    shards = [ctx.shard_sequence(t, dim=1) for t in (q, k, v)]
    outs = []
    for choice in ((0,) * 5, (0, 1, 0, 1, 1), (0,) * 5):
        out = attention(*shards, ctx, sparse=SparseCall(config, GRID, cache, choice))
        outs.append(ctx.gather_sequence(out, dim=1, length=GRID.tokens))
    return outs


def test_layout_cache_reused_across_choices(pools):
    outs = pools(4).run(cache_reuse_task, (1, 4, 1), timeout=120)[0]
    for out, choice in zip(outs, ((0,) * 5, (0, 1, 0, 1, 1), (0,) * 5)):
        ref, _, _ = reference("svg", 5, False, torch.float32, choice, 300)
        assert rel_err(out, ref) <= 1e-5, choice


def rel_err(out, ref) -> float:
    return ((out.double() - ref).abs().max() / ref.abs().max()).item()


def _references(_env):
    return [reference(*case, 100 + i) for i, case in enumerate(CASES)]


@pytest.fixture(scope="module")
def references():
    return run_here(_references)


def test_svg_test_data_gives_mixed_choices(references):
    for (name, heads, _, _, fixed), (_, _, choice) in zip(CASES, references):
        if name == "svg" and fixed is None:
            assert choice == [h % 2 for h in range(heads)]  # the data favours spatial / temporal alternately


@pytest.mark.parametrize("degrees", [d for w in (1, 2, 4) for d in MESHES[w]], ids=lambda d: "u{}r{}c{}".format(*d))
def test_sparse_attention_exact_to_mask(pools, references, degrees):
    world = math.prod(degrees)
    per_rank = [run_here(sparse_task, degrees)] if world == 1 else pools(world).run(sparse_task, degrees, timeout=120)
    failures = []
    for case, (ref, joint_ref, _), rank0 in zip(CASES, references, per_rank[0]):
        tol = TOL[case[3]]
        err = rel_err(rank0[0], ref)
        if not err <= tol:
            failures.append(f"{case}: video rel err {err:.2e}")
    for rank, results in enumerate(per_rank):
        for case, (_, joint_ref, _), (_, joint_out) in zip(CASES, references, results):
            if joint_ref is not None and not rel_err(joint_out, joint_ref) <= TOL[case[3]]:
                failures.append(f"rank {rank} {case}: joint rel err {rel_err(joint_out, joint_ref):.2e}")
    assert not failures, "\n".join(failures)


def test_sparse_differs_from_dense(references):
    (q, k, v), _ = make_inputs(100, 3, False, torch.float32)
    dense = masked_softmax_attention(q, k, v, torch.ones(3, GRID.tokens, GRID.tokens, dtype=torch.bool))
    assert rel_err(references[0][0], dense) > 1e-2  # the window case really is sparse


# ---- the windowed ring sends less, exactly as predicted ----

BYTES_GRID = TokenGrid(16, 2, 4)  # 128 tokens; 4 frames per ring block at ring 4
BYTES_CASES = [  # (spec, heads, joint, head_choice, local): local patterns must send less than the dense ring
    ("window:tile=1x2x4,window=3x1x1", 3, False, None, True),  # each frame sees +-1 frame: neighbours' edges
    ("window:tile=1x2x4,window=3x1x1", 3, True, None, True),
    ("svg:tile=1x2x4,density=0.3,sink_frames=0", 3, False, (0, 0, 0), True),  # all spatial heads: local
    # Radial keeps a band of every far frame pair here, so every block is needed somewhere: no fewer bytes,
    # but still exactly the schedule's.
    ("radial:tile=1x2x4,min_width=4,decay_factor=0.5,sink_frames=0", 3, True, None, False),
]


def bytes_task(env, degrees):
    ctx = env.context(ParallelConfig(*degrees))
    out = []
    for spec, heads, joint, head_choice, _ in BYTES_CASES:
        g = torch.Generator().manual_seed(7)
        q, k, v = (torch.randn(1, BYTES_GRID.tokens, heads, HEAD_DIM, generator=g) for _ in range(3))
        jnt = [torch.randn(1, JOINT, heads, HEAD_DIM, generator=g) for _ in range(3)] if joint else None
        kw = dict(joint_q=jnt[0], joint_k=jnt[1], joint_v=jnt[2]) if joint else {}
        shards = [ctx.shard_sequence(t, dim=1) for t in (q, k, v)]
        seq_lens = split_sizes(BYTES_GRID.tokens, ctx.sp_size)  # known lengths: no exchange in the count
        ctx.reset_comm_stats()
        attention(*shards, ctx, seq_lens=seq_lens, **kw)
        dense = ctx.comm_stats()
        ctx.reset_comm_stats()
        call = SparseCall(SparseAttention.from_cli(spec), BYTES_GRID, LayoutCache(), head_choice)
        attention(*shards, ctx, seq_lens=seq_lens, sparse=call, **kw)
        out.append((dense, ctx.comm_stats()))
    return out


@pytest.mark.parametrize("degrees", [(1, 4, 1), (2, 2, 1)], ids=lambda d: "u{}r{}c{}".format(*d))
def test_windowed_ring_bytes_match_schedule(pools, degrees):
    parallel = ParallelConfig(*degrees)
    per_rank = pools(4).run(bytes_task, degrees, timeout=120)
    for rank, results in enumerate(per_rank):
        for (spec, heads, joint, choice, local), (dense, sparse) in zip(BYTES_CASES, results):
            predicted = predict_sparse_ring_bytes(
                SparseAttention.from_cli(spec), BYTES_GRID, 1, heads, HEAD_DIM, parallel, 4, rank=rank,
                joint_tokens=JOINT if joint else 0, head_choice=list(choice) if choice else None, profiled=False)
            assert sparse.get("ring", 0) == predicted["ring"], (spec, rank, sparse, predicted)
            assert sparse.get("ulysses", 0) == dense.get("ulysses", 0)  # the all-to-alls are unchanged
            if local:
                assert sparse["ring"] < dense["ring"], (spec, rank, sparse, dense)


# ---- the local kernel ----

def test_block_sparse_kernel_matches_masked_reference():
    g = torch.Generator().manual_seed(3)
    sq, sk, h = 23, 31, 3
    for dtype, backend in ((torch.float32, "auto"), (torch.float64, "auto"), (torch.bfloat16, "auto"),
                           (torch.float32, "math")):
        q, k, v = (torch.randn(2, n, h, HEAD_DIM, generator=g).to(dtype) for n in (sq, sk, sk))
        works = [
            SparseWork(torch.arange(0, 7), torch.tensor([0, 3, 4, 30])),  # unmasked
            SparseWork(torch.arange(7, 15), torch.arange(5, 25), torch.rand(8, 20, generator=g) < 0.5),
            SparseWork(torch.tensor([15, 16]), torch.arange(4), torch.zeros(2, 4, dtype=torch.bool)),  # all masked
        ]  # rows 17..22 are in no item
        works[1].keep[0] = False  # a fully masked row inside a masked item
        out, lse = block_sparse_attention(q, k, v, works, backend)
        mask = torch.zeros(sq, sk, dtype=torch.bool)
        for w in works:
            mask[w.q_index[:, None], w.k_index[None, :]] = True if w.keep is None else w.keep
        rows = mask.any(1)
        ref = masked_softmax_attention(q, k, v, mask.expand(h, sq, sk))
        logits = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) / math.sqrt(HEAD_DIM)
        ref_lse = torch.logsumexp(logits.masked_fill(~mask, float("-inf")), -1)
        tol = 2e-2 if dtype == torch.bfloat16 else 1e-5
        assert rel_err(out[:, rows], ref[:, rows]) <= tol
        assert torch.all(out[:, ~rows] == 0) and torch.all(torch.isneginf(lse[:, :, ~rows]))
        lse_tol = 5e-2 if dtype == torch.bfloat16 else 1e-5
        assert (lse[:, :, rows].double() - ref_lse[:, :, rows]).abs().max() <= lse_tol


@pytest.mark.gpu
def test_masked_kernel_on_cuda():
    g = torch.Generator().manual_seed(4)
    q, k, v = (torch.randn(1, n, 2, 64, generator=g) for n in (40, 50, 50))
    keep = torch.rand(40, 50, generator=g) < 0.4
    keep[3] = False
    ref, ref_lse = masked_attention_with_lse(q.double(), k.double(), v.double(), keep, "math")
    for dtype in (torch.float32, torch.bfloat16):
        out, lse = masked_attention_with_lse(*(t.cuda().to(dtype) for t in (q, k, v)), keep.cuda())
        assert rel_err(out.cpu(), ref) <= TOL[dtype]
        assert torch.isneginf(lse[..., 3]).all()


# ---- bad input fails on every rank before any collective ----

def bad_sparse_task(env, case):
    ctx = env.context(ParallelConfig(ulysses=2, ring=2))
    q = torch.randn(1, split_sizes(GRID.tokens, 4)[ctx.sp_rank], 5, HEAD_DIM)
    config = SparseAttention.from_cli(SPECS["svg"])
    grid, choice = (TokenGrid(5, 3, 4), None) if case == "grid" else (GRID, (0, 1, 2, 0, 0))
    call = SparseCall(config, grid, LayoutCache(), choice)
    try:
        attention(q, q, q, ctx, seq_lens=split_sizes(GRID.tokens, 4), sparse=call)
    except ValueError as e:
        return str(e), ctx.comm_stats()
    return None, ctx.comm_stats()


@pytest.mark.parametrize("case", ["grid", "head_choice"])
def test_bad_sparse_call_fails_everywhere_before_collectives(pools, case):
    for message, stats in pools(4).run(bad_sparse_task, case, timeout=30):
        assert message and ("60 tokens" in message if case == "grid" else "head_choice" in message)
        assert stats == {}, f"a collective was started: {stats}"
