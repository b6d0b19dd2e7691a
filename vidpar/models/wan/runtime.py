"""How a loaded Wan model answers the pipeline (``vidpar.models.family.LoadedModel``): prompt states, image
conditioning, the denoiser call of one guidance branch (with the Wan 2.2 A14B expert switch) and its card.

Mixed into ``WanComponents`` (``components.py``), whose fields hold the loaded parts.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch
from torch import nn

from vidpar.models.family import (
    CacheProfile, LoadedModel, ModelCard, ModelDefaults, SamplerSpec, StepInfo, TensorSpec,
)

from .image_conditioning import (
    ImageConditioning, check_image, condition_shape, encode_condition, image_digest, preprocess_image,
)
from .text_encoder import check_prompts

OFFICIAL_CLIP = "models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth"


class WanRuntime(LoadedModel):
    """The ``LoadedModel`` methods of ``WanComponents`` (see there for the fields they read)."""

    ATTENTION_OPS = "blocks.*.self_attn.attn_op"  # the self-attention (cross-attention stays dense)

    # ---- what the model is

    @property
    def card(self) -> ModelCard:
        from .card import DIFFUSERS_DEFAULTS, TINY_DEFAULTS, wan_card

        defaults: ModelDefaults = self.defaults or (TINY_DEFAULTS if self.name == "tiny" else DIFFUSERS_DEFAULTS)
        return wan_card(
            self.name or "wan", self.transformer.config, self.vae.config, defaults=defaults,
            sampler=SamplerSpec(self.scheduler, self.flow_shift), experts=2 if self.transformer_2 is not None else 1,
            expand_timesteps=self.expand_timesteps, text_encoder_params=self.text_encoder_params,
        )

    def denoisers(self) -> list[nn.Module]:
        return [m for m in (self.transformer, self.transformer_2) if m is not None]

    def cache_profile(self, module: nn.Module) -> CacheProfile:
        from .cache_profile import wan_cache_profile

        return wan_cache_profile(module.config, self.name, experts=len(self.denoisers()))
    def vae_compile_units(self) -> list[nn.Module]:
        # The decoder's per-chunk call: three graphs (first, second, later latent frames: the causal cache fills).
        return [self.vae.decoder]

    def text_encoder_fsdp(self) -> tuple[nn.Module, list[nn.Module]] | None:
        if self.text_encoder is None:
            return None
        model = self.text_encoder.model
        return model, list(model.encoder.block)

    @property
    def has_text_encoder(self) -> bool:
        return self.text_encoder is not None

    @property
    def lora_keys(self):
        from .lora_keys import WAN_LORA_KEYS

        return WAN_LORA_KEYS

    # ---- prompts

    def check_prompts(self, prompts: Sequence[str]) -> None:
        check_prompts(self.tokenizer, list(prompts), self.text_len)

    def text_spec(self, dtype: torch.dtype) -> dict[str, TensorSpec]:
        return {"text": TensorSpec((1, self.text_len, self.transformer.config.text_dim), dtype)}

    def encode_text(self, prompts: Sequence[str]) -> list[dict[str, torch.Tensor]]:
        states, _ = self.text_encoder.encode(list(prompts), self.text_len)
        return [{"text": states[i : i + 1]} for i in range(len(prompts))]

    # ---- images

    def check_image(self, image: Any, height: int, width: int) -> None:
        check_image(image, height, width)
        cfg = self.transformer.config
        if cfg.image_pos_embed_len is not None:
            raise ValueError("first-last-frame (FLF2V) models take two images; they are not supported yet")
        if cfg.image_dim is not None and self.image_tokens is None:
            raise ValueError(
                "this Wan 2.1 I2V model needs a CLIP image encoder, and its folder has none vidpar can load "
                f"(a diffusers folder's image_encoder/ + image_processor/; the official {OFFICIAL_CLIP} is not "
                "supported: convert the checkpoint to the diffusers layout)"
            )

    def image_spec(self, latent_shape, dtype, latent_dtype) -> dict[str, TensorSpec]:
        vae = self.vae.config
        spec = {"condition": TensorSpec(condition_shape(self.image_mode, vae.z_dim, vae.scale_factor_temporal,
                                                        latent_shape), latent_dtype)}
        if self.transformer.config.image_dim is not None:
            spec["image_states"] = TensorSpec((1, self.image_tokens, self.transformer.config.image_dim), dtype)
        return spec

    @torch.no_grad()
    def encode_image(self, image, height, width, num_frames, latent_shape, dtype, latent_dtype):
        out = {}
        if self.transformer.config.image_dim is not None:
            out["image_states"] = self.image_encoder.encode(image)
        pixels = preprocess_image(image, height, width)
        out["condition"] = encode_condition(self.vae, pixels, self.image_mode, num_frames, latent_dtype)
        return out

    def image_digest(self, image: Any, height: int, width: int) -> str:
        return image_digest(preprocess_image(image, height, width))

    def _conditioning(self, image: dict[str, torch.Tensor]) -> ImageConditioning:
        return ImageConditioning(self.image_mode, image["condition"], image.get("image_states"))

    # ---- denoising

    def _low_noise(self, step: StepInfo) -> bool:
        """Wan 2.2 A14B: the low-noise expert runs once ``t`` falls below ``boundary_ratio * T_train``."""
        if self.transformer_2 is None or not self.boundary_ratio:
            return False
        return step.t.item() < self.boundary_ratio * step.num_train_timesteps

    def guidance_scale(self, step: StepInfo, scale: float, scale_2: float | None) -> float:
        return (scale_2 or scale) if self._low_noise(step) else scale

    def predict_flow(self, latents, step, text, image, guidance_scale) -> torch.Tensor:
        model = self.transformer_2 if self._low_noise(step) else self.transformer
        dtype = model.text_embedding[0].weight.dtype
        if image is None:
            x, states = latents.to(dtype), None
            ts = step.t.reshape(1).to(torch.float32).expand(x.shape[0])
        else:  # the conditioning enters the input (channels or first frame) and, for TI2V, the timesteps
            cond = self._conditioning(image)
            x, states = cond.model_input(latents).to(dtype), cond.image_states
            ts = cond.timestep(step.t, latents, model.config.patch_size)
        return model(x, ts, text["text"], states).to(latents.dtype)

    def finalize_latents(self, latents, image):
        return latents if image is None else self._conditioning(image).impose(latents)


__all__ = ["OFFICIAL_CLIP", "WanRuntime"]
