"""A checkpoint's sampler from its diffusers ``scheduler/scheduler_config.json``, or a clear refusal.

vidpar implements two diffusers configurations exactly (bit for bit in fp32, ``tests/test_schedulers.py``): the flow
UniPC of Wan's checkpoints and the plain ``FlowMatchEulerDiscreteScheduler``. A config asking for anything else (a
different solver order, dynamic shifting, Karras sigmas, another class) is refused, naming the class and the field,
instead of silently sampling with another schedule.
"""

from __future__ import annotations

import math
from typing import Any

# Behaviour-bearing fields and the one value vidpar implements; a missing key takes diffusers' default, which must
# then be that value too. Fields not listed (betas of a flow model, thresholding ratios when off) do not change the
# flow schedule.
_UNIPC = {
    "prediction_type": "flow_prediction", "use_flow_sigmas": True, "solver_order": 2, "solver_type": "bh2",
    "predict_x0": True, "lower_order_final": True, "final_sigmas_type": "zero", "timestep_spacing": "linspace",
    "thresholding": False, "use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False,
    "use_dynamic_shifting": False, "steps_offset": 0, "disable_corrector": [], "solver_p": None,
    "rescale_betas_zero_snr": False, "sigma_min": None, "sigma_max": None, "shift_terminal": None,
    "num_train_timesteps": 1000,
}
_UNIPC_DEFAULTS = {
    "prediction_type": "epsilon", "use_flow_sigmas": False, "solver_order": 2, "solver_type": "bh2",
    "predict_x0": True, "lower_order_final": True, "final_sigmas_type": "zero", "timestep_spacing": "linspace",
    "thresholding": False, "use_karras_sigmas": False, "use_exponential_sigmas": False, "use_beta_sigmas": False,
    "use_dynamic_shifting": False, "steps_offset": 0, "disable_corrector": [], "solver_p": None,
    "rescale_betas_zero_snr": False, "sigma_min": None, "sigma_max": None, "shift_terminal": None,
    "num_train_timesteps": 1000, "flow_shift": 1.0,
}
_EULER = {
    "use_dynamic_shifting": False, "invert_sigmas": False, "shift_terminal": None, "use_karras_sigmas": False,
    "use_exponential_sigmas": False, "use_beta_sigmas": False, "stochastic_sampling": False,
    "num_train_timesteps": 1000,
}
_EULER_DEFAULTS = {**_EULER, "shift": 1.0}

# diffusers class -> (vidpar scheduler name, the key holding the shift, required values, diffusers' defaults)
SUPPORTED = {
    "UniPCMultistepScheduler": ("unipc", "flow_shift", _UNIPC, _UNIPC_DEFAULTS),
    "FlowMatchEulerDiscreteScheduler": ("euler", "shift", _EULER, _EULER_DEFAULTS),
}


def sampler_from_config(config: dict[str, Any], where: str) -> tuple[str, float]:
    """``(vidpar scheduler name, shift)`` for a diffusers scheduler config dict.

    Args:
        config: the parsed ``scheduler_config.json``.
        where: the file, for error messages.
    Raises:
        ValueError: the class or one of its settings is not a sampler vidpar implements exactly.
    """
    cls = config.get("_class_name")
    if cls not in SUPPORTED:
        raise ValueError(f"{where}: scheduler {cls!r} is not implemented by vidpar (it implements "
                         f"{', '.join(sorted(SUPPORTED))} in their flow-matching configurations)")
    name, shift_key, required, defaults = SUPPORTED[cls]
    for key, want in required.items():
        got = config.get(key, defaults[key])
        if got != want and not (isinstance(want, list) and not got):
            raise ValueError(f"{where}: {cls} with {key}={got!r} is not implemented by vidpar "
                             f"(it implements {key}={want!r})")
    shift = config.get(shift_key, defaults[shift_key])
    if isinstance(shift, bool) or not isinstance(shift, (int, float)) or not math.isfinite(shift) or shift <= 0:
        raise ValueError(f"{where}: {shift_key} must be a positive number, got {shift!r}")
    return name, float(shift)


__all__ = ["SUPPORTED", "sampler_from_config"]
