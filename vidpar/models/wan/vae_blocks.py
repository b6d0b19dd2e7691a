"""Building blocks of the Wan 2.1 / 2.2 causal video VAE.

Parameter names follow diffusers' ``AutoencoderKLWan`` so its state dicts load unchanged.

Parallelisation hooks (the protocol of ``vidpar.parallel.vae_decode``; parallel decoding never changes this file):

* Every convolution with a spatial kernel is a :class:`CausalConv3d` or a :class:`SpatialConv2d`. Both pad as a
  separate step, ``self.pad_spatial(x)`` = ``F.pad(x, self.spatial_padding)`` on the last two dims (W, H), and then
  convolve with ``padding=0``. A halo-exchange variant overrides ``pad_spatial`` (or replaces the module with one
  holding the same weights) to fill the border from neighbouring ranks instead of zeros; the causal time context
  is the static :meth:`CausalConv3d.extend_time`, which the replacement calls on its own rows.
* Temporal context is an explicit :class:`FeatureCache` passed down every forward; no module holds state.
* Per-pixel ops only, except the mid-block attention (:class:`AttentionBlock`), which attends over the h*w pixels
  of each frame through ``self.attn_op`` (a ``vidpar.kernels.LocalAttention``, ``[B, S, H, D]`` layout). All norms
  are RMS norms over channels at each pixel; nothing else reduces over space.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vidpar.kernels import LocalAttention

# Frames of input each kernel-3 causal conv keeps for the next chunk.
CACHE_T = 2


class FeatureCache:
    """Temporal context carried from one time chunk to the next within one encode or decode call.

    Maps a module (the causal conv or resample block that owns the entry) to the last input frames it saw
    (``[B, C, <=CACHE_T, H, W]``, before spatial padding, so a spatially sharded rank caches only its own tile).
    Keyed by module identity, so a pipeline stage on another rank simply keeps its own ``FeatureCache``.
    Create a fresh one per call (or ``clear()`` it).
    """

    def __init__(self) -> None:
        self._entries: dict[nn.Module, torch.Tensor] = {}

    def get(self, owner: nn.Module) -> torch.Tensor | None:
        """The frames ``owner`` stored for the next chunk, ``[B, C, <=CACHE_T, H, W]``, or None on its first chunk."""
        return self._entries.get(owner)

    def put(self, owner: nn.Module, frames: torch.Tensor) -> None:
        """Store ``frames`` ``[B, C, <=CACHE_T, H, W]`` as ``owner``'s context for the next chunk."""
        self._entries[owner] = frames

    def clear(self) -> None:
        self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)


class CausalConv3d(nn.Conv3d):
    """3-D conv, causal in time (all temporal padding in front), zero-padded in space as a separate step.

    Attributes:
        time_padding: frames of front context the kernel needs (``2 * padding_t``); filled from the cache first,
            zeros for the rest.
        spatial_padding: ``(left, right, top, bottom)`` given to ``F.pad`` by :meth:`pad_spatial`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, int, int],
        stride: int | tuple[int, int, int] = 1,
        padding: int | tuple[int, int, int] = 0,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0)
        pt, ph, pw = (padding,) * 3 if isinstance(padding, int) else padding
        self.time_padding: int = 2 * pt
        self.spatial_padding: tuple[int, int, int, int] = (pw, pw, ph, ph)

    def pad_spatial(self, x: torch.Tensor) -> torch.Tensor:
        """Zero-pad H and W of ``[..., H, W]`` by ``spatial_padding`` (the halo-exchange hook)."""
        if not any(self.spatial_padding):
            return x
        return F.pad(x, self.spatial_padding)

    @staticmethod
    def extend_time(
        owner: nn.Module, x: torch.Tensor, cache: FeatureCache | None, time_padding: int
    ) -> torch.Tensor:
        """Prepend ``time_padding`` frames of causal context to ``x [B, C, T, H, W]`` (the cache entry of ``owner``).

        With a cache, the previous chunk's last frames replace front zero padding and this chunk's last
        ``CACHE_T`` frames are stored for the next one. Per pixel, so a row band (a ``HaloConv`` of the parallel
        decode, passing itself as ``owner``) caches only its own rows.
        """
        prev = cache.get(owner) if cache is not None else None
        x_ext = torch.cat([prev.to(x.device), x], dim=2) if prev is not None else x
        if cache is not None:
            # Same as diffusers: keep the last CACHE_T frames of (previous context ++ this chunk).
            cache.put(owner, x_ext[:, :, -CACHE_T:].clone())
        missing = time_padding - (x_ext.shape[2] - x.shape[2])
        return F.pad(x_ext, (0, 0, 0, 0, missing, 0)) if missing > 0 else x_ext

    def forward(self, x: torch.Tensor, cache: FeatureCache | None = None) -> torch.Tensor:
        """x ``[B, C_in, T, H, W]`` -> ``[B, C_out, T', H', W']`` (causal time context, see :meth:`extend_time`)."""
        if self.time_padding > 0:
            x = self.extend_time(self, x, cache, self.time_padding)
        x = self.pad_spatial(x)
        return F.conv3d(x, self.weight, self.bias, self.stride)


class SpatialConv2d(nn.Conv2d):
    """Per-frame 2-D conv on ``[B, C, T, H, W]`` with explicit spatial padding (used inside resample blocks).

    Attributes:
        spatial_padding: ``(left, right, top, bottom)`` given to ``F.pad`` by :meth:`pad_spatial`.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        spatial_padding: tuple[int, int, int, int] = (0, 0, 0, 0),
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=0)
        self.spatial_padding: tuple[int, int, int, int] = tuple(spatial_padding)  # type: ignore[assignment]

    def pad_spatial(self, x: torch.Tensor) -> torch.Tensor:
        """Zero-pad H and W of ``[..., H, W]`` by ``spatial_padding`` (the halo-exchange hook)."""
        if not any(self.spatial_padding):
            return x
        return F.pad(x, self.spatial_padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x ``[B, C_in, T, H, W]`` -> ``[B, C_out, T, H', W']``."""
        b, c, t, h, w = x.shape
        y = x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w)
        y = F.conv2d(self.pad_spatial(y), self.weight, self.bias, self.stride)
        return y.view(b, t, *y.shape[1:]).permute(0, 2, 1, 3, 4)


