"""Bytes each rank sends in one parallel decode of a Wan VAE, walked conv by conv from its ``WanVAEConfig``.

Mirrors ``vae_plan.ParallelDecodeLoop`` and the convs of ``WanDecoder3d`` exactly (tested against the comm counter
in ``tests/test_vae_comm_accounting.py``).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from vidpar.parallel.split import split_sizes
from vidpar.parallel.vae_pipeline import balance_stages
from vidpar.planner.vae_comm import CONTROL_INTS, INT64, META_INTS, SHAPE_INTS, vae_layout

from .vae_config import DecoderLevel, WanVAEConfig


def wan_vae_num_stages(cfg: WanVAEConfig) -> int:
    """Decoder stages: conv_in, mid block, each up block, head (``WanDecoder3d.num_stages``)."""
    return len(cfg.dim_mult) + 3


def wan_vae_stage_costs(cfg: WanVAEConfig, h: int, w: int) -> list[float]:
    """``vae_plan.stage_costs`` from the config alone (same float operations in the same order, so the same
    ``balance_stages`` ranges): conv weight elements x pixels per stage, plus the mid attention's ``2 S^2 C``.
    """
    dims, blocks = cfg.decoder_dims(), cfg.decoder_levels()
    k3 = 27  # 3x3x3 kernels
    res_k3 = k3  # resnet conv1/conv2
    pixels = float(h * w)
    costs = [cfg.z_dim * dims[0] * k3 * pixels]
    c = dims[0]
    mid_convs = 2 * (2 * c * c * res_k3) + 3 * c * c + c * c  # 2 resnets x (conv1, conv2) + to_qkv + proj (1x1)
    costs.append(mid_convs * pixels + 2.0 * pixels * pixels * c)
    for blk in blocks:
        n = 0
        for j in range(cfg.num_res_blocks + 1):
            cin = blk.in_dim if j == 0 else blk.out_dim
            shortcut = cin * blk.out_dim if cin != blk.out_dim else 0
            n += cin * blk.out_dim * res_k3 + blk.out_dim * blk.out_dim * res_k3 + shortcut
        cost = n * pixels
        if blk.mode is not None:
            o = blk.out_dim
            frames = 2.0 if blk.mode == "upsample3d" else 1.0
            if blk.mode == "upsample3d":
                cost += (2 * o * o * 3) * pixels  # time_conv: C -> 2C, kernel (3, 1, 1)
            pixels *= 4.0 * frames
            up_out = o if cfg.is_residual else o // 2
            cost += (up_out * o * 9) * pixels  # the 3x3 SpatialConv2d after the 2x nearest upsample
        costs.append(cost)
    costs.append(cfg.out_channels * dims[-1] * k3 * pixels)
    return costs


@dataclass
class _Chunk:
    """One latent time chunk as it flows through the decoder: channels, frames, width, spatial doublings."""

    c: int
    t: int
    w: int
    k: int = 0


def _walk_stage(
    cfg: WanVAEConfig, dims: list[int], blocks: list[DecoderLevel], stage: int, x: _Chunk, first: bool
) -> tuple[int, int]:
    """Advance ``x`` through decoder stage ``stage``; returns ``(halo, attn_seqs)``.

    ``halo``: elements per batch item one halo row of every banded conv of the stage holds, summed over convs
    (each ``CausalConv3d`` 3x3x3 sends its time-extended input, ``T + 2`` frames; each upsample's 3x3
    ``SpatialConv2d`` sends its ``T`` upsampled frames). ``attn_seqs``: frames attended by the mid block (0 elsewhere).
    ``dims, blocks``: ``cfg.decoder_dims()``, ``cfg.decoder_levels()``.
    """
    n = len(blocks) + 3
    if stage == 0:
        halo = x.c * (x.t + 2) * x.w
        x.c = dims[0]
        return halo, 0
    if stage == 1:
        return 4 * x.c * (x.t + 2) * x.w, x.t
    if stage == n - 1:
        halo = x.c * (x.t + 2) * x.w
        x.c = cfg.out_channels
        return halo, 0
    blk = blocks[stage - 2]
    halo = 0
    for j in range(cfg.num_res_blocks + 1):
        cin = blk.in_dim if j == 0 else blk.out_dim
        halo += (cin + blk.out_dim) * (x.t + 2) * x.w
    x.c = blk.out_dim
    if blk.mode is not None:
        if blk.mode == "upsample3d" and not first:
            x.t *= 2
        x.w *= 2
        x.k += 1
        halo += blk.out_dim * x.t * x.w
        x.c = blk.out_dim if cfg.is_residual else blk.out_dim // 2
    return halo, 0


def _vae_bytes_of_rank(
    cfg: WanVAEConfig, batch: int, frames: int, h: int, w: int, world: int, pipe: int, patch: int, output: str,
    eb: int, rank: int,
) -> dict[str, int]:
    """Bytes ``rank`` sends in one decode of a ``[batch, z, frames, h, w]`` latent on a ``pipe x patch`` layout;
    ``eb``: activation element bytes."""
    out: dict[str, int] = defaultdict(int)
    if world == 1:
        return {}
    out["control"] += SHAPE_INTS * INT64 * (world - 1)
    active = min(patch, h)
    pipe_index, band = divmod(rank, patch)
    stages = wan_vae_num_stages(cfg)
    dims, blocks = cfg.decoder_dims(), cfg.decoder_levels()
    ranges = balance_stages(wan_vae_stage_costs(cfg, h, w), pipe)
    band_rows = split_sizes(h, active)
    lengths = [r * w for r in band_rows]  # mid-block attention tokens per band rank
    t_video = 0
    for first in (True, False):
        chunks = 1 if first else frames - 1
        if chunks == 0:
            continue
        x = _Chunk(cfg.z_dim, 1, w)
        lo, hi = ranges[pipe_index]
        for s in range(stages):
            halo, seqs = _walk_stage(cfg, dims, blocks, s, x, first)
            if not (lo <= s < hi) or band >= active:
                continue
            neighbours = (band > 0) + (band + 1 < active)
            out["vae.sp"] += chunks * batch * eb * neighbours * halo
            if seqs and active > 1:
                out["vae.control"] += chunks * CONTROL_INTS * INT64 * (active - 1)
                held = sum(lengths[(band - step) % active] for step in range(active - 1))
                out["vae.ring"] += chunks * eb * batch * seqs * held * 2 * x.c
            if s == hi - 1 and pipe_index < pipe - 1:  # hand-off to the next stage group: header + activation
                act = batch * x.c * x.t * band_rows[band] * 2**x.k * x.w
                out["vae.world"] += chunks * (META_INTS * INT64 + eb * act)
        t_video += chunks * x.t
    # collect_bands: the shape broadcast from the first source, then the bands (broadcast, or sent to rank 0).
    sources = [(pipe - 1) * patch + i for i in range(active)]
    if rank == sources[0]:
        out["vae.world"] += META_INTS * INT64 * (world - 1)
    if rank in sources:
        p = cfg.patch
        band_video = batch * (cfg.out_channels // (p * p)) * t_video * band_rows[band] * cfg.spatial_factor
        band_video *= w * cfg.spatial_factor
        if output == "all":
            out["vae.world"] += eb * band_video * (world - 1)
        elif rank != 0:
            out["vae.world"] += eb * band_video
    return {k: v for k, v in out.items() if v}


def wan_vae_comm_bytes(
    vae_config: WanVAEConfig,
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
    """Bytes one rank sends during ONE parallel VAE decode (``WanVAE.decode`` after ``vidpar.parallelize(vae, ctx,
    vae_mode=..., output=..., pipeline_degree=...)``), per ``ctx.comm_stats()`` key.

    Mirrors ``vae_plan.ParallelDecodeLoop`` on a ``pipe x patch`` layout (rank = pipe_index * patch + band):

    - ``"control"``: the latent-shape check, an all-gather of 5 int64 over the world;
    - ``"vae.sp"``: per latent frame (chunk), every banded conv of the rank's stages sends one row up and one down
      (to existing active neighbours) of its input: the causal convs' time-extended input (``T + 2`` frames,
      cached or zero), the upsamplers' per-frame 2-D conv input at the doubled resolution;
    - ``"vae.control"`` / ``"vae.ring"``: the mid-block attention on ``active = min(patch, h)`` band ranks, per
      chunk: the 7-int64 length check, then ring attention passing ``active - 1`` K/V blocks (k and v, C each)
      of ``rows_band * w`` pixels;
    - ``"vae.world"``: pipeline hand-offs (per chunk a 64-byte header plus the activation, from every stage group
      but the last), the 64-byte band-shape broadcast from the first output band's rank, and the output bands
      (``"all"``: broadcast, ``(world - 1)`` x the band; ``"rank0"``: each band sent once to rank 0).

    Stage groups are those ``balance_stages`` gives for the costs the implementation computes (``stage_costs``,
    which counts swapped ``HaloConv`` weights like the original convs). Every term is exact (sizes only; nothing
    depends on the data).

    Args:
        vae_config: the VAE's ``WanVAEConfig``.
        latent_shape: ``(..., T, h, w)`` latent size (channels/batch in front are ignored; see ``batch``).
        world_size: ranks of the world the VAE was parallelized over.
        vae_mode: ``"patch"``, ``"pipeline"``, ``"combined"`` or ``"auto"`` (resolved from ``T`` as the decode does).
        output: ``"all"`` or ``"rank0"``.
        dtype_bytes: bytes per element of the decoder activations (the VAE weights' dtype; 4 for fp32).
        batch: B of the latent.
        rank: global rank; None gives, per key, the maximum over ranks (the busiest rank, for the cost model).
        pipeline_degree: stage groups of ``"combined"`` (default 2).
    Returns:
        ``{key: bytes}`` with keys among ``"control"``, ``"vae.sp"``, ``"vae.control"``, ``"vae.ring"``,
        ``"vae.world"`` (zero entries left out).
    """
    frames, h, w = (int(v) for v in latent_shape[-3:])
    if min(frames, h, w, batch) < 1:
        raise ValueError(f"empty latent: shape {tuple(latent_shape)}, batch {batch}")
    pipe, patch = vae_layout(world_size, frames, vae_mode, pipeline_degree)
    if pipe > wan_vae_num_stages(vae_config):
        raise ValueError(f"{pipe} pipeline stage groups for {wan_vae_num_stages(vae_config)} decoder stages")
    ranks = range(world_size) if rank is None else [rank]
    merged: dict[str, int] = {}
    for q in ranks:
        d = _vae_bytes_of_rank(vae_config, batch, frames, h, w, world_size, pipe, patch, output, dtype_bytes, q)
        for k, v in d.items():
            merged[k] = max(merged.get(k, 0), v)
    return merged


