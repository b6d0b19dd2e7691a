"""Parallel HunyuanVideo-1.5 VAE decode (patch / pipeline / combined / auto) on 2 and 4 gloo ranks.

Every case checks, on every rank that gets the video:
- the parallel decode against the same model's single-process decode and against diffusers'
  ``AutoencoderKLHunyuanVideo15`` (same perturbed random weights, computed in the test process): fp32 max abs
  error <= 1e-5 x max |ref| (bf16: 2e-2 against the single-process bf16 decode);
- ``ctx.comm_stats()`` of exactly that one decode against ``vae_comm_model.predict_vae_comm_bytes``, per key, equal.
Latent heights and widths that do not divide by the band count, fewer rows than band ranks (idle ranks) and
``output="rank0"`` are included.
"""

from __future__ import annotations

import pytest
import torch

import vidpar
from hy15_vae_reference import make_tiny_diffusers_vae, tiny_kwargs
from test_comm_accounting import assert_equal_per_key
from vidpar.models.hunyuanvideo15 import HunyuanVideo15VAE, HunyuanVideo15VAEConfig
from vidpar.models.hunyuanvideo15.vae_comm_model import predict_vae_comm_bytes, vae_layout
from vidpar.parallel import ParallelConfig

TOL = 1e-5
BF16_TOL = 2e-2

# (kind, mode, output, latent (B, T, h, w), pipeline_degree, dtype)
CASES = {
    2: [
        ("tiny", "patch", "all", (1, 2, 5, 3), None, "fp32"),
        ("tiny", "pipeline", "rank0", (1, 3, 3, 4), None, "fp32"),
        ("shortcuts", "patch", "rank0", (2, 2, 3, 2), None, "fp32"),  # batch 2
        ("released", "auto", "all", (1, 2, 3, 2), None, "fp32"),  # auto -> patch
        ("tiny", "patch", "all", (1, 2, 3, 3), None, "bf16"),
    ],
    4: [
        ("tiny", "patch", "rank0", (1, 2, 5, 3), None, "fp32"),
        ("tiny", "patch", "all", (1, 2, 3, 4), None, "fp32"),  # fewer rows than ranks: one idle band rank
        ("tiny", "pipeline", "all", (1, 3, 4, 3), None, "fp32"),
        ("tiny", "combined", "all", (1, 3, 5, 4), None, "fp32"),
        ("shortcuts", "combined", "rank0", (1, 2, 1, 3), None, "fp32"),  # one row: one active rank per group
        ("released", "pipeline", "rank0", (1, 2, 2, 3), None, "fp32"),
        ("tiny", "auto", "rank0", (1, 8, 2, 3), None, "fp32"),  # auto -> combined 2 x 2
        ("tiny", "auto", "all", (1, 8, 3, 2), 4, "fp32"),  # auto -> combined 4 x 1 (convs swapped, no band split)
    ],
}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _latent(kind: str, b: int, t: int, h: int, w: int) -> torch.Tensor:
    c = tiny_kwargs(kind)["latent_channels"]
    return torch.randn(b, c, t, h, w, generator=torch.Generator().manual_seed(100 * t + 10 * h + w))


def _references(cases) -> list:
    """Per case: (diffusers state dict, diffusers decode of each batch item), in the test process."""
    out = []
    with torch.no_grad():
        for kind, _mode, _output, (b, t, h, w), _degree, _dtype in cases:
            ref = make_tiny_diffusers_vae(kind, seed=7)
            z = _latent(kind, b, t, h, w)
            # diffusers' attention mask does not broadcast over a batch, so decode item by item.
            want = torch.cat([ref.decode(z[i : i + 1]).sample for i in range(b)])
            out.append((ref.state_dict(), want))
    return out


@torch.no_grad()
def decode_task(env, cases, references):
    """Per case on this rank: (error vs single process, error vs diffusers, comm stats of one decode, out shape)."""
    ctx = env.context(ParallelConfig(ulysses=env.world_size))  # the DiT layout does not matter to the VAE
    results = []
    for (kind, mode, output, (b, t, h, w), degree, dtype), (state, want) in zip(cases, references):
        vae = HunyuanVideo15VAE(HunyuanVideo15VAEConfig(**tiny_kwargs(kind))).eval()
        vae.load_state_dict(state)
        vae = vae.to(DTYPES[dtype])
        z = _latent(kind, b, t, h, w)
        single = vae.decode(z).float()
        opts = {"vae_mode": mode, "output": output}
        if degree is not None:
            opts["pipeline_degree"] = degree
        vidpar.parallelize(vae, ctx, **opts)
        try:
            swapped = type(vae.decode_loop).__name__
            ctx.reset_comm_stats()
            out = vae.decode(z)
            stats = ctx.comm_stats()
        finally:
            vidpar.unparallelize(vae)
        if out is None:
            results.append((None, None, stats, None, swapped))
            continue
        out = out.float()
        err_single = ((out - single).abs().max() / single.abs().max()).item()
        err_ref = ((out - want).abs().max() / want.abs().max()).item() if dtype == "fp32" else None
        results.append((err_single, err_ref, stats, tuple(out.shape), swapped))
    return results


