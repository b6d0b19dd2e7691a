"""HunyuanVideo-1.5 (text- and image-to-video): the MMDiT, its prompt, glyph and image encoders, the DiT's
conditioning, and (``vae*``) its VAE."""

from .conditioning import HunyuanConditioning, i2v_conditioning, t2v_conditioning
from .glyph_encoder import GlyphEncoder, GlyphTokenizer, extract_glyph_text
from .image_encoder import HunyuanImageEncoder
from .prompt_encoder import HunyuanPromptEncoder, PromptSpec, PromptStates, PromptTokenizers
from .rope import HunyuanVideo15RotaryEmbedding
from .text_encoder import HunyuanTextEncoder, TemplateTokenizer
from .transformer import HunyuanVideo15Transformer3D
from .transformer_config import HY15_TRANSFORMER_PRESETS, HunyuanVideo15TransformerConfig
from .transformer_loader import (
    load_hunyuanvideo15_transformer,
    native_state_dict_to_diffusers,
    native_state_dict_to_official,
)
from .vae import HunyuanVideo15VAE
from .vae_config import HUNYUANVIDEO15_VAE_PRESETS, HunyuanVideo15VAEConfig
from .vae_loader import load_hunyuanvideo15_vae
from .workload import hy15_dit_params, hy15_forward_flops

__all__ = [
    "GlyphEncoder",
    "GlyphTokenizer",
    "HUNYUANVIDEO15_VAE_PRESETS",
    "HY15_TRANSFORMER_PRESETS",
    "HunyuanConditioning",
    "HunyuanImageEncoder",
    "HunyuanPromptEncoder",
    "HunyuanTextEncoder",
    "HunyuanVideo15RotaryEmbedding",
    "HunyuanVideo15Transformer3D",
    "HunyuanVideo15TransformerConfig",
    "HunyuanVideo15VAE",
    "HunyuanVideo15VAEConfig",
    "PromptSpec",
    "PromptStates",
    "PromptTokenizers",
    "TemplateTokenizer",
    "extract_glyph_text",
    "hy15_dit_params",
    "hy15_forward_flops",
    "i2v_conditioning",
    "load_hunyuanvideo15_transformer",
    "load_hunyuanvideo15_vae",
    "native_state_dict_to_diffusers",
    "native_state_dict_to_official",
    "t2v_conditioning",
]
