"""What every rank must agree on after each denoising step: whether a stop was requested anywhere, and whether the
latents are still finite. One all-reduce of two numbers per step carries both (negligible next to a DiT forward).

Non-finite latents (NaN/Inf from an overflow in fp16/bf16, or from settings out of range) would otherwise decode
to a black or garbage video and exit 0; here they end the run with the step named, before any snapshot of them is
written.
"""

from __future__ import annotations

import torch


STEP_FLAGS_BYTES = 8  # two fp32 flags, all-reduced over every rank once per step (counted under "control")


class NonFiniteLatents(RuntimeError):
    """The latents became NaN/Inf at a step (raised on every rank at the same step)."""


def step_flags(ctx, latents: torch.Tensor, stop) -> tuple[bool, bool]:
    """``(stop requested on some rank, latents non-finite on some rank)``, identical on every rank of ``ctx``.

    Args:
        latents: ``[1, C, T, h, w]`` after the step (full on every rank).
        stop: a ``vidpar.checkpoint.StopRequest`` or None.
    """
    flags = torch.zeros(2, dtype=torch.float32, device=latents.device)
    if stop is not None and stop.is_set():
        flags[0] = 1.0
    flags[1] = (~torch.isfinite(latents)).any().to(torch.float32)
    flags = ctx.comm.all_reduce(flags, "world", control=True)
    stopping, broken = (bool(v > 0) for v in flags.tolist())
    return stopping, broken


def non_finite_error(step: int, num_steps: int, guidance_scale: float, flow_shift: float) -> NonFiniteLatents:
    return NonFiniteLatents(
        f"the latents became NaN/Inf at step {step} of {num_steps} (guidance_scale {guidance_scale:g}, flow_shift "
        f"{flow_shift:g}): the model's output overflowed (try --dtype float32 or bfloat16 instead of float16) or a "
        "setting is out of range; nothing was decoded or saved from this step")


__all__ = ["NonFiniteLatents", "non_finite_error", "step_flags"]
