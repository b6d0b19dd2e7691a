"""Sparse attention through the pipeline: the same float64 frames on every mesh with each pattern on, off is the dense
video bit for bit, dense warm-up steps follow the schedule, both families, and the CLI flag."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cli_run import run_vidpar
from vidpar.parallel import ParallelConfig, init_parallel
from vidpar.pipeline import Pipeline

REQUEST = dict(prompt="a red fox in snow", height=64, width=96, num_frames=9, num_steps=3, seed=2)  # grid 3x4x6
PATTERNS = {
    "window": "window:tile=1x2x2,window=1x1x3",
    "radial": "radial:tile=1x2x2,min_width=2",
    "svg": "svg:tile=1x2x2,num_samples=8,dense_first=0,dense_layers=0",
}
MESHES = [(2, (1, 2, 1)), (2, (1, 1, 2)), (4, (2, 2, 1))]  # ring, cfg, USP (ulysses x ring)


def generate_task(env, spec, degrees=None, model="tiny"):
    ctx = env.context(ParallelConfig(*degrees)) if env is not None else init_parallel(ParallelConfig())
    pipe = Pipeline.from_pretrained(model, parallel=ctx.config, dtype=torch.float64)
    return pipe.generate(**REQUEST, sparse_attention=spec).frames


@pytest.fixture(scope="module")
def single():
    return {name: generate_task(None, spec) for name, spec in {**PATTERNS, "dense": None}.items()}


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_same_frames_on_every_mesh(pools, single, name):
    assert np.abs(single[name].astype(int) - single["dense"].astype(int)).max() > 0, "the pattern must matter"
    for world, degrees in MESHES:
        frames = pools(world).run(generate_task, PATTERNS[name], degrees)[0]
        assert np.array_equal(frames, single[name]), (name, degrees)


def test_off_is_dense_and_dense_steps_are_dense(single):
    assert np.array_equal(generate_task(None, None), single["dense"])
    every_step_dense = "window:tile=1x2x2,window=1x1x3,dense_first=3"
    assert np.array_equal(generate_task(None, every_step_dense), single["dense"])


def test_cli_flag(tmp_path):
    res = run_vidpar(["generate", "--model", "tiny", "--prompt", "x", "--sparse-attention", "window:bogus=1",
                      "--out", "v.npy"], tmp_path, nproc=2, timeout=120)
    assert res.returncode != 0 and "bogus" in res.stdout, res.stdout
    from vidpar.video import read_video

    args = ["generate", "--model", "tiny", "--prompt", REQUEST["prompt"], "--dtype", "float64", "--height", "64",
            "--width", "96", "--frames", "9", "--steps", "3", "--seed", "2", "--sparse-attention",
            PATTERNS["window"], "--out", "w.npy", "--no-progress", "--ring", "2"]
    res = run_vidpar(args, tmp_path, nproc=2, timeout=180)
    assert res.returncode == 0, res.stdout
    assert np.array_equal(read_video(tmp_path / "w.npy"), generate_task(None, PATTERNS["window"]))


def test_planner_prices_the_pattern():
    """The planner scales attention by the kept share and takes the windowed ring's bytes from the schedule."""
    from vidpar.parallel import ParallelConfig
    from vidpar.parallel.sparse import SparseAttention
    from vidpar.planner import make_request, plan_layouts
    from vidpar.planner.cost import step_time
    from vidpar.planner.workload import latent_shape, num_tokens

    dense = make_request("wan2.1-t2v-1.3b", 480, 832, 241, 4, 4)  # long clip: ring blocks of 15 latent frames
    sparse = make_request("wan2.1-t2v-1.3b", 480, 832, 241, 4, 4, sparse="window")
    assert isinstance(sparse.sparse, SparseAttention) and 0 < sparse.sparse_costs().kept < 1
    assert plan_layouts(sparse)[0][0].step_time_s < plan_layouts(dense)[0][0].step_time_s
    latent = latent_shape(dense.model.vae, 480, 832, 241)
    ring = ParallelConfig(ring=4)
    d = step_time(dense.model, latent, num_tokens(dense.model.config, latent), ring, False, dense.cluster)
    s = step_time(sparse.model, latent, num_tokens(sparse.model.config, latent), ring, False, sparse.cluster,
                  sparse=sparse.sparse_costs())
    assert s.compute_s < d.compute_s and s.comm_bytes["ring"] < d.comm_bytes["ring"]
