"""HunyuanVideo-1.5 video diffusion models."""

from .rope import HunyuanVideo15RotaryEmbedding
from .transformer import HunyuanVideo15Transformer3D
from .transformer_config import HY15_TRANSFORMER_PRESETS, HunyuanVideo15TransformerConfig
from .transformer_loader import (
    load_hunyuanvideo15_transformer,
    native_state_dict_to_diffusers,
    native_state_dict_to_official,
)
from .workload import hy15_dit_params, hy15_forward_flops

__all__ = [
    "HY15_TRANSFORMER_PRESETS",
    "HunyuanVideo15RotaryEmbedding",
    "HunyuanVideo15Transformer3D",
    "HunyuanVideo15TransformerConfig",
    "hy15_dit_params",
    "hy15_forward_flops",
    "load_hunyuanvideo15_transformer",
    "native_state_dict_to_diffusers",
    "native_state_dict_to_official",
]
