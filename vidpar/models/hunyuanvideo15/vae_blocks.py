"""Building blocks of the HunyuanVideo-1.5 causal video VAE (diffusers' ``AutoencoderKLHunyuanVideo15``).

Parameter names follow diffusers, so its state dicts load unchanged.

How it processes time: every conv is causal with *replicate* padding (the first frame stands in for the frames
before it), the up/down samplers are channel<->space(-time) shuffles whose first frame is special (a video starts
with one frame), and the mid-block attention is causal across frames (a pixel of frame t attends to every pixel
of frames 0..t). All three can run over a clip in causal chunks exactly: each conv keeps the last
``kernel_t - 1`` frames of its time-padded input in a rank-local ``cache`` (a dict keyed by module), the samplers
treat the first frame specially only in the first chunk, and the attention keeps the keys and values of earlier
frames. With ``cache=None`` a block processes the whole clip at once, as diffusers does.

Parallelisation hooks (the protocol of ``vidpar.parallel.vae_decode``; parallel decoding never changes this file):

* A :class:`CausalConv3d` adds the time context itself and hands the result to its ``conv``, a
  :class:`ReplicatePadConv3d` that pads H and W (replicate, ``spatial_padding``) as a separate step and convolves
  with ``padding=0``; a halo-exchange variant replaces that ``conv`` (same weights) to take border rows from the
  neighbouring bands.
* The mid-block attention calls ``self.attn_op`` (a ``vidpar.kernels.LocalAttention``, ``[B, S, H, D]``) with the
  queries of one frame and the keys of every frame so far; nothing else reduces over space (RMS norms are per
  pixel, the shuffles move pixels within 2x2 blocks).

Exactness of the chunks: in real arithmetic the chunked decode *is* diffusers' whole-clip decode (replicate
padding is reproduced by the cache, the masked-out future keys add exact zeros). In floating point it is not bit
for bit: torch's conv3d and attention kernels round differently depending on the tensor's extent (a conv over a
3-frame window differs in the last bit from the same output frame of a whole-clip conv; one frame of queries
differs from the same rows of diffusers' single masked attention over the clip), so no chunking or banding can
reproduce diffusers' bits. Measured on CPU fp32 (tiny perturbed models): about 1e-6 relative to max |ref|.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vidpar.kernels import LocalAttention

TimeCache = dict  # module -> its temporal context (conv: frames; attention: keys and values); one per decode


class ReplicatePadConv3d(nn.Conv3d):
    """3-D conv with ``padding=0`` after replicate-padding H and W by ``spatial_padding`` (the halo hook).

    Attributes:
        spatial_padding: ``(left, right, top, bottom)``; pad_mode: ``"replicate"``.
    """

    pad_mode = "replicate"

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size, padding=0)
        ph, pw = self.kernel_size[1] // 2, self.kernel_size[2] // 2
        self.spatial_padding: tuple[int, int, int, int] = (pw, pw, ph, ph)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x ``[B, C_in, T + kt - 1, H, W]`` (time context included) -> ``[B, C_out, T, H, W]``."""
        x = F.pad(x, (*self.spatial_padding, 0, 0), mode="replicate")
        return F.conv3d(x, self.weight, self.bias, self.stride)


class CausalConv3d(nn.Module):
    """``HunyuanVideo15CausalConv3d``: causal in time (``kernel_t - 1`` frames in front), replicate padding."""

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int = 3) -> None:
        super().__init__()
        self.time_context = kernel_size - 1
        self.conv = ReplicatePadConv3d(in_channels, out_channels, kernel_size)

    def with_time_context(self, x: torch.Tensor, cache: TimeCache | None) -> torch.Tensor:
        """``[B, C, T, H, W]`` -> ``[B, C, T + kt - 1, H, W]``: the previous chunk's last frames in front (first
        chunk or no cache: copies of frame 0, as replicate padding); stores this chunk's last ones for the next."""
        prev = cache.get(self) if cache is not None else None
        if prev is None:
            prev = x[:, :, :1].expand(-1, -1, self.time_context, -1, -1)
        x = torch.cat([prev.to(x.device), x], dim=2)
        if cache is not None:
            cache[self] = x[:, :, x.shape[2] - self.time_context :].clone()
        return x

    def forward(self, x: torch.Tensor, cache: TimeCache | None = None) -> torch.Tensor:
        """x ``[B, C_in, T, H, W]`` -> ``[B, C_out, T, H, W]``."""
        return self.conv(self.with_time_context(x, cache))


