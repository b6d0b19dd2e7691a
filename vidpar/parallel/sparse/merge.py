"""Log-sum-exp merging of partial attention results whose rows may have seen no key yet (``lse = -inf``).

Under a sparse mask a query row can have no kept key in some key block, so, unlike dense ring attention, a
block's partial result may contain ``-inf`` rows, even in the first block merged. The update is the stable one
of ``vidpar.parallel.lse`` (sigmoid of the LSE difference, no exp of large numbers) with those rows handled.
"""

from __future__ import annotations

import torch


class MaskedPartial:
    """Running ``out [B, S, H, D]`` / ``lse [B, S, H, 1]`` in fp32 (fp64 for fp64 inputs)."""

    def __init__(self) -> None:
        self.out: torch.Tensor | None = None
        self.lse: torch.Tensor | None = None

    def merge(self, block_out: torch.Tensor, block_lse: torch.Tensor) -> None:
        """Fold in ``block_out [B, S, H, D]`` with ``block_lse [B, H, S]`` (natural log, ``-inf`` = no keys)."""
        acc = torch.float64 if block_out.dtype == torch.float64 else torch.float32
        block_out = block_out.to(acc)
        block_lse = block_lse.to(acc).transpose(1, 2).unsqueeze(-1)
        if self.out is None:
            self.out, self.lse = block_out, block_lse
            return
        weight = torch.sigmoid(block_lse - self.lse)  # share of the new block; nan where both are -inf
        both_empty = torch.isneginf(self.lse) & torch.isneginf(block_lse)
        weight = torch.where(both_empty, torch.zeros_like(weight), weight)
        self.out = self.out - weight * (self.out - block_out)
        self.lse = torch.logaddexp(self.lse, block_lse)

    def result(self, dtype: torch.dtype, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """The merged output in ``dtype`` (zeros of ``shape`` if nothing was merged)."""
        if self.out is None:
            return torch.zeros(shape, dtype=dtype, device=device)
        return self.out.to(dtype)
