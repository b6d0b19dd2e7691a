"""Predicted time of a denoising step and of the VAE decode for one layout, from FLOP and byte counts.

Step time = forwards per step x (compute + non-overlapped communication) + the cfg exchange, where

- compute: GEMMs at ``GEMM_EFFICIENCY`` and attention at ``ATTENTION_EFFICIENCY`` of the GPU's dense bf16 peak,
  divided over the ``ulysses x ring`` ranks, times the head imbalance (max heads per ulysses rank / mean) and the
  token imbalance; elementwise work is memory bound;
- Ulysses all-to-alls are on the critical path (fully exposed);
- each ring K/V transfer overlaps with attention on the block in hand; only the excess is exposed;
- FSDP weight all-gathers are prefetched one block ahead: exposed beyond compute, plus the first block;
- Ulysses packing and ring merging add memory-bound work (constants below);
- every control message costs a link latency plus a device sync (it is read on the host).

Bytes come from ``comm_model`` (vidpar's exact accounting), so the model moves with the implementation.
"""

from __future__ import annotations

from dataclasses import dataclass

from vidpar.parallel.config import ParallelConfig
from vidpar.parallel.split import split_sizes

from . import hardware as hw
from .comm_model import cfg_exchange_bytes, predict_comm_bytes, predict_vae_busiest_rank_bytes
from .sparse_cost import SparseCosts
from .workload import ModelSpec, latent_shape

# Elementwise traffic per layer (LayerNorms, AdaLN modulation, rotary, fp32 residual adds, dtype casts):
# ~15 reads/writes of a fp32 [S, dim] tensor = 60 bytes per token and dim unit (counted from the block code).
ELEMENTWISE_BYTES_PER_TOKEN_DIM = 60
# Memory-bound work that parallelism adds, bytes per local token and dim unit per layer (counted from vidpar's
# code): Ulysses packs q/k/v into the send buffer and unpacks the receive buffer, and the same for the output
# (24 + 8); ring concatenates k and v (8) and merges every block's partial output into an fp32 accumulator
# with its log-sum-exp (~20 per ring step).
ULYSSES_PACK_BYTES_PER_TOKEN_DIM = 32
RING_CAT_BYTES_PER_TOKEN_DIM = 8
RING_MERGE_BYTES_PER_TOKEN_DIM = 20
CONTROL_SYNC_S = 20e-6  # host read of the exchanged lengths (``.tolist()``) drains the stream; assumed
VAE_EFFICIENCY = 0.15  # fp32/TF32 causal conv3d decode vs the bf16 peak: an uncalibrated assumption
# Share of decoder FLOPs in its largest stage (the full-resolution up block): bounds pipelined decode (estimate).
VAE_LARGEST_STAGE_SHARE = 0.45


@dataclass(frozen=True)
class Cluster:
    """The machines: GPU kind, count, GPUs per node and the two link levels."""

    gpu: hw.GpuSpec
    gpus: int
    gpus_per_node: int
    intra_link: str = "nvlink"
    inter_link: str = "ib-ndr"

    def bandwidth(self, spans_nodes: bool) -> float:
        """Peak bytes/s per GPU and direction on the slowest link a group crosses."""
        if spans_nodes:
            return min(hw.link_bandwidth(self.inter_link, self.gpu), hw.link_bandwidth(self.intra_link, self.gpu))
        return hw.link_bandwidth(self.intra_link, self.gpu)

    def latency(self, spans_nodes: bool) -> float:
        return hw.link_spec(self.inter_link if spans_nodes else self.intra_link).latency_s

    def spans_nodes(self, group_size: int, stride: int = 1) -> bool:
        """Whether a group of ``group_size`` ranks ``stride`` apart (aligned as vidpar's mesh is) leaves a node."""
        extent = (group_size - 1) * stride + 1
        if self.gpus <= self.gpus_per_node or group_size == 1:
            return False
        return extent > self.gpus_per_node or self.gpus_per_node % (group_size * stride) != 0


@dataclass(frozen=True)
class StepTime:
    """Seconds of one denoising step on the busiest rank, and what they are made of."""

    compute_s: float  # all forwards of the step
    exposed_comm_s: float  # communication not hidden behind compute
    forwards: int
    comm_bytes: dict[str, int]  # bytes sent per rank in the step, per axis (``"fsdp"`` included)

    @property
    def total_s(self) -> float:
        return self.compute_s + self.exposed_comm_s