class RMSNorm(nn.Module):
    """Per-pixel RMS norm over channels (dim 1): ``F.normalize * sqrt(C) * gamma`` (fp32 for 16-bit inputs)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(dim, 1, 1, 1))  # the checkpoints' shape for 5-D inputs
        self.scale = dim**0.5

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        low = x.dtype in (torch.float16, torch.bfloat16)
        y = F.normalize(x.float() if low else x, dim=1).to(x.dtype)
        return y * self.scale * self.gamma


class ResnetBlock(nn.Module):
    """RMSNorm -> SiLU -> CausalConv3d (x2), plus the input (through a 1x1x1 conv when channels change)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.norm1 = RMSNorm(in_channels)
        self.conv1 = CausalConv3d(in_channels, out_channels)
        self.norm2 = RMSNorm(out_channels)
        self.conv2 = CausalConv3d(out_channels, out_channels)
        self.conv_shortcut = nn.Conv3d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: torch.Tensor, cache: TimeCache | None = None) -> torch.Tensor:
        """x ``[B, C_in, T, H, W]`` -> ``[B, C_out, T, H, W]``."""
        h = self.conv1(F.silu(self.norm1(x)), cache)
        h = self.conv2(F.silu(self.norm2(h)), cache)
        return h + (self.conv_shortcut(x) if self.conv_shortcut is not None else x)


class AttnBlock(nn.Module):
    """Single-head self-attention over every pixel, causal across frames, with a residual connection."""

    def __init__(self, channels: int, attention_backend: str = "auto") -> None:
        super().__init__()
        self.norm = RMSNorm(channels)
        self.to_q = nn.Conv3d(channels, channels, 1)
        self.to_k = nn.Conv3d(channels, channels, 1)
        self.to_v = nn.Conv3d(channels, channels, 1)
        self.proj_out = nn.Conv3d(channels, channels, 1)
        self.attn_op = LocalAttention(attention_backend)

    @staticmethod
    def _tokens(t: torch.Tensor) -> torch.Tensor:
        """``[B, C, T, H, W]`` -> ``[B, T*H*W, 1, C]`` (frame-major pixels, one head)."""
        b, c = t.shape[:2]
        return t.reshape(b, c, -1).transpose(1, 2).unsqueeze(2).contiguous()

    def forward(self, x: torch.Tensor, cache: TimeCache | None = None) -> torch.Tensor:
        """x ``[B, C, T, H, W]`` -> same shape. With a cache, the frames of earlier chunks are attended too."""
        b, c, t, h, w = x.shape
        y = self.norm(x)
        q, k, v = (self._tokens(m(y)) for m in (self.to_q, self.to_k, self.to_v))
        past = cache.get(self) if cache is not None else None
        if past is not None:
            k, v = torch.cat([past[0], k], dim=1), torch.cat([past[1], v], dim=1)
        if cache is not None:
            cache[self] = (k, v)
        hw, before = h * w, k.shape[1] - t * h * w  # keys of earlier chunks come first
        # Frame i of this chunk sees every key up to its own frame: one call per frame (one call in chunked decode).
        outs = [self.attn_op(q[:, i * hw : (i + 1) * hw], k[:, : before + (i + 1) * hw], v[:, : before + (i + 1) * hw])
                for i in range(t)]
        o = torch.cat(outs, dim=1) if t > 1 else outs[0]
        o = o.squeeze(2).transpose(1, 2).reshape(b, c, t, h, w)
        return self.proj_out(o) + x


def _to_space(x: torch.Tensor, rt: int) -> torch.Tensor:
    """Channel -> space(-time) shuffle ``[B, rt*2*2*C, T, H, W]`` -> ``[B, C, T*rt, 2H, 2W]`` (diffusers' order)."""
    b, packed, t, h, w = x.shape
    c = packed // (rt * 4)
    x = x.view(b, rt, 2, 2, c, t, h, w).permute(0, 4, 5, 1, 6, 2, 7, 3)
    return x.reshape(b, c, t * rt, h * 2, w * 2)


def _to_channels(x: torch.Tensor, rt: int) -> torch.Tensor:
    """Space(-time) -> channel shuffle ``[B, C, T*rt, 2H, 2W]`` -> ``[B, rt*2*2*C, T, H, W]`` (inverse order)."""
    b, c, tt, hh, ww = x.shape
    t, h, w = tt // rt, hh // 2, ww // 2
    x = x.view(b, c, t, rt, h, 2, w, 2).permute(0, 3, 5, 7, 1, 2, 4, 6)
    return x.reshape(b, rt * 4 * c, t, h, w)


