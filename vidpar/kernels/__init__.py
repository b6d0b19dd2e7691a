"""Attention backends returning (out, lse) and the local attention module. Imports nothing else of vidpar."""

from .backends import (
    BackendSpec,
    attention_plain,
    attention_with_lse,
    available_backends,
    backend_specs,
    resolve_backend,
)
from .local_attention import LocalAttention

__all__ = [
    "BackendSpec",
    "LocalAttention",
    "attention_plain",
    "attention_with_lse",
    "available_backends",
    "backend_specs",
    "resolve_backend",
]
