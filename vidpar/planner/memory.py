"""Peak GPU memory of one rank for a layout: weights + the largest live activations + a fixed runtime overhead.

A model, not a measurement: the activation constants below are derived by counting the tensors alive at the
peak of a DiT block in vidpar's code (a Wan block; bf16 weights/activations, fp32 residual stream; a family adds
``DitWorkload.extra_bytes_per_token`` where its block holds more); the VAE constants are labelled estimates to be
calibrated on a GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

from vidpar.parallel.split import split_sizes

from .hardware import GB
from .workload import ModelSpec

BF16 = 2
# Attention phase of a block, bytes per local token and per model-dim unit: fp32 residual (4) + modulated input
# (2) + q/k/v (6) + all-to-all send and receive buffers (12) + head-sharded q/k/v (6) + ring K/V block in hand and
# in flight (8, ring only; counted always to be safe) + fp32 merged output (4) + output and its exchange (6) ~ 48.
ATTN_BYTES_PER_TOKEN_DIM = 48
# FFN phase: fp32 residual, modulated input, output in bf16 and fp32 (12 per dim) + hidden and GELU (4 per ffn).
FFN_BYTES_PER_TOKEN_DIM = 12
FFN_BYTES_PER_TOKEN_FFN = 4
ALLOCATOR_FACTOR = 1.10  # caching-allocator fragmentation on top of live tensors (assumed)
RUNTIME_OVERHEAD_GB = 3.0  # CUDA context (~0.5 GB), cuBLAS/cuDNN workspaces, NCCL buffers (assumed)
VAE_CHUNK_FRAMES = 4  # the causal decoder emits 4 frames per latent frame (feature cache between chunks)


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per rank, by what holds them, and the peak (``weights + max(phase peaks) + overhead``)."""

    dit_weights: float
    text_encoder_weights: float
    vae_weights: float
    dit_activations: float
    vae_decode: float
    overhead: float

    @property
    def peak(self) -> float:
        weights = self.dit_weights + self.text_encoder_weights + self.vae_weights
        return weights + max(self.dit_activations, self.vae_decode) + self.overhead

    @property
    def peak_gb(self) -> float:
        return self.peak / GB

    def as_gb(self) -> dict[str, float]:
        keys = ("dit_weights", "text_encoder_weights", "vae_weights", "dit_activations", "vae_decode", "overhead")
        return {k: round(getattr(self, k) / GB, 3) for k in keys}


def estimate_memory(
    model: ModelSpec,
    tokens: int,
    video: tuple[int, int, int],
    ulysses: int,
    ring: int,
    world_size: int,
    fsdp: bool,
    vae_mode: str,
    text_encoder_on_gpu: bool = True,
    *,
    dtype_bytes: float = BF16,
    vae_dtype_bytes: float = 4.0,
    overhead_bytes: float = RUNTIME_OVERHEAD_GB * GB,
) -> MemoryEstimate:
    """Peak memory of one rank.

    Args:
        model: the DiT and its VAE.
        tokens: video tokens S of one forward (batch 1; guidance branches run one after the other or on
            different ranks, so never two forwards' activations at once).
        video: ``(frames, height, width)`` of the decoded video.
        ulysses, ring: sequence-parallel degrees (tokens are split over their product).
        world_size: GPUs; FSDP shards the DiT and text-encoder weights over all of them.
        fsdp: shard weights (one unsharded block is kept in flight for prefetch, plus the one computing).
        vae_mode: ``"single"`` (one GPU: no split), ``"patch"`` (row bands over all ranks), ``"pipeline"``
            (decoder stages over ranks) or ``"combined"`` (two stage groups, bands over half the ranks each).
        text_encoder_on_gpu: False when the text encoder runs on the CPU (then it costs no GPU memory).
        dtype_bytes: bytes per weight and activation element of the DiT and text encoder (2: bf16, the planner's
            GPU case; 4 for fp32, 8 for float64 runs: the bf16 activation terms scale by ``dtype_bytes / 2``).
        vae_dtype_bytes: bytes per VAE weight/activation element (4: the VAE runs in fp32).
        overhead_bytes: fixed runtime overhead (default the CUDA context, workspaces and NCCL buffers; a CPU
            process has far less).
    """
    cfg = model.config
    params = cfg.params * model.experts
    block_params = params / (cfg.num_layers * model.experts)
    wb = dtype_bytes
    dit_w = wb * (params / world_size + 2 * block_params) if fsdp and world_size > 1 else wb * params
    t5 = wb * model.text_encoder_params if text_encoder_on_gpu else 0.0
    if fsdp and world_size > 1:
        t5 /= world_size
    vae_w = vae_dtype_bytes * model.vae.params  # the VAE runs in fp32 (float64 in float64 runs)

    local = max(split_sizes(tokens, ulysses * ring))
    per_token = max(ATTN_BYTES_PER_TOKEN_DIM * cfg.dim, FFN_BYTES_PER_TOKEN_DIM * cfg.dim
                    + FFN_BYTES_PER_TOKEN_FFN * cfg.ffn_dim)
    per_token = per_token * max(1.0, dtype_bytes / BF16) + cfg.extra_bytes_per_token  # extra: e.g. per-token
    # timesteps (family-specific). Full-sequence tensors every rank holds: latents, gathered head output and the
    # unpatchified flow (fp32; float64 in float64 runs).
    full = 3 * max(4.0, dtype_bytes) * tokens * cfg.out_channels * cfg.patch_volume
    acts = ALLOCATOR_FACTOR * (local * per_token + full)

    frames, height, width = video
    # patch: every rank decodes a band of rows; combined: bands over half the ranks, two stage groups; pipeline:
    # decoder stages over ranks, which leaves the largest (full-resolution) stage's activations whole.
    ranks = {"patch": world_size, "combined": max(1, world_size // 2)}.get(vae_mode, 1)
    chunk_pixels = VAE_CHUNK_FRAMES * height * width / ranks
    vae_scale = vae_dtype_bytes / 4.0  # the decode constants are fp32 bytes
    decoded = vae_dtype_bytes * 3 * frames * height * width  # the finished video, assembled on every rank
    vae = ALLOCATOR_FACTOR * model.vae.decode_bytes_per_chunk_pixel * chunk_pixels * vae_scale + decoded
    return MemoryEstimate(dit_w, t5, vae_w, acts, vae, overhead_bytes)
