"""Throughput planning (``vidpar plan --throughput``): R replicas of G GPUs each, serving a stream of requests.

For every way to cut the GPUs into equal replicas (R x G = all GPUs), the best layout of one G-GPU replica comes
from the cost model (``search.plan_layouts``: its seconds per video, or why it cannot run); R such replicas then
serve requests arriving at random (Poisson, ``rate`` videos per hour), first come first served by the next free
replica. Capacity is ``R * 3600 / seconds per video``; latency (queueing + generation) is measured by simulating
the stream, because no layout scales perfectly: many small replicas make more videos per hour, one large group
makes each video sooner when the queue is short.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import dataclass, field

from .search import LayoutPlan, make_request, plan_layouts

SIMULATED_REQUESTS = 20000
DEFAULT_LOAD = 0.7  # default rate: this share of the capacity of one group of every GPU (or of the slowest layout)


@dataclass
class ReplicaLayout:
    """R replicas of G GPUs: the best per-replica layout and the stream's predicted figures."""

    replicas: int
    gpus_per_replica: int
    plan: LayoutPlan | None = None
    seconds_per_video: float = 0.0
    videos_per_hour: float = 0.0  # capacity, every replica always busy
    utilization: float = 0.0  # at the planned rate
    p50_latency_s: float | None = None  # None: overloaded (the queue grows without bound)
    p99_latency_s: float | None = None
    rejected: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in ("replicas", "gpus_per_replica", "seconds_per_video", "videos_per_hour",
                                            "utilization", "p50_latency_s", "p99_latency_s", "rejected")}
        d["layout"] = None if self.plan is None else {
            "ulysses": self.plan.ulysses, "ring": self.plan.ring, "cfg": self.plan.cfg, "fsdp": self.plan.fsdp,
            "vae_mode": self.plan.vae_mode}
        return d


def simulate_latencies(replicas: int, service_s: float, rate_per_s: float, requests: int = SIMULATED_REQUESTS,
                       seed: int = 0) -> list[float]:
    """Seconds from arrival to finished video of ``requests`` Poisson arrivals at ``rate_per_s``, served first
    come first served by ``replicas`` servers that each take ``service_s`` per video (sorted)."""
    rng = random.Random(seed)
    free = [0.0] * replicas  # when each replica is next free (a heap)
    t, out = 0.0, []
    for _ in range(requests):
        t += rng.expovariate(rate_per_s)
        start = max(t, heapq.heappop(free))
        heapq.heappush(free, start + service_s)
        out.append(start + service_s - t)
    return sorted(out)


def _quantile(sorted_values: list[float], q: float) -> float:
    return sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))]


def plan_throughput(model, height: int, width: int, frames: int, gpus: int, gpus_per_node: int,
                    rate_per_hour: float | None = None, **options) -> tuple[list[ReplicaLayout], float]:
    """Every R x G split of ``gpus``: ``(layouts by capacity, best first (rejected last), the rate used)``.

    ``options`` go to ``make_request`` (``gpu``, ``gpu_memory_gb``, links, ``steps``, ``guidance``, ...).
    ``rate_per_hour`` defaults to ``DEFAULT_LOAD`` of the capacity of one group of all GPUs (if it can run, else
    of the slowest feasible split), so that every feasible split is compared under the same stream.
    """
    if gpus < 1 or gpus_per_node < 1:
        raise ValueError(f"need at least one GPU and one GPU per node, got {gpus} and {gpus_per_node}")
    if rate_per_hour is not None and not rate_per_hour > 0:
        raise ValueError(f"--rate must be a positive number of videos per hour, got {rate_per_hour}")
    layouts = []
    for g in (d for d in range(1, gpus + 1) if gpus % d == 0):
        lay = ReplicaLayout(gpus // g, g)
        if g > gpus_per_node and g % gpus_per_node:
            lay.rejected.append(f"a replica of {g} GPUs would use part of a node of {gpus_per_node}")
            layouts.append(lay)
            continue
        ok, bad = plan_layouts(make_request(model, height, width, frames, g, min(g, gpus_per_node), **options))
        if not ok:
            lay.rejected.append(f"no layout of {g} GPUs runs it: " + "; ".join(bad[0].rejected))
        else:
            lay.plan = ok[0]
            lay.seconds_per_video = ok[0].total_time_s
            lay.videos_per_hour = lay.replicas * 3600.0 / lay.seconds_per_video
        layouts.append(lay)
    feasible = [lay for lay in layouts if lay.plan is not None]
    if rate_per_hour is None and feasible:
        whole = next((lay for lay in feasible if lay.replicas == 1), None)
        base = whole.videos_per_hour if whole is not None else min(lay.videos_per_hour for lay in feasible)
        rate_per_hour = DEFAULT_LOAD * base
    for lay in feasible:
        lay.utilization = rate_per_hour / lay.videos_per_hour
        if lay.utilization < 1.0:
            lat = simulate_latencies(lay.replicas, lay.seconds_per_video, rate_per_hour / 3600.0)
            lay.p50_latency_s, lay.p99_latency_s = _quantile(lat, 0.5), _quantile(lat, 0.99)
    feasible.sort(key=lambda lay: (-lay.videos_per_hour, lay.p50_latency_s or float("inf")))
    return feasible + [lay for lay in layouts if lay.plan is None], rate_per_hour or 0.0


def format_throughput(layouts: list[ReplicaLayout], rate_per_hour: float, title: str) -> str:
    """The ``vidpar plan --throughput`` table."""
    lines = [title, f"request stream: {rate_per_hour:.1f} videos/hour (Poisson arrivals, first come first served)",
             "", f"{'R x G':>7} {'replica layout':>22} {'s/video':>9} {'videos/h':>9} {'load':>6} "
                 f"{'p50 latency':>12} {'p99 latency':>12}"]
    for lay in layouts:
        name = f"{lay.replicas} x {lay.gpus_per_replica}"
        if lay.plan is None:
            lines.append(f"{name:>7}  rejected: {'; '.join(lay.rejected)}")
            continue
        p = lay.plan
        mesh = f"u{p.ulysses} r{p.ring} c{p.cfg}{' fsdp' if p.fsdp else ''} {p.vae_mode}"
        lat = ("overloaded", "") if lay.p50_latency_s is None else (
            f"{lay.p50_latency_s:.1f} s", f"{lay.p99_latency_s:.1f} s")
        lines.append(f"{name:>7} {mesh:>22} {lay.seconds_per_video:>9.1f} {lay.videos_per_hour:>9.1f} "
                     f"{100 * lay.utilization:>5.0f}% {lat[0]:>12} {lat[1]:>12}")
    lines += ["", "s/video from the cost model (denoising + VAE decode of one replica's best layout); videos/h: "
              "capacity with every replica busy; latency: queueing + generation, simulated "
              f"({SIMULATED_REQUESTS} requests); 'overloaded': the stream exceeds the capacity."]
    return "\n".join(lines)


__all__ = ["ReplicaLayout", "format_throughput", "plan_throughput", "simulate_latencies"]
