"""Bytes each rank sends, predicted from vidpar's own implementation (``vidpar.parallel``), per mesh axis.

This mirrors the code path exactly, with the same conventions as ``vidpar.parallel.comm.Comm`` (what leaves a rank;
all-gather of ``n`` bytes over ``P`` ranks counts ``n * (P - 1)``). For a DiT made sequence-parallel by
``vidpar.parallelize`` (any family: the plan shards the video tokens after the patch embedding and gathers the
head's output) one forward does, on every rank of an ``sp = ring x ulysses`` group of size ``P > 1``:

- per self-attention call (``num_layers`` of them), in ``vidpar.parallel.attention.attention`` (no ``"control"``
  length exchange: the plan knows the full length and passes the shard lengths);
  - ``"ulysses"`` (``ulysses > 1``): q, k, v in one all-to-all (sequence -> heads), then the output back
    (heads -> sequence); the split to itself is not sent; heads and tokens split with ``split_sizes``;
  - ``"ring"`` (``ring > 1``): ``ring - 1`` sends of the K/V block held at that step (k and v concatenated),
    blocks having the lengths of each ulysses group's tokens;
  - ``"sp"`` (joint-attention models, ``joint_tokens = T > 0``): the joint output assembled by one all-gather of
    this rank's ``[B, max rows, max heads, D]`` piece (rows of ``split_sizes(T, ring)``, heads of
    ``split_sizes(H, ulysses)``); joint q/k/v never travel (every rank holds them);
- once, the head's output gathered by ``ctx.gather_sequence`` (``GatherOutput`` in the plan, full length known): an all-gather over ``"sp"`` padded to the longest piece.

A guided denoising step adds, with ``cfg == 2``, one all-gather over ``"cfg"`` of the flow prediction (fp32; the
pipeline's exchange, assumed as specified); with ``cfg == 1`` the two branches are two forwards.

One parallel VAE decode (``predict_vae_comm_bytes``, re-exported from ``vae_comm``) is walked by the VAE's own
family (``VaeWorkload.decode_comm_bytes``).
"""

from __future__ import annotations

from typing import Any

from vidpar.parallel.config import ParallelConfig
from vidpar.parallel.split import split_sizes

from .vae_comm import (  # noqa: F401 - re-exported: the VAE half of the comm model
    CONTROL_INTS, INT64, VAE_MODES, VAE_OUTPUTS, predict_vae_busiest_rank_bytes, predict_vae_comm_bytes, vae_layout,
    vae_num_stages, vae_stage_costs,
)
from .workload import as_dit_workload, num_tokens

KEYS = ("ulysses", "ring", "sp", "cfg", "control")


