"""vidpar's Euler sampler against the schedule diffusers' HunyuanVideo-1.5 pipelines build: custom linear sigmas
``linspace(1, 0, n + 1)[:-1]`` handed to ``FlowMatchEulerDiscreteScheduler(shift=...)`` via ``retrieve_timesteps``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vidpar.schedulers import FlowEulerScheduler

diffusers = pytest.importorskip("diffusers")

SHAPE = (1, 4, 3, 2, 2)


def _diffusers_schedule(shift: float, steps: int):
    from diffusers.pipelines.hunyuan_video1_5.pipeline_hunyuan_video1_5 import retrieve_timesteps

    sched = diffusers.FlowMatchEulerDiscreteScheduler(shift=shift)  # what the real folders' config holds
    sigmas = np.linspace(1.0, 0.0, steps + 1)[:-1]  # HunyuanVideo15Pipeline.__call__, step 4
    timesteps, n = retrieve_timesteps(sched, steps, torch.device("cpu"), sigmas=sigmas)
    assert n == steps
    return sched, timesteps


@pytest.mark.parametrize("shift", [5.0, 7.0, 9.0])  # 480p t2v/i2v, 720p i2v, 720p t2v
@pytest.mark.parametrize("steps", [1, 2, 8, 50])
def test_linear_sigmas_match_hunyuan_pipeline(shift: float, steps: int) -> None:
    ref, timesteps = _diffusers_schedule(shift, steps)
    ours = FlowEulerScheduler(flow_shift=shift, sigma_spacing="linear")
    ours.set_timesteps(steps)
    assert ours.timesteps.dtype == timesteps.dtype == torch.float32
    assert torch.equal(ours.timesteps, timesteps) and torch.equal(ours.sigmas, ref.sigmas)
    assert ours.timesteps[0].item() == 1000.0 and ours.sigmas[-1].item() == 0.0
    g = torch.Generator().manual_seed(steps)
    x_ref = torch.randn(SHAPE, generator=g)
    x_ours = x_ref.clone()
    for t in timesteps:  # the pipeline does not call set_begin_index: diffusers finds the index from t
        v = torch.randn(SHAPE, generator=g)
        x_ref = ref.step(v, t, x_ref, return_dict=False)[0]
        x_ours = ours.step(v, t, x_ours)
        assert torch.equal(x_ours, x_ref)


def test_default_spacing_unchanged_and_state() -> None:
    """The default (Wan's) schedule and its saved state format are untouched; the linear one round-trips."""
    wan = FlowEulerScheduler(flow_shift=5.0)
    assert wan.state_dict()["config"] == {"kind": "flow_euler", "num_train_timesteps": 1000, "shift": 5.0}
    wan.set_timesteps(4)
    hy = FlowEulerScheduler(flow_shift=5.0, sigma_spacing="linear")
    hy.set_timesteps(4)
    assert not torch.equal(wan.sigmas, hy.sigmas)
    x = torch.randn(SHAPE)
    hy.step(torch.randn(SHAPE), hy.timesteps[0], x)
    again = FlowEulerScheduler(flow_shift=5.0, sigma_spacing="linear")
    again.load_state_dict(hy.state_dict())
    assert again.step_index == 1 and torch.equal(again.sigmas, hy.sigmas)
    with pytest.raises(ValueError, match="saved with config"):
        FlowEulerScheduler(flow_shift=5.0).load_state_dict(hy.state_dict())
    with pytest.raises(ValueError, match="sigma_spacing"):
        FlowEulerScheduler(sigma_spacing="karras")
