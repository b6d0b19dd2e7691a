"""Flow-matching samplers (pure torch; diffusers is only a test reference)."""

from __future__ import annotations

from ._base import FlowSchedulerBase
from .flow_euler import FlowEulerScheduler
from .flow_unipc import FlowUniPCScheduler
from .from_config import sampler_from_config

SCHEDULERS: dict[str, type[FlowSchedulerBase]] = {"unipc": FlowUniPCScheduler, "euler": FlowEulerScheduler}


def make_scheduler(name: str, flow_shift: float, num_train_timesteps: int = 1000) -> FlowSchedulerBase:
    """Scheduler by name (``"unipc"``, Wan's default, or ``"euler"``)."""
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {sorted(SCHEDULERS)}")
    return SCHEDULERS[name](flow_shift=flow_shift, num_train_timesteps=num_train_timesteps)


__all__ = ["FlowEulerScheduler", "FlowSchedulerBase", "FlowUniPCScheduler", "SCHEDULERS", "make_scheduler", "sampler_from_config"]
