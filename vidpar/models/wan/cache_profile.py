"""Published step-cache calibrations of Wan checkpoints (``vidpar.models.family.CacheProfile``).

Sources (numbers copied as published; the code using them is vidpar's own):

- TeaCache (Liu et al., "Timestep Embedding Tells: It's Time to Cache for Video Diffusion Model", CVPR 2025),
  ``TeaCache4Wan2.1/teacache_generate.py`` of github.com/ali-vilab/TeaCache at 7c10efc: the rescaling polynomials of
  the "retention steps" mode (``use_ret_steps=True``), whose indicator is ``e0``, the per-block AdaLN modulation
  the Wan DiT passes its block loop; the thresholds are the README's "slow" (quality) settings of that mode.
- MagCache (Ma et al., "MagCache: Fast Video Generation with Magnitude-Aware Cache", 2025),
  ``MagCache4Wan2.1/magcache_generate.py`` of github.com/Zehong-Ma/MagCache at df81cb1: the conditional-branch
  entries (even positions) of the published interleaved ``mag_ratios`` lists, calibrated at 50 (T2V) and 40 (I2V)
  steps; thresholds and K are the README's settings (E012K2R02 for 1.3B, E024K6R02 for 14B).

Only Wan 2.1 is covered: the checkpoints are recognised from the DiT config (1.3B: dim 1536 x 30 layers; 14B: dim
5120 x 40 layers; I2V: an image embedding). I2V 480P and 720P share one architecture, so the checkpoint name picks
(720P if it says so, else 480P). Wan 2.2 (two experts, or TI2V-5B) has no profile here.

The built-in ``tiny-shapes`` model has vidpar's own calibration (``benchmarks/step_cache.py --calibrate``: 8
training prompts, its 20-step default sampling) and per-model defaults chosen on training prompts
(``--sweep``); the held-out prompts stay for the adherence score.
"""

from __future__ import annotations

from vidpar.models.family import CacheProfile

from .transformer_config import WanTransformerConfig

TEACACHE_COEFFICIENTS = {
    "t2v-1.3B": (-5.21862437e+04, 9.23041404e+03, -5.28275948e+02, 1.36987616e+01, -4.99875664e-02),
    "t2v-14B": (-3.03318725e+05, 4.90537029e+04, -2.65530556e+03, 5.87365115e+01, -3.15583525e-01),
    "i2v-14B-480P": (2.57151496e+05, -3.54229917e+04, 1.40286849e+03, -1.35890334e+01, 1.32517977e-01),
    "i2v-14B-720P": (8.10705460e+03, 2.13393892e+03, -3.72934672e+02, 1.66203073e+01, -4.17769401e-02),
}
TEACACHE_THRESHOLDS = {"t2v-1.3B": 0.05, "t2v-14B": 0.10, "i2v-14B-480P": 0.20, "i2v-14B-720P": 0.20}

