"""3-D rotary position embedding of HunyuanVideo-1.5: the head dim is split into time, height and width parts.

The table is computed in fp32 exactly as the official code and diffusers do (``theta ** (-2i/dim)`` per axis,
positions ``0..n-1``), so vidpar's rotations are bit-identical to the reference's. Text tokens get no rotation.
"""

from __future__ import annotations

import torch
from torch import nn


class HunyuanVideo15RotaryEmbedding(nn.Module):
    """Rotary tables for a ``(f, h, w)`` token grid.

    Args:
        axes_dim: rotary dims given to the (time, height, width) axes; they sum to the head dim, each even.
        theta: rotary base (256 in the releases).
    """

    def __init__(self, axes_dim: tuple[int, int, int], theta: float = 256.0) -> None:
        super().__init__()
        if len(axes_dim) != 3 or any(a < 2 or a % 2 for a in axes_dim):
            raise ValueError(f"axes_dim must be three even dims, got {axes_dim}")
        self.axes_dim = tuple(int(a) for a in axes_dim)
        self.theta = float(theta)

    def forward(
        self, grid: tuple[int, int, int], device: torch.device | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """grid ``(f, h, w)`` -> ``(cos, sin)``, each ``[1, S, 1, head_dim // 2]`` fp32, ``S = f*h*w``.

        Token order is ``(f, h, w)`` row-major, the order of the patch embedding's output.
        """
        f, h, w = (int(n) for n in grid)
        angles = []
        for size, dim, shape in zip((f, h, w), self.axes_dim, ((f, 1, 1, -1), (1, h, 1, -1), (1, 1, w, -1))):
            inv_freq = 1.0 / (self.theta ** (torch.arange(0, dim, 2, dtype=torch.float32, device=device) / dim))
            pos = torch.arange(size, dtype=torch.float32, device=device)
            angles.append(torch.outer(pos, inv_freq).view(shape).expand(f, h, w, dim // 2))
        theta = torch.cat(angles, dim=-1).reshape(1, f * h * w, 1, sum(self.axes_dim) // 2)
        return theta.cos(), theta.sin()

    def extra_repr(self) -> str:
        return f"axes_dim={self.axes_dim}, theta={self.theta}"


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate interleaved pairs ``(x[..., 2i], x[..., 2i+1])`` of ``x [B, S, H, D]``.

    ``cos``/``sin`` are ``[1 or B, S, 1, D // 2]``; the rotation is done in fp32 (fp64 for fp64 ``x``) and cast
    back to ``x.dtype``.
    """
    xf = (x if x.dtype == torch.float64 else x.float()).unflatten(-1, (-1, 2))
    x1, x2 = xf[..., 0], xf[..., 1]
    out = torch.stack((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)
    return out.flatten(-2).to(x.dtype)
