"""Peak memory of one rank's HunyuanVideo-1.5 VAE decode (an ESTIMATE from the architecture) and parameter counts.

Per rank the decode holds ``weights + latent`` throughout, and peaks either while decoding or while assembling the
video (the decode's caches are freed before the bands are collected):

- decoding: ``band latent + temporal caches + the working set of the busiest stage + the decoded band so far``,
  then the concatenation of the decoded frames (2 x the band, caches still alive);
- assembling (ranks that receive the video from other ranks): the received bands and their concatenation, 2 x
  the video.

Terms (``A`` = one activation of the op, ``C x t x rows x cols x bytes``; ``t`` frames per steady-state chunk: 1 at
the latent, x2 per temporal upsample; rows are this rank's band at that resolution):

- caches (exact): every 3x3x3 causal conv keeps 2 frames of its time-extended input; the mid-block attention keeps
  k and v of every latent frame (``2 x C x T x rows x w``, the largest cache at long clips);
- residual-block conv: block input, SiLU output, time-extended input and its replicate-padded copy
  (``2 (t+2)/t A``), the first conv's output while the second runs, the conv output -> ``4 + 2 (t+2)/t`` A;
- upsampler: its input plus 4 x its conv output ``H`` (conv output, shuffled copy, repeated input shortcut,
  their sum; the channel->space shuffles copy);
- mid-block attention: input, norm, q, k, v, output (6 A at one frame) plus the new k/v of every frame while
  the old cache is alive (the concatenation copies);
- pipeline hand-offs: up to 2 unfinished sends and 1 receive of the group-boundary activation.

Not modelled: allocator caching / fragmentation and kernel workspaces (on GPU the CUDA caching allocator typically
adds 5-20%); torch's CPU ``slow_conv3d`` column buffer (``27 C_in x t x rows x cols``) only with ``im2col=True``.
Halo rows (one above and one below per conv) are ignored (< 1% at real sizes).
"""

from __future__ import annotations

import math

from vidpar.parallel.vae_pipeline import balance_stages

from .vae_config import HunyuanVideo15VAEConfig
from .vae_plan import stage_costs


def param_count(config: HunyuanVideo15VAEConfig, part: str = "all") -> int:
    """Parameters of ``HunyuanVideo15VAE(config)``: ``"all"``, ``"encoder"`` or ``"decoder"`` (exact, on meta)."""
    import torch

    from .vae import HunyuanVideo15VAE

    if part not in ("all", "encoder", "decoder"):
        raise ValueError(f"part must be 'all', 'encoder' or 'decoder', got {part!r}")
    with torch.device("meta"):
        model = HunyuanVideo15VAE(config)
    module = model if part == "all" else getattr(model, part)
    return sum(p.numel() for p in module.parameters())


def _stages(cfg: HunyuanVideo15VAEConfig, frames: int, rows: int, w: int, by: int, im2col: bool):
    """Per decoder stage: (cache bytes, working-set bytes, output activation bytes) for one batch item."""
    levels = cfg.decoder_levels()
    px, t = rows * w, 1
    c0, z = levels[0].in_dim, cfg.latent_channels

    def conv_set(cin: int, cout: int) -> float:
        a = max(cin, cout) * t * px * by
        return (4 + 2 * (t + 2) / t) * a + (27 * cin * t * px * by if im2col else 0)

    out = []
    # conv_in + the repeated latent channels: input, time-extended + padded input, conv output, repeat, sum.
    out.append((z * 2 * px * by, (3 * z + 3 * c0) * px * by + (27 * z * px * by if im2col else 0), c0 * px * by))
    kv = 2 * c0 * frames * px * by
    attn = (6 * c0 * px + 2 * c0 * frames * px) * by
    out.append((4 * c0 * 2 * px * by + kv, max(conv_set(c0, c0), attn), c0 * px * by))
    for lv in levels:
        cache, work = 0, 0.0
        c = lv.in_dim
        for _ in range(cfg.layers_per_block + 1):
            cache += (c + lv.out_dim) * 2 * px * by
            work = max(work, conv_set(c, lv.out_dim))
            c = lv.out_dim
        if lv.up_dim is not None:
            factor = 8 if lv.temporal else 4
            cache += c * 2 * px * by
            h = factor * lv.up_dim * t * px * by  # the conv output (pre-shuffle)
            work = max(work, c * t * px * by * (1 + 2 * (t + 2) / t) + h, c * t * px * by + 4 * h)
            if lv.temporal:
                t *= 2
            px *= 4
            c = lv.up_dim
        out.append((cache, work, c * t * px * by))
    last = levels[-1].up_dim or levels[-1].out_dim
    out.append((last * 2 * px * by, conv_set(last, cfg.out_channels), cfg.out_channels * t * px * by))
    return out


