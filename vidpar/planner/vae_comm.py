"""The parallel VAE decode's communication, model-neutral: layout of a decode and per-rank byte predictions.

The layout rules mirror the shared decode loop (``vae_mode`` -> pipeline stage groups x row bands); the byte walk
of each VAE lives with its family (``VaeWorkload.decode_comm_bytes``), because it follows that decoder's layers.
"""

from __future__ import annotations

from typing import Any

from .workload import as_vae_workload

CONTROL_INTS = 7  # attention's metadata row: [S_local, B, H, D, Dv, joint tokens, dtype code]
INT64 = 8
VAE_MODES = ("auto", "patch", "pipeline", "combined")
VAE_OUTPUTS = ("all", "rank0")
VAE_AUTO_MIN_FRAMES = 8  # as ``vae_plan.AUTO_MIN_FRAMES``: latent frames from which "auto" pipelines
SHAPE_INTS = 5  # the decode loop's shape check: all-gather of [B, z_dim, T, h, w] over the world ("control")
META_INTS = 8  # ``collect_bands``' band-shape broadcast and ``stream_chunks``' per-chunk header (int64 each)


def vae_layout(world_size: int, frames: int, vae_mode: str, pipeline_degree: int | None = None) -> tuple[int, int]:
    """``(pipe, patch)`` degrees of a decode, as ``ParallelDecodeLoop.layout`` (``"auto"`` resolved from ``frames``;
    like the implementation, ``"auto"`` uses ``pipeline_degree`` unvalidated when it picks ``"combined"``)."""
    if vae_mode not in VAE_MODES:
        raise ValueError(f"vae_mode must be one of {VAE_MODES}, got {vae_mode!r}")
    d = 2 if pipeline_degree is None else pipeline_degree
    if vae_mode == "auto":
        combined = world_size >= 4 and world_size % 2 == 0 and frames >= VAE_AUTO_MIN_FRAMES
        if not combined:
            return 1, world_size
        if world_size % d:
            raise ValueError(f"vae_mode='auto' picks {d} stage groups, which do not divide {world_size} ranks")
        return d, world_size // d
    if vae_mode == "patch":
        return 1, world_size
    if vae_mode == "pipeline":
        return world_size, 1
    if world_size % d or world_size // d < 2:
        raise ValueError(f"vae_mode='combined' needs a world divisible by {d} into groups of >= 2, got {world_size}")
    return d, world_size // d



def vae_num_stages(vae: Any) -> int:
    """Decoder stages of a VAE (workload or config with ``planner_workload()``)."""
    return as_vae_workload(vae).num_stages()


def vae_stage_costs(vae: Any, h: int, w: int) -> list[float]:
    """Per-stage decode costs the pipeline mode balances (as the implementation computes them)."""
    return as_vae_workload(vae).stage_costs(h, w)


def predict_vae_comm_bytes(
    vae: Any,
    latent_shape: tuple[int, ...],
    world_size: int,
    vae_mode: str = "auto",
    output: str = "all",
    dtype_bytes: int = 4,
    *,
    batch: int = 1,
    rank: int | None = None,
    pipeline_degree: int | None = None,
) -> dict[str, int]:
    """Bytes one rank sends during ONE parallel VAE decode, per ``ctx.comm_stats()`` key (``rank=None``: the
    per-key maximum over ranks). ``vae``: a ``VaeWorkload`` or a family VAE config; see its
    ``decode_comm_bytes`` for what is counted."""
    if output not in VAE_OUTPUTS:
        raise ValueError(f"output must be one of {VAE_OUTPUTS}, got {output!r}")
    return as_vae_workload(vae).decode_comm_bytes(latent_shape, world_size, vae_mode, output, dtype_bytes,
                                                  batch=batch, rank=rank, pipeline_degree=pipeline_degree)


def predict_vae_busiest_rank_bytes(
    vae_config: Any, latent_shape: tuple[int, ...], world_size: int, vae_mode: str = "auto",
    output: str = "rank0", dtype_bytes: int = 4, *, batch: int = 1, pipeline_degree: int | None = None,
) -> dict[str, int]:
    """``predict_vae_comm_bytes`` of the rank that sends the most bytes in total (ties: the lowest rank).

    Unlike ``rank=None`` (a per-key maximum, possibly over different ranks) the keys add up to one rank's bytes.
    """
    best: dict[str, int] = {}
    for q in range(world_size):
        d = predict_vae_comm_bytes(vae_config, latent_shape, world_size, vae_mode, output, dtype_bytes, batch=batch,
                                   rank=q, pipeline_degree=pipeline_degree)
        if sum(d.values()) > sum(best.values()):
            best = d
    return best
