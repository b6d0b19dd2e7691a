"""3-D rotary position embedding of Wan: the head dim is split into a time, a height and a width part."""

from __future__ import annotations

import torch
from torch import nn


def rope_axis_pairs(head_dim: int) -> tuple[int, int, int]:
    """Number of rotary (complex) pairs given to the (time, height, width) axes, as in the official code.

    With ``c = head_dim // 2`` pairs, height and width get ``c // 3`` each and time the rest.
    """
    c = head_dim // 2
    return c - 2 * (c // 3), c // 3, c // 3


class WanRotaryEmbedding(nn.Module):
    """Rotary tables for a ``(f, h, w)`` token grid, computed in fp64 and returned in fp32.

    Args:
        head_dim: attention head dim (even).
        theta: rotary base.
    """

    def __init__(self, head_dim: int, theta: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"head_dim must be even, got {head_dim}")
        self.head_dim = head_dim
        self.theta = theta

    def forward(
        self, grid: tuple[int, int, int], device: torch.device | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """grid ``(f, h, w)`` -> ``(cos, sin)``, each ``[1, S, 1, head_dim // 2]`` fp32, ``S = f*h*w``.

        Token order is ``(f, h, w)`` row-major, the order of the patch embedding's output.
        """
        f, h, w = (int(n) for n in grid)
        angles = []
        for size, pairs, shape in zip(
            (f, h, w), rope_axis_pairs(self.head_dim), ((f, 1, 1, -1), (1, h, 1, -1), (1, 1, w, -1))
        ):
            inv_freq = self.theta ** (
                -torch.arange(0, 2 * pairs, 2, dtype=torch.float64, device=device) / (2 * pairs)
            )
            pos = torch.arange(size, dtype=torch.float64, device=device)
            angles.append(torch.outer(pos, inv_freq).view(shape).expand(f, h, w, pairs))
        theta = torch.cat(angles, dim=-1).reshape(1, f * h * w, 1, self.head_dim // 2)
        return theta.cos().float(), theta.sin().float()

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, theta={self.theta}"


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs ``(x[..., 2i], x[..., 2i+1])`` of ``x [B, S, H, D]``.

    ``cos``/``sin`` are ``[1 or B, S, 1, D // 2]``; the rotation is done in fp32 and cast back to ``x.dtype``.
    """
    xf = (x if x.dtype == torch.float64 else x.float()).unflatten(-1, (-1, 2))
    x1, x2 = xf[..., 0], xf[..., 1]
    out = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return out.flatten(-2).to(x.dtype)
