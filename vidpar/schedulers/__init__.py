"""Flow-matching samplers (pure torch; diffusers is only a test reference)."""

from __future__ import annotations

from functools import partial
from typing import Callable

from ._base import FlowSchedulerBase
from .flow_euler import FlowEulerScheduler
from .flow_unipc import FlowUniPCScheduler
from .from_config import sampler_from_config

# name -> constructor(flow_shift=..., num_train_timesteps=...). "euler": diffusers' FlowMatchEuler schedule (sigmas
# spaced over the shifted training range); "euler-linear": the same steps over sigmas linspace(1, 0) before the
# shift, as diffusers' HunyuanVideo-1.5 pipelines pass them.
SCHEDULERS: dict[str, Callable[..., FlowSchedulerBase]] = {
    "unipc": FlowUniPCScheduler,
    "euler": FlowEulerScheduler,
    "euler-linear": partial(FlowEulerScheduler, sigma_spacing="linear"),
}


def make_scheduler(name: str, flow_shift: float, num_train_timesteps: int = 1000) -> FlowSchedulerBase:
    """Scheduler by name (``"unipc"``, ``"euler"`` or ``"euler-linear"``; see ``SCHEDULERS``)."""
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {sorted(SCHEDULERS)}")
    return SCHEDULERS[name](flow_shift=flow_shift, num_train_timesteps=num_train_timesteps)


__all__ = [
    "FlowEulerScheduler", "FlowSchedulerBase", "FlowUniPCScheduler", "SCHEDULERS", "make_scheduler", "sampler_from_config",
]
