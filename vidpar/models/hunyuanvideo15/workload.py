"""Parameter and FLOP counts of the HunyuanVideo-1.5 DiT for the planner, from the same config the model is built
from. Nothing here touches torch.

FLOPs count multiply-adds as 2 and cover every matrix product of one forward at batch 1 (GEMMs, the patch
convolution, attention scores and values); element-wise work (norms, activations, RoPE, modulation) is not counted.
The tests check both counts against the module itself (parameter count, and a FLOP counter over a real forward).
"""

from __future__ import annotations

from .transformer_config import GLYPH_HIDDEN_DIM, HunyuanVideo15TransformerConfig
from .transformer_layers import FREQ_DIM

FLOP_FIELDS = ("attention", "linear", "context", "cross_attention")  # the fields of the planner's ForwardFlops


def _lin(i: int, o: int) -> int:
    return i * o + o  # nn.Linear with bias


def hy15_dit_params(config: HunyuanVideo15TransformerConfig) -> int:
    """Exact parameter count of ``HunyuanVideo15Transformer3D(config)`` (8,326,608,160 for the released sizes;
    8,331,330,848 with the MeanFlow embedding of the step-distilled checkpoint)."""
    c = config
    d, hd, f, fr = c.hidden_size, c.head_dim, c.ffn_dim, c.refiner_ffn_dim
    stream = _lin(d, 6 * d) + 4 * _lin(d, d) + 2 * hd + _lin(d, f) + _lin(f, d)  # mod, q/k/v/proj, q/k norm, MLP
    refiner_block = 2 * d + _lin(d, 3 * d) + _lin(d, d) + 2 * d + _lin(d, fr) + _lin(fr, d) + _lin(d, 2 * d)
    timestep = _lin(FREQ_DIM, d) + _lin(d, d)
    total = c.num_layers * 2 * stream
    total += c.in_channels * c.patch_volume * d + d  # img_in (Conv3d)
    total += timestep * (2 if c.use_meanflow else 1)  # time_in (+ time_r_in)
    total += _lin(c.text_dim, d) + timestep + _lin(c.text_dim, d) + _lin(d, d)  # txt_in embedders
    total += c.num_refiner_layers * refiner_block
    g, gh = c.glyph_dim, GLYPH_HIDDEN_DIM
    total += 2 * g + _lin(g, gh) + _lin(gh, gh) + _lin(gh, d)  # byt5_in
    i = c.image_dim
    total += 2 * i + _lin(i, i) + _lin(i, d) + 2 * d  # vision_in
    total += 3 * d  # cond_type_embedding
    total += _lin(d, 2 * d) + _lin(d, c.out_channels * c.patch_volume)  # final_layer
    return total


def hy15_forward_flops(
    config: HunyuanVideo15TransformerConfig,
    tokens: int,
    text_tokens: int,
    glyph_tokens: int = 0,
    image_tokens: int = 0,
) -> dict[str, float]:
    """FLOPs of one forward over ``tokens`` video tokens (batch 1), by the planner's ``ForwardFlops`` fields.

    Args:
        tokens: video tokens ``S``.
        text_tokens: valid Qwen text tokens ``L`` (padding is dropped before the model runs).
        glyph_tokens: valid ByT5 glyph tokens ``G`` (0 without quoted text).
        image_tokens: SigLIP image tokens ``N`` (729 for I2V, 0 for T2V).

    Joint tokens ``T = L + G + N`` attend together with the video tokens in every block. The joint attention over
    ``S + T`` tokens is split as: ``attention`` = video queries x video keys (``4 S^2 dim`` per layer);
    ``cross_attention`` = the video-text cross terms, video queries x joint keys plus joint queries x video keys
    (``8 S T dim`` per layer); the joint x joint part (``4 T^2 dim``) is in ``context``. ``linear`` is every GEMM
    over video tokens (q/k/v/proj, MLP, patch embedding, final projection). ``context`` is the rest, independent
    of ``S``: the text stream's GEMMs, the token refiner, the glyph/image projections, and the modulation and
    timestep GEMVs.

    Returns:
        ``{"attention", "linear", "context", "cross_attention"}`` -> FLOPs (``ForwardFlops(**result)``).
    """
    c = config
    for name, n in (("tokens", tokens), ("text_tokens", text_tokens), ("glyph_tokens", glyph_tokens),
                    ("image_tokens", image_tokens)):
        if isinstance(n, bool) or not isinstance(n, int) or n < 0:
            raise ValueError(f"{name} must be an int >= 0, got {n!r}")
    s, d, f, fr, layers = tokens, c.hidden_size, c.ffn_dim, c.refiner_ffn_dim, c.num_layers
    joint = text_tokens + glyph_tokens + image_tokens
    gemm = lambda m, i, o: 2.0 * m * i * o  # noqa: E731
    stream = lambda m: gemm(m, d, 4 * d) + gemm(m, d, f) + gemm(m, f, d)  # noqa: E731  q/k/v/proj + MLP

    attention = layers * 4.0 * s * s * d
    cross = layers * 8.0 * s * joint * d
    patch = gemm(s, c.in_channels * c.patch_volume, d) + gemm(s, d, c.out_channels * c.patch_volume)
    linear = layers * stream(s) + patch

    per_layer_context = stream(joint) + 4.0 * joint * joint * d + 2 * gemm(1, d, 6 * d)
    timestep = gemm(1, FREQ_DIM, d) + gemm(1, d, d)
    n = text_tokens
    refiner = c.num_refiner_layers * (
        gemm(n, d, 3 * d) + gemm(n, d, d) + gemm(n, d, fr) + gemm(n, fr, d) + gemm(1, d, 2 * d) + 4.0 * n * n * d
    )
    refiner += gemm(n, c.text_dim, d) + timestep + gemm(1, c.text_dim, d) + gemm(1, d, d)
    gh = GLYPH_HIDDEN_DIM
    glyph = gemm(glyph_tokens, c.glyph_dim, gh) + gemm(glyph_tokens, gh, gh) + gemm(glyph_tokens, gh, d)
    image = gemm(image_tokens, c.image_dim, c.image_dim) + gemm(image_tokens, c.image_dim, d)
    context = (layers * per_layer_context + refiner + glyph + image + timestep * (2 if c.use_meanflow else 1)
               + gemm(1, d, 2 * d))
    return {"attention": attention, "linear": linear, "context": context, "cross_attention": cross}


