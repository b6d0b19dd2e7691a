"""Numerically stable merging of partial attention results by their log-sum-exp."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _acc(x: torch.Tensor) -> torch.Tensor:
    return x if x.dtype == torch.float64 else x.float()


class PartialAttention:
    """Running result of attention over some key blocks, in fp32 (float64 inputs stay float64).

    ``out [B, S, H, D]`` and ``lse [B, S, H, 1]`` (stored sequence-major to broadcast against ``out``). Blocks
    with no keys are never merged, so every merged LSE is finite.
    """

    def __init__(self) -> None:
        self.out: torch.Tensor | None = None
        self.lse: torch.Tensor | None = None

    def merge(self, block_out: torch.Tensor, block_lse: torch.Tensor) -> None:
        """Fold in one block: ``block_out [B, S, H, D]``, ``block_lse [B, H, S]`` (natural log)."""
        block_out = _acc(block_out)
        block_lse = _acc(block_lse.transpose(1, 2).unsqueeze(-1))
        if self.out is None:
            self.out, self.lse = block_out, block_lse
            return
        # out' = out - sigmoid(lse_b - lse) * (out - out_b); lse' = lse - logsigmoid(lse - lse_b):
        # the same as the softmax-weighted mean but with no exp() of large numbers.
        self.out = self.out - torch.sigmoid(block_lse - self.lse) * (self.out - block_out)
        self.lse = self.lse - F.logsigmoid(self.lse - block_lse)

    def result(self, dtype: torch.dtype) -> torch.Tensor:
        if self.out is None:
            raise RuntimeError("no key block was merged")
        return self.out.to(dtype)
