"""HunyuanVideo-1.5 models (this file lists the VAE's names)."""

from .vae import HunyuanVideo15VAE
from .vae_config import HUNYUANVIDEO15_VAE_PRESETS, HunyuanVideo15VAEConfig
from .vae_loader import load_hunyuanvideo15_vae

__all__ = [
    "HUNYUANVIDEO15_VAE_PRESETS",
    "HunyuanVideo15VAE",
    "HunyuanVideo15VAEConfig",
    "load_hunyuanvideo15_vae",
]
