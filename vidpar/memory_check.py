"""Refuse a request the machine cannot hold, before weights load: the planner's memory model against this rank's
memory (a CUDA device's, or on CPU the available RAM shared by the ranks of this machine).

The planner models a GPU run (bf16, a 3 GB CUDA runtime); here its dtype and overhead follow the run: the compute
dtype's bytes (fp32 on CPU), the VAE's dtype, and a CPU process's small overhead, so that tiny CPU runs are never
refused. Ranks see slightly different free memory, so callers agree on the smallest capacity over every rank
(``agree_capacity``) before deciding: the verdict is identical everywhere.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch

from vidpar.models.family import ModelCard
from vidpar.parallel import ParallelConfig
from vidpar.planner.hardware import GB
from vidpar.planner.memory import RUNTIME_OVERHEAD_GB, MemoryEstimate, estimate_memory

GIB = 2**30
CPU_OVERHEAD_BYTES = 0.5 * GB  # interpreter, torch and gloo buffers of one CPU rank (assumed, generous)


def expected_device(world_size: int, backend: str | None = None) -> str:
    """The device type ``init_parallel`` will give ranks (known before it runs): CUDA with nccl, else CPU."""
    if world_size == 1 or not torch.cuda.is_available():
        return "cpu"
    return "cuda" if backend is None or "nccl" in backend else "cpu"


def default_dtype(device: str) -> torch.dtype:
    """``Pipeline.from_pretrained``'s dtype when none is given: bf16 on CUDA, fp32 on CPU."""
    return torch.bfloat16 if device == "cuda" else torch.float32


def _meminfo_available() -> float:
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil

        return float(psutil.virtual_memory().available)
    except ImportError:
        return math.inf  # unknown: never refuse


def _own_rss() -> float:
    try:
        with open("/proc/self/statm", encoding="ascii") as fh:
            return float(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0.0


def local_capacity(device: str, device_index: int = 0, local_world_size: int = 1) -> float:
    """Bytes this rank may use: the CUDA device's total memory (device ``device_index``), or on CPU this process's
    resident memory plus its share of the machine's available RAM (shared by ``local_world_size`` ranks)."""
    if device == "cuda":
        return float(torch.cuda.get_device_properties(device_index).total_memory)
    return _own_rss() + _meminfo_available() / max(1, local_world_size)


def agree_capacity(ctx, capacity: float) -> float:
    """The smallest capacity over every rank of ``ctx`` (one small all-gather; identical result everywhere)."""
    if ctx.world_size == 1:
        return capacity
    value = torch.tensor([min(capacity, 1e300)], dtype=torch.float64, device=ctx.device)
    return float(ctx.comm.all_gather(value, "world", control=True).min())


@dataclass(frozen=True)
class MemoryRequest:
    """What is asked of each rank: the video, the mesh and how the model runs."""

    height: int
    width: int
    frames: int
    config: ParallelConfig
    dtype: torch.dtype
    device: str  # "cuda" or "cpu"
    vae_mode: str = "auto"
    fsdp: bool = False


def predict(card: ModelCard, req: MemoryRequest) -> MemoryEstimate | None:
    """The planner's per-rank peak for ``req`` (None when the model has no workload description)."""
    model = card.workload
    if model is None:
        return None
    world = req.config.world_size
    tokens = card.geometry.num_tokens(req.height, req.width, req.frames)
    frames = card.geometry.video_frames(card.geometry.latent_shape(req.height, req.width, req.frames)[2])
    dbytes = torch.empty((), dtype=req.dtype).element_size()
    on_cpu = req.device == "cpu"
    vae_bytes = 8.0 if req.dtype == torch.float64 else (4.0 if on_cpu else float(dbytes))
    if world == 1:
        modes = ["single"]
    elif req.vae_mode == "auto":
        modes = ["patch", "combined"] if world >= 4 else ["patch"]  # whichever auto picks: the larger
    else:
        modes = [req.vae_mode]
    estimates = [estimate_memory(model, tokens, (frames, req.height, req.width), req.config.ulysses,
                                 req.config.ring, world, req.fsdp, mode, dtype_bytes=dbytes,
                                 vae_dtype_bytes=vae_bytes,
                                 overhead_bytes=CPU_OVERHEAD_BYTES if on_cpu else RUNTIME_OVERHEAD_GB * GB)
                 for mode in modes]
    return max(estimates, key=lambda e: e.peak)


def largest_fitting(card: ModelCard, req: MemoryRequest, capacity: float) -> tuple[int, int] | None:
    """The largest ``(height, width)`` of the request's aspect ratio (valid multiples, same frames) predicted to
    fit in ``capacity`` bytes, or None if not even the smallest does."""
    geo = card.geometry
    step_h, step_w = geo.spatial_stride * geo.patch[1], geo.spatial_stride * geo.patch[2]
    aspect = req.width / req.height

    def size(m: int) -> tuple[int, int]:
        return m * step_h, max(1, round(m * step_h * aspect / step_w)) * step_w

    def fits(m: int) -> bool:
        h, w = size(m)
        est = predict(card, MemoryRequest(h, w, req.frames, req.config, req.dtype, req.device, req.vae_mode,
                                          req.fsdp))
        return est is None or est.peak <= capacity

    lo, hi = 0, max(1, req.height // step_h)  # fits(lo) is "nothing", fits(hi) is the request (known false)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return size(lo) if lo >= 1 else None


def memory_problem(card: ModelCard, req: MemoryRequest, capacity: float, where: str) -> str | None:
    """None if ``req`` is predicted to fit in ``capacity`` bytes, else a one-line explanation with the predicted
    peak and the largest size that fits."""
    est = predict(card, req)
    if est is None or est.peak <= capacity:
        return None
    parts = est.as_gb()
    weights = parts["dit_weights"] + parts["text_encoder_weights"] + parts["vae_weights"]
    detail = (f"weights {weights:.3g} GB, denoiser activations {parts['dit_activations']:.3g} GB, VAE decode "
              f"{parts['vae_decode']:.3g} GB")
    best = largest_fitting(card, req, capacity)
    hint = (f"the largest {req.frames}-frame size of this aspect predicted to fit is {best[1]}x{best[0]}"
            if best else "no size of this aspect fits with this many frames and ranks")
    c = req.config
    return (f"{req.width}x{req.height}, {req.frames} frames is predicted to need {est.peak / GB:.3g} GB per rank "
            f"on ulysses={c.ulysses} ring={c.ring} cfg={c.cfg} ({detail}) but {where} has {capacity / GB:.3g} GB; "
            f"{hint} (more ranks or fsdp also help; --no-memory-check / memory_check=False runs it anyway)")


def describe_capacity(device: str, local_world_size: int) -> str:
    if device == "cuda":
        return "each CUDA device"
    return f"each rank's share of this machine's available RAM ({local_world_size} local rank(s))"


__all__ = ["MemoryRequest", "agree_capacity", "default_dtype", "describe_capacity", "expected_device",
           "largest_fitting", "local_capacity", "memory_problem", "predict"]
