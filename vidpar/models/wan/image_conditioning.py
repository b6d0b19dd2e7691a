"""Image conditioning for Wan image-to-video, computed as diffusers' ``WanImageToVideoPipeline`` does.

Three layouts, told apart by the DiT's channels and the checkpoint's ``expand_timesteps`` flag:

- ``"i2v"`` (Wan 2.1 I2V 14B, Wan 2.2 I2V A14B): the model input is ``[noise (z), mask (st), condition (z)]`` =
  36 channels. ``condition`` is the normalised VAE latent of the video ``[image, 0, 0, ...]``; ``mask`` is 1 on the
  first latent frame (its ``st`` channels are the ``st`` pixel frames a latent frame covers), 0 after. Wan 2.1 also
  feeds CLIP image states (``[1, 257, 1280]``, the vision tower's penultimate hidden state) to every cross-attention.
- ``"ti2v"`` (Wan 2.2 TI2V-5B, ``expand_timesteps=True``): the image's normalised latent replaces the first latent
  frame of the model input, whose tokens get timestep 0; the output's first frame is the image latent.
- ``"t2v"``: no image.

Accepted images: a PIL image (any size: converted to RGB and resized to the target size with Lanczos, as
diffusers' ``VideoProcessor.preprocess``), a uint8 numpy array ``[H, W, 3]`` (handled as the PIL image it
describes), or a float tensor ``[3, H, W]`` in [0, 1] that must already have the target size (no resizing).
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from typing import Any, Union

import numpy as np
import torch

ImageInput = Union["PIL.Image.Image", np.ndarray, torch.Tensor]  # noqa: F821 - PIL is imported lazily
MODES = ("t2v", "i2v", "ti2v")


# ---------------------------------------------------------------- checking and preprocessing (every rank, cheap)


def _is_pil(image: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:
        return False
    return isinstance(image, Image.Image)


def check_image(image: Any, height: int, width: int) -> None:
    """Raise ``ValueError`` unless ``image`` is an accepted image for a ``height`` x ``width`` video (no collective)."""
    if _is_pil(image):
        if image.width < 1 or image.height < 1:
            raise ValueError(f"image is empty ({image.width}x{image.height})")
        return
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"a numpy image must be uint8 [H, W, 3], got {image.dtype} {list(image.shape)}")
        if image.shape[0] < 1 or image.shape[1] < 1:
            raise ValueError(f"image is empty ({list(image.shape)})")
        return
    if isinstance(image, torch.Tensor):
        if not image.is_floating_point() or image.dim() != 3 or image.shape[0] != 3:
            got = f"{image.dtype} {list(image.shape)}"
            raise ValueError(f"a tensor image must be float [3, H, W] in [0, 1], got {got}")
        if tuple(image.shape[1:]) != (height, width):
            raise ValueError(
                f"a tensor image must already be {height}x{width} (height x width), got "
                f"{image.shape[1]}x{image.shape[2]}; pass a PIL image or a uint8 array to have it resized"
            )
        if not bool(torch.isfinite(image).all()) or image.min() < 0 or image.max() > 1:
            raise ValueError("a tensor image must hold finite values in [0, 1]")
        return
    raise ValueError(f"image must be a PIL image, a uint8 numpy array [H, W, 3] or a float tensor [3, H, W], got "
                     f"{type(image).__name__}")


def _as_pil_or_tensor(image: ImageInput):
    if isinstance(image, np.ndarray):
        from PIL import Image

        return Image.fromarray(image, mode="RGB")
    if _is_pil(image):
        return image if image.mode == "RGB" else image.convert("RGB")
    return image.detach().float().cpu()


def preprocess_image(image: ImageInput, height: int, width: int) -> torch.Tensor:
    """The image as the VAE sees it: ``[1, 3, height, width]`` float32 in [-1, 1].

    PIL / uint8: Lanczos resize to (width, height), ``/255``, ``2x - 1`` — diffusers' ``VideoProcessor.preprocess``.
    """
    check_image(image, height, width)
    image = _as_pil_or_tensor(image)
    if isinstance(image, torch.Tensor):
        x = image.unsqueeze(0)
    else:
        from PIL import Image

        resized = image.resize((width, height), resample=Image.Resampling.LANCZOS)
        x = torch.from_numpy(np.array(resized).astype(np.float32) / 255.0).permute(2, 0, 1).unsqueeze(0)
    return 2.0 * x - 1.0


def image_digest(pixels: torch.Tensor) -> str:
    """A hash of preprocessed pixels (for checkpoint keys): identical images give identical digests."""
    return hashlib.sha256(pixels.contiguous().numpy().tobytes()).hexdigest()[:16]


# ---------------------------------------------------------------- CLIP image encoder (Wan 2.1 I2V)


def clip_num_tokens(config: Any) -> int:
    """Tokens of a CLIP vision tower's hidden states: patches + the class token."""
    return (config.image_size // config.patch_size) ** 2 + 1


class WanImageEncoder:
    """CLIP vision tower + its image processor (diffusers folders: ``image_encoder/`` + ``image_processor/``).

    Args:
        model: a ``transformers.CLIPVisionModel``.
        processor: its ``transformers.CLIPImageProcessor``.
    """

    def __init__(self, model, processor) -> None:
        self.model = model.eval()
        self.processor = processor

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
    ) -> "WanImageEncoder":
        """Load ``path/image_encoder`` (safetensors) and ``path/image_processor``."""
        from transformers import CLIPImageProcessor, CLIPVisionModel

        path = os.fspath(path)
        model = CLIPVisionModel.from_pretrained(os.path.join(path, "image_encoder"), dtype=dtype, use_safetensors=True)
        processor = CLIPImageProcessor.from_pretrained(os.path.join(path, "image_processor"))
        return cls(model.to(device), processor)

    @property
    def num_tokens(self) -> int:
        return clip_num_tokens(self.model.config)

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size

    @torch.no_grad()
    def encode(self, image: ImageInput) -> torch.Tensor:
        """``[1, num_tokens, dim]``: the penultimate hidden state (``hidden_states[-2]``), as diffusers.

        The processor gets the original image (it resizes and crops on its own), like diffusers' ``encode_image``;
        a float tensor in [0, 1] is passed channels-last without the processor's 1/255 rescale.
        """
        image = _as_pil_or_tensor(image)
        kwargs = {}
        if isinstance(image, torch.Tensor):
            image, kwargs = image.permute(1, 2, 0).numpy(), {"do_rescale": False}
        weight = next(self.model.parameters())
        pixels = self.processor(images=image, return_tensors="pt", **kwargs)["pixel_values"]
        out = self.model(pixel_values=pixels.to(device=weight.device, dtype=weight.dtype), output_hidden_states=True)
        return out.hidden_states[-2]


