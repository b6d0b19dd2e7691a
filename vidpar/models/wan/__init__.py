"""Wan 2.1 / 2.2 video diffusion models."""

from .rope import WanRotaryEmbedding, apply_rotary
from .transformer import WanTransformer3D
from .transformer_config import WAN_TRANSFORMER_PRESETS, WanTransformerConfig
from .transformer_loader import (
    diffusers_to_official_key,
    load_wan_transformer,
    native_state_dict_to_official,
    official_to_diffusers_key,
)

__all__ = [
    "WAN_TRANSFORMER_PRESETS",
    "WanRotaryEmbedding",
    "WanTransformer3D",
    "WanTransformerConfig",
    "apply_rotary",
    "diffusers_to_official_key",
    "load_wan_transformer",
    "native_state_dict_to_official",
    "official_to_diffusers_key",
]
