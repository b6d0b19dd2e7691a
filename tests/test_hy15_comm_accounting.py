"""Measured bytes equal predicted bytes for the joint-attention DiT: ``ctx.comm_stats()`` of a tiny
sequence-parallel HunyuanVideo-1.5 transformer against ``vidpar.planner.predict_comm_bytes`` of its workload (text
tokens attended jointly: their queries/keys/values never travel; their output is all-gathered once per layer)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

import vidpar
from hy15_reference import make_inputs
from vidpar.models.hunyuanvideo15 import HunyuanVideo15Transformer3D, HunyuanVideo15TransformerConfig
from vidpar.models.hunyuanvideo15.workload import hy15_dit_workload
from vidpar.parallel import ParallelConfig
from vidpar.planner import predict_comm_bytes

GRID = (3, 5, 7)  # 105 video tokens
TEXT, GLYPH, IMAGE = 13, 4, 5  # valid joint tokens of the one sample
MESHES = {2: [(2, 1, 1), (1, 2, 1)], 4: [(4, 1, 1), (2, 2, 1), (1, 4, 1)]}


def config() -> HunyuanVideo15TransformerConfig:
    return HunyuanVideo15TransformerConfig(hidden_size=48, num_heads=3, rope_axes_dim=(4, 6, 6), num_layers=2,
                                          mlp_ratio=2.0, in_channels=9, out_channels=4, text_dim=20, glyph_dim=12,
                                          image_dim=8, task="i2v")


@torch.no_grad()
def measure(env, degrees):
    ctx = env.context(ParallelConfig(*degrees))
    torch.manual_seed(0)
    model = HunyuanVideo15Transformer3D(config()).eval()
    inputs = make_inputs(model.config, grid=GRID, text_valid=(TEXT,), glyph_valid=(GLYPH,), image_tokens=IMAGE)
    vidpar.parallelize(model, ctx)
    try:
        ctx.reset_comm_stats()
        model(**inputs)
        return ctx.comm_stats()
    finally:
        vidpar.unparallelize(model)


@pytest.mark.parametrize("world", [2, 4])
def test_measured_equals_predicted_per_rank(pools, world):
    workload = dataclasses.replace(hy15_dit_workload(config()), joint_tokens=TEXT + GLYPH + IMAGE)
    for degrees in MESHES[world]:
        parallel = ParallelConfig(*degrees)
        for rank, measured in enumerate(pools(world).run(measure, degrees)):
            predicted = predict_comm_bytes(workload, (1, 4, *GRID), 1, parallel, 4, rank=rank)
            assert measured == predicted, (degrees, rank, measured, predicted)
