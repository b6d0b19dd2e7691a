"""Parallel Wan VAE decode (patch / pipeline / combined / auto) equals the single-process decode (fp32 max abs <= 1e-5).

The reference is the same model's unparallelized decode on the same rank (seeded random weights, identical on every
rank); one test also checks the single-process decode against diffusers' AutoencoderKLWan. Latent heights and widths
that do not divide by the rank count (and fewer rows than ranks) are included.
"""

from __future__ import annotations

import pytest
import torch

import vidpar
from vae_reference import tiny_vae_kwargs
from vidpar.models.wan.vae import WanVAE
from vidpar.models.wan.vae_config import WanVAEConfig
from vidpar.parallel import ParallelConfig
from vidpar.parallel.vae_pipeline import balance_stages

TOL = 1e-5


def build_vae(kind: str, seed: int = 0) -> WanVAE:
    torch.manual_seed(seed)
    vae = WanVAE(WanVAEConfig.from_dict(tiny_vae_kwargs(kind))).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for p in vae.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return vae


def latents(vae: WanVAE, t: int, h: int, w: int, seed: int = 2) -> torch.Tensor:
    return torch.randn(1, vae.config.z_dim, t, h, w, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def decode_task(env, kind, mode, shape, output="all", degree=None):
    ctx = env.context(ParallelConfig(ulysses=env.world_size))  # the DiT layout does not matter to the VAE
    vae = build_vae(kind)
    z = latents(vae, *shape)
    ref = vae.decode(z)
    opts = {"vae_mode": mode, "output": output}
    if degree is not None:
        opts["pipeline_degree"] = degree
    vidpar.parallelize(vae, ctx, **opts)
    try:
        out = vae.decode(z)
        swapped = type(vae.decode_loop).__name__
    finally:
        vidpar.unparallelize(vae)
    stats = ctx.comm_stats()
    if out is None:
        return None, swapped, stats
    assert out.shape == ref.shape, (out.shape, ref.shape)
    return (out - ref).abs().max().item(), swapped, stats


def _check(results, output="all"):
    for rank, (err, swapped, stats) in enumerate(results):
        assert swapped == "ParallelDecodeLoop"
        if output == "rank0" and rank != 0:
            assert err is None, f"rank {rank} got a video with output='rank0'"
            continue
        assert err is not None and err <= TOL, f"rank {rank}: max abs err {err}"


# (kind, mode, latent (t, h, w)); uneven bands everywhere (h = 5 over 2 and 4 ranks).
CASES_2 = [
    ("2.1", "patch", (2, 5, 6)),
    ("2.1", "pipeline", (3, 5, 6)),
    ("2.2", "patch", (2, 5, 3)),
    ("2.2", "pipeline", (2, 3, 3)),
]
CASES_4 = [
    ("2.1", "patch", (2, 5, 3)),
    ("2.1", "patch", (2, 3, 4)),  # fewer rows than ranks: one idle band rank
    ("2.1", "pipeline", (3, 4, 3)),
    ("2.1", "combined", (3, 5, 6)),
    ("2.2", "patch", (2, 5, 3)),
    ("2.2", "combined", (2, 3, 3)),
]


@pytest.mark.parametrize("kind,mode,shape", CASES_2)
def test_parity_world2(pools, kind, mode, shape):
    _check(pools(2).run(decode_task, kind, mode, shape, timeout=120))


@pytest.mark.parametrize("kind,mode,shape", CASES_4)
def test_parity_world4(pools, kind, mode, shape):
    results = pools(4).run(decode_task, kind, mode, shape, timeout=120)
    _check(results)
    stats = results[0][2]
    if mode in ("patch", "combined"):
        assert stats.get("vae.sp", 0) > 0 and stats.get("vae.ring", 0) > 0  # halos and attention really moved


def test_auto_and_rank0_output(pools):
    # 8 latent frames on 4 ranks: auto picks pipeline x patch (2 x 2); output on rank 0 only.
    _check(pools(4).run(decode_task, "2.1", "auto", (8, 2, 3), "rank0", timeout=120), output="rank0")
    _check(pools(2).run(decode_task, "2.1", "auto", (1, 3, 2), "rank0", timeout=120), output="rank0")


def bad_input_task(env, case):
    ctx = env.context(ParallelConfig(ulysses=env.world_size))
    vae = build_vae("2.1")
    vidpar.parallelize(vae, ctx, vae_mode="patch")
    try:
        if case == "channels":
            vae.decode(torch.zeros(1, 4, 2, 4, 6))
        elif case == "frames":
            vae.decode(torch.zeros(1, 16, 0, 4, 6))
        elif case == "rank_shapes":  # ranks disagree: caught by the shape exchange, not a hang
            vae.decode(torch.zeros(1, 16, 1, 4 + env.rank, 6))
    except ValueError as e:
        return str(e)
    finally:
        vidpar.unparallelize(vae)
    return "no error"


@pytest.mark.parametrize("case,match", [("channels", "channels"), ("frames", "empty"), ("rank_shapes", "shapes")])
def test_bad_inputs_raise_on_every_rank(pools, case, match):
    for msg in pools(2).run(bad_input_task, case):
        assert match in msg


def bad_mode_task(env, mode, degree):
    ctx = env.context(ParallelConfig(ulysses=env.world_size))
    vae = build_vae("2.1")
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
    with pytest.raises(ValueError, match="vae_mode"):
        build_vae("2.1").parallel_plan(vae_mode="tiles")
    with pytest.raises(ValueError, match="output"):
        build_vae("2.1").parallel_plan(output="rank1")


@torch.no_grad()
def test_single_process_decode_matches_diffusers():
    """The reference the parallel tests compare against is itself diffusers-exact (same weights)."""
    pytest.importorskip("diffusers")
    from vae_reference import make_tiny_diffusers_vae

    ref = make_tiny_diffusers_vae("2.1", seed=3)
    ours = WanVAE(WanVAEConfig.from_dict(dict(ref.config)))
    ours.load_state_dict(ref.state_dict())
    z = latents(ours, 2, 5, 3)
    assert (ours.decode(z) - ref.decode(z).sample).abs().max().item() <= TOL


def test_balance_stages():
    assert balance_stages([1, 1, 1, 1], 2) == [(0, 2), (2, 4)]
    assert balance_stages([1, 1, 1, 9], 2) == [(0, 3), (3, 4)]
    assert balance_stages([5, 1, 1, 1, 1, 1], 2) == [(0, 1), (1, 6)]
    with pytest.raises(ValueError):
        balance_stages([1, 2], 3)


def test_memory_model_scales_with_bands():
    from vidpar.models.wan.vae_memory import vae_decode_peak_bytes

    cfg = WanVAEConfig.wan21()
    shape = (1, 16, 21, 90, 160)  # 1280x720, 81 frames
    peaks = [vae_decode_peak_bytes(cfg, shape, (1, p), 2, "none") for p in (1, 2, 4, 8)]
    assert peaks == sorted(peaks, reverse=True)
    assert peaks[2] < peaks[0] / 3  # the working set and caches split over the bands
    assert vae_decode_peak_bytes(cfg, shape, (1, 4), 2, "all") > peaks[2]  # assembling the video costs memory
