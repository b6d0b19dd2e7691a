"""The ``ModelCard`` of a HunyuanVideo-1.5 checkpoint: geometry from its configs, defaults and sampler from its
scheduler and guider configs (diffusers layout) or the release table (official layout).

diffusers' ``HunyuanVideo15Pipeline`` called without arguments makes 121 frames at the 16:9 bucket of the
checkpoint's ``target_size`` (848x480 for 480p, 1280x720 for 720p) in 50 steps, with the folder's
``FlowMatchEulerDiscreteScheduler`` shift over sigmas ``linspace(1, 0)`` (vidpar's ``"euler-linear"``) and the
``guider``'s classifier-free guidance scale. The official code uses the same settings from its own table
(``PIPELINE_CONFIGS``): shift 5 (480p), 9 (720p T2V), 7 (720p I2V); guidance 6.0, 1.0 for the distilled variants.
"""

from __future__ import annotations

import json
from pathlib import Path

from vidpar.models.family import CardFile, LatentGeometry, ModelCard, ModelDefaults, SamplerSpec
from vidpar.schedulers import sampler_from_config

from .image_processing import t2v_default_size
from .transformer_config import HunyuanVideo15TransformerConfig

FAMILY = "hunyuanvideo-1.5"
FRAMES, STEPS, GUIDANCE = 121, 50, 6.0
FPS = 24  # the official pipeline writes its videos at 24 fps
# The guider settings vidpar implements (plain CFG over the whole run, diffusers' formulation).
_GUIDER = {"guidance_rescale": 0.0, "use_original_formulation": False, "start": 0.0, "stop": 1.0}


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


def official_shift(dit: HunyuanVideo15TransformerConfig) -> float:
    """The release table's flow shift for a variant."""
    if dit.target_size <= 640:
        return 5.0
    return 7.0 if dit.task == "i2v" else 9.0


def diffusers_sampler_and_guidance(folder: Path) -> tuple[SamplerSpec, float]:
    """``(sampler, guidance scale)`` from a diffusers folder's ``scheduler/`` and ``guider/`` configs."""
    sched = folder / "scheduler" / "scheduler_config.json"
    if not sched.is_file():
        raise ValueError(f"{folder} has no scheduler/scheduler_config.json (the sampler's shift lives there)")
    name, shift = sampler_from_config(_read_json(sched), str(sched))
    if name != "euler":
        raise ValueError(f"{sched}: HunyuanVideo-1.5 pipelines sample with FlowMatchEulerDiscreteScheduler")
    guidance = GUIDANCE
    guider = folder / "guider" / "guider_config.json"
    if guider.is_file():
        cfg = _read_json(guider)
        if cfg.get("_class_name", "ClassifierFreeGuidance") != "ClassifierFreeGuidance":
            raise ValueError(f"{guider}: guider {cfg.get('_class_name')!r} is not implemented by vidpar "
                             "(it implements ClassifierFreeGuidance)")
        for key, want in _GUIDER.items():
            if cfg.get(key, want) != want:
                raise ValueError(f"{guider}: {key}={cfg[key]!r} is not implemented by vidpar ({key}={want!r})")
        guidance = cfg.get("guidance_scale", GUIDANCE)
        if isinstance(guidance, bool) or not isinstance(guidance, (int, float)):
            raise ValueError(f"{guider}: guidance_scale must be a number, got {guidance!r}")
    return SamplerSpec("euler-linear", shift), float(guidance)


def hy15_card(name: str, dit: HunyuanVideo15TransformerConfig, vae, folder: Path | None, *,
              diffusers_layout: bool) -> ModelCard:
    """The card of a checkpoint with these configs (``vae``: its ``HunyuanVideo15VAEConfig``)."""
    from .workload import checkpoint_encoder_params, hy15_model_spec

    if diffusers_layout:
        sampler, guidance = diffusers_sampler_and_guidance(folder)
    else:
        distilled = "distilled" in name
        sampler, guidance = SamplerSpec("euler-linear", official_shift(dit)), 1.0 if distilled else GUIDANCE
    height, width = t2v_default_size(dit.target_size, vae.spatial_factor * dit.patch_size[1])
    defaults = ModelDefaults(height, width, FRAMES, STEPS, guidance, fps=FPS)
    if folder is not None:
        defaults = CardFile.read(folder).apply(defaults, str(folder))
    geometry = LatentGeometry(vae.z_dim, vae.temporal_factor, vae.spatial_factor, dit.patch_size)
    notes = [f"MMDiT {dit.task}: dim {dit.hidden_size}, {dit.num_heads} heads, {dit.num_layers} dual-stream blocks; "
             f"text attended jointly (Qwen2.5-VL {dit.text_len} + ByT5 glyph {dit.glyph_len} tokens, padding "
             "dropped)"]
    if dit.task == "i2v":
        notes.append("image-to-video: the image is resized and centre-cropped to the video size (diffusers picks "
                     "the size from the image's aspect bucket; pass --height/--width for that size)")
    return ModelCard(
        family=FAMILY, name=name, geometry=geometry, defaults=defaults, sampler=sampler, guidance="cfg",
        image="required" if dit.task == "i2v" else "none", text_len=dit.text_len,
        workload=hy15_model_spec(name, dit, vae, checkpoint_encoder_params(folder, diffusers_layout)
                                 if folder is not None else None),
        notes=tuple(notes),
    )


__all__ = ["FAMILY", "diffusers_sampler_and_guidance", "hy15_card", "official_shift"]
