"""The planner: a cost and memory model of Wan inference that ranks parallel layouts (``vidpar plan``).

- ``comm_model``: bytes per rank per axis, mirroring vidpar's implementation exactly (tested against
  ``ctx.comm_stats()``);
- ``hardware``: datasheet figures of GPUs and links, and the achievable-efficiency assumptions;
- ``workload``: latent geometry, parameter and FLOP counts of a Wan config;
- ``cost`` / ``memory``: step time, VAE time and peak memory of one layout;
- ``search``: enumeration, rejection reasons, ranking, ``auto_parallel_config``.
"""

from .comm_model import cfg_exchange_bytes, predict_comm_bytes, predict_step_comm_bytes, predict_vae_comm_bytes
from .cost import Cluster, StepTime, step_time, vae_decode_time
from .hardware import GPUS, LINKS, gpu_kind_from_name, gpu_spec
from .memory import MemoryEstimate, estimate_memory
from .search import LayoutPlan, Request, auto_parallel_config, make_request, plan_layouts
from .workload import ModelSpec, dit_params, forward_flops, latent_shape, model_spec, num_tokens, resolve_model

__all__ = [
    "GPUS", "LINKS", "Cluster", "LayoutPlan", "MemoryEstimate", "ModelSpec", "Request", "StepTime",
    "auto_parallel_config", "cfg_exchange_bytes", "dit_params", "estimate_memory", "forward_flops", "gpu_kind_from_name", "gpu_spec",
    "latent_shape", "make_request", "model_spec", "num_tokens", "plan_layouts", "predict_comm_bytes",
    "predict_step_comm_bytes", "predict_vae_comm_bytes", "resolve_model", "step_time", "vae_decode_time",
]
