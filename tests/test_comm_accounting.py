"""Measured bytes equal predicted bytes: ``ctx.comm_stats()`` of a tiny sequence-parallel Wan DiT on gloo against
``vidpar.planner.predict_comm_bytes`` for the same config, per rank and per key (ratio exactly 1.00).

Meshes cover Ulysses, ring and USP at world sizes 2 and 4 with heads and tokens that do not divide the degrees,
fp32 and bf16, and batch 2. The cfg-axis exchange is the pipeline's; it is checked against the pipeline when
``vidpar.pipeline`` exists and, meanwhile, against the exchange the planner assumes (one all-gather of the fp32
flow over ``"cfg"``). The VAE decode modes are checked in ``test_vae_comm_accounting.py``.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch

import vidpar
from vidpar.models.wan import WanTransformer3D, WanTransformerConfig
from vidpar.parallel import ParallelConfig
from vidpar.planner import predict_comm_bytes, predict_step_comm_bytes

MESHES = {
    2: [(2, 1, 1), (1, 2, 1)],
    4: [(4, 1, 1), (1, 4, 1), (2, 2, 1)],
}
LATENT = (3, 6, 10)  # 3 * 3 * 5 = 45 tokens: not divisible by 2 or 4


def tiny_config(heads: int = 3) -> WanTransformerConfig:
    return WanTransformerConfig(num_heads=heads, dim=8 * heads, num_layers=2, ffn_dim=32, text_dim=16, freq_dim=32)


def build(heads: int, dtype: torch.dtype) -> WanTransformer3D:
    torch.manual_seed(0)
    return WanTransformer3D(tiny_config(heads)).to(dtype).eval()


def inputs(cfg: WanTransformerConfig, batch: int, dtype: torch.dtype):
    g = torch.Generator().manual_seed(1)
    latents = torch.randn(batch, cfg.in_channels, *LATENT, generator=g).to(dtype)
    t = torch.full((batch,), 500.0)
    text = torch.randn(batch, 7, cfg.text_dim, generator=g).to(dtype)
    return latents, t, text


@torch.no_grad()
def measure_forward(env, degrees, heads, dtype, batch, forwards):
    ctx = env.context(ParallelConfig(*degrees))
    model = build(heads, dtype)
    args = inputs(model.config, batch, dtype)
    vidpar.parallelize(model, ctx)
    try:
        ctx.reset_comm_stats()
        for _ in range(forwards):
            model(*args)
        return ctx.comm_stats()
    finally:
        vidpar.unparallelize(model)


def assert_equal_per_key(measured: dict, predicted: dict, what: str) -> None:
    for key in sorted(set(measured) | set(predicted)):
        m, p = measured.get(key, 0), predicted.get(key, 0)
        assert m == p, f"{what}: key {key!r} measured {m} B, predicted {p} B (ratio {m / p if p else float('nan')})"
        if p:
            assert round(m / p, 2) == 1.00


@pytest.mark.parametrize("world", [2, 4])
def test_forward_bytes_match_prediction(pools, world):
    cases = [(3, torch.float32, 1), (5, torch.bfloat16, 2)]  # (heads, dtype, batch)
    for degrees in MESHES[world]:
        parallel = ParallelConfig(*degrees)
        for heads, dtype, batch in cases:
            stats = pools(world).run(measure_forward, degrees, heads, dtype, batch, 1)
            nbytes = torch.empty((), dtype=dtype).element_size()
            for rank, measured in enumerate(stats):
                predicted = predict_comm_bytes(tiny_config(heads), LATENT, batch, parallel, nbytes, rank=rank)
                assert_equal_per_key(measured, predicted, f"{degrees} heads={heads} {dtype} rank {rank}")
                assert measured.get("ulysses", 0) > 0 or measured.get("ring", 0) > 0


def test_more_ulysses_ranks_than_heads_and_tokens(pools):
    """2 heads and 3 tokens on 4 ulysses ranks: empty head and token shares are accounted as 0, not skipped."""
    stats = pools(4).run(measure_few, (4, 1, 1))
    cfg = WanTransformerConfig(num_heads=2, dim=16, num_layers=1, ffn_dim=32, text_dim=16, freq_dim=32)
    for rank, measured in enumerate(stats):
        predicted = predict_comm_bytes(cfg, (1, 2, 6), 1, ParallelConfig(4, 1, 1), 4, rank=rank)
        assert_equal_per_key(measured, predicted, f"rank {rank}")


@torch.no_grad()
def measure_few(env, degrees):
    ctx = env.context(ParallelConfig(*degrees))
    cfg = WanTransformerConfig(num_heads=2, dim=16, num_layers=1, ffn_dim=32, text_dim=16, freq_dim=32)
    torch.manual_seed(0)
    model = WanTransformer3D(cfg).eval()
    vidpar.parallelize(model, ctx)
    try:
        model(torch.randn(1, 16, 1, 2, 6), torch.tensor([500.0]), torch.randn(1, 4, 16))
        return ctx.comm_stats()
    finally:
        vidpar.unparallelize(model)


@pytest.mark.parametrize("world,degrees", [(2, (1, 1, 2)), (4, (2, 1, 2)), (4, (1, 2, 2))])
def test_guided_step_bytes_match_prediction_assumed_cfg_exchange(pools, world, degrees):
    """One guided step: per-branch forwards plus the cfg all-gather of the fp32 flow (as the planner assumes)."""
    for rank, measured in enumerate(pools(world).run(measure_guided_step, degrees)):
        predicted = predict_step_comm_bytes(tiny_config(3), LATENT, ParallelConfig(*degrees), 4, rank=rank)
        assert_equal_per_key(measured, predicted, f"{degrees} rank {rank}")


def test_unguided_axis_free_step_two_forwards(pools):
    """cfg == 1 with guidance: two forwards per step on the same ranks, twice the bytes of one."""
    for rank, measured in enumerate(pools(2).run(measure_forward, (1, 2, 1), 3, torch.float32, 1, 2)):
        predicted = predict_step_comm_bytes(tiny_config(3), LATENT, ParallelConfig(1, 2, 1), 4, rank=rank)
        assert_equal_per_key(measured, predicted, f"rank {rank}")


@torch.no_grad()
def measure_guided_step(env, degrees):
    ctx = env.context(ParallelConfig(*degrees))
    model = build(3, torch.float32)
    latents, t, text = inputs(model.config, 1, torch.float32)
    branch_text = text if ctx.coords["cfg"] == 0 else torch.zeros_like(text)  # cond / uncond branch
    vidpar.parallelize(model, ctx)
    try:
        ctx.reset_comm_stats()
        flow = model(latents, t, branch_text)
        both = ctx.comm.all_gather(flow.float(), "cfg")  # [2, B, C, F, H, W]: the exchange the planner assumes
        assert both.shape[0] == 2
        return ctx.comm_stats()
    finally:
        vidpar.unparallelize(model)


HAS_PIPELINE = importlib.util.find_spec("vidpar.pipeline") is not None


@torch.no_grad()
def measure_pipeline_step(env, degrees):
    """One guided step through ``Pipeline.denoise`` (tiny DiT, fp32): the pipeline's own cfg exchange."""
    from vidpar.models.wan.builtin import build_tiny
    from vidpar.models.wan.components import WanComponents
    from vidpar.pipeline import GenerationRequest, Pipeline

    ctx = env.context(ParallelConfig(*degrees))
    model = build(3, torch.float32)
    vae = build_tiny(load_text_encoder=False)[1]  # the pipeline parallelizes its VAE too; unused here
    comps = WanComponents(transformer=model, vae=vae, text_encoder=None, tokenizer=None)
    pipe = Pipeline(comps, ctx, torch.float32)
    try:
        latents, _, text = inputs(model.config, 1, torch.float32)
        text = [{"text": text}, {"text": torch.zeros_like(text)}]  # cond, uncond (the pipeline's prompt states)
        req = GenerationRequest(prompt="x", num_steps=1, guidance_scale=5.0)
        ctx.reset_comm_stats()
        pipe.denoise(latents, text, req)
        return ctx.comm_stats()
    finally:
        vidpar.unparallelize(model)


@pytest.mark.skipif(not HAS_PIPELINE, reason="vidpar.pipeline is not importable: its cfg exchange cannot be measured")
@pytest.mark.parametrize("world,degrees", [(2, (1, 1, 2)), (2, (2, 1, 1)), (4, (2, 1, 2))])
def test_pipeline_guided_step_bytes_match_prediction(pools, world, degrees):
    for rank, measured in enumerate(pools(world).run(measure_pipeline_step, degrees)):
        predicted = predict_step_comm_bytes(tiny_config(3), LATENT, ParallelConfig(*degrees), 4, rank=rank,
                                            step_flags=True)
        assert_equal_per_key(measured, predicted, f"pipeline {degrees} rank {rank}")


# The parallel VAE decode's bytes (patch / pipeline / combined / auto, output all / rank0) against
# ``vidpar.planner.predict_vae_comm_bytes``: tests/test_vae_comm_accounting.py.
