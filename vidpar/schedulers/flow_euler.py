"""First-order Euler sampler for flow-matching models.

Matches diffusers' ``FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=flow_shift)`` with every other
option at its default (no dynamic shifting, no Karras/exponential/beta sigmas, no stochastic sampling). Two base
schedules (``sigma_spacing``), both shifted by ``flow_shift`` afterwards:
- ``"train_range"`` (default): the scheduler's own ``set_timesteps(n)``, what Wan's diffusers pipeline gets when this
  scheduler is swapped in;
- ``"linear"``: ``np.linspace(1, 0, n + 1)[:-1]`` passed as custom ``sigmas`` (cast to fp32 numpy there), what
  diffusers' ``HunyuanVideo15Pipeline`` / ``HunyuanVideo15ImageToVideoPipeline`` do.
For fp32 inputs outputs are bitwise equal.

Quirk kept on purpose for parity: diffusers shifts the training sigma range once at construction and shifts the
inference sigmas again in ``set_timesteps``, so the smallest nonzero sigma is ``shift(shift(1/1000))``.

Precision: math in fp32; the result is returned in ``sample.dtype`` (diffusers returns ``model_output.dtype``,
i.e. bf16 latents when the model runs in bf16; keeping latents in fp32 is deliberate here).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ._base import FlowSchedulerBase


class FlowEulerScheduler(FlowSchedulerBase):
    """Euler steps ``x_{i+1} = x_i + (sigma_{i+1} - sigma_i) * v`` over a shifted linear sigma schedule.

    Args:
        flow_shift: timestep shift ``s``: ``sigma' = s * sigma / (1 + (s - 1) * sigma)``.
        num_train_timesteps: training timesteps (1000 for Wan); ``timestep = sigma * num_train_timesteps``.
        sigma_spacing: ``"train_range"`` (default) or ``"linear"`` (HunyuanVideo-1.5), see the module docstring.
    """

    kind = "flow_euler"
    SIGMA_SPACINGS = ("train_range", "linear")

    def __init__(
        self, flow_shift: float = 3.0, num_train_timesteps: int = 1000, sigma_spacing: str = "train_range"
    ) -> None:
        super().__init__(num_train_timesteps=num_train_timesteps, shift=flow_shift)
        if sigma_spacing not in self.SIGMA_SPACINGS:
            raise ValueError(f"sigma_spacing must be one of {self.SIGMA_SPACINGS}, got {sigma_spacing!r}")
        self.sigma_spacing = sigma_spacing
        # Shifted end points of the training schedule, in fp32 torch like diffusers' constructor.
        ends = torch.tensor([float(num_train_timesteps), 1.0], dtype=torch.float32) / num_train_timesteps
        ends = self.shift * ends / (1 + (self.shift - 1) * ends)
        self._sigma_max, self._sigma_min = ends[0].item(), ends[1].item()

    @property
    def flow_shift(self) -> float:
        return self.shift

    def _config(self) -> dict[str, Any]:
        config = super()._config()
        if self.sigma_spacing != "train_range":  # the default stays out: states saved before this option still load
            config["sigma_spacing"] = self.sigma_spacing
        return config

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        """Build the schedule and reset the step counter.

        Sets ``timesteps`` ``[N]`` fp32 on ``device`` and ``sigmas`` ``[N + 1]`` fp32 on ``device`` (last one 0).
        """
        n = int(num_inference_steps)
        if n < 1:
            raise ValueError(f"num_inference_steps must be >= 1, got {num_inference_steps}")
        if self.sigma_spacing == "linear":
            # fp32 numpy from here on, as diffusers' ``set_timesteps(sigmas=...)`` (NumPy 2 keeps fp32 with a float).
            sigmas = np.linspace(1.0, 0.0, n + 1)[:-1].astype(np.float32)
        else:
            t = np.linspace(self._sigma_max * self.num_train_timesteps, self._sigma_min * self.num_train_timesteps, n)
            sigmas = t / self.num_train_timesteps
        sigmas = self.shift * sigmas / (1 + (self.shift - 1) * sigmas)
        sigmas = torch.from_numpy(sigmas).to(dtype=torch.float32, device=device)
        self.timesteps = sigmas * self.num_train_timesteps
        self.sigmas = torch.cat([sigmas, torch.zeros(1, device=sigmas.device)])
        self.num_inference_steps = n
        self.step_index = 0

    def step(
        self, model_output: torch.Tensor, timestep: float | torch.Tensor | None, sample: torch.Tensor
    ) -> torch.Tensor:
        """One Euler step from ``sigmas[i]`` to ``sigmas[i + 1]``.

        Args:
            model_output: ``[B, ...]`` predicted velocity (noise - x0) at ``sample``.
            timestep: ``timesteps[i]`` (checked against the internal counter), or None to skip the check.
            sample: ``[B, ...]`` current latents.
        Returns:
            ``[B, ...]`` latents at ``sigmas[i + 1]``, in ``sample.dtype``.
        """
        i = self._check_step(timestep)
        if model_output.shape != sample.shape:
            raise ValueError(f"model_output {tuple(model_output.shape)} != sample {tuple(sample.shape)}")
        dt = self.sigmas[i + 1] - self.sigmas[i]
        prev_sample = sample.float() + dt * model_output.float()
        self.step_index = i + 1
        return prev_sample.to(sample.dtype)

    def state_dict(self) -> dict[str, Any]:
        """All mutable state as plain values (Euler keeps no history)."""
        return self._base_state()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a ``state_dict()``."""
        self._load_base_state(state)
