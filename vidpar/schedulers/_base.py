"""Shared bookkeeping for vidpar's flow-matching schedulers.

Flow matching convention used by Wan: ``x_sigma = (1 - sigma) * x0 + sigma * noise`` and the model predicts the
velocity ``noise - x0``. Sigmas run from ~1 (pure noise) down to a final 0 (clean sample).
"""

from __future__ import annotations

from typing import Any

import torch


class FlowSchedulerBase:
    """State common to the flow schedulers: the schedule and the step counter.

    Subclasses fill ``timesteps`` (``[N]``, the values passed to the model) and ``sigmas`` (``[N + 1]`` fp32 on CPU,
    last one 0) in ``set_timesteps`` and implement ``step``.
    """

    #: the initial latent is plain unit Gaussian noise (``x_1 = noise``).
    init_noise_sigma: float = 1.0
    #: one model evaluation per step (diffusers' ``scheduler.order``).
    order: int = 1
    kind: str = "base"

    def __init__(self, num_train_timesteps: int = 1000, shift: float = 1.0) -> None:
        if num_train_timesteps < 1:
            raise ValueError(f"num_train_timesteps must be >= 1, got {num_train_timesteps}")
        if not shift > 0:
            raise ValueError(f"shift must be > 0, got {shift}")
        self.num_train_timesteps = int(num_train_timesteps)
        self.shift = float(shift)
        self.num_inference_steps: int | None = None
        self.timesteps: torch.Tensor | None = None
        self.sigmas: torch.Tensor | None = None
        self.step_index: int = 0

    def _config(self) -> dict[str, Any]:
        """Plain values that define the schedule; a saved state only loads into an identically configured object."""
        return {"kind": self.kind, "num_train_timesteps": self.num_train_timesteps, "shift": self.shift}

    def _check_step(self, timestep: int | float | torch.Tensor | None) -> int:
        """Validate a ``step`` call and return the current step index.

        The step index is an internal counter (as in diffusers with ``set_begin_index(0)``); ``timestep`` is only
        checked against it, so a resumed or mis-ordered loop fails loudly instead of silently using wrong sigmas.
        """
        if self.timesteps is None or self.num_inference_steps is None:
            raise RuntimeError("call set_timesteps() before step()")
        i = self.step_index
        if i >= self.num_inference_steps:
            raise RuntimeError(f"all {self.num_inference_steps} steps are done; call set_timesteps() to restart")
        if timestep is not None:
            given = timestep.flatten()[0].item() if isinstance(timestep, torch.Tensor) else timestep
            expected = self.timesteps[i].item()
            if given != expected:
                raise ValueError(f"step {i} expects timestep {expected}, got {given}")
        return i

    @property
    def current_timestep(self) -> torch.Tensor:
        """The timestep (0-dim) the model should be evaluated at next."""
        if self.timesteps is None:
            raise RuntimeError("call set_timesteps() first")
        return self.timesteps[self.step_index]

    def _base_state(self) -> dict[str, Any]:
        return {
            "config": self._config(),
            "num_inference_steps": self.num_inference_steps,
            "step_index": self.step_index,
            "timesteps_device": None if self.timesteps is None else str(self.timesteps.device),
        }

    def _load_base_state(self, state: dict[str, Any]) -> None:
        if state["config"] != self._config():
            raise ValueError(f"scheduler state was saved with config {state['config']}, this one is {self._config()}")
        if state["num_inference_steps"] is None:
            self.num_inference_steps, self.timesteps, self.sigmas = None, None, None
        else:
            # The schedule is a pure function of the config and the step count, so it is rebuilt, not stored.
            self.set_timesteps(state["num_inference_steps"], device=state["timesteps_device"])
        self.step_index = int(state["step_index"])

    def set_timesteps(self, num_inference_steps: int, device: str | torch.device | None = None) -> None:
        raise NotImplementedError


def clone_opt(t: torch.Tensor | None) -> torch.Tensor | None:
    """Detached copy of an optional tensor (state dicts must not alias live tensors)."""
    return None if t is None else t.detach().clone()
