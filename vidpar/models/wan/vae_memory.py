"""Peak memory of one rank's Wan VAE decode (single process, patch, pipeline or combined), from the architecture.

Per rank: ``weights + latent + feature caches + working set + decoded video buffers``.

- Feature caches (exact): every causal conv with a time kernel of 3 keeps 2 frames of its input, ``C_in x 2 x
  rows x cols``, for the whole decode; rows are this rank's band at that conv's resolution.
- Working set: the largest live set of one steady-state chunk (``t`` frames in flight: 1 at the latent, x2 per
  temporal upsample, 4 at full resolution), counted from the op sequence of the blocks, in units of that op's
  activation ``A = C x t x rows x cols x bytes``:
  * residual-block conv: block input, SiLU output, cache ++ chunk (``(t+2)/t A``), its zero-padded copy
    (``(t+2)/t A``), conv output -> ``3 + 2 (t+2)/t`` A;
  * x2 upsample + 3x3 conv: up-block input, resample input, its (B*T) reshape, the 4x upsampled map (computed in
    fp32: ``x.float()`` copy and fp32 result, then cast back when the dtype is 16-bit), its padded copy, the conv
    output -> ``3 + 4 + 4 + 2`` A_in in fp32 (plus ``1 + 8`` half-size units in bf16);
  * mid-block attention: q, k, v, output and the input: 5 A (the CPU/flash kernels need no S x S matrix).
- Decoded video: the per-chunk frames, their concatenation and the clamped copy (3 x the rank's band of the video);
  ranks that assemble the whole video (all ranks with ``output="all"``, rank 0 with ``"rank0"``) add 2 x the video
  (received pieces + concatenation).

Halo rows (one row above and below per conv) are ignored (< 1% at real sizes). Allocator caching/fragmentation and
kernel workspaces are not modelled (on GPU the CUDA caching allocator typically adds 5-20%).
"""

from __future__ import annotations

import math

from .vae_config import WanVAEConfig


def vae_decode_peak_bytes(
    config: WanVAEConfig,
    latent_shape: tuple[int, int, int, int, int],
    parallel_layout: tuple[int, int] = (1, 1),
    dtype_bytes: int = 2,
    output: str = "all",
    im2col: bool = False,
) -> int:
    """Predicted peak bytes of the busiest rank decoding ``latent_shape`` with ``parallel_layout = (pipe, patch)``.

    Args:
        config: the VAE architecture (e.g. ``WanVAEConfig.wan21()``).
        latent_shape: ``(B, z_dim, T, h, w)``.
        parallel_layout: ``(pipe, patch)`` (``(1, 1)``: one process; ``(1, P)``: patch; ``(P, 1)``: pipeline).
        dtype_bytes: 2 (bf16/fp16) or 4 (fp32).
        output: ``"all"`` (every rank assembles the video), ``"rank0"`` (the figure is then the max over ranks,
            which is rank 0's) or ``"none"`` (a rank that assembles nothing: the other ranks with ``"rank0"``).
        im2col: add the column buffer of torch's CPU ``slow_conv3d`` (``27 C_in x t x rows x cols``) to each 3x3x3
            conv's live set; True to compare with CPU measurements, False for GPUs (cuDNN needs no such buffer).
    """
    b, z, frames, h, w = latent_shape
    pipe, patch = parallel_layout
    rows = math.ceil(h / min(patch, h))  # the tallest band
    by = dtype_bytes
    levels = config.decoder_levels()

    weights = _param_count(config) * by
    latent = 2 * b * z * frames * h * w * by  # input + post_quant_conv output (full on every rank)

    # Stage-by-stage (conv_in, mid, up blocks, head): working peak and cache bytes per rank.
    px = rows * w  # pixels of the band at the current resolution
    t = 1  # frames per steady-state chunk at the current point
    c0 = levels[0].in_dim
    caches, work = [], []
    caches.append(z * 2 * px * by * b)
    work.append((3 + 2 * 3) * c0 * t * px * by * b)
    mid_convs = 4
    caches.append(mid_convs * c0 * 2 * px * by * b)
    work.append(max(3 + 2 * 3, 5) * c0 * t * px * by * b)
    for lv in levels:
        cache = 0
        cw = 0
        c = lv.in_dim
        for _ in range(config.num_res_blocks + 1):
            cache += (c + lv.out_dim) * 2 * px * by * b
            a = max(c, lv.out_dim) * t * px * by * b
            cols = 27 * c * t * px * by * b if im2col else 0
            cw = max(cw, (3 + 2 * (t + 2) / t) * a + cols)
            c = lv.out_dim
        if lv.mode is not None:
            if lv.mode == "upsample3d":
                cache += c * 2 * px * by * b  # time_conv
                t *= 2
            a_in = c * t * px * by * b
            units = 3 + 4 + 4 + 2 if by == 4 else 3 + 4 + 4 + 2 + (2 + 8) / 2
            cw = max(cw, units * a_in)
            px *= 4
        caches.append(cache)
        work.append(cw)
    c_last = levels[-1].out_dim
    caches.append(c_last * 2 * px * by * b)
    work.append((3 + 2 * (t + 2) / t) * c_last * t * px * by * b + (27 * c_last * t * px * by * b if im2col else 0))

    stages = len(work)
    per_group = _contiguous_ranges(stages, pipe)
    out_frames = 1 + config.temporal_factor * (frames - 1)
    video_band = b * 3 * out_frames * rows * w * config.spatial_factor**2 * by
    video_full = b * 3 * out_frames * h * w * config.spatial_factor**2 * by
    best = 0
    for g, (lo, hi) in enumerate(per_group):
        last_group = g == pipe - 1
        mine_cache = sum(caches[lo:hi])
        mine_work = max(work[lo:hi])
        out = 3 * video_band if last_group else 0
        assembles = output == "all" or (output == "rank0" and g == 0)
        if assembles and (pipe > 1 or patch > 1):
            out += 2 * video_full
        best = max(best, weights + latent + mine_cache + mine_work + out)
    return int(best)


def _contiguous_ranges(n: int, parts: int) -> list[tuple[int, int]]:
    """Stage ranges for the memory estimate: the last group gets the last (full-resolution) stages alone."""
    if parts == 1:
        return [(0, n)]
    # Mirrors the cost balancing closely enough for memory: the full-resolution tail forms the last group.
    bounds = [round(i * n / parts) for i in range(parts + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(parts)]


def _param_count(cfg: WanVAEConfig) -> int:
    """All parameters of ``WanVAE(cfg)`` (encoder included: it is loaded even when only decoding)."""
    import torch

    from .vae import WanVAE

    with torch.device("meta"):
        model = WanVAE(cfg)
    return sum(p.numel() for p in model.parameters())


def memory_table(p_values=(1, 2, 4, 8), dtype_bytes: int = 2) -> list[dict]:
    """Predicted per-rank peak (GiB) of patch decode for the Wan2.1 VAE at 720p and 4K, 81 frames.

    ``output="all"``: every rank (also rank 0 with ``"rank0"``); ``"none"``: ranks 1.. with ``output="rank0"``.
    """
    cfg = WanVAEConfig.wan21()
    rows = []
    for name, (height, width) in {"1280x720": (720, 1280), "3840x2160": (2160, 3840)}.items():
        shape = (1, cfg.z_dim, 21, height // 8, width // 8)
        for p in p_values:
            for output in ("all", "none"):
                gib = vae_decode_peak_bytes(cfg, shape, (1, p), dtype_bytes, output) / 2**30
                rows.append(dict(video=name, P=p, output=output, peak_gib=round(gib, 2)))
    return rows
