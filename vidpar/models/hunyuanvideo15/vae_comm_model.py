"""Bytes each rank sends in one parallel HunyuanVideo-1.5 VAE decode, walked from the config (for the planner).

The loop's generic traffic is accounted by ``vidpar.parallel.vae_decode_comm``; this file walks the decoder's
stages for latent chunk ``t`` (see ``vae_plan``): every 3x3x3 conv sends one halo row of its time-extended input
(``frames + 2``) at its resolution; the upsamplers' convs run before their shuffle; the mid-block attention at
chunk ``t`` attends ``t + 1`` frames of keys. Temporal upsamples double the frames of every chunk but the first.
"""

from __future__ import annotations

from vidpar.parallel.vae_decode import MODES, OUTPUTS, check_layout, decode_layout
from vidpar.parallel.vae_decode_comm import StageTraffic, decode_comm_bytes
from vidpar.parallel.vae_pipeline import balance_stages

from .vae_config import HunyuanVideo15VAEConfig
from .vae_plan import num_stages, stage_costs


def stage_traffic(cfg: HunyuanVideo15VAEConfig, w: int, t: int) -> list[StageTraffic]:
    """Every decoder stage's traffic for latent chunk ``t`` of a latent ``w`` wide (per batch item)."""
    levels = cfg.decoder_levels()
    frames, width, scale = 1, w, 1  # chunk frames, width and rows per latent row at the current stage
    c0 = levels[0].in_dim
    out = [
        StageTraffic(halo_row=cfg.latent_channels * (frames + 2) * width, out_elems_per_row=c0 * frames * width),
        StageTraffic(halo_row=4 * c0 * (frames + 2) * width, attn_rows=(t + 1) * width, attn_channels=c0,
                     out_elems_per_row=c0 * frames * width),
    ]
    for lv in levels:
        halo = 0
        for j in range(cfg.layers_per_block + 1):
            cin = lv.in_dim if j == 0 else lv.out_dim
            halo += (cin + lv.out_dim) * (frames + 2) * width  # conv1 and conv2 of the residual block
        channels = lv.out_dim
        if lv.up_dim is not None:
            halo += lv.out_dim * (frames + 2) * width  # the upsampler's conv, before the shuffle
            if lv.temporal and t > 0:
                frames *= 2
            width, scale, channels = width * 2, scale * 2, lv.up_dim
        out.append(StageTraffic(halo_row=halo, out_elems_per_row=channels * frames * scale * width))
    last = levels[-1].up_dim or levels[-1].out_dim
    out.append(StageTraffic(halo_row=last * (frames + 2) * width,
                            out_elems_per_row=cfg.out_channels * frames * scale * width))
    return out


def vae_layout(world_size: int, frames: int, vae_mode: str, pipeline_degree: int | None = None,
               stages: int | None = None) -> tuple[int, int]:
    """``(pipe, patch)`` of a decode (``"auto"`` resolved as the decode does); ``ValueError`` where the
    parallelized VAE would refuse the layout."""
    if vae_mode not in MODES:
        raise ValueError(f"vae_mode must be one of {MODES}, got {vae_mode!r}")
    d = 2 if pipeline_degree is None else pipeline_degree
    if stages is not None:
        check_layout(world_size, stages, vae_mode, d)
    pipe, patch = decode_layout(world_size, frames, vae_mode, d)
    if pipe * patch != world_size:
        raise ValueError(f"vae_mode={vae_mode!r} picks {pipe} stage groups, which do not divide {world_size} ranks")
    return pipe, patch


def predict_vae_comm_bytes(
    config: HunyuanVideo15VAEConfig,
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
    """Bytes one rank sends during ONE parallel decode (``HunyuanVideo15VAE.decode`` after ``vidpar.parallelize(vae,
    ctx, vae_mode=..., output=..., pipeline_degree=...)``), per ``ctx.comm_stats()`` key.

    Args:
        config: the VAE's config.
        latent_shape: ``(..., T, h, w)`` (channels/batch in front are ignored; see ``batch``).
        world_size: ranks the VAE was parallelized over.
        vae_mode, output, pipeline_degree: as given to ``parallelize``.
        dtype_bytes: bytes per element of the decoder's activations (its weights' dtype; 4 for fp32).
        rank: global rank; None gives, per key, the maximum over ranks.
    Returns:
        ``{key: bytes}`` with keys among ``"control"``, ``"vae.sp"``, ``"vae.control"``, ``"vae.ring"``,
        ``"vae.world"`` (see ``vidpar.parallel.vae_decode_comm``).
    """
    if output not in OUTPUTS:
        raise ValueError(f"output must be one of {OUTPUTS}, got {output!r}")
    frames, h, w = (int(v) for v in latent_shape[-3:])
    if min(frames, h, w, batch) < 1:
        raise ValueError(f"empty latent: shape {tuple(latent_shape)}, batch {batch}")
    pipe, patch = vae_layout(world_size, frames, vae_mode, pipeline_degree, num_stages(config))
    ranges = balance_stages(stage_costs(config, (frames, h, w)), pipe)
    video_row = config.out_channels * config.num_frames(frames) * config.spatial_factor * w * config.spatial_factor
    walks = [stage_traffic(config, w, t) for t in range(frames)]
    ranks = range(world_size) if rank is None else [rank]
    merged: dict[str, int] = {}
    for q in ranks:
        d = decode_comm_bytes(walks.__getitem__, frames, h, batch, ranges, patch, output, dtype_bytes, q, video_row)
        for k, v in d.items():
            merged[k] = max(merged.get(k, 0), v)
    return merged


def predict_vae_busiest_rank_bytes(
    config: HunyuanVideo15VAEConfig, latent_shape: tuple[int, ...], world_size: int, vae_mode: str = "auto",
    output: str = "rank0", dtype_bytes: int = 4, *, batch: int = 1, pipeline_degree: int | None = None,
) -> dict[str, int]:
    """:func:`predict_vae_comm_bytes` of the rank that sends the most bytes in total (ties: the lowest rank)."""
    best: dict[str, int] = {}
    for q in range(world_size):
        d = predict_vae_comm_bytes(config, latent_shape, world_size, vae_mode, output, dtype_bytes, batch=batch,
                                   rank=q, pipeline_degree=pipeline_degree)
        if sum(d.values()) > sum(best.values()):
            best = d
    return best
