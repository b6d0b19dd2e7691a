"""vidpar's flow schedulers against diffusers' (Wan configuration), plus mid-loop checkpoint/resume."""

from __future__ import annotations

import io

import pytest
import torch

from vidpar.schedulers import FlowEulerScheduler, FlowUniPCScheduler, make_scheduler

diffusers = pytest.importorskip("diffusers")

# Wan-AI/Wan2.1-T2V-*-Diffusers scheduler/scheduler_config.json (behaviour-bearing fields); 720p uses flow_shift 5.
WAN_UNIPC_CONFIG = dict(
    num_train_timesteps=1000,
    beta_start=0.0001,
    beta_end=0.02,
    beta_schedule="linear",
    prediction_type="flow_prediction",
    use_flow_sigmas=True,
    predict_x0=True,
    solver_order=2,
    solver_type="bh2",
    lower_order_final=True,
    disable_corrector=[],
    final_sigmas_type="zero",
    timestep_spacing="linspace",
    thresholding=False,
    use_karras_sigmas=False,
    use_exponential_sigmas=False,
    use_beta_sigmas=False,
    use_dynamic_shifting=False,
    steps_offset=0,
)

SHAPE = (2, 4, 3, 5, 6)  # [B, C, F, H, W] latents


def _reference(kind: str, shift: float, steps: int):
    if kind == "unipc":
        ref = diffusers.UniPCMultistepScheduler(flow_shift=shift, **WAN_UNIPC_CONFIG)
    else:
        ref = diffusers.FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=shift)
    ref.set_timesteps(steps)
    ref.set_begin_index(0)  # as WanPipeline does
    return ref


@pytest.mark.parametrize("kind", ["unipc", "euler"])
@pytest.mark.parametrize("shift", [3.0, 5.0])
@pytest.mark.parametrize("steps", [1, 2, 4, 50])
def test_matches_diffusers(kind: str, shift: float, steps: int) -> None:
    ref = _reference(kind, shift, steps)
    ours = make_scheduler(kind, flow_shift=shift)
    ours.set_timesteps(steps)
    assert ours.timesteps.dtype == ref.timesteps.dtype
    assert torch.equal(ours.timesteps, ref.timesteps)
    assert torch.equal(ours.sigmas, ref.sigmas)
    assert ours.sigmas[-1].item() == 0.0 and ours.init_noise_sigma == 1.0

    g = torch.Generator().manual_seed(steps * 10 + int(shift))
    x_ref = torch.randn(SHAPE, generator=g)
    x_ours = x_ref.clone()
    for t in ref.timesteps:
        v = torch.randn(SHAPE, generator=g)
        x_ref = ref.step(v, t, x_ref, return_dict=False)[0]
        x_ours = ours.step(v, t, x_ours)
        # Bitwise: same fp32 ops in the same order (the brief allows 1e-6; we hold ourselves to 0).
        assert torch.equal(x_ours, x_ref), (x_ours - x_ref).abs().max().item()


def _run(sched, xs: torch.Tensor, vs: list[torch.Tensor], start: int, stop: int) -> torch.Tensor:
    for i in range(start, stop):
        xs = sched.step(vs[i], sched.timesteps[i], xs)
    return xs


@pytest.mark.parametrize("cls", [FlowUniPCScheduler, FlowEulerScheduler])
@pytest.mark.parametrize("k", [0, 1, 2, 5, 9, 10])
def test_state_dict_resume_is_bitwise(cls, k: int) -> None:
    steps = 10
    g = torch.Generator().manual_seed(1)
    x0 = torch.randn(SHAPE, generator=g)
    vs = [torch.randn(SHAPE, generator=g) for _ in range(steps)]

    full = cls(flow_shift=5.0)
    full.set_timesteps(steps)
    expected = _run(full, x0, vs, 0, steps)

    first = cls(flow_shift=5.0)
    first.set_timesteps(steps)
    x_k = _run(first, x0, vs, 0, k)
    buf = io.BytesIO()
    torch.save({"sched": first.state_dict(), "x": x_k}, buf)
    # Saved state must not alias the live scheduler: keep stepping the original, it must not change the checkpoint.
    _run(first, x_k, vs, k, steps)
    buf.seek(0)
    ckpt = torch.load(buf, weights_only=True)

    resumed = cls(flow_shift=5.0)
    resumed.load_state_dict(ckpt["sched"])
    assert resumed.step_index == k
    got = _run(resumed, ckpt["x"], vs, k, steps)
    assert torch.equal(got, expected)


def test_load_state_rejects_other_config() -> None:
    a = FlowUniPCScheduler(flow_shift=3.0)
    a.set_timesteps(4)
    with pytest.raises(ValueError, match="config"):
        FlowUniPCScheduler(flow_shift=5.0).load_state_dict(a.state_dict())
    with pytest.raises(ValueError, match="config"):
        FlowEulerScheduler(flow_shift=3.0).load_state_dict(a.state_dict())


def test_step_checks() -> None:
    s = FlowUniPCScheduler()
    x = torch.zeros(SHAPE)
    with pytest.raises(RuntimeError, match="set_timesteps"):
        s.step(x, 999, x)
    s.set_timesteps(2)
    with pytest.raises(ValueError, match="expects timestep"):
        s.step(x, s.timesteps[1], x)
    x = s.step(x, s.timesteps[0], x)
    x = s.step(x, None, x)  # None skips the timestep check
    with pytest.raises(RuntimeError, match="steps are done"):
        s.step(x, None, x)
    with pytest.raises(ValueError, match="unknown scheduler"):
        make_scheduler("ddim", 3.0)


@pytest.mark.parametrize("cls", [FlowUniPCScheduler, FlowEulerScheduler])
def test_bf16_sample_keeps_dtype_and_tracks_fp32(cls) -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(SHAPE, generator=g)
    a, b = cls(), cls()
    a.set_timesteps(6)
    b.set_timesteps(6)
    xa, xb = x.clone(), x.to(torch.bfloat16)
    for t in a.timesteps:
        v = torch.randn(SHAPE, generator=g)
        xa = a.step(v, t, xa)
        xb = b.step(v.to(torch.bfloat16), t, xb)
        assert xb.dtype == torch.bfloat16
    assert (xa - xb.float()).abs().max().item() < 5e-2 * xa.abs().max().item()
