"""HunyuanVideo-1.5's image encoder for image-to-video: SigLIP (``SiglipVisionModel`` + ``SiglipImageProcessor``).

``encode`` reproduces diffusers' ``HunyuanVideo15ImageToVideoPipeline._get_image_embeds``: the processor resizes the
(already bucket-cropped) image to its own size (384 x 384, bicubic, [-1, 1]) and the vision tower's
``last_hidden_state`` (post-layernorm, no pooling head) is the result: ``[1, 729, 1152]`` for
siglip-so400m-patch14-384. Text-to-video feeds the DiT zeros of that shape instead (see ``conditioning``).

Layouts: diffusers I2V folders hold ``image_encoder/`` + ``feature_extractor/``; the official layout
``ckpts/vision_encoder/siglip`` (FLUX.1-Redux-dev) holds the same two subfolders.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch

VISION_TOKENS = 729  # diffusers' vision_num_semantic_tokens (27 x 27 patches of 14 px at 384 px)


def siglip_tokens_and_dim(config: dict[str, Any]) -> tuple[int, int]:
    """``(tokens, hidden_size)`` of a SigLIP vision config (a ``config.json`` dict; nested ``vision_config`` ok)."""
    config = config.get("vision_config") or config
    return (config["image_size"] // config["patch_size"]) ** 2, config["hidden_size"]


def image_encoder_spec(folder: str | os.PathLike) -> tuple[int, int]:
    """``(tokens, dim)`` from ``<folder>/image_encoder/config.json`` without loading weights."""
    path = os.path.join(os.fspath(folder), "image_encoder", "config.json")
    if not os.path.isfile(path):
        raise ValueError(f"no image encoder config at {path}: not an image-to-video checkpoint")
    with open(path) as f:
        return siglip_tokens_and_dim(json.load(f))


class HunyuanImageEncoder:
    """SigLIP vision tower + its image processor.

    Args:
        model: a ``transformers.SiglipVisionModel`` (eval mode is set here).
        processor: its ``SiglipImageProcessor``.
    """

    def __init__(self, model, processor) -> None:
        self.model = model.eval()
        self.processor = processor

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
    ) -> HunyuanImageEncoder:
        """Load ``path/image_encoder`` (safetensors) and ``path/feature_extractor``: a diffusers I2V folder or the
        official ``ckpts/vision_encoder/siglip``."""
        from transformers import SiglipImageProcessor, SiglipVisionModel

        path = os.fspath(path)
        image_encoder_spec(path)  # clear error for a folder without one
        model = SiglipVisionModel.from_pretrained(
            os.path.join(path, "image_encoder"), dtype=dtype, use_safetensors=True
        )
        processor = SiglipImageProcessor.from_pretrained(os.path.join(path, "feature_extractor"))
        return cls(model.to(device), processor)

    @property
    def num_tokens(self) -> int:
        return siglip_tokens_and_dim(self.model.config.to_dict())[0]

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @torch.no_grad()
    def encode(self, image: Any) -> torch.Tensor:
        """``[1, num_tokens, dim]`` in the model's dtype: SigLIP's last hidden state of a PIL image.

        Pass the image as the VAE sees it (``image_processing.resize_and_crop`` to the video size), like diffusers.
        """
        from PIL import Image

        if not isinstance(image, Image.Image):
            raise ValueError(f"image must be a PIL image, got {type(image).__name__}")
        inputs = self.processor.preprocess(images=image, do_resize=True, return_tensors="pt", do_convert_rgb=True)
        pixels = inputs["pixel_values"].to(device=next(self.model.parameters()).device, dtype=self.dtype)
        return self.model(pixel_values=pixels).last_hidden_state
