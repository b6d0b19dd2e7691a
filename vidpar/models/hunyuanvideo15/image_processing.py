"""Video size and image preprocessing of HunyuanVideo-1.5, as diffusers' ``HunyuanVideo15ImageProcessor`` and
image-to-video pipeline do them (pure PIL / numpy / torch; diffusers is only the test reference).

Sizes come from aspect-ratio buckets: ``crop_size_buckets(target_size, stride)`` lists the sizes with about
``(target_size / stride)^2`` patches of ``stride`` pixels and aspect ratio within 1:4..4:1; ``closest_size`` picks the
bucket whose ratio is nearest on the same side of 1 (ties: the first). ``target_size`` is the transformer config's
(640 for 480p, 960 for 720p), ``stride`` the VAE's spatial compression (16).
- text-to-video default: ``closest_size(9, 16, ...)`` (diffusers' 16:9 default) -> 480 x 848 (480p), 720 x 1280 (720p);
- image-to-video: the size is the bucket of the image's own aspect ratio (diffusers' I2V pipeline takes no
  height/width); the image is resized keeping its aspect ratio to cover that size (Lanczos) and centre-cropped
  (``resize_and_crop``); that crop feeds both the VAE (``vae_pixels``: [-1, 1]) and SigLIP (its own processor).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def crop_size_buckets(base_size: int, stride: int = 16, max_ratio: float = 4.0) -> list[tuple[int, int]]:
    """Bucket sizes ``(height, width)`` (multiples of ``stride``) with ``round((base_size / stride)^2)`` patches at
    most, tallest first, aspect ratio within ``max_ratio`` (the official ``generate_crop_size_list``)."""
    if base_size < stride or stride < 1 or max_ratio < 1:
        raise ValueError(f"need base_size >= stride >= 1 and max_ratio >= 1, got {base_size}, {stride}, {max_ratio}")
    patches = round((base_size / stride) ** 2)
    sizes, hp, wp = [], patches, 1  # first value of each pair: `hp` patches tall (the official code calls it wp)
    while hp > 0:
        if max(hp, wp) / min(hp, wp) <= max_ratio:
            sizes.append((hp * stride, wp * stride))
        if (wp + 1) * hp <= patches:
            wp += 1
        else:
            hp -= 1
    return sizes


def closest_size(height: float, width: float, base_size: int, stride: int = 16) -> tuple[int, int]:
    """The bucket ``(height, width)`` for an input of aspect ``height / width`` (the official ``get_closest_ratio``).

    Only buckets on the input's side of 1 are candidates (ratio <= aspect for tall inputs, >= for wide ones); the
    bucket ratios are rounded to 5 decimals first, as the reference does.
    """
    if not (height > 0 and width > 0):
        raise ValueError(f"height and width must be > 0, got {height} x {width}")
    buckets = crop_size_buckets(base_size, stride)
    aspect = float(height) / float(width)
    diffs = [round(h / w, 5) - aspect for h, w in buckets]
    side = [(abs(d), i) for i, d in enumerate(diffs) if (d <= 0 if aspect >= 1 else d >= 0)]
    if not side:
        raise ValueError(f"no size bucket for aspect ratio {aspect:.4f} (base {base_size}, stride {stride})")
    return buckets[min(side)[1]]


def t2v_default_size(target_size: int, stride: int = 16) -> tuple[int, int]:
    """Text-to-video ``(height, width)`` when none is given: the 16:9 bucket (diffusers' ``default_aspect_ratio``)."""
    return closest_size(9, 16, target_size, stride)


def i2v_size(image: Any, target_size: int, stride: int = 16) -> tuple[int, int]:
    """Image-to-video ``(height, width)``: the bucket of the PIL image's aspect ratio."""
    return closest_size(image.height, image.width, target_size, stride)


def resize_and_crop(image: Any, height: int, width: int) -> Any:
    """Resize a PIL image keeping its aspect ratio so it covers ``width x height`` (Lanczos), centre it on an RGB
    canvas of that size and crop the excess (diffusers' ``VaeImageProcessor`` ``resize_mode="crop"``)."""
    from PIL import Image

    if image.width < 1 or image.height < 1:
        raise ValueError(f"image is empty ({image.width}x{image.height})")
    target, source = width / height, image.width / image.height
    # Integer arithmetic exactly as the reference: the side that already fits is kept, the other scaled (floor).
    new_w = width if target > source else image.width * height // image.height
    new_h = height if target <= source else image.height * width // image.width
    resized = image.resize((new_w, new_h), resample=Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (width, height))
    canvas.paste(resized, box=(width // 2 - new_w // 2, height // 2 - new_h // 2))
    return canvas


def vae_pixels(image: Any) -> torch.Tensor:
    """A PIL image (already the video size) as the VAE sees it: ``[1, 3, H, W]`` float32 in [-1, 1]."""
    rgb = image if image.mode == "RGB" else image.convert("RGB")
    x = torch.from_numpy((np.array(rgb).astype(np.float32) / 255.0).transpose(2, 0, 1)[None])
    return 2.0 * x - 1.0


def prepare_i2v_image(image: Any, target_size: int, stride: int = 16) -> tuple[Any, int, int]:
    """``(cropped PIL image, height, width)`` for image-to-video, as diffusers' I2V pipeline prepares its input."""
    if not _is_pil(image):
        raise ValueError(f"image must be a PIL image, got {type(image).__name__}")
    height, width = i2v_size(image, target_size, stride)
    return resize_and_crop(image, height, width), height, width


def _is_pil(image: Any) -> bool:
    try:
        from PIL import Image
    except ImportError:
        return False
    return isinstance(image, Image.Image)
