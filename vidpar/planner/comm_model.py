"""Bytes each rank sends, predicted from vidpar's own implementation (``vidpar.parallel``), per mesh axis.

This mirrors the code path exactly, with the same conventions as ``vidpar.parallel.comm.Comm`` (what leaves a rank;
all-gather of ``n`` bytes over ``P`` ranks counts ``n * (P - 1)``). For a Wan DiT made sequence-parallel by
``vidpar.parallelize`` one forward does, on every rank of an ``sp = ring x ulysses`` group of size ``P > 1``:

- per self-attention call (``num_layers`` of them), in ``vidpar.parallel.attention.attention`` (no ``"control"``
  length exchange: the plan knows the full length and passes the shard lengths);
  - ``"ulysses"`` (``ulysses > 1``): q, k, v in one all-to-all (sequence -> heads), then the output back
    (heads -> sequence); the split to itself is not sent; heads and tokens split with ``split_sizes``;
  - ``"ring"`` (``ring > 1``): ``ring - 1`` sends of the K/V block held at that step (k and v concatenated),
    blocks having the lengths of each ulysses group's tokens;
- once, the head's output gathered by ``ctx.gather_sequence`` (``GatherOutput`` in the Wan plan, full length
  known): an all-gather over ``"sp"`` padded to the longest piece.

A guided denoising step adds, with ``cfg == 2``, one all-gather over ``"cfg"`` of the flow prediction (fp32; the
pipeline's exchange, assumed as specified); with ``cfg == 1`` the two branches are two forwards.

One parallel VAE decode (``predict_vae_comm_bytes``) is walked conv by conv from the ``WanVAEConfig``: halo rows
(``"vae.sp"``), band attention (``"vae.ring"``, ``"vae.control"``), pipeline hand-offs and output gathering
(``"vae.world"``) and the shape check (``"control"``); see its docstring.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass

from vidpar.models.wan.transformer_config import WanTransformerConfig
from vidpar.models.wan.vae_config import DecoderLevel, WanVAEConfig
from vidpar.parallel.config import ParallelConfig
from vidpar.parallel.split import split_sizes
from vidpar.parallel.vae_pipeline import balance_stages

from .workload import num_tokens

CONTROL_INTS = 7  # attention's metadata row: [S_local, B, H, D, Dv, joint tokens, dtype code]
INT64 = 8
KEYS = ("ulysses", "ring", "sp", "cfg", "control")


def rank_coords(parallel: ParallelConfig, rank: int) -> dict[str, int]:
    """Mesh coordinates of global ``rank`` (mesh order cfg, ring, ulysses; ulysses innermost)."""
    if not 0 <= rank < parallel.world_size:
        raise ValueError(f"rank {rank} outside a world of {parallel.world_size}")
    u, r = parallel.ulysses, parallel.ring
    return {"cfg": rank // (u * r), "ring": (rank // u) % r, "ulysses": rank % u}


def _forward_bytes_of_rank(
    cfg: WanTransformerConfig, tokens: int, batch: int, parallel: ParallelConfig, dtype_bytes: int,
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
    return out


def predict_comm_bytes(
    model_config: WanTransformerConfig,
    latent_shape: tuple[int, ...],
    batch: int,
    parallel_config: ParallelConfig,
    dtype_bytes: int,
    *,
    rank: int | None = None,
    out_dtype_bytes: int | None = None,
) -> dict[str, int]:
    """Bytes one rank sends during ONE forward of a Wan DiT parallelized by ``vidpar.parallelize``.

    Args:
        model_config: the DiT config.
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


def cfg_exchange_bytes(model_config: WanTransformerConfig, latent_shape: tuple[int, ...], batch: int,
                       parallel_config: ParallelConfig, flow_dtype_bytes: int = 4) -> int:
    """Bytes one rank sends in the guidance exchange of one step: all-gather of ``[B, C_out, F, H, W]`` over cfg."""
    if parallel_config.cfg == 1:
        return 0
    f, h, w = latent_shape[-3:]
    return flow_dtype_bytes * batch * model_config.out_channels * f * h * w * (parallel_config.cfg - 1)


def predict_step_comm_bytes(
    model_config: WanTransformerConfig,
    latent_shape: tuple[int, ...],
    parallel_config: ParallelConfig,
    dtype_bytes: int = 2,
    *,
    guidance: bool = True,
    batch: int = 1,
    rank: int | None = None,
    flow_dtype_bytes: int = 4,
) -> dict[str, int]:
    """Bytes one rank sends in one denoising step (every forward of the step), per axis.

    With guidance and ``cfg == 1`` the conditional and unconditional branches are two forwards of batch ``batch``
    on the same ranks; with ``cfg == 2`` each rank group runs one forward, then one cfg all-gather of the flow.
    """
    forwards = 2 if guidance and parallel_config.cfg == 1 else 1
    per = predict_comm_bytes(model_config, latent_shape, batch, parallel_config, dtype_bytes, rank=rank)
    out = {k: forwards * v for k, v in per.items()}
    if guidance and parallel_config.cfg > 1:
        out["cfg"] = cfg_exchange_bytes(model_config, latent_shape, batch, parallel_config, flow_dtype_bytes)
    return out


# ---- the parallel VAE decode (``vidpar.models.wan.vae_plan``) ---------------------------------------------------

VAE_MODES = ("auto", "patch", "pipeline", "combined")
VAE_OUTPUTS = ("all", "rank0")
VAE_AUTO_MIN_FRAMES = 8  # as ``vae_plan.AUTO_MIN_FRAMES``: latent frames from which "auto" pipelines
SHAPE_INTS = 5  # the decode loop's shape check: all-gather of [B, z_dim, T, h, w] over the world ("control")
META_INTS = 8  # ``collect_bands``' band-shape broadcast and ``stream_chunks``' per-chunk header (int64 each)


def vae_num_stages(cfg: WanVAEConfig) -> int:
    """Decoder stages: conv_in, mid block, each up block, head (``WanDecoder3d.num_stages``)."""
    return len(cfg.dim_mult) + 3


def vae_stage_costs(cfg: WanVAEConfig, h: int, w: int) -> list[float]:
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
    stages = vae_num_stages(cfg)
    dims, blocks = cfg.decoder_dims(), cfg.decoder_levels()
    ranges = balance_stages(vae_stage_costs(cfg, h, w), pipe)
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


def predict_vae_comm_bytes(
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
    if output not in VAE_OUTPUTS:
        raise ValueError(f"output must be one of {VAE_OUTPUTS}, got {output!r}")
    frames, h, w = (int(v) for v in latent_shape[-3:])
    if min(frames, h, w, batch) < 1:
        raise ValueError(f"empty latent: shape {tuple(latent_shape)}, batch {batch}")
    pipe, patch = vae_layout(world_size, frames, vae_mode, pipeline_degree)
    if pipe > vae_num_stages(vae_config):
        raise ValueError(f"{pipe} pipeline stage groups for {vae_num_stages(vae_config)} decoder stages")
    ranks = range(world_size) if rank is None else [rank]
    merged: dict[str, int] = {}
    for q in ranks:
        d = _vae_bytes_of_rank(vae_config, batch, frames, h, w, world_size, pipe, patch, output, dtype_bytes, q)
        for k, v in d.items():
            merged[k] = max(merged.get(k, 0), v)
    return merged


def predict_vae_busiest_rank_bytes(
    vae_config: WanVAEConfig, latent_shape: tuple[int, ...], world_size: int, vae_mode: str = "auto",
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
