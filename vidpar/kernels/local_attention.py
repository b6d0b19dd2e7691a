"""The attention op that single-device model code calls.

Models call ``self.attn_op(q, k, v)`` with ``[B, S, H, D]`` tensors. ``vidpar.parallelize`` swaps this submodule
for a sequence-parallel one through the model's sharding plan, so model code never changes.
"""

from __future__ import annotations

import torch
from torch import nn

from .backends import attention_plain


class LocalAttention(nn.Module):
    """Non-causal softmax attention on one device.

    Args:
        backend: attention backend name (see ``vidpar.kernels.backend_specs``) or ``"auto"``.
    """

    def __init__(self, backend: str = "auto") -> None:
        super().__init__()
        self.backend = backend

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """q ``[B, Sq, H, D]``, k/v ``[B, Sk, H, D]`` -> ``[B, Sq, H, D]``."""
        return attention_plain(q, k, v, self.backend)

    def extra_repr(self) -> str:
        return f"backend={self.backend!r}"