# ---- the planner's view (model-neutral objects of ``vidpar.planner.workload``) ---------------------------------

# Valid prompt tokens the planner assumes per forward: a typical prompt (the Qwen states hold at most 1000 valid
# tokens; padding is dropped) and no quoted glyph text; I2V adds the 729 SigLIP tokens. An assumption, stated in
# ``vidpar plan``'s notes; joint tokens are ~1% of the video tokens at 480p and less above.
PLANNER_TEXT_TOKENS = 256
# Qwen2.5-VL-7B's language model without the LM head (28 layers, width 3584, vocab 152064) and the ByT5-small
# encoder (Glyph-SDXL-v2): parameters of the text encoders the pipeline holds.
TEXT_ENCODER_PARAMS = 7.07e9 + 0.22e9


def hy15_dit_workload(config: HunyuanVideo15TransformerConfig, name: str = "hunyuanvideo-1.5"):
    """The planner's ``DitWorkload`` of a config (joint tokens: ``PLANNER_TEXT_TOKENS`` + image tokens for I2V)."""
    from functools import partial

    from vidpar.planner.workload import DitWorkload

    image = config.image_tokens if config.task == "i2v" else 0
    return DitWorkload(
        name=name, num_layers=config.num_layers, dim=config.hidden_size, num_heads=config.num_heads,
        ffn_dim=config.ffn_dim, in_channels=config.in_channels, out_channels=config.out_channels,
        patch_size=config.patch_size, params=hy15_dit_params(config),
        flops=partial(_planner_flops, config, PLANNER_TEXT_TOKENS, image),
        joint_tokens=PLANNER_TEXT_TOKENS + image,
    )


def _planner_flops(config: HunyuanVideo15TransformerConfig, text: int, image: int, tokens: int):
    from vidpar.planner.workload import ForwardFlops

    return ForwardFlops(**hy15_forward_flops(config, tokens, text, 0, image))


def hy15_model_spec(name: str, dit: HunyuanVideo15TransformerConfig, vae=None,
                    text_encoder_params: float | None = None):
    """The planner's ``ModelSpec``: the DiT, its VAE (``HunyuanVideo15VAEConfig``; default the released one) and
    the text encoders' size (``text_encoder_params``: the checkpoint's own; None: the released encoders')."""
    from vidpar.planner.workload import ModelSpec

    from .vae_config import HunyuanVideo15VAEConfig

    vae = HunyuanVideo15VAEConfig() if vae is None else vae
    encoders = TEXT_ENCODER_PARAMS if text_encoder_params is None else text_encoder_params
    return ModelSpec(name, hy15_dit_workload(dit, name), vae.planner_workload(), 1, encoders)


def checkpoint_encoder_params(root, diffusers_layout: bool) -> float | None:
    """Parameters of a checkpoint's text (and image) encoders from their safetensors headers (no tensor data), or
    None where a part is not safetensors (the official ByT5 ``.pt``: its released size is used for that part)."""
    from pathlib import Path

    from vidpar.models.weights import safetensors_params

    root = Path(root)
    if diffusers_layout:
        folders = [root / "text_encoder", root / "text_encoder_2", root / "image_encoder"]
        glyph = 0.0
    else:
        folders = [root / "text_encoder" / "llm", root / "vision_encoder" / "siglip" / "image_encoder"]
        glyph = 0.22e9  # byt5_model.pt (Glyph-SDXL-v2's ByT5-small encoder)
    files = [f for folder in folders if folder.is_dir() for f in sorted(folder.glob("*.safetensors"))]
    return float(safetensors_params(files)) + glyph if files else None


def hy15_planner_presets() -> dict:
    """The released variants by preset name, plus ``hunyuanvideo-1.5-480p`` / ``-720p`` for their T2V models."""
    from .transformer_config import HY15_TRANSFORMER_PRESETS

    specs = {key: hy15_model_spec(key, cfg) for key, cfg in HY15_TRANSFORMER_PRESETS.items()}
    for res in ("480p", "720p"):
        specs[f"hunyuanvideo-1.5-{res}"] = specs[f"hunyuanvideo-1.5-{res}-t2v"]
    return specs


def hy15_planner_spec_from_folder(path):
    """The planner's spec from a folder's configs (a diffusers pipeline root or ``transformer/``, or an official
    ``ckpts`` root / variant folder); None if it holds no HunyuanVideo-1.5 DiT config."""
    import json
    from pathlib import Path

    from .transformer_loader import config_and_layout

    path = Path(path)
    candidates = [path / "config.json", path / "transformer" / "config.json",
                  *sorted((path / "transformer").glob("*/config.json"))]
    for cfg_path in candidates:
        if not cfg_path.is_file():
            continue
        try:
            raw = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ValueError(f"{cfg_path}: not readable JSON ({e})") from None
        if raw.get("_class_name") == "HunyuanVideo15Transformer3DModel" or ("hidden_size" in raw and "heads_num" in raw):
            return hy15_model_spec(str(path), config_and_layout(raw, None, cfg_path)[0])
    return None