class Upsample(nn.Module):
    """x2 in H and W (and T for ``temporal``, except the first frame): a conv to ``factor x out`` channels shuffled
    into space, plus the input's channels repeated and shuffled the same way."""

    def __init__(self, in_channels: int, out_channels: int, temporal: bool) -> None:
        super().__init__()
        factor = 8 if temporal else 4
        self.conv = CausalConv3d(in_channels, out_channels * factor)
        self.temporal = temporal
        self.repeats = factor * out_channels // in_channels

    def forward(self, x: torch.Tensor, cache: TimeCache | None = None, first_chunk: bool = True) -> torch.Tensor:
        """x ``[B, C_in, T, H, W]`` -> ``[B, C_out, T', 2H, 2W]``; T' = 2T (temporal), 2T - 1 if the chunk holds the
        video's first frame, T otherwise."""
        h = self.conv(x, cache)
        if not self.temporal:
            return _to_space(h, 1) + _to_space(x.repeat_interleave(self.repeats, dim=1), 1)
        if not first_chunk:
            return _to_space(h, 2) + _to_space(x, 2).repeat_interleave(self.repeats, dim=1)
        h_first = _to_space(h[:, :, :1], 1)
        h_first = h_first[:, : h_first.shape[1] // 2]
        h = torch.cat([h_first, _to_space(h[:, :, 1:], 2)], dim=2)
        x_first = _to_space(x[:, :, :1], 1).repeat_interleave(self.repeats // 2, dim=1)
        x_next = _to_space(x[:, :, 1:], 2).repeat_interleave(self.repeats, dim=1)
        return h + torch.cat([x_first, x_next], dim=2)


class Downsample(nn.Module):
    """/2 in H and W (and T for ``temporal``, the first frame kept): a conv to ``out / factor`` channels shuffled
    into channels, plus the input shuffled the same way and averaged over channel groups."""

    def __init__(self, in_channels: int, out_channels: int, temporal: bool) -> None:
        super().__init__()
        factor = 8 if temporal else 4
        self.conv = CausalConv3d(in_channels, out_channels // factor)
        self.temporal = temporal
        self.group_size = factor * in_channels // out_channels

    def forward(self, x: torch.Tensor, cache: TimeCache | None = None, first_chunk: bool = True) -> torch.Tensor:
        """x ``[B, C_in, T, H, W]`` -> ``[B, C_out, T', H/2, W/2]``; T' = (T + 1) / 2 with the video's first frame
        (temporal), T / 2 without it, T otherwise."""
        h = self.conv(x, cache)
        if not self.temporal:
            h = _to_channels(h, 1)
            return h + self._mean(_to_channels(x, 1), h.shape[1], self.group_size)
        if not first_chunk:
            h = _to_channels(h, 2)
            return h + self._mean(_to_channels(x, 2), h.shape[1], self.group_size)
        h_first = _to_channels(h[:, :, :1], 1)
        h = torch.cat([torch.cat([h_first, h_first], dim=1), _to_channels(h[:, :, 1:], 2)], dim=2)
        x_first = self._mean(_to_channels(x[:, :, :1], 1), h.shape[1], self.group_size // 2)
        x_next = self._mean(_to_channels(x[:, :, 1:], 2), h.shape[1], self.group_size)
        return h + torch.cat([x_first, x_next], dim=2)

    @staticmethod
    def _mean(x: torch.Tensor, channels: int, group: int) -> torch.Tensor:
        b, _, t, h, w = x.shape
        return x.view(b, channels, group, t, h, w).mean(dim=2)


class MidBlock(nn.Module):
    """ResnetBlock -> AttnBlock -> ResnetBlock (diffusers' ``mid_block.resnets.{0,1}`` / ``attentions.0``)."""

    def __init__(self, channels: int, attention_backend: str = "auto") -> None:
        super().__init__()
        self.resnets = nn.ModuleList([ResnetBlock(channels, channels), ResnetBlock(channels, channels)])
        self.attentions = nn.ModuleList([AttnBlock(channels, attention_backend)])

    def forward(self, x: torch.Tensor, cache: TimeCache | None = None) -> torch.Tensor:
        """x ``[B, C, T, H, W]`` -> same shape."""
        x = self.resnets[0](x, cache)
        return self.resnets[1](self.attentions[0](x, cache), cache)