class NearestUp2x(nn.Module):
    """2x nearest-exact spatial upsampling of ``[N, C, H, W]`` in fp32 (as the original); purely per pixel."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.interpolate(x.float(), scale_factor=(2.0, 2.0), mode="nearest-exact").type_as(x)


class RMSNorm(nn.Module):
    """Per-pixel RMS norm over the channel dim 1 (``F.normalize * sqrt(C) * gamma``); no reduction over space."""

    def __init__(self, dim: int, images: bool = True) -> None:
        super().__init__()
        # Shape matches the checkpoints: (C, 1, 1) for 4-D inputs, (C, 1, 1, 1) for 5-D ones.
        self.gamma = nn.Parameter(torch.ones((dim, 1, 1) if images else (dim, 1, 1, 1)))
        self.scale = dim**0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low = x.dtype in (torch.float16, torch.bfloat16)
        y = F.normalize(x.float() if low else x, dim=1).to(x.dtype)
        return y * self.scale * self.gamma


class ResidualBlock(nn.Module):
    """RMSNorm -> SiLU -> CausalConv3d (x2) with a 1x1x1 conv shortcut when channels change."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.norm1 = RMSNorm(in_dim, images=False)
        self.conv1 = CausalConv3d(in_dim, out_dim, 3, padding=1)
        self.norm2 = RMSNorm(out_dim, images=False)
        self.conv2 = CausalConv3d(out_dim, out_dim, 3, padding=1)
        self.conv_shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, cache: FeatureCache | None = None) -> torch.Tensor:
        """x ``[B, in_dim, T, H, W]`` -> ``[B, out_dim, T, H, W]``."""
        h = self.conv_shortcut(x)
        x = self.conv1(F.silu(self.norm1(x)), cache)
        x = self.conv2(F.silu(self.norm2(x)), cache)  # dropout is 0 at inference
        return x + h


class AttentionBlock(nn.Module):
    """Single-head self-attention over the h*w pixels of each frame (the only op that mixes space globally)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = RMSNorm(dim, images=True)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)  # 1x1: pointwise, no padding
        self.proj = nn.Conv2d(dim, dim, 1)
        self.attn_op = LocalAttention()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x ``[B, C, T, H, W]`` -> same shape."""
        b, c, t, h, w = x.shape
        y = self.norm(x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w))
        # Contiguous [BT, S, 3C] (as the original lays it out) keeps the attention kernel on the same path.
        qkv = self.to_qkv(y).reshape(b * t, 3 * c, h * w).transpose(1, 2).contiguous()  # [BT, S, 3C]
        q, k, v = (u.unsqueeze(2) for u in qkv.chunk(3, dim=-1))  # [BT, S, 1, C] each
        o = self.attn_op(q, k, v).squeeze(2).transpose(1, 2).reshape(b * t, c, h, w)
        o = self.proj(o).view(b, t, c, h, w).permute(0, 2, 1, 3, 4)
        return o + x


