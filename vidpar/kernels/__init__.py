"""Attention backends returning (out, lse) and the local attention module. Imports nothing else of vidpar."""

from .backends import (
    BackendSpec,
    attention_plain,
    attention_with_lse,
    available_backends,
    backend_specs,
    resolve_backend,
)
from .fused import fused_linear, set_fused_qkv
from .local_attention import LocalAttention

__all__ = [
    "BackendSpec",
    "LocalAttention",
    "attention_plain",
    "attention_with_lse",
    "available_backends",
    "backend_specs",
    "fused_linear",
    "resolve_backend",
    "set_fused_qkv",
]
