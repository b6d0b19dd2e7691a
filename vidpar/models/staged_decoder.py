"""What the families' causal video VAEs share: the decoder's stage split and the check of a video/latent tensor."""

from __future__ import annotations

import torch
from torch import nn


def check_5d(name: str, x: torch.Tensor, channels: int) -> None:
    """``ValueError`` unless ``x`` is ``[B, channels, T, H, W]`` with no empty dimension."""
    if not isinstance(x, torch.Tensor) or x.ndim != 5:
        shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
        raise ValueError(f"{name} must be a 5-D tensor [B, C, T, H, W], got {shape}")
    if x.shape[1] != channels:
        raise ValueError(f"{name} must have {channels} channels (dim 1), got shape {tuple(x.shape)}")
    if min(x.shape[0], x.shape[2], x.shape[3], x.shape[4]) < 1:
        raise ValueError(f"{name} has an empty batch/time/space dim: shape {tuple(x.shape)}")


class StagedDecoder(nn.Module):
    """A decoder with ``conv_in``, ``mid_block``, ``up_blocks`` and ``norm_out`` + ``conv_out``, cut into pipeline
    stages (``vidpar.parallel.vae_decode``'s pipeline mode): ``conv_in``, ``mid_block``, one stage per up block, then
    the output norm and conv. A subclass builds those modules and defines ``forward_stage``."""

    @property
    def num_stages(self) -> int:
        return len(self.up_blocks) + 3

    def stage_modules(self, i: int) -> list[nn.Module]:
        """The modules (and so the parameters and cache entries) stage ``i`` owns."""
        n = self.num_stages
        if not 0 <= i < n:
            raise ValueError(f"stage index {i} out of range [0, {n})")
        if i == 0:
            return [self.conv_in]
        if i == 1:
            return [self.mid_block]
        if i == n - 1:
            return [self.norm_out, self.conv_out]
        return [self.up_blocks[i - 2]]


__all__ = ["StagedDecoder", "check_5d"]
