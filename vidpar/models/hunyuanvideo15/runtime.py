"""A loaded HunyuanVideo-1.5 model as the pipeline sees it (``vidpar.models.family.LoadedModel``).

Per guidance branch the DiT gets ``cat([latents, cond, mask])`` (65 channels), the branch's Qwen states and mask,
its ByT5 glyph states and mask, and the SigLIP image states (I2V) — exactly the inputs diffusers'
``HunyuanVideo15Pipeline`` / ``HunyuanVideo15ImageToVideoPipeline`` pass; padded tokens are dropped inside the DiT.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import torch
from torch import nn

from vidpar.models.family import LoadedModel, ModelCard, StepInfo, TensorSpec

from .conditioning import (
    HunyuanConditioning, conditioning_shapes, encode_image_latent, i2v_conditioning, t2v_conditioning,
)
from .image_processing import resize_and_crop, vae_pixels
from .prompt_encoder import FIELDS, HunyuanPromptEncoder, PromptTokenizers
from .transformer import HunyuanVideo15Transformer3D

IMAGE_FIELDS = ("cond", "mask", "image_states")


def _as_pil(image: Any):
    """A PIL image from a PIL image or a uint8 ``[H, W, 3]`` array (the inputs the pipeline accepts)."""
    from PIL import Image

    if isinstance(image, Image.Image):
        return image
    if isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3:
        return Image.fromarray(image, mode="RGB")
    raise ValueError("a HunyuanVideo-1.5 image must be a PIL image or a uint8 array [H, W, 3]; got "
                     f"{type(image).__name__}" + (f" {image.dtype} {list(image.shape)}" if hasattr(image, "shape")
                                                  else ""))


@dataclass
class HunyuanComponents(LoadedModel):
    """Loaded parts. ``prompt_encoder`` and ``image_encoder`` are None on ranks that do not run them; the
    tokenizers (prompt checks and shapes) are everywhere."""

    card: ModelCard
    transformer: HunyuanVideo15Transformer3D
    vae: nn.Module
    tokenizers: PromptTokenizers
    prompt_encoder: HunyuanPromptEncoder | None = None
    image_encoder: Any = None  # HunyuanImageEncoder (I2V), on the ranks that run it

    def denoisers(self) -> list[nn.Module]:
        return [self.transformer]

    def text_encoder_fsdp(self) -> tuple[nn.Module, list[nn.Module]] | None:
        if self.prompt_encoder is None:
            return None
        model = self.prompt_encoder.text.model
        return model, list(model.layers)

    @property
    def has_text_encoder(self) -> bool:
        return self.prompt_encoder is not None

    @property
    def lora_keys(self):
        from .lora_keys import HUNYUAN_LORA_KEYS

        return HUNYUAN_LORA_KEYS

    # ---- prompts

    def check_prompts(self, prompts: Sequence[str]) -> None:
        self.tokenizers.check(list(prompts))

    def text_spec(self, dtype: torch.dtype) -> dict[str, TensorSpec]:
        shapes = self.tokenizers.spec(dtype).shapes(1)
        return {k: TensorSpec(shape, dt, "ones" if dt == torch.int64 else "normal")
                for k, (shape, dt) in shapes.items()}

    def encode_text(self, prompts: Sequence[str]) -> list[dict[str, torch.Tensor]]:
        states = self.prompt_encoder.encode(list(prompts)).tensors()
        return [{k: t[i : i + 1] for k, t in zip(FIELDS, states)} for i in range(len(prompts))]

    # ---- images

    def check_image(self, image: Any, height: int, width: int) -> None:
        _as_pil(image)

    def image_spec(self, latent_shape, dtype, latent_dtype) -> dict[str, TensorSpec]:
        cfg = self.transformer.config
        shapes = conditioning_shapes(latent_shape, cfg.image_tokens, cfg.image_dim)
        return {k: TensorSpec(s, latent_dtype if k != "image_states" else dtype)
                for k, s in zip(IMAGE_FIELDS, shapes)}

    @torch.no_grad()
    def encode_image(self, image, height, width, num_frames, latent_shape, dtype, latent_dtype):
        picture = resize_and_crop(_as_pil(image), height, width)
        latent = encode_image_latent(self.vae, vae_pixels(picture))
        states = self.image_encoder.encode(picture)
        cond = i2v_conditioning(latent, states, latent_shape, latent_dtype)
        return {"cond": cond.cond, "mask": cond.mask, "image_states": cond.image_states.to(dtype)}

    def image_digest(self, image: Any, height: int, width: int) -> str:
        import hashlib

        pixels = np.asarray(resize_and_crop(_as_pil(image), height, width), dtype=np.uint8)
        return hashlib.sha256(pixels.tobytes() + str(pixels.shape).encode()).hexdigest()

    # ---- denoising

    def predict_flow(self, latents, step: StepInfo, text, image, guidance_scale) -> torch.Tensor:
        model = self.transformer
        dtype = model.final_layer.linear.weight.dtype
        if image is None:
            cond = t2v_conditioning(tuple(latents.shape), model.config.image_tokens, model.config.image_dim,
                                    latents.dtype, latents.device)
            states = None
        else:
            cond = HunyuanConditioning(image["cond"], image["mask"], image["image_states"])
            states = cond.image_states.to(dtype)
        x = cond.model_input(latents).to(dtype)
        # diffusers casts the timestep to the input's dtype before embedding it (a bf16 rounding in bf16 runs).
        ts = step.t.reshape(1).to(dtype).expand(x.shape[0])
        flow = model(x, ts, text["states"].to(dtype), text["mask"], text["glyph_states"].to(dtype),
                     text["glyph_mask"], states)
        return flow.to(latents.dtype)


__all__ = ["HunyuanComponents", "IMAGE_FIELDS"]
