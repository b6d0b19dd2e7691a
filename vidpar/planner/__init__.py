"""The planner: a cost and memory model of video DiT inference that ranks parallel layouts (``vidpar plan``).

It reads only model-neutral workloads (``workload.ModelSpec``) that each family builds from its own configs
(``vidpar/models/<family>/workload.py``); names and folders are resolved through ``vidpar.models.registry``.

- ``comm_model``: bytes per rank per axis, mirroring vidpar's implementation exactly (tested against
  ``ctx.comm_stats()``);
- ``hardware``: datasheet figures of GPUs and links, and the achievable-efficiency assumptions;
- ``workload``: the model-neutral denoiser/VAE workloads, latent geometry, parameter and FLOP counts;
- ``cost`` / ``memory``: step time, VAE time and peak memory of one layout;
- ``search``: enumeration, rejection reasons, ranking, ``auto_parallel_config``.
"""

from .comm_model import cfg_exchange_bytes, predict_comm_bytes, predict_step_comm_bytes, predict_vae_comm_bytes
from .cost import Cluster, StepTime, step_time, vae_decode_time
from .hardware import GPUS, LINKS, gpu_kind_from_name, gpu_spec
from .memory import MemoryEstimate, estimate_memory
from .search import LayoutPlan, Request, auto_parallel_config, make_request, plan_layouts
from .step_cache import StepCacheEstimate
from .workload import (
    DitWorkload, ForwardFlops, ModelSpec, VaeWorkload, dit_params, forward_flops, latent_shape, model_spec, num_tokens,
    resolve_model,
)

__all__ = [
    "GPUS", "LINKS", "Cluster", "DitWorkload", "ForwardFlops", "VaeWorkload", "LayoutPlan", "MemoryEstimate", "ModelSpec", "Request", "StepCacheEstimate", "StepTime",
    "auto_parallel_config", "cfg_exchange_bytes", "dit_params", "estimate_memory", "forward_flops", "gpu_kind_from_name", "gpu_spec",
    "latent_shape", "make_request", "model_spec", "num_tokens", "plan_layouts", "predict_comm_bytes",
    "predict_step_comm_bytes", "predict_vae_comm_bytes", "resolve_model", "step_time", "vae_decode_time",
]
