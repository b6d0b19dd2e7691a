"""The HunyuanVideo-1.5 DiT made sequence-parallel by its plan equals the same model on one process
(fp32 rel <= 1e-5); the single-process model equals diffusers (test_hy15_transformer.py).

The reference is the unparallelized model's forward on the full inputs, run on the same rank with the same seeded
random weights. Head counts (3, 5) do not divide the degrees, token counts (105, 3) do not divide the rank counts,
and batches mix samples with different numbers of valid text/glyph tokens. On a cfg mesh each cfg half runs its own
branch (different prompts, so different joint-token counts in the two halves at once).
"""

from __future__ import annotations

import functools

import pytest
import torch

import vidpar
from vidpar.models.hunyuanvideo15 import HunyuanVideo15Transformer3D, HunyuanVideo15TransformerConfig
from vidpar.parallel import ParallelConfig

from hy15_reference import make_inputs, max_rel_error

TOL = 1e-5
GRID = (3, 5, 7)  # 105 video tokens
MODELS = {
    "3heads": dict(hidden_size=48, num_heads=3, rope_axes_dim=(4, 6, 6)),
    "5heads": dict(hidden_size=40, num_heads=5, rope_axes_dim=(2, 2, 4)),
}
# cfg branch -> inputs (the two branches differ as a prompt and a negative prompt do)
BRANCHES = (
    dict(batch=2, text_valid=(13, 7), glyph_valid=(4, 0), image_tokens=5, seed=1),
    dict(batch=1, text_valid=(5,), glyph_valid=(0,), image_tokens=None, seed=2),
)
MESHES = {2: [(2, 1, 1), (1, 2, 1), (1, 1, 2)], 4: [(4, 1, 1), (1, 4, 1), (2, 2, 1), (2, 1, 2), (1, 2, 2)]}


@functools.lru_cache(maxsize=None)  # one model per name and worker process; parallelize/unparallelize restore it
def build_model(name: str) -> HunyuanVideo15Transformer3D:
    cfg = HunyuanVideo15TransformerConfig(num_layers=2, mlp_ratio=2.0, in_channels=9, out_channels=4, text_dim=20,
                                          glyph_dim=12, image_dim=8, task="i2v", **MODELS[name])
    torch.manual_seed(0)
    model = HunyuanVideo15Transformer3D(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


@torch.no_grad()
def forward_parity_task(env, degrees, grid=GRID, names=tuple(MODELS)):
    """Every model on this rank's cfg branch: (errors, swapped op type, comm stats of the last forward)."""
    ctx = env.context(ParallelConfig(*degrees))
    errors, swapped, stats = [], None, None
    for name in names:
        model = build_model(name)
        inputs = make_inputs(model.config, grid=grid, **BRANCHES[ctx.coords["cfg"]])
        ref = model(**inputs)
        vidpar.parallelize(model, ctx)
        try:
            ctx.reset_comm_stats()
            out = model(**inputs)
            stats = ctx.comm_stats()
            swapped = type(model.blocks[0].attn_op).__name__
        finally:
            vidpar.unparallelize(model)
        errors.append(max_rel_error(out, ref))
    return errors, swapped, stats


@pytest.mark.parametrize("world", [2, 4])
def test_hy15_forward_parity_every_mesh(pools, world):
    for degrees in MESHES[world]:
        results = pools(world).run(forward_parity_task, degrees)
        print(f"{degrees}: max rel err {max(max(r[0]) for r in results):.2e}")
        for rank, (errors, swapped, stats) in enumerate(results):
            assert max(errors) <= TOL, f"{degrees} rank {rank}: rel errs {errors}"
            if degrees[0] * degrees[1] > 1:
                assert swapped == "SequenceParallelAttention"
                assert sum(v for k, v in stats.items() if k != "control") > 0  # it really communicated
                assert stats.get("control", 0) == 0  # shard lengths are known: no length exchange


def test_fewer_video_tokens_than_ranks(pools):
    # 3 tokens on 4 ranks: one rank holds none (ulysses, ring and both)
    for degrees in [(4, 1, 1), (1, 4, 1), (2, 2, 1)]:
        for rank, (errors, _, _) in enumerate(pools(4).run(forward_parity_task, degrees, (1, 1, 3), ("5heads",))):
            assert max(errors) <= TOL, f"{degrees} rank {rank}: {errors}"


@torch.no_grad()
def ulysses_bytes_task(env, text_valid):
    ctx = env.context(ParallelConfig(ulysses=2))
    model = vidpar.parallelize(build_model("3heads"), ctx)
    inputs = make_inputs(model.config, batch=1, grid=GRID, text_valid=(text_valid,), glyph_valid=(0,),
                         image_tokens=None)
    try:
        ctx.reset_comm_stats()
        model(**inputs)
        return ctx.comm_stats()
    finally:
        vidpar.unparallelize(model)


def test_text_tokens_never_go_through_the_all_to_all(pools):
    short, long = (pools(2).run(ulysses_bytes_task, n) for n in (3, 20))
    for a, b in zip(short, long):
        assert a["ulysses"] == b["ulysses"] > 0  # the all-to-alls carry video tokens only
        assert b["sp"] > a["sp"]  # the joint (text) outputs are assembled once per block by an all-gather


def test_eight_ranks_ulysses_uneven_heads(pools):
    # 5 heads over 8 ulysses ranks (1,1,1,1,1,0,0,0), 105 tokens over 8 ranks
    for rank, (errors, _, _) in enumerate(pools(8).run(forward_parity_task, (8, 1, 1), GRID, ("5heads",),
                                                       timeout=180)):
        assert max(errors) <= TOL, f"rank {rank}: {errors}"


@torch.no_grad()
def fsdp_task(env, degrees):
    from vidpar.parallel.fsdp import shard_weights

    ctx = env.context(ParallelConfig(*degrees))
    model = build_model.__wrapped__("3heads")  # a fresh copy: sharding is not undone
    inputs = make_inputs(model.config, grid=GRID, **BRANCHES[0])
    ref = model(**inputs)
    shard_weights(model, list(model.blocks), ctx)
    vidpar.parallelize(model, ctx)
    return max_rel_error(model(**inputs), ref)


def test_fsdp_blocks_with_sequence_parallel(pools):
    # FSDP units are model.blocks; a mixed-length batch runs every block once per sample in one forward.
    for degrees in [(2, 1, 1), (1, 2, 1)]:
        assert max(pools(2).run(fsdp_task, degrees)) <= TOL, degrees