# ---------------------------------------------------------------- VAE conditioning and its use in the loop


@torch.no_grad()
def encode_condition(vae, pixels: torch.Tensor, mode: str, num_frames: int, dtype: torch.dtype) -> torch.Tensor:
    """The latent conditioning of one image.

    Args:
        vae: a ``WanVAE``.
        pixels: ``[1, 3, H, W]`` in [-1, 1] (see :func:`preprocess_image`).
        mode: ``"i2v"`` or ``"ti2v"``.
        num_frames: frames of the video (``1 + st * (T - 1)``).
        dtype: of the result (the latents' dtype).
    Returns:
        ``"i2v"``: ``[1, st + z, T, H/s, W/s]`` (first-frame mask, then the normalised latent of ``[image, 0...]``);
        ``"ti2v"``: ``[1, z, 1, H/s, W/s]`` (the normalised latent of the image alone).
    """
    vae_dtype = next(vae.parameters()).dtype
    image = pixels.unsqueeze(2)  # [1, 3, 1, H, W]
    if mode == "i2v":
        zeros = image.new_zeros(1, 3, num_frames - 1, *image.shape[3:])
        video = torch.cat([image, zeros], dim=2)
    elif mode == "ti2v":
        video = image
    else:
        raise ValueError(f"mode must be 'i2v' or 'ti2v', got {mode!r}")
    latent = vae.normalize_latents(vae.encode(video.to(device=_device(vae), dtype=vae_dtype)).to(dtype))
    if mode == "ti2v":
        return latent
    st = vae.config.scale_factor_temporal
    mask = torch.zeros(1, st, *latent.shape[2:], dtype=dtype, device=latent.device)
    mask[:, :, 0] = 1.0
    return torch.cat([mask, latent], dim=1)


def _device(module: torch.nn.Module) -> torch.device:
    return next(module.parameters()).device


def condition_shape(mode: str, z_dim: int, st: int, latent_shape: tuple[int, ...]) -> tuple[int, ...]:
    """Shape :func:`encode_condition` returns for latents of ``latent_shape`` ``[1, z, T, h, w]``."""
    _, _, t, h, w = latent_shape
    return (1, st + z_dim, t, h, w) if mode == "i2v" else (1, z_dim, 1, h, w)


@dataclass
class ImageConditioning:
    """What the denoising loop needs from the image; identical on every rank.

    Attributes:
        mode: ``"i2v"`` or ``"ti2v"``.
        condition: see :func:`encode_condition`.
        image_states: ``[1, N, image_dim]`` CLIP states (Wan 2.1 I2V) or None.
    """

    mode: str
    condition: torch.Tensor
    image_states: torch.Tensor | None = None

    def _frame_mask(self, latents: torch.Tensor) -> torch.Tensor:
        """``[1, 1, T, h, w]``: 0 on the first latent frame, 1 after (diffusers' ``first_frame_mask``)."""
        mask = torch.ones(1, 1, *latents.shape[2:], dtype=latents.dtype, device=latents.device)
        mask[:, :, 0] = 0
        return mask

    def model_input(self, latents: torch.Tensor) -> torch.Tensor:
        """latents ``[B, z, T, h, w]`` -> DiT input ``[B, C_in, T, h, w]`` (same dtype)."""
        if self.mode == "i2v":
            return torch.cat([latents, self.condition.expand(latents.shape[0], -1, -1, -1, -1)], dim=1)
        return self.impose(latents)

    def impose(self, latents: torch.Tensor) -> torch.Tensor:
        """TI2V: the image latent as the first latent frame (``(1 - m) * cond + m * latents``); i2v: unchanged."""
        if self.mode != "ti2v":
            return latents
        mask = self._frame_mask(latents)
        return (1 - mask) * self.condition + mask * latents

    def timestep(self, t: torch.Tensor, latents: torch.Tensor, patch: tuple[int, int, int]) -> torch.Tensor:
        """The DiT's timestep: ``[B]`` (all tokens at ``t``) or, for TI2V, ``[B, S]`` with 0 on the first frame."""
        b = latents.shape[0]
        t = t.reshape(1).to(torch.float32)
        if self.mode != "ti2v":
            return t.expand(b)
        pt, ph, pw = patch
        mask = self._frame_mask(latents).to(torch.float32)[0, 0, ::pt, ::ph, ::pw]
        return (mask * t).flatten().unsqueeze(0).expand(b, -1)


__all__ = [
    "ImageConditioning",
    "ImageInput",
    "MODES",
    "WanImageEncoder",
    "check_image",
    "clip_num_tokens",
    "condition_shape",
    "encode_condition",
    "image_digest",
    "preprocess_image",
]
