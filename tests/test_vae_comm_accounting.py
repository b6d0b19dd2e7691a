"""Measured bytes of the parallel VAE decode equal ``vidpar.planner.predict_vae_comm_bytes``, per rank and per key.

Tiny Wan 2.1- and 2.2-style VAEs (those of ``test_vae_parallel``) decode on gloo with ``vae_mode`` patch,
pipeline, combined and auto, ``output`` all and rank0, on 2 and 4 ranks, with latent heights and widths that do
not divide by the band count (and fewer rows than band ranks). ``ctx.comm_stats()`` after one ``vae.decode``
must equal the prediction exactly (ratio 1.00).
"""

from __future__ import annotations

import pytest
import torch

import vidpar
from test_comm_accounting import assert_equal_per_key
from vae_reference import tiny_vae_kwargs
from vidpar.models.wan.vae import WanVAE
from vidpar.models.wan.vae_config import WanVAEConfig
from vidpar.models.wan.vae_blocks import CausalConv3d, SpatialConv2d
from vidpar.models.wan.vae_plan import HaloConv, _Runtime, stage_costs
from vidpar.parallel import ParallelConfig
from vidpar.planner import predict_vae_comm_bytes
from vidpar.planner.comm_model import vae_layout, vae_num_stages, vae_stage_costs

# (kind, mode, output, latent (B, T, h, w), pipeline_degree[, dtype]); fp32 unless given
CASES = {
    2: [
        ("2.1", "patch", "all", (1, 2, 5, 6), None),
        ("2.1", "patch", "all", (1, 2, 5, 6), None, torch.bfloat16),
        ("2.1", "pipeline", "rank0", (1, 3, 5, 6), None),
        ("2.2", "patch", "rank0", (2, 2, 5, 3), None),  # batch 2
        ("2.2", "pipeline", "all", (1, 2, 3, 3), None),
        ("2.1", "auto", "all", (1, 1, 3, 2), None),  # auto -> patch
    ],
    4: [
        ("2.1", "patch", "rank0", (1, 2, 5, 3), None),
        ("2.1", "patch", "all", (1, 2, 3, 4), None),  # fewer rows than ranks: one idle band rank
        ("2.1", "pipeline", "rank0", (1, 3, 4, 3), None),
        ("2.1", "combined", "all", (1, 3, 5, 6), None),
        ("2.1", "combined", "rank0", (1, 2, 1, 3), None),  # one row: one active band rank per stage group
        ("2.2", "patch", "all", (1, 2, 5, 3), None),
        ("2.2", "combined", "rank0", (1, 2, 3, 3), 2),
        ("2.2", "pipeline", "all", (1, 2, 3, 5), None),
        ("2.1", "auto", "rank0", (1, 8, 2, 3), None),  # auto -> combined 2 x 2
        ("2.1", "auto", "all", (1, 8, 3, 2), 4),  # auto -> combined 4 x 1 (convs swapped, no band split)
    ],
}


def vae_config(kind: str) -> WanVAEConfig:
    return WanVAEConfig.from_dict(tiny_vae_kwargs(kind))


@torch.no_grad()
def decode_stats_task(env, cases):
    """Per case: ``ctx.comm_stats()`` of exactly one parallel decode (parallelize's own traffic excluded)."""
    ctx = env.context(ParallelConfig(ulysses=env.world_size))
    results = []
    for kind, mode, output, (b, t, h, w), degree, *dtype in cases:
        torch.manual_seed(0)
        vae = WanVAE(vae_config(kind)).eval().to(*dtype)
        z = torch.randn(b, vae.config.z_dim, t, h, w, generator=torch.Generator().manual_seed(2))
        opts = {"vae_mode": mode, "output": output}
        if degree is not None:
            opts["pipeline_degree"] = degree
        vidpar.parallelize(vae, ctx, **opts)
        try:
            ctx.reset_comm_stats()
            out = vae.decode(z)
            results.append((ctx.comm_stats(), None if out is None else tuple(out.shape)))
        finally:
            vidpar.unparallelize(vae)
    return results


