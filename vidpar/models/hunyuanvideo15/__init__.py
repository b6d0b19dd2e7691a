"""HunyuanVideo-1.5 video diffusion models."""

from .rope import HunyuanVideo15RotaryEmbedding
from .transformer import HunyuanVideo15Transformer3D
from .transformer_config import HY15_TRANSFORMER_PRESETS, HunyuanVideo15TransformerConfig

__all__ = [
    "HY15_TRANSFORMER_PRESETS",
    "HunyuanVideo15RotaryEmbedding",
    "HunyuanVideo15Transformer3D",
    "HunyuanVideo15TransformerConfig",
]