MAGCACHE_RATIOS = {
    "t2v-14B": (
        1.0, 1.02504, 1.00025, 0.9985, 0.99779, 0.9966, 0.99482, 0.99467, 0.99664, 0.99434, 0.99533, 0.99468,
        0.99438, 0.99516, 0.99384, 0.99404, 0.99517, 0.99409, 0.99428, 0.99347, 0.99418, 0.99271, 0.99313,
        0.99215, 0.99218, 0.99216, 0.99163, 0.99138, 0.98982, 0.98996, 0.9887, 0.98772, 0.98767, 0.98573,
        0.98501, 0.9838, 0.98177, 0.98037, 0.97678, 0.97546, 0.97184, 0.96711, 0.96349, 0.95629, 0.94926,
        0.93964, 0.92511, 0.90693, 0.8796, 0.86111,
    ),  # 50 steps
    "t2v-1.3B": (
        1.0, 1.0124, 1.00166, 0.99791, 0.99682, 0.99634, 0.99567, 0.99416, 0.99578, 0.9957, 0.99511, 0.99535,
        0.99552, 0.99541, 0.9954, 0.99489, 0.99518, 0.99484, 0.99481, 0.99415, 0.99419, 0.99396, 0.99388,
        0.99349, 0.99309, 0.9927, 0.99228, 0.99171, 0.99137, 0.99068, 0.99005, 0.98944, 0.98849, 0.98758,
        0.98644, 0.98504, 0.9836, 0.98202, 0.97977, 0.97717, 0.9741, 0.97003, 0.96538, 0.9593, 0.95086, 0.94013,
        0.92402, 0.90241, 0.86821, 0.81838,
    ),  # 50 steps
    "i2v-14B-480P": (
        1.0, 0.98783, 0.97559, 0.98311, 0.98202, 0.9888, 0.98762, 0.98957, 0.99052, 0.99383, 0.98857, 0.99065,
        0.98845, 0.99057, 0.98957, 0.98601, 0.98823, 0.98756, 0.98808, 0.98721, 0.98571, 0.98543, 0.98157,
        0.98411, 0.97952, 0.98149, 0.9774, 0.97825, 0.97355, 0.97085, 0.97056, 0.96588, 0.96113, 0.9567,
        0.94961, 0.93973, 0.93217, 0.91878, 0.90955, 0.92617,
    ),  # 40 steps
    "i2v-14B-720P": (
        1.0, 0.99428, 0.98588, 0.98273, 0.99018, 0.98911, 0.98646, 0.99454, 0.9891, 0.99124, 0.99102, 0.99215,
        0.99515, 0.99576, 0.99068, 0.99097, 0.99166, 0.99041, 0.99201, 0.99101, 0.98599, 0.98845, 0.98848,
        0.98862, 0.98718, 0.98497, 0.98264, 0.98389, 0.97938, 0.97535, 0.97498, 0.973, 0.96827, 0.96261,
        0.95335, 0.94649, 0.93397, 0.91636, 0.89088, 0.8679,
    ),  # 40 steps
}
MAGCACHE_SETTINGS = {  # (threshold, K)
    "t2v-1.3B": (0.12, 2), "t2v-14B": (0.24, 6), "i2v-14B-480P": (0.24, 6), "i2v-14B-720P": (0.24, 6),
}


TINY_SHAPES = CacheProfile(
    source="vidpar calibration of tiny-shapes (8 training prompts, 20 steps)",
    magcache_ratios=(1.0, 1.01286, 0.98832, 0.98019, 0.97418, 0.97477, 0.97814, 0.97398, 0.96348, 0.96604,
                     0.95821, 0.9505, 0.95093, 0.938, 0.93173, 0.91631, 0.90327, 0.87417, 0.84325, 0.79669),
    teacache_coefficients=(-15918.566144520439, 5399.007099112349, -655.5179954998383, 35.60282910213252,
                           -0.6350250737606432),
    # Chosen on 8 training prompts (benchmarks/step_cache.py --sweep): the largest FBCache/TeaCache threshold tried
    # that kept every prompt adherent with a min PSNR near 40 dB; TaylorSeer every 3rd step after 20% warm-up (with
    # its published single warm-up step one prompt lost its motion at any interval); MagCache keeps its published
    # 0.12 / K 2 / 20% (8 of 8 there too).
    teacache_threshold=0.1,
    fbcache_threshold=0.12,
    taylorseer_interval=3,
    taylorseer_warmup=0.2,
)


def wan21_variant(config: WanTransformerConfig, name: str = "") -> str | None:
    """``"t2v-1.3B"``, ``"t2v-14B"``, ``"i2v-14B-480P"``, ``"i2v-14B-720P"`` or None (no published calibration)."""
    if config.image_pos_embed_len is not None:  # FLF2V
        return None
    if (config.dim, config.num_layers) == (1536, 30) and config.image_dim is None:
        return "t2v-1.3B"
    if (config.dim, config.num_layers) != (5120, 40):
        return None
    if config.image_dim is None:
        return "t2v-14B"
    return "i2v-14B-720P" if "720" in name.upper() else "i2v-14B-480P"


def wan_cache_profile(config: WanTransformerConfig, name: str = "", experts: int = 1) -> CacheProfile:
    """The published calibrations of a Wan 2.1 DiT, vidpar's of ``tiny-shapes`` (an empty profile otherwise)."""
    if name == "tiny-shapes":
        return TINY_SHAPES
    variant = None if experts > 1 else wan21_variant(config, name)
    if variant is None:
        return CacheProfile()
    threshold, k = MAGCACHE_SETTINGS[variant]
    return CacheProfile(
        source=f"Wan2.1 {variant} (TeaCache4Wan2.1 use_ret_steps, MagCache4Wan2.1)",
        teacache_coefficients=TEACACHE_COEFFICIENTS[variant], teacache_threshold=TEACACHE_THRESHOLDS[variant],
        magcache_ratios=MAGCACHE_RATIOS[variant], magcache_threshold=threshold, magcache_max_skips=k,
    )


__all__ = ["wan21_variant", "wan_cache_profile"]
