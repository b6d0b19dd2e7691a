"""The Wan DiT made sequence-parallel by its plan equals the same model on one process (fp32 rel <= 1e-5).

The reference is the unparallelized model's forward on the full latents, run on the same rank; both use the same
seeded random weights. Configs cover heads not divisible by the degrees, token counts not divisible by 4, per-token
timesteps (TI2V) and image conditioning (I2V).
"""

from __future__ import annotations

import pytest
import torch

import vidpar
from vidpar.models.wan import WanTransformer3D, WanTransformerConfig
from vidpar.parallel import ParallelConfig
from vidpar.schedulers import FlowUniPCScheduler

TOL = 1e-5

MODELS = {
    "t2v_3heads": dict(num_heads=3, dim=24),
    "t2v_5heads": dict(num_heads=5, dim=40),
    "ti2v": dict(num_heads=3, dim=24, in_channels=12, out_channels=12, model_type="ti2v"),
    "i2v": dict(num_heads=2, dim=16, in_channels=20, image_dim=8, model_type="i2v"),
}
MESHES = {2: [(2, 1, 1), (1, 2, 1), (1, 1, 2)], 4: [(4, 1, 1), (1, 4, 1), (2, 2, 1), (2, 1, 2), (1, 2, 2)]}


def build_model(name: str) -> WanTransformer3D:
    cfg = WanTransformerConfig(num_layers=2, ffn_dim=32, text_dim=16, freq_dim=32, **MODELS[name])
    torch.manual_seed(0)
    model = WanTransformer3D(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model.eval()


def make_inputs(model: WanTransformer3D, name: str, seed: int = 1):
    cfg = model.config
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(2, cfg.in_channels, 3, 6, 10, generator=g)  # 3*3*5 = 45 tokens
    tokens = 45
    if name == "ti2v":  # first latent frame is the conditioning image: timestep 0 there
        timestep = torch.full((2, tokens), 700.0)
        timestep[:, :15] = 0.0
    else:
        timestep = torch.tensor([700.0, 300.0])
    text = torch.randn(2, 7, cfg.text_dim, generator=g)
    image = torch.randn(2, 5, cfg.image_dim, generator=g) if cfg.image_dim else None
    return latents, timestep, text, image


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


@torch.no_grad()
def forward_parity_task(env, degrees, name):
    ctx = env.context(ParallelConfig(*degrees))
    model = build_model(name)
    inputs = make_inputs(model, name)
    ref = model(*inputs)
    vidpar.parallelize(model, ctx)
    try:
        out = model(*inputs)
        swapped = type(model.blocks[0].self_attn.attn_op).__name__
    finally:
        vidpar.unparallelize(model)
    return rel_err(out, ref), swapped, ctx.comm_stats()


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("world", [2, 4])
def test_wan_forward_parity_every_mesh(pools, world, name):
    for degrees in MESHES[world]:
        for rank, (err, swapped, stats) in enumerate(pools(world).run(forward_parity_task, degrees, name)):
            assert err <= TOL, f"{degrees} rank {rank}: rel err {err:.2e}"
            if degrees[0] * degrees[1] > 1:
                assert swapped == "SequenceParallelAttention"
                assert sum(v for k, v in stats.items() if k != "control") > 0  # it really communicated


@torch.no_grad()
def denoise_task(env, degrees, steps):
    ctx = env.context(ParallelConfig(*degrees)) if env is not None else None
    model = build_model("t2v_3heads")
    latents, _, text, _ = make_inputs(model, "t2v_3heads")
    if ctx is not None:
        vidpar.parallelize(model, ctx)
    sched = FlowUniPCScheduler(flow_shift=3.0)
    sched.set_timesteps(steps)
    try:
        for t in sched.timesteps:
            flow = model(latents, t.expand(latents.shape[0]).float(), text)
            latents = sched.step(flow, t, latents)
    finally:
        if ctx is not None:
            vidpar.unparallelize(model)
    return latents


def test_denoise_loop_same_latents_on_any_mesh(pools):
    ref = denoise_task(None, None, 3)
    for world, degrees in [(2, (1, 2, 1)), (4, (2, 2, 1))]:
        for rank, latents in enumerate(pools(world).run(denoise_task, degrees, 3)):
            assert rel_err(latents, ref) <= TOL, (degrees, rank)


def test_plan_refuses_double_application():
    model = build_model("t2v_3heads")
    ctx = vidpar.init_parallel(ParallelConfig())
    vidpar.parallelize(model, ctx)
    with pytest.raises(RuntimeError, match="already parallelized"):
        vidpar.parallelize(model, ctx)
    vidpar.unparallelize(model)


def twelve_heads_task(env, degrees, latent_shape):
    """Wan-1.3B's head count (12) on more ulysses ranks than divide it (12 on 8 ranks is 2,2,2,2,1,1,1,1)."""
    ctx = env.context(ParallelConfig(*degrees))
    cfg = WanTransformerConfig(num_heads=12, dim=48, num_layers=1, ffn_dim=32, text_dim=16, freq_dim=32)
    torch.manual_seed(0)
    model = WanTransformer3D(cfg).eval()
    g = torch.Generator().manual_seed(5)
    latents = torch.randn(1, 16, *latent_shape, generator=g)
    text = torch.randn(1, 4, 16, generator=g)
    t = torch.tensor([500.0])
    with torch.no_grad():
        ref = model(latents, t, text)
        vidpar.parallelize(model, ctx)
        out = model(latents, t, text)
    vidpar.unparallelize(model)
    return rel_err(out, ref)


def test_fewer_tokens_than_ranks(pools):
    # 3 tokens on 4 ranks: one rank holds none
    assert max(pools(4).run(twelve_heads_task, (4, 1, 1), (1, 2, 6))) <= TOL


@pytest.mark.parametrize("degrees", [(8, 1, 1), (4, 2, 1), (2, 2, 2)])
def test_twelve_heads_on_eight_ranks(pools, degrees):
    # 45 tokens over 8 ranks
    assert max(pools(8).run(twelve_heads_task, degrees, (3, 6, 10), timeout=180)) <= TOL