def step_time(
    model: ModelSpec,
    latent: tuple[int, ...],
    tokens: int,
    parallel: ParallelConfig,
    fsdp: bool,
    cluster: Cluster,
    guidance: bool = True,
    sparse: "SparseCosts | None" = None,
) -> StepTime:
    """Predicted time of one denoising step (batch 1 per branch) for ``parallel`` on ``cluster``; ``sparse``: a
    sparse-attention pattern's expected kept share of video attention and its windowed-ring bytes."""
    cfg, gpu = model.config, cluster.gpu
    u, r = parallel.ulysses, parallel.ring
    p = u * r
    peak = gpu.bf16_tflops * 1e12
    flops = cfg.forward_flops(tokens)

    token_imb = max(split_sizes(tokens, p)) * p / tokens
    head_imb = max(split_sizes(cfg.num_heads, u)) * u / cfg.num_heads
    block_imb = max(sum(split_sizes(tokens, p)[i * u:(i + 1) * u]) for i in range(r)) * r / tokens
    t_gemm = (flops.linear * token_imb / p + flops.context) / (peak * hw.GEMM_EFFICIENCY)
    attention = flops.attention * (sparse.attention_factor if sparse is not None else 1.0)
    t_attn = attention * head_imb * block_imb / p / (peak * hw.ATTENTION_EFFICIENCY)
    t_cross = flops.cross_attention * token_imb / p / (peak * hw.ATTENTION_EFFICIENCY)
    local = max(split_sizes(tokens, p))
    mem_bytes = ELEMENTWISE_BYTES_PER_TOKEN_DIM
    if u > 1:
        mem_bytes += ULYSSES_PACK_BYTES_PER_TOKEN_DIM
    if r > 1:
        mem_bytes += RING_CAT_BYTES_PER_TOKEN_DIM + r * RING_MERGE_BYTES_PER_TOKEN_DIM
    t_mem = cfg.num_layers * local * cfg.dim * mem_bytes / (gpu.mem_bandwidth_gbs * hw.GB * hw.MEMORY_EFFICIENCY)
    compute = t_gemm + t_attn + t_cross + t_mem

    per_fwd = predict_comm_bytes(cfg, latent, 1, parallel, 2, out_dtype_bytes=2)
    if sparse is not None and r > 1:
        per_fwd["ring"] = int(sparse.ring_bytes(parallel, per_fwd["ring"], 2))
    layers = cfg.num_layers
    exposed = 0.0
    sp_span = cluster.spans_nodes(p)
    if u > 1:
        span = cluster.spans_nodes(u)
        bw = cluster.bandwidth(span) * hw.ALL_TO_ALL_EFFICIENCY
        exposed += per_fwd["ulysses"] / bw + 2 * layers * cluster.latency(span)
    if r > 1:
        span = cluster.spans_nodes(r, stride=u)
        bw = cluster.bandwidth(span) * hw.P2P_EFFICIENCY
        per_transfer = per_fwd["ring"] / (layers * (r - 1)) / bw + cluster.latency(span)
        per_block_attn = t_attn / (layers * r)
        exposed += layers * (r - 1) * max(0.0, per_transfer - per_block_attn)
    if p > 1:
        bw = cluster.bandwidth(sp_span) * hw.P2P_EFFICIENCY
        exposed += per_fwd["sp"] / bw + (layers + 2) * (cluster.latency(sp_span) + CONTROL_SYNC_S)

    step_bytes: dict[str, int] = {}
    forwards = 2 if guidance and parallel.cfg == 1 else 1
    for k, v in per_fwd.items():
        step_bytes[k] = forwards * v
    if fsdp and cluster.gpus > 1:
        n = cluster.gpus
        weights = 2.0 * cfg.params  # the expert that runs this step, bf16
        span = cluster.spans_nodes(n)
        t_fsdp = weights * (n - 1) / n / (cluster.bandwidth(span) * hw.P2P_EFFICIENCY)
        exposed += max(0.0, t_fsdp - compute) + t_fsdp / layers
        step_bytes["fsdp"] = forwards * int(weights / n * (n - 1))

    step_exposed = forwards * exposed
    if guidance and parallel.cfg > 1:
        nbytes = cfg_exchange_bytes(cfg, latent, 1, parallel)
        span = cluster.spans_nodes(parallel.cfg, stride=p)
        step_exposed += nbytes / (cluster.bandwidth(span) * hw.P2P_EFFICIENCY) + cluster.latency(span)
        step_bytes["cfg"] = nbytes
    return StepTime(forwards * compute, step_exposed, forwards, step_bytes)


def vae_decode_comm_bytes(model: ModelSpec, video: tuple[int, int, int], vae_mode: str, gpus: int) -> dict[str, int]:
    """Exact bytes the busiest rank sends in one parallel decode (``comm_model.predict_vae_busiest_rank_bytes``) of a
    ``frames x height x width`` video as ``vidpar.pipeline`` runs it: fp32, ``output="rank0"``; empty on one GPU."""
    if vae_mode == "single" or gpus == 1:
        return {}
    frames, height, width = video
    latent = latent_shape(model.vae, height, width, frames)
    return predict_vae_busiest_rank_bytes(model.vae, latent, gpus, vae_mode, "rank0", 4)


def vae_decode_time(model: ModelSpec, video: tuple[int, int, int], vae_mode: str, cluster: Cluster,
                    comm_bytes: dict[str, int] | None = None) -> float:
    """Seconds of the VAE decode for a parallel decode ``vae_mode`` (``"patch"``, ``"pipeline"``,
    ``"combined"``) or ``"single"`` (one GPU). Compute is an uncalibrated estimate; the communication term is the
    busiest rank's exact bytes (:func:`vae_decode_comm_bytes`: halos, band attention, hand-offs, output to rank 0),
    assumed not overlapped, over the world's slowest link (``comm_bytes``: that dict if already computed)."""
    frames, height, width = video
    pixels = frames * height * width
    t = pixels * model.vae.decode_flops_per_pixel / (cluster.gpu.bf16_tflops * 1e12 * VAE_EFFICIENCY)
    n = cluster.gpus
    if vae_mode == "single" or n == 1:
        return t
    if comm_bytes is None:
        comm_bytes = vae_decode_comm_bytes(model, video, vae_mode, n)
    nbytes = sum(comm_bytes.values())
    comm = nbytes / (cluster.bandwidth(cluster.spans_nodes(n)) * hw.P2P_EFFICIENCY)
    if vae_mode == "patch":
        return t / n + comm
    if vae_mode == "combined":  # two stage groups, each banding over n/2 ranks
        return t * max(0.5, VAE_LARGEST_STAGE_SHARE) / (n // 2) + comm
    if vae_mode == "pipeline":  # stages over ranks: bounded by the largest stage
        return t * max(1.0 / n, VAE_LARGEST_STAGE_SHARE) + comm
    raise ValueError(f"unknown vae_mode {vae_mode!r}")
