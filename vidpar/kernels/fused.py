"""Fused forms of common layer patterns (opt-in fast paths; each equals its plain form up to rounding).

This module imports nothing from the rest of vidpar.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def fused_linear(x: torch.Tensor, layers: Sequence[nn.Linear]) -> tuple[torch.Tensor, ...]:
    """Several ``nn.Linear`` layers that read the same input (e.g. the q, k, v projections) as one GEMM.

    The weights are concatenated at every call (a copy of the weights, small next to the GEMM at video token
    counts), so in-place weight changes (LoRA merges, FSDP's unsharded parameters) are always seen.

    Args:
        x: ``[..., in_features]``.
        layers: Linear layers of the same ``in_features``, dtype and device; all with a bias or all without.
    Returns:
        one ``[..., out_features_i]`` per layer (views of one ``[..., sum(out_features)]`` result).
    """
    if len({bool(layer.bias is not None) for layer in layers}) != 1:
        raise ValueError("fused_linear: the layers must all have a bias or all have none")
    weight = torch.cat([layer.weight for layer in layers])
    bias = torch.cat([layer.bias for layer in layers]) if layers[0].bias is not None else None
    return F.linear(x, weight, bias).split([layer.out_features for layer in layers], dim=-1)


def set_fused_qkv(model: nn.Module, enabled: bool) -> int:
    """Turn the fused q/k/v projection on or off in every module of ``model`` that offers it (a ``fused_qkv``
    attribute; off by default). Returns how many modules were set."""
    mods = [m for m in model.modules() if isinstance(getattr(m, "fused_qkv", None), bool)]
    for m in mods:
        m.fused_qkv = bool(enabled)
    return len(mods)


__all__ = ["fused_linear", "set_fused_qkv"]