@pytest.mark.parametrize("world", [2, 4])
def test_vae_decode_bytes_match_prediction(pools, world):
    cases = CASES[world]
    per_rank = pools(world).run(decode_stats_task, cases, timeout=300)
    for i, (kind, mode, output, (b, t, h, w), degree, *dtype) in enumerate(cases):
        eb = torch.empty((), dtype=dtype[0] if dtype else torch.float32).element_size()
        keys = set()
        for rank in range(world):
            measured, shape = per_rank[rank][i]
            predicted = predict_vae_comm_bytes(vae_config(kind), (t, h, w), world, mode, output, eb, batch=b,
                                               rank=rank, pipeline_degree=degree)
            assert_equal_per_key(measured, predicted, f"{kind} {mode} {output} {(b, t, h, w)} rank {rank}")
            assert (shape is None) == (output == "rank0" and rank != 0)
            keys |= set(measured)
        pipe, patch = vae_layout(world, t, mode, degree)
        assert "vae.world" in keys and "control" in keys
        if patch > 1 and min(patch, h) > 1:  # halos and band attention really moved
            assert {"vae.sp", "vae.ring", "vae.control"} <= keys
        busiest = predict_vae_comm_bytes(vae_config(kind), (t, h, w), world, mode, output, eb, batch=b,
                                         pipeline_degree=degree)
        for key, v in busiest.items():
            assert v == max(per_rank[r][i][0].get(key, 0) for r in range(world))


@pytest.mark.parametrize("preset", ["2.1", "2.2", "wan2.1", "wan2.2"])
@pytest.mark.parametrize("hw", [(5, 3), (90, 160)])
def test_stage_costs_from_config_equal_the_modules(preset, hw):
    """The config-only stage costs are the decoder's (bit for bit), so the predicted pipeline ranges are too."""
    cfg = vae_config(preset) if preset in ("2.1", "2.2") else WanVAEConfig.preset(preset)
    with torch.device("meta"):
        vae = WanVAE(cfg)
    assert vae_stage_costs(cfg, *hw) == stage_costs(vae.decoder, *hw)
    assert vae_num_stages(cfg) == vae.decoder.num_stages
    # The decode balances with stage_costs of the HaloConv-swapped decoder: the swap must not change the costs.
    runtime = _Runtime()
    for name, m in list(vae.decoder.named_modules()):
        if isinstance(m, (CausalConv3d, SpatialConv2d)) and any(m.spatial_padding):
            parent, _, leaf = name.rpartition(".")
            setattr(vae.decoder.get_submodule(parent) if parent else vae.decoder, leaf, HaloConv(m, runtime))
    assert vae_stage_costs(cfg, *hw) == stage_costs(vae.decoder, *hw)


def test_real_size_prediction_is_cheap_and_consistent():
    """Wan 2.1 720p x 81 frames on 8 ranks: arithmetic only; halos grow with more bands, fp32 = 2 x bf16."""
    cfg = WanVAEConfig.wan21()
    lat = (21, 90, 160)
    p8 = predict_vae_comm_bytes(cfg, lat, 8, "patch", "rank0", 4)
    p2 = predict_vae_comm_bytes(cfg, lat, 2, "patch", "rank0", 4)
    assert p8["vae.sp"] == 2 * p2["vae.sp"]  # an inner band has two neighbours, each band of 2 ranks one
    half = predict_vae_comm_bytes(cfg, lat, 8, "patch", "rank0", 2)
    assert 2 * half["vae.sp"] == p8["vae.sp"] and 2 * half["vae.ring"] == p8["vae.ring"]
    comb = predict_vae_comm_bytes(cfg, lat, 8, "combined", "rank0", 4)
    assert comb["vae.world"] > 0 and comb["vae.sp"] > 0
    with pytest.raises(ValueError):
        predict_vae_comm_bytes(cfg, lat, 8, "pipeline", "rank0", 4)  # 8 groups > 7 stages
    with pytest.raises(ValueError):
        predict_vae_comm_bytes(cfg, lat, 6, "combined", "all", 4, pipeline_degree=4)


def test_planner_uses_the_exact_vae_bytes():
    """``plan_layouts`` reports the busiest rank's exact decode bytes (fp32, output rank0) and never lists a pipeline
    decode with more stage groups than decoder stages."""
    from vidpar.planner import make_request, plan_layouts
    from vidpar.planner.comm_model import predict_vae_busiest_rank_bytes

    for gpus in (4, 8):
        req = make_request("wan2.1-t2v-14b", 480, 832, 81, gpus, 8)
        ok, bad = plan_layouts(req)
        for plan in ok + bad:
            exact = predict_vae_busiest_rank_bytes(WanVAEConfig.wan21(), (21, 60, 104), gpus, plan.vae_mode, "rank0", 4)
            assert plan.vae_comm_bytes_per_gpu == sum(exact.values()) > 0
            assert gpus <= 7 or plan.vae_mode != "pipeline"