def rank_coords(parallel: ParallelConfig, rank: int) -> dict[str, int]:
    """Mesh coordinates of global ``rank`` (mesh order cfg, ring, ulysses; ulysses innermost)."""
    if not 0 <= rank < parallel.world_size:
        raise ValueError(f"rank {rank} outside a world of {parallel.world_size}")
    u, r = parallel.ulysses, parallel.ring
    return {"cfg": rank // (u * r), "ring": (rank // u) % r, "ulysses": rank % u}


def _forward_bytes_of_rank(
    cfg: Any, tokens: int, batch: int, parallel: ParallelConfig, dtype_bytes: int,
    out_dtype_bytes: int, rank: int,
) -> dict[str, int]:
    u, r = parallel.ulysses, parallel.ring
    p = u * r
    if p == 1:  # the plan hooks nothing on a single-rank sequence axis
        return {}
    c = rank_coords(parallel, rank)
    ring_rank, uly = c["ring"], c["ulysses"]
    sp_rank = ring_rank * u + uly
    heads_all, hd, layers = cfg.num_heads, cfg.head_dim, cfg.num_layers
    lengths = split_sizes(tokens, p)
    group = lengths[ring_rank * u : (ring_rank + 1) * u]
    blocks = [sum(lengths[i * u : (i + 1) * u]) for i in range(r)]
    heads = split_sizes(heads_all, u)
    mine = heads[uly]

    out: dict[str, int] = {}
    if u > 1:
        to_heads = batch * lengths[sp_rank] * 3 * hd * (heads_all - mine)  # q, k, v: every head but mine
        to_seq = batch * mine * hd * (sum(group) - group[uly])  # my heads of every other rank's tokens
        out["ulysses"] = layers * dtype_bytes * (to_heads + to_seq)
    if r > 1:
        held = [blocks[(ring_rank - step) % r] for step in range(r - 1)]  # block held at each step, sent on
        out["ring"] = layers * dtype_bytes * batch * sum(held) * mine * 2 * hd
    head_width = cfg.out_channels * cfg.patch_volume
    out["sp"] = out_dtype_bytes * batch * max(lengths) * head_width * (p - 1)
    if cfg.joint_tokens:
        piece = batch * max(split_sizes(cfg.joint_tokens, r)) * max(heads) * hd
        out["sp"] += layers * dtype_bytes * piece * (p - 1)
    return out


def predict_comm_bytes(
    model_config: Any,
    latent_shape: tuple[int, ...],
    batch: int,
    parallel_config: ParallelConfig,
    dtype_bytes: int,
    *,
    rank: int | None = None,
    out_dtype_bytes: int | None = None,
) -> dict[str, int]:
    """Bytes one rank sends during ONE forward of a DiT parallelized by ``vidpar.parallelize``.

    Args:
        model_config: the DiT's ``DitWorkload`` or a family config with ``planner_workload()``.
        latent_shape: ``(..., F, H, W)`` latent size (channels/batch in front are ignored).
        batch: B of the forward.
        parallel_config: the mesh (the cfg axis adds nothing to one forward).
        dtype_bytes: bytes per element of q/k/v (the Linear weights' dtype: 2 for bf16, 4 for fp32).
        rank: global rank; None gives, per key, the maximum over ranks (the busiest rank, for the cost model).
        out_dtype_bytes: bytes per element of the head output (default ``dtype_bytes``).
    Returns:
        ``{axis: bytes}`` with keys among ``"ulysses"``, ``"ring"``, ``"sp"``, ``"control"``; empty when the
        sequence is not split. Keys match ``ParallelContext.comm_stats()``.
    """
    model_config = as_dit_workload(model_config)
    tokens = num_tokens(model_config, latent_shape)
    ob = dtype_bytes if out_dtype_bytes is None else out_dtype_bytes
    ranks = range(parallel_config.world_size) if rank is None else [rank]
    per_rank = [_forward_bytes_of_rank(model_config, tokens, batch, parallel_config, dtype_bytes, ob, q)
                for q in ranks]
    merged: dict[str, int] = {}
    for d in per_rank:
        for k, v in d.items():
            merged[k] = max(merged.get(k, 0), v)
    return merged


def cfg_exchange_bytes(model_config: Any, latent_shape: tuple[int, ...], batch: int,
                       parallel_config: ParallelConfig, flow_dtype_bytes: int = 4) -> int:
    """Bytes one rank sends in the guidance exchange of one step: all-gather of ``[B, C_out, F, H, W]`` over cfg."""
    if parallel_config.cfg == 1:
        return 0
    f, h, w = latent_shape[-3:]
    return flow_dtype_bytes * batch * as_dit_workload(model_config).out_channels * f * h * w * (parallel_config.cfg - 1)


def predict_step_comm_bytes(
    model_config: Any,
    latent_shape: tuple[int, ...],
    parallel_config: ParallelConfig,
    dtype_bytes: int = 2,
    *,
    guidance: bool = True,
    batch: int = 1,
    rank: int | None = None,
    flow_dtype_bytes: int = 4,
    step_flags: bool = False,
) -> dict[str, int]:
    """Bytes one rank sends in one denoising step (every forward of the step), per axis.

    With guidance and ``cfg == 1`` the conditional and unconditional branches are two forwards of batch ``batch``
    on the same ranks; with ``cfg == 2`` each rank group runs one forward, then one cfg all-gather of the flow.
    ``step_flags``: add the pipeline's per-step agreement (stop request and finite latents: two fp32 flags
    all-reduced over every rank, under ``"control"``; negligible, so left out of the planner's own figures).
    """
    forwards = 2 if guidance and parallel_config.cfg == 1 else 1
    per = predict_comm_bytes(model_config, latent_shape, batch, parallel_config, dtype_bytes, rank=rank)
    out = {k: forwards * v for k, v in per.items()}
    if guidance and parallel_config.cfg > 1:
        out["cfg"] = cfg_exchange_bytes(model_config, latent_shape, batch, parallel_config, flow_dtype_bytes)
    world = parallel_config.world_size
    if step_flags and world > 1:
        out["control"] = out.get("control", 0) + 2 * 8 * (world - 1) // world  # ring all-reduce of 2 fp32
    return out


