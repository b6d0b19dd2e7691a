"""``GET /metrics``: the service's numbers in the Prometheus text format (version 0.0.4), written by hand.

Queue depth and jobs by state come from the job store at scrape time (shared by every replica of a store);
the rest is this replica's: seconds per denoising step, job durations, finished jobs, HTTP requests, and the
GPU memory of every rank (the peak of the last job, gathered from all ranks; current use on rank 0).
"""

from __future__ import annotations

import threading
from collections import defaultdict


def _labels(labels: dict[str, str]) -> str:
    if not labels:
        return ""
    escape = lambda v: str(v).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")  # noqa: E731
    inner = ",".join(f'{k}="{escape(v)}"' for k, v in sorted(labels.items()))
    return "{" + inner + "}"


class Metrics:
    """Counters and summaries of one replica (thread-safe: the worker and the HTTP threads update it)."""

    def __init__(self, model: str, replica: str, world_size: int) -> None:
        self.model, self.replica, self.world_size = model, replica, world_size
        self._lock = threading.Lock()
        self._step = [0.0, 0]  # sum of seconds, count
        self._last_step = 0.0
        self._job = [0.0, 0]
        self._finished: dict[str, int] = defaultdict(int)
        self._http: dict[tuple[str, str, int], int] = defaultdict(int)
        self._peak_memory: list[float] = [0.0] * world_size

    def step_done(self, seconds: float) -> None:
        with self._lock:
            self._step[0] += seconds
            self._step[1] += 1
            self._last_step = seconds

    def job_finished(self, status: str, seconds: float) -> None:
        with self._lock:
            self._finished[status] += 1
            self._job[0] += seconds
            self._job[1] += 1

    def http_request(self, method: str, route: str, code: int) -> None:
        with self._lock:
            self._http[(method, route, code)] += 1

    def set_peak_memory(self, per_rank: list[float]) -> None:
        with self._lock:
            self._peak_memory = list(per_rank)

    def render(self, counts: dict[str, int], running: str | None) -> str:
        """The text exposition; ``counts``: jobs per status in the store; ``running``: this replica's job id."""
        lines: list[str] = []

        def metric(name: str, kind: str, help_text: str, samples: list[tuple[dict, float]]) -> None:
            lines.append(f"# HELP {name} {help_text}")
            lines.append(f"# TYPE {name} {kind}")
            for labels, value in samples:
                lines.append(f"{name}{_labels(labels)} {value:.17g}")

        def summary(name: str, help_text: str, sum_count: list) -> None:  # _sum and _count, no quantiles
            lines.extend([f"# HELP {name} {help_text}", f"# TYPE {name} summary",
                      f"{name}_sum {sum_count[0]:.17g}", f"{name}_count {sum_count[1]}"])

        with self._lock:
            metric("vidpar_queue_depth", "gauge", "Jobs waiting in the job store (all replicas).",
                   [({}, counts.get("queued", 0))])
            metric("vidpar_jobs", "gauge", "Jobs in the job store by state (all replicas).",
                   [({"state": s}, n) for s, n in sorted(counts.items())])
            metric("vidpar_running_jobs", "gauge", "Jobs this replica is running now.",
                   [({}, 1 if running else 0)])
            summary("vidpar_step_seconds", "Seconds per denoising step on this replica.", self._step)
            metric("vidpar_last_step_seconds", "gauge", "Seconds of the last denoising step on this replica.",
                   [({}, self._last_step)])
            summary("vidpar_job_seconds", "Seconds from claim to finish of the jobs this replica ran.", self._job)
            metric("vidpar_jobs_finished_total", "counter", "Jobs this replica finished, by final state.",
                   [({"state": s}, n) for s, n in sorted(self._finished.items())])
            metric("vidpar_http_requests_total", "counter", "HTTP requests by method, route and status code.",
                   [({"method": m, "route": r, "code": str(c)}, n) for (m, r, c), n in sorted(self._http.items())])
            metric("vidpar_gpu_memory_peak_bytes", "gauge",
                   "Peak GPU memory allocated during the last job, per rank (0 without CUDA).",
                   [({"rank": str(r)}, v) for r, v in enumerate(self._peak_memory)])
        metric("vidpar_gpu_memory_allocated_bytes", "gauge", "GPU memory allocated now on rank 0 (0 without CUDA).",
               [({}, _cuda_allocated())])
        metric("vidpar_info", "gauge", "The served model and this replica.",
               [({"model": self.model, "replica": self.replica, "world_size": str(self.world_size)}, 1)])
        return "\n".join(lines) + "\n"


def _cuda_allocated() -> float:
    import torch

    return float(torch.cuda.memory_allocated()) if torch.cuda.is_available() else 0.0


__all__ = ["Metrics"]