class MidBlock(nn.Module):
    """ResidualBlock -> AttentionBlock -> ResidualBlock."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.resnets = nn.ModuleList([ResidualBlock(dim, dim), ResidualBlock(dim, dim)])
        self.attentions = nn.ModuleList([AttentionBlock(dim)])

    def forward(self, x: torch.Tensor, cache: FeatureCache | None = None) -> torch.Tensor:
        """x ``[B, C, T, H, W]`` -> same shape."""
        x = self.resnets[0](x, cache)
        return self.resnets[1](self.attentions[0](x), cache)


class Resample(nn.Module):
    """2x spatial (and optionally 2x temporal) up- or down-sampling.

    ``resample`` is ``[NearestUp2x or Identity, SpatialConv2d]`` (index 1 holds the weights, as in the checkpoints).
    Temporal up: ``time_conv`` makes 2C channels that interleave into 2T frames; the first chunk is not
    up-sampled in time (a video starts with one frame). Temporal down: stride-2 causal ``time_conv`` that sees the
    previous chunk's last frame; the first chunk passes through.
    """

    def __init__(self, dim: int, mode: str, out_dim: int | None = None) -> None:
        super().__init__()
        if mode not in ("upsample2d", "upsample3d", "downsample2d", "downsample3d"):
            raise ValueError(f"unknown resample mode {mode!r}")
        self.mode = mode
        if mode.startswith("upsample"):
            out_dim = dim // 2 if out_dim is None else out_dim
            self.resample = nn.Sequential(NearestUp2x(), SpatialConv2d(dim, out_dim, 3, spatial_padding=(1, 1, 1, 1)))
        else:
            # Pad right/bottom by one, then stride 2 (the original's ZeroPad2d((0, 1, 0, 1))).
            self.resample = nn.Sequential(
                nn.Identity(), SpatialConv2d(dim, dim, 3, stride=2, spatial_padding=(0, 1, 0, 1))
            )
        if mode == "upsample3d":
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))
        elif mode == "downsample3d":
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1), padding=(0, 0, 0))

    def forward(self, x: torch.Tensor, cache: FeatureCache, first_chunk: bool = False) -> torch.Tensor:
        """x ``[B, C, T, H, W]`` -> ``[B, C', T', 2H, 2W]`` (up) or ``[B, C, T', ceil(H/2), ceil(W/2)]`` (down)."""
        if self.mode == "upsample3d" and not first_chunk:
            b, c, t, h, w = x.shape
            x = self.time_conv(x, cache)
            x = x.reshape(b, 2, c, t, h, w).permute(0, 2, 3, 1, 4, 5).reshape(b, c, 2 * t, h, w)
        b, c, t, h, w = x.shape
        up = self.resample[0]
        if not isinstance(up, nn.Identity):
            y = up(x.permute(0, 2, 1, 3, 4).reshape(b * t, c, h, w))
            x = y.view(b, t, c, *y.shape[2:]).permute(0, 2, 1, 3, 4)
        x = self.resample[1](x)
        if self.mode == "downsample3d":
            prev = cache.get(self)
            cache.put(self, x[:, :, -1:].clone())
            if prev is not None:
                x = self.time_conv(torch.cat([prev[:, :, -1:], x], dim=2))
        return x


class AvgDown3D(nn.Module):
    """Parameter-free shortcut: fold (factor_t, factor_s, factor_s) blocks into channels and average groups."""

    def __init__(self, in_channels: int, out_channels: int, factor_t: int, factor_s: int = 1) -> None:
        super().__init__()
        self.out_channels, self.factor_t, self.factor_s = out_channels, factor_t, factor_s
        self.factor = factor_t * factor_s * factor_s
        if in_channels * self.factor % out_channels:
            raise ValueError(f"in_channels*factor ({in_channels}*{self.factor}) not divisible by {out_channels}")
        self.group_size = in_channels * self.factor // out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x ``[B, C, T, H, W]`` -> ``[B, C_out, ceil(T/ft), H/fs, W/fs]`` (front zero-pads T to a multiple)."""
        ft, fs = self.factor_t, self.factor_s
        pad_t = (ft - x.shape[2] % ft) % ft
        x = F.pad(x, (0, 0, 0, 0, pad_t, 0))
        b, c, t, h, w = x.shape
        x = x.view(b, c, t // ft, ft, h // fs, fs, w // fs, fs).permute(0, 1, 3, 5, 7, 2, 4, 6)
        x = x.reshape(b, self.out_channels, self.group_size, t // ft, h // fs, w // fs)
        return x.mean(dim=2)


class DupUp3D(nn.Module):
    """Parameter-free shortcut: repeat channels and unfold them into (factor_t, factor_s, factor_s) blocks."""

    def __init__(self, in_channels: int, out_channels: int, factor_t: int, factor_s: int = 1) -> None:
        super().__init__()
        self.out_channels, self.factor_t, self.factor_s = out_channels, factor_t, factor_s
        factor = factor_t * factor_s * factor_s
        if out_channels * factor % in_channels:
            raise ValueError(f"out_channels*factor ({out_channels}*{factor}) not divisible by {in_channels}")
        self.repeats = out_channels * factor // in_channels

    def forward(self, x: torch.Tensor, first_chunk: bool = False) -> torch.Tensor:
        """x ``[B, C, T, H, W]`` -> ``[B, C_out, T*ft, H*fs, W*fs]`` (first chunk: drop the ft-1 leading frames)."""
        ft, fs = self.factor_t, self.factor_s
        b, _, t, h, w = x.shape
        x = x.repeat_interleave(self.repeats, dim=1)
        x = x.view(b, self.out_channels, ft, fs, fs, t, h, w).permute(0, 1, 5, 2, 6, 3, 7, 4)
        x = x.reshape(b, self.out_channels, t * ft, h * fs, w * fs)
        return x[:, :, ft - 1 :] if first_chunk else x