def vae_decode_peak_bytes(
    config: HunyuanVideo15VAEConfig,
    latent_shape: tuple[int, int, int, int, int],
    parallel_layout: tuple[int, int] = (1, 1),
    dtype_bytes: int = 2,
    output: str = "all",
    im2col: bool = False,
) -> int:
    """ESTIMATED peak bytes of the busiest rank decoding ``latent_shape`` with ``parallel_layout = (pipe, patch)``.

    Args:
        config: the VAE architecture (e.g. ``HunyuanVideo15VAEConfig()``, the release).
        latent_shape: ``(B, latent_channels, T, h, w)``.
        parallel_layout: ``(1, 1)``: one process; ``(1, P)``: patch; ``(P, 1)``: pipeline; else combined.
        dtype_bytes: 2 (bf16/fp16) or 4 (fp32).
        output: ``"all"`` (every rank assembles the video), ``"rank0"`` (the figure is then rank 0's, the busiest)
            or ``"none"`` (a rank that assembles nothing: ranks 1.. with ``"rank0"``).
        im2col: add torch's CPU conv3d column buffer (to compare with CPU measurements; False for GPUs).
    """
    if output not in ("all", "rank0", "none"):
        raise ValueError(f"output must be 'all', 'rank0' or 'none', got {output!r}")
    b, z, frames, h, w = latent_shape
    pipe, patch = parallel_layout
    active = min(patch, h)
    rows = math.ceil(h / active)  # the tallest band
    by = dtype_bytes
    weights = param_count(config) * by
    latent = b * z * frames * h * w * by
    band_latent = b * z * frames * rows * w * by if patch > 1 else 0
    stages = _stages(config, frames, rows, w, by, im2col)
    ranges = balance_stages(stage_costs(config, (frames, h, w)), pipe)
    s = config.spatial_factor
    out_frames = config.num_frames(frames)
    video_band = b * config.out_channels * out_frames * rows * s * w * s * by
    video_full = b * config.out_channels * out_frames * h * s * w * s * by
    parallel = pipe > 1 or patch > 1
    best = 0
    for g, (lo, hi) in enumerate(ranges):
        mine = stages[lo:hi]
        caches = b * sum(c for c, _, _ in mine)
        decoding = band_latent + caches + b * max(wk for _, wk, _ in mine)
        if g < pipe - 1:
            decoding += 2 * b * mine[-1][2]  # unfinished sends of the boundary activation
        if g > 0:
            decoding += b * stages[lo - 1][2]  # the received activation
        phases = [decoding]
        if g == pipe - 1:
            phases[0] += video_band  # the frames decoded so far, under the last chunk's working set
            phases.append(band_latent + caches + 2 * video_band)  # their concatenation, caches still alive
        if parallel and (output == "all" or (output == "rank0" and g == 0)):
            phases.append(2 * video_full)  # received bands and their concatenation (caches freed)
        best = max(best, weights + latent + max(phases))
    return int(best)


def memory_table(p_values=(1, 2, 4, 8), dtype_bytes: int = 2) -> list[dict]:
    """ESTIMATED per-rank peak (GiB) of patch decode for the released VAE at 480p and 720p, 121 frames.

    ``output="all"``: every rank (also rank 0 with ``"rank0"``); ``"none"``: ranks 1.. with ``output="rank0"``.
    """
    cfg = HunyuanVideo15VAEConfig()
    rows = []
    for name, (height, width) in {"848x480": (480, 848), "1280x720": (720, 1280)}.items():
        shape = (1, cfg.latent_channels, cfg.latent_frames(121), height // 16, width // 16)
        for p in p_values:
            for output in ("all", "none"):
                gib = vae_decode_peak_bytes(cfg, shape, (1, p), dtype_bytes, output) / 2**30
                rows.append(dict(video=name, P=p, output=output, peak_gib=round(gib, 2)))
    return rows
