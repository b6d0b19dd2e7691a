"""What HunyuanVideo-1.5's DiT receives besides the noisy latents and the text, for text- and image-to-video.

The DiT input is ``cat([latents (C), cond (C), mask (1)], dim=1)``: ``2C + 1`` = 65 channels for C = 32.
- image-to-video (diffusers' ``prepare_cond_latents_and_mask``): ``cond`` is the normalised VAE latent of the
  image (posterior mode, times the VAE scaling factor) on the first latent frame and 0 after; ``mask`` is 1 on the
  first latent frame, 0 after. ``image_states`` are the SigLIP states ``[1, 729, 1152]``.
- text-to-video: ``cond`` and ``mask`` are all zeros, and ``image_states`` zeros ``[1, 729, image_dim]`` (the DiT
  recognises all-zero image states and masks those tokens out).
Both CFG branches get the same conditioning. Everything is written against a VAE with ``encode(video)`` (posterior
mean = mode, ``[B, 3, T, H, W]`` in [-1, 1] -> ``[B, C, T', h, w]``) and ``normalize_latents(z)`` (diffusion space);
vidpar's ``HunyuanVideo15VAE`` has both, and so does any thin wrapper around diffusers' ``AutoencoderKLHunyuanVideo15``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch

from .image_encoder import VISION_TOKENS


class LatentEncoder(Protocol):
    """The VAE interface the conditioning needs."""

    def encode(self, video: torch.Tensor) -> torch.Tensor: ...

    def normalize_latents(self, z: torch.Tensor) -> torch.Tensor: ...


def _param(module: Any) -> torch.Tensor | None:
    params = getattr(module, "parameters", None)
    return next(params(), None) if params is not None else None


@torch.no_grad()
def encode_image_latent(vae: LatentEncoder, pixels: torch.Tensor) -> torch.Tensor:
    """Normalised latent of one image: pixels ``[1, 3, H, W]`` in [-1, 1] -> ``[1, C, 1, H/s, W/s]``.

    The pixels are cast to the VAE's dtype and device first, as diffusers does; the result is in the VAE's dtype.
    """
    if pixels.dim() != 4 or pixels.shape[:2] != (1, 3):
        raise ValueError(f"pixels must be [1, 3, H, W], got {list(pixels.shape)}")
    weight = _param(vae)
    if weight is not None:
        pixels = pixels.to(device=weight.device, dtype=weight.dtype)
    return vae.normalize_latents(vae.encode(pixels.unsqueeze(2)))


def _check_latent_shape(latent_shape: tuple[int, ...]) -> None:
    if len(latent_shape) != 5 or min(latent_shape) < 1:
        raise ValueError(f"latent_shape must be [B, C, T, h, w] with positive sizes, got {list(latent_shape)}")


@dataclass
class HunyuanConditioning:
    """Image / no-image conditioning of one video, identical on every rank.

    Attributes:
        cond: ``[1, C, T, h, w]`` image latent on frame 0 (i2v) or zeros (t2v).
        mask: ``[1, 1, T, h, w]`` 1 on frame 0 (i2v) or zeros (t2v).
        image_states: ``[1, N, image_dim]`` SigLIP states (i2v) or zeros (t2v).
    """

    cond: torch.Tensor
    mask: torch.Tensor
    image_states: torch.Tensor

    @property
    def is_i2v(self) -> bool:
        return bool(self.mask.any())

    def model_input(self, latents: torch.Tensor) -> torch.Tensor:
        """latents ``[B, C, T, h, w]`` -> DiT input ``[B, 2C + 1, T, h, w]`` in the latents' dtype."""
        if latents.shape[1:] != self.cond.shape[1:]:
            raise ValueError(f"latents {list(latents.shape)} do not match the conditioning {list(self.cond.shape)}")
        b = latents.shape[0]
        cond = self.cond.to(latents.dtype).expand(b, -1, -1, -1, -1)
        mask = self.mask.to(latents.dtype).expand(b, -1, -1, -1, -1)
        return torch.cat([latents, cond, mask], dim=1)

    def image_embeds(self, batch: int, dtype: torch.dtype | None = None) -> torch.Tensor:
        """``[batch, N, image_dim]``: the DiT's ``image_embeds`` argument."""
        return self.image_states.to(dtype or self.image_states.dtype).expand(batch, -1, -1)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(cond, mask, image_states)``, the order to broadcast them in."""
        return self.cond, self.mask, self.image_states


def conditioning_shapes(
    latent_shape: tuple[int, ...], image_tokens: int = VISION_TOKENS, image_dim: int = 1152
) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
    """Shapes of :meth:`HunyuanConditioning.tensors` for latents ``[B, C, T, h, w]`` (known on every rank)."""
    _check_latent_shape(latent_shape)
    _, c, t, h, w = latent_shape
    return (1, c, t, h, w), (1, 1, t, h, w), (1, image_tokens, image_dim)


def t2v_conditioning(
    latent_shape: tuple[int, ...],
    image_tokens: int = VISION_TOKENS,
    image_dim: int = 1152,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> HunyuanConditioning:
    """Text-to-video: all zeros (diffusers' ``HunyuanVideo15Pipeline``: zero cond latents, zero mask, zero image
    embeds of ``vision_num_semantic_tokens`` x ``transformer.config.image_embed_dim``)."""
    shapes = conditioning_shapes(latent_shape, image_tokens, image_dim)
    return HunyuanConditioning(*(torch.zeros(s, dtype=dtype, device=device) for s in shapes))


def i2v_conditioning(
    image_latent: torch.Tensor,
    image_states: torch.Tensor,
    latent_shape: tuple[int, ...],
    dtype: torch.dtype = torch.float32,
) -> HunyuanConditioning:
    """Image-to-video conditioning from the image's normalised latent and SigLIP states.

    Args:
        image_latent: ``[1, C, 1, h, w]`` (see :func:`encode_image_latent`).
        image_states: ``[1, N, image_dim]`` (``HunyuanImageEncoder.encode``).
        latent_shape: the video latents' ``[B, C, T, h, w]``.
        dtype: of the result (the transformer's dtype in diffusers).
    """
    _check_latent_shape(latent_shape)
    _, c, t, h, w = latent_shape
    if tuple(image_latent.shape) != (1, c, 1, h, w):
        raise ValueError(f"image latent {list(image_latent.shape)} does not fit latents {list(latent_shape)}")
    if image_states.dim() != 3 or image_states.shape[0] != 1:
        raise ValueError(f"image_states must be [1, N, D], got {list(image_states.shape)}")
    device = image_latent.device
    cond = torch.zeros(1, c, t, h, w, dtype=image_latent.dtype, device=device)
    cond[:, :, :1] = image_latent
    mask = torch.zeros(1, 1, t, h, w, dtype=dtype, device=device)
    mask[:, :, 0] = 1.0
    return HunyuanConditioning(cond.to(dtype), mask, image_states.to(device=device, dtype=dtype))
