"""The stage split of a causal video VAE decoder, shared by the families whose decoders have the same outline."""

from __future__ import annotations

from torch import nn


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


__all__ = ["StagedDecoder"]
