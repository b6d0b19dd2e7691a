"""Wan 2.1 / 2.2 video diffusion models."""

from .rope import WanRotaryEmbedding, apply_rotary
from .text_encoder import WanTextEncoder, check_prompts, clean_prompt, load_tokenizer, official_t5_to_hf
from .transformer import WanTransformer3D
from .transformer_config import WAN_TRANSFORMER_PRESETS, WanTransformerConfig
from .transformer_loader import (
    diffusers_to_official_key,
    load_wan_transformer,
    native_state_dict_to_official,
    official_to_diffusers_key,
)
from .vae import WanVAE
from .vae_blocks import FeatureCache
from .vae_config import WAN_VAE_PRESETS, WanVAEConfig
from .vae_loader import load_wan_vae

__all__ = [
    "FeatureCache",
    "WAN_VAE_PRESETS",
    "WanTextEncoder",
    "WanVAE",
    "WanVAEConfig",
    "check_prompts",
    "clean_prompt",
    "load_tokenizer",
    "load_wan_vae",
    "official_t5_to_hf",
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