@pytest.mark.parametrize("world", [2, 4])
def test_parallel_decode_is_exact_and_its_bytes_are_predicted(pools, world):
    cases = CASES[world]
    per_rank = pools(world).run(decode_task, cases, _references(cases), timeout=600)
    for i, (kind, mode, output, (b, t, h, w), degree, dtype) in enumerate(cases):
        what = f"{kind} {mode} {output} {(b, t, h, w)} degree={degree} {dtype}"
        cfg = HunyuanVideo15VAEConfig(**tiny_kwargs(kind))
        s = cfg.spatial_factor
        keys = set()
        for rank in range(world):
            err_single, err_ref, measured, shape, swapped = per_rank[rank][i]
            assert swapped == "ParallelDecodeLoop"
            if output == "rank0" and rank != 0:
                assert shape is None, f"{what}: rank {rank} got a video with output='rank0'"
            else:
                assert shape == (b, 3, cfg.num_frames(t), h * s, w * s), what
                assert err_single <= (TOL if dtype == "fp32" else BF16_TOL), f"{what} rank {rank}: {err_single}"
                if err_ref is not None:
                    assert err_ref <= TOL, f"{what} rank {rank} vs diffusers: {err_ref}"
            eb = torch.empty((), dtype=DTYPES[dtype]).element_size()
            predicted = predict_vae_comm_bytes(cfg, (t, h, w), world, mode, output, eb, batch=b, rank=rank,
                                               pipeline_degree=degree)
            assert_equal_per_key(measured, predicted, f"{what} rank {rank}")
            keys |= set(measured)
        pipe, patch = vae_layout(world, t, mode, degree)
        assert "vae.world" in keys and "control" in keys
        if patch > 1 and min(patch, h) > 1:  # halos and band attention really moved
            assert {"vae.sp", "vae.ring", "vae.control"} <= keys, what
        busiest = predict_vae_comm_bytes(cfg, (t, h, w), world, mode, output, eb, batch=b, pipeline_degree=degree)
        for key, v in busiest.items():
            assert v == max(per_rank[r][i][2].get(key, 0) for r in range(world))


# ---- errors, on every rank before any collective -----------------------------------------------------------------


def bad_input_task(env, case):
    ctx = env.context(ParallelConfig(ulysses=env.world_size))
    torch.manual_seed(0)
    backend = "sdpa" if case == "no_lse" else "auto"  # plain SDPA gives no log-sum-exp
    vae = HunyuanVideo15VAE(HunyuanVideo15VAEConfig(**tiny_kwargs()), attention_backend=backend).eval()
    vidpar.parallelize(vae, ctx, vae_mode="patch")
    try:
        if case == "channels":
            vae.decode(torch.zeros(1, 16, 2, 4, 6))
        elif case == "rank_shapes":  # ranks disagree: caught by the shape exchange, not a hang
            vae.decode(torch.zeros(1, 4, 1, 4 + env.rank, 6))
        elif case == "no_lse":  # ring attention over bands needs a log-sum-exp: refused on every rank
            vae.decode(torch.zeros(1, 4, 1, 3 if env.world_size == 4 else 2, 2))
    except ValueError as e:
        return str(e)
    finally:
        vidpar.unparallelize(vae)
    return "no error"


@pytest.mark.parametrize("case,match", [("channels", "channels"), ("rank_shapes", "shapes"), ("no_lse", "log-sum-exp")])
def test_bad_inputs_raise_on_every_rank(pools, case, match):
    worlds = (2, 4) if case == "no_lse" else (2,)  # on 4 ranks with 3 rows one band rank is idle: it raises too
    for world in worlds:
        for msg in pools(world).run(bad_input_task, case):
            assert match in msg


def bad_mode_task(env, mode, degree):
    ctx = env.context(ParallelConfig(ulysses=env.world_size))
    vae = HunyuanVideo15VAE(HunyuanVideo15VAEConfig(**tiny_kwargs()))
    try:
        vidpar.parallelize(vae, ctx, vae_mode=mode, pipeline_degree=degree)
    except ValueError as e:
        assert getattr(vae, "_vidpar_applied_plan", None) is None
        assert type(vae.decode_loop).__name__ == "FrameDecodeLoop"
        return str(e)
    vidpar.unparallelize(vae)
    return "no error"


def test_bad_layouts_raise(pools):
    assert all("combined" in m for m in pools(4).run(bad_mode_task, "combined", 3))
    assert all("combined" in m for m in pools(2).run(bad_mode_task, "combined", 2))  # groups of 1 band rank
    vae = HunyuanVideo15VAE(HunyuanVideo15VAEConfig(**tiny_kwargs()))
    with pytest.raises(ValueError, match="vae_mode"):
        vae.parallel_plan(vae_mode="tiles")
    with pytest.raises(ValueError, match="output"):
        vae.parallel_plan(output="rank1")
    with pytest.raises(ValueError, match="pipeline_degree"):
        vae.parallel_plan(vae_mode="combined", pipeline_degree=9)  # more groups than the 7 stages
