"""The ``ModelCard`` of a Wan model: geometry from its configs, defaults from the checkpoint or the release.

Defaults, where a checkpoint does not declare them (a ``vidpar_card.json`` beside it does):
- official folders: the release's own sampling settings (``wan/configs/*.py`` of Wan2.1 / Wan2.2: sizes, steps,
  guidance, shift; A14B: 40 steps, T2V guidance 4.0 high-noise / 3.0 low-noise with shift 12, I2V 3.5 / 3.5 with
  shift 5; TI2V-5B: 1280x704, 121 frames at 24 fps);
- diffusers folders: what diffusers' ``WanPipeline`` / ``WanImageToVideoPipeline`` use when called without
  arguments (832x480, 81 frames, 50 steps, guidance 5.0), with the sampler of ``scheduler/scheduler_config.json``;
- built-in ``tiny``: a 32x32, 5-frame, 4-step clip (it is a test model).
"""

from __future__ import annotations

import json
from pathlib import Path

from vidpar.models.family import CardFile, LatentGeometry, ModelCard, ModelDefaults, SamplerSpec
from vidpar.schedulers import sampler_from_config

from .transformer_config import WanTransformerConfig
from .vae_config import WanVAEConfig

DIFFUSERS_DEFAULTS = ModelDefaults(height=480, width=832, num_frames=81, num_steps=50, guidance_scale=5.0)
TINY_DEFAULTS = ModelDefaults(height=32, width=32, num_frames=5, num_steps=4, guidance_scale=5.0)


def official_defaults(dit: WanTransformerConfig, experts: int) -> tuple[ModelDefaults, float]:
    """``(defaults, flow shift)`` of an official release, from its DiT config (see the module docstring)."""
    small = dit.dim <= 1536
    size = dict(height=480, width=832) if small else dict(height=720, width=1280)
    if dit.model_type == "ti2v":
        return ModelDefaults(704, 1280, 121, 50, 5.0, fps=24), 5.0
    if experts == 2 and dit.model_type == "i2v":
        return ModelDefaults(**size, num_frames=81, num_steps=40, guidance_scale=3.5, guidance_scale_2=3.5), 5.0
    if experts == 2:
        return ModelDefaults(**size, num_frames=81, num_steps=40, guidance_scale=4.0, guidance_scale_2=3.0), 12.0
    steps = 40 if dit.model_type in ("i2v", "flf2v") else 50
    return ModelDefaults(**size, num_frames=81, num_steps=steps, guidance_scale=5.0), 5.0


def diffusers_sampler(folder: Path) -> SamplerSpec:
    """The sampler of a diffusers folder's ``scheduler/scheduler_config.json`` (class and settings followed, or
    refused); a folder without one gets Wan's default (UniPC, shift 5)."""
    path = Path(folder) / "scheduler" / "scheduler_config.json"
    if not path.is_file():
        return SamplerSpec("unipc", 5.0)
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not readable JSON ({e})") from None
    return SamplerSpec(*sampler_from_config(config, str(path)))


def folder_defaults(folder: Path, dit: WanTransformerConfig, experts: int) -> tuple[ModelDefaults, SamplerSpec]:
    """``(defaults, sampler)`` of a checkpoint folder: diffusers or official rules (module docstring), then the
    folder's ``vidpar_card.json`` if it has one."""
    folder = Path(folder)
    if (folder / "model_index.json").is_file():
        defaults, sampler = DIFFUSERS_DEFAULTS, diffusers_sampler(folder)
    else:
        defaults, shift = official_defaults(dit, experts)
        sampler = SamplerSpec("unipc", shift)
    return CardFile.read(folder).apply(defaults, str(folder)), sampler


def image_kind(dit: WanTransformerConfig, vae: WanVAEConfig, expand_timesteps: bool) -> str:
    """``"none"`` (T2V), ``"required"`` (I2V: noise + mask + image latent channels) or ``"optional"`` (TI2V)."""
    cin, z = dit.in_channels, vae.z_dim
    if cin == z:
        return "optional" if expand_timesteps else "none"
    if cin == 2 * z + vae.scale_factor_temporal and not expand_timesteps:
        return "required"
    raise ValueError(
        f"the DiT takes {cin} input channels, which fits neither text-to-video ({z}) nor image-to-video "
        f"({2 * z + vae.scale_factor_temporal} = noise + mask + image latent) with a {z}-channel VAE"
    )


def wan_card(
    name: str,
    dit: WanTransformerConfig,
    vae: WanVAEConfig,
    *,
    defaults: ModelDefaults,
    sampler: SamplerSpec,
    experts: int = 1,
    expand_timesteps: bool = False,
    text_encoder_params: float | None = None,
) -> ModelCard:
    """The card of a Wan model with these configs (the loaded model and the unloaded folder use this one function).

    ``text_encoder_params``: the checkpoint's text encoder size (``weight_files.check_weight_files``); None: umT5-XXL.
    """
    from .workload import TEXT_ENCODER_PARAMS, wan_model_spec

    geometry = LatentGeometry(vae.z_dim, vae.scale_factor_temporal, vae.scale_factor_spatial, dit.patch_size)
    notes = [f"DiT {dit.model_type}: dim {dit.dim}, {dit.num_heads} heads, {dit.num_layers} layers"
             + (", two experts (high-noise / low-noise)" if experts == 2 else "")]
    if dit.image_pos_embed_len is not None:
        notes.append("first-last-frame (FLF2V) checkpoints load but generation with two images is not supported")
    return ModelCard(
        family="wan", name=name, geometry=geometry, defaults=defaults, sampler=sampler, guidance="cfg",
        image=image_kind(dit, vae, expand_timesteps), text_len=dit.text_len, experts=experts,
        workload=wan_model_spec(name, dit, vae, experts, text_encoder_params or TEXT_ENCODER_PARAMS),
        notes=tuple(notes),
    )


__all__ = ["DIFFUSERS_DEFAULTS", "TINY_DEFAULTS", "diffusers_sampler", "folder_defaults", "image_kind",
           "official_defaults", "wan_card"]
