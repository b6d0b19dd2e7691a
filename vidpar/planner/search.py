"""Enumerate layouts (ulysses x ring x cfg, FSDP on/off, VAE mode), predict each, rank the feasible ones.

Rejection reasons name the limit that decided (memory, head count, link speed, cfg branches); layouts with
uneven head splits are kept, with the imbalance noted and priced in the step time.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from typing import Any

from vidpar.parallel.config import ParallelConfig

from . import hardware as hw
from .cost import Cluster, step_time, vae_decode_comm_bytes, vae_decode_time
from .memory import estimate_memory
from .sparse_cost import SparseCosts
from .step_cache import StepCacheEstimate
from .workload import ModelSpec, latent_shape, model_spec, num_tokens

VAE_MODES = ("patch", "combined", "pipeline")  # the parallel decode modes (see vidpar.planner.vae_comm)


@dataclass(frozen=True)
class Request:
    """What to plan for: model, video size, steps, and the cluster."""

    model: ModelSpec
    height: int
    width: int
    frames: int
    steps: int
    cluster: Cluster
    gpu_memory_gb: float
    guidance: bool = True
    text_encoder_on_gpu: bool = True
    sparse: Any = None  # a vidpar.parallel.sparse.SparseAttention, or None (dense)
    cache: StepCacheEstimate = StepCacheEstimate()  # expected step-cache savings (none by default)

    def sparse_costs(self) -> "SparseCosts | None":
        """The sparse pattern's figures for this request's token grid (computed once; None when dense)."""
        if self.sparse is None:
            return None
        cfg = self.model.config
        _, f, h, w = latent_shape(self.model.vae, self.height, self.width, self.frames)
        grid = tuple(n // p for n, p in zip((f, h, w), cfg.patch_size))
        return SparseCosts(self.sparse, grid, cfg.num_heads, cfg.head_dim, cfg.num_layers, self.steps,
                           cfg.joint_tokens)


@dataclass
class LayoutPlan:
    """One candidate layout and its predictions (seconds, bytes per GPU, GB)."""

    ulysses: int
    ring: int
    cfg: int
    fsdp: bool
    vae_mode: str
    step_time_s: float = 0.0
    denoise_time_s: float = 0.0
    vae_time_s: float = 0.0
    vae_comm_bytes_per_gpu: int = 0  # exact bytes the busiest rank sends in the decode (fp32, output rank0)
    total_time_s: float = 0.0
    compute_s: float = 0.0
    exposed_comm_s: float = 0.0
    comm_share: float = 0.0
    comm_bytes_per_gpu_per_step: int = 0
    comm_breakdown: dict[str, int] = field(default_factory=dict)
    peak_memory_gb: float = 0.0
    memory_gb: dict[str, float] = field(default_factory=dict)
    scaling_efficiency: float = 0.0
    notes: list[str] = field(default_factory=list)
    rejected: list[str] = field(default_factory=list)

    @property
    def parallel_config(self) -> ParallelConfig:
        return ParallelConfig(ulysses=self.ulysses, ring=self.ring, cfg=self.cfg)

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        for k in ("step_time_s", "denoise_time_s", "vae_time_s", "total_time_s", "compute_s", "exposed_comm_s"):
            d[k] = round(d[k], 4)
        d["comm_share"] = round(self.comm_share, 4)
        d["peak_memory_gb"] = round(self.peak_memory_gb, 2)
        d["scaling_efficiency"] = round(self.scaling_efficiency, 4)
        return d


def _factorizations(n: int) -> list[tuple[int, int, int]]:
    """Every ``(ulysses, ring, cfg)`` with product ``n``."""
    out = []
    for cfg in range(1, n + 1):
        if n % cfg:
            continue
        for u in range(1, n // cfg + 1):
            if (n // cfg) % u == 0:
                out.append((u, n // cfg // u, cfg))
    return out


def _vae_modes(n: int, stages: int = 7) -> tuple[str, ...]:
    """Decode modes that run on ``n`` GPUs ("combined" needs two stage groups of at least 2 ranks; "pipeline" at
    most one rank per decoder stage, of which the VAE has ``stages``)."""
    return tuple(m for m in VAE_MODES
                 if (m != "combined" or (n >= 4 and n % 2 == 0)) and (m != "pipeline" or n <= stages))


def single_gpu_step_time(req: Request, sparse: SparseCosts | None = None) -> float:
    """Predicted step time on one GPU (whether or not the model fits its memory): the efficiency baseline."""
    one = Cluster(req.cluster.gpu, 1, 1, req.cluster.intra_link, req.cluster.inter_link)
    latent = latent_shape(req.model.vae, req.height, req.width, req.frames)
    return step_time(req.model, latent, num_tokens(req.model.config, latent), ParallelConfig(), False, one,
                     req.guidance, sparse).total_s


def evaluate(req: Request, u: int, r: int, c: int, fsdp: bool, vae_mode: str, t_one: float,
             vae_bytes: dict[str, int] | None = None, sparse: SparseCosts | None = None) -> LayoutPlan:
    """Predictions and rejection reasons of one layout (``vae_bytes``: ``vae_decode_comm_bytes`` of ``vae_mode``,
    computed here if None; it does not depend on the DiT layout; ``sparse``: ``req.sparse_costs()``)."""
    cfg, cl = req.model.config, req.cluster
    plan = LayoutPlan(u, r, c, fsdp, vae_mode)
    if c > 2:
        plan.rejected.append(f"cfg={c}: classifier-free guidance has only 2 branches (cfg must be 1 or 2)")
    if c == 2 and not req.guidance:
        plan.rejected.append("cfg=2 without guidance: there is only one branch to run")
    if u > cfg.num_heads:
        plan.rejected.append(f"head count: ulysses={u} > {cfg.num_heads} heads leaves {u - cfg.num_heads} ranks "
                             f"without heads (correct but wasteful; use ring for the rest)")
    elif cfg.num_heads % u:
        worst = -(-cfg.num_heads // u)
        plan.notes.append(f"uneven heads: {cfg.num_heads} over ulysses={u} gives up to {worst} per rank "
                          f"(imbalance {worst * u / cfg.num_heads:.2f}x on attention)")
    intra = hw.link_bandwidth(cl.intra_link, cl.gpu) / hw.GB
    inter = hw.link_bandwidth(cl.inter_link, cl.gpu) / hw.GB
    if cl.spans_nodes(u) and inter < intra:
        plan.rejected.append(f"link speed: the ulysses all-to-all (on the critical path) would cross nodes over "
                             f"{cl.inter_link} ({inter:.0f} GB/s per GPU) instead of {cl.intra_link} "
                             f"({intra:.0f} GB/s); keep ulysses within a node of {cl.gpus_per_node}")
    elif cl.spans_nodes(u):
        plan.notes.append(f"ulysses spans nodes ({cl.inter_link} is not slower than {cl.intra_link})")

    latent = latent_shape(req.model.vae, req.height, req.width, req.frames)
    tokens = num_tokens(cfg, latent)
    if tokens < u * r:
        plan.notes.append(f"{tokens} tokens on {u * r} sequence ranks: some ranks hold none")
    st = step_time(req.model, latent, tokens, plan.parallel_config, fsdp, cl, req.guidance, sparse)
    plan.step_time_s = st.total_s
    plan.compute_s, plan.exposed_comm_s = st.compute_s, st.exposed_comm_s
    plan.comm_share = st.exposed_comm_s / st.total_s if st.total_s else 0.0
    plan.comm_breakdown = dict(st.comm_bytes)
    plan.comm_bytes_per_gpu_per_step = int(sum(st.comm_bytes.values()))
    plan.denoise_time_s = req.steps * st.total_s * req.cache.step_factor
    video = (req.frames, req.height, req.width)
    if vae_bytes is None:
        vae_bytes = vae_decode_comm_bytes(req.model, video, vae_mode, cl.gpus)
    plan.vae_time_s = vae_decode_time(req.model, video, vae_mode, cl, vae_bytes)
    plan.total_time_s = plan.denoise_time_s + plan.vae_time_s
    plan.vae_comm_bytes_per_gpu = sum(vae_bytes.values())
    plan.scaling_efficiency = t_one / (cl.gpus * st.total_s)

    mem = estimate_memory(req.model, tokens, (req.frames, req.height, req.width), u, r, cl.gpus, fsdp, vae_mode,
                          req.text_encoder_on_gpu)
    plan.peak_memory_gb, plan.memory_gb = mem.peak_gb, mem.as_gb()
    if mem.peak_gb > req.gpu_memory_gb:
        parts = ", ".join(f"{k} {v:.1f}" for k, v in plan.memory_gb.items())
        plan.rejected.append(f"memory: predicted peak {mem.peak_gb:.1f} GB > {req.gpu_memory_gb:.0f} GB ({parts})"
                             + ("; try fsdp" if not fsdp and cl.gpus > 1 else "")
                             + ("; or --text-encoder-cpu" if req.text_encoder_on_gpu else ""))
    return plan


def plan_layouts(req: Request) -> tuple[list[LayoutPlan], list[LayoutPlan]]:
    """``(feasible best first, rejected)`` over every layout of ``req.cluster.gpus`` GPUs.

    Ranked by total time (denoising + VAE decode), then by step time, peak memory and fewer axes.
    """
    n = req.cluster.gpus
    if n < 1 or req.cluster.gpus_per_node < 1:
        raise ValueError(f"need at least one GPU and one GPU per node, got {n} and {req.cluster.gpus_per_node}")
    if req.steps < 1:
        raise ValueError(f"steps must be positive, got {req.steps}")
    sparse = req.sparse_costs()
    t_one = single_gpu_step_time(req, sparse)
    stages = req.model.vae.num_stages()
    modes = _vae_modes(n, stages) if n > 1 else ("single",)
    video = (req.frames, req.height, req.width)
    vae_bytes = {m: vae_decode_comm_bytes(req.model, video, m, n) for m in modes}  # the same for every DiT layout
    plans = []
    for u, r, c in _factorizations(n):
        for fsdp in ((False, True) if n > 1 else (False,)):
            for vae_mode in modes:
                plans.append(evaluate(req, u, r, c, fsdp, vae_mode, t_one, vae_bytes[vae_mode], sparse))
    key = lambda p: (round(p.total_time_s, 6), round(p.step_time_s, 6), p.peak_memory_gb, p.ring, p.cfg)  # noqa
    ok = sorted((p for p in plans if not p.rejected), key=key)
    bad = sorted((p for p in plans if p.rejected), key=key)
    return ok, bad


def make_request(
    model: "str | Any | ModelSpec",
    height: int,
    width: int,
    frames: int,
    gpus: int,
    gpus_per_node: int,
    gpu: str = "h100",
    gpu_memory_gb: float | None = None,
    intra_link: str = "nvlink",
    inter_link: str = "ib-ndr",
    steps: int = 50,
    guidance: bool = True,
    text_encoder_on_gpu: bool = True,
    sparse: Any = None,
    skip_ratio: float = 0.0,
) -> Request:
    """A ``Request`` from plain values (validates the GPU kind, links and video size); ``sparse``: a
    ``SparseAttention`` or its CLI spec (``"window"``...); ``skip_ratio``: the share of block forwards a
    step-cache policy is expected to skip (``vidpar.planner.step_cache``)."""
    spec = hw.gpu_spec(gpu)
    cluster = Cluster(spec, gpus, min(gpus_per_node, gpus), intra_link, inter_link)
    hw.link_bandwidth(intra_link, spec)  # raise early on an unknown or impossible link
    hw.link_bandwidth(inter_link, spec)
    ms = model_spec(model)
    latent_shape(ms.vae, height, width, frames)
    mem = spec.memory_gb if gpu_memory_gb is None else float(gpu_memory_gb)
    if isinstance(sparse, str):
        from vidpar.parallel.sparse import SparseAttention

        sparse = SparseAttention.from_cli(sparse)
    return Request(ms, height, width, frames, steps, cluster, mem, guidance, text_encoder_on_gpu, sparse,
                   StepCacheEstimate(skip_ratio))


def auto_parallel_config(
    model_config: "str | Any | ModelSpec",
    height: int,
    width: int,
    frames: int,
    world_size: int,
    gpus_per_node: int | None = None,
    **options,
) -> ParallelConfig:
    """The best ``ParallelConfig`` for ``world_size`` GPUs (what ``parallel="auto"`` uses).

    ``options`` are those of ``make_request`` (``gpu``, ``gpu_memory_gb``, ``intra_link``, ``inter_link``,
    ``steps``, ``guidance``). When no layout passes every check, the fastest one rejected only for memory or link
    speed is returned (the run may still fit with offloading); the result's ``world_size`` is always ``world_size``.
    """
    req = make_request(model_config, height, width, frames, world_size, gpus_per_node or world_size, **options)
    ok, bad = plan_layouts(req)
    if ok:
        return ok[0].parallel_config
    soft = [p for p in bad if all(r.startswith(("memory", "link speed")) for r in p.rejected)]
    if soft:
        return soft[0].parallel_config
    return ParallelConfig(ring=world_size)
