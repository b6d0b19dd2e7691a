"""Timing, memory and time-budget helpers shared by the suite's parts (CPU and CUDA)."""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Callable

import torch


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Budget:
    """Seconds left for the suite; parts skip what would not fit (and say so in the results)."""

    seconds: float
    start: float = 0.0

    def __post_init__(self) -> None:
        self.start = time.perf_counter()

    def left(self) -> float:
        return self.seconds - (time.perf_counter() - self.start)

    def allows(self, estimate_s: float) -> bool:
        return self.left() > estimate_s


def timed(fn: Callable[[], object], device: torch.device, repeats: int) -> dict:
    """Run ``fn`` once (warm-up: includes any compilation) and ``repeats`` more times.

    Returns ``{"first_s", "median_ms", "min_ms", "peak_gib"}``; the peak is the CUDA peak allocated over the
    timed runs (None on CPU).
    """
    sync(device)
    t0 = time.perf_counter()
    fn()
    sync(device)
    first = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return {"first_s": round(first, 3), "median_ms": round(statistics.median(times) * 1e3, 3),
            "min_ms": round(min(times) * 1e3, 3), "peak_gib": None if peak is None else round(peak, 3)}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| in fp64 (on the tensors' device)."""
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def skipped(reason: str) -> dict:
    return {"skipped": reason}
