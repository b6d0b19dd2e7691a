"""Building blocks of the Wan DiT. Parameter names follow the official Wan checkpoints.

Precision policy (as in the official code): normalisation, timestep embedding and AdaLN modulation run in fp32,
the residual stream is fp32, and the Linear layers run in the parameters' dtype. "fp32" means at least fp32: a
float64 model stays float64 throughout (``wide``), which makes results of different parallel layouts agree to
~1e-15 rather than ~1e-7.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vidpar.kernels import LocalAttention, fused_linear

from .rope import apply_rotary


def wide(x: torch.Tensor) -> torch.Tensor:
    """``x`` in fp32, or kept in float64 if it already is (the "fp32" of the precision policy)."""
    return x if x.dtype == torch.float64 else x.float()


class WanLayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 whatever the input or parameter dtype; returns fp32 ``[..., dim]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else wide(self.weight)
        b = None if self.bias is None else wide(self.bias)
        return F.layer_norm(wide(x), self.normalized_shape, w, b, self.eps)


class WanRMSNorm(nn.Module):
    """RMS norm over the last dim (for Q/K: across all heads), normalised in fp32 then scaled in ``x.dtype``."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = wide(x)
        normed = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return normed.to(x.dtype) * self.weight.to(x.dtype)


class WanPatchEmbedding(nn.Conv3d):
    """Non-overlapping 3-D patches -> tokens. ``[B, C, F, H, W]`` -> ``[B, S, dim]``, ``S = f*h*w`` row-major.

    A Conv3d subclass so the checkpoint key stays ``patch_embedding.weight``.
    """

    def __init__(self, in_channels: int, dim: int, patch_size: tuple[int, int, int]) -> None:
        super().__init__(in_channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.weight.dtype)
        return super().forward(x).flatten(2).transpose(1, 2).contiguous()


def sinusoidal_embedding(dim: int, position: torch.Tensor) -> torch.Tensor:
    """``position [N]`` -> ``[N, dim]`` = ``[cos, sin]`` of ``position * 10000^(-i/(dim/2))``, computed in fp64."""
    half = dim // 2
    pos = position.to(torch.float64)
    freqs = torch.pow(10000.0, -torch.arange(half, dtype=torch.float64, device=pos.device) / half)
    angles = torch.outer(pos, freqs)
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=1)


class WanTimeEmbedding(nn.Module):
    """Timestep -> (embedding for the head, six AdaLN vectors for every block), in fp32.

    A ``[B]`` timestep is treated as ``[B, 1]`` (one value for all tokens); a ``[B, S]`` one (Wan 2.2 TI2V) gives
    per-token outputs, so the token dim of every output is dim 1.
    """

    def __init__(self, freq_dim: int, dim: int) -> None:
        super().__init__()
        self.freq_dim = freq_dim
        self.dim = dim
        self.time_embedding = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        self.time_projection = nn.Sequential(nn.SiLU(), nn.Linear(dim, dim * 6))

    def forward(self, timestep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """timestep ``[B]`` or ``[B, T]`` -> ``e [B, T, dim]``, ``e0 [B, T, 6, dim]`` (fp32; ``T = 1`` for ``[B]``)."""
        t = timestep if timestep.dim() == 2 else timestep.unsqueeze(1)
        b, n = t.shape
        sin = sinusoidal_embedding(self.freq_dim, t.flatten()).unflatten(0, (b, n))
        wdtype = self.time_embedding[0].weight.dtype
        e = wide(self.time_embedding(sin.to(wdtype)))
        e0 = wide(self.time_projection(e.to(wdtype))).unflatten(-1, (6, self.dim))
        return e, e0


class _WanAttention(nn.Module):
    """The projections shared by Wan's self- and cross-attention (official names ``q k v o norm_q norm_k``) and the
    attention op they call."""

    def __init__(self, dim: int, num_heads: int, qk_norm: bool, eps: float, attention_backend: str) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.o = nn.Linear(dim, dim)
        self.norm_q = WanRMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.norm_k = WanRMSNorm(dim, eps) if qk_norm else nn.Identity()
        self.attn_op = LocalAttention(attention_backend)


class WanSelfAttention(_WanAttention):
    """Self-attention with QK RMS-norm across heads and 3-D RoPE. ``[B, S, dim]`` -> ``[B, S, dim]``.

    The sharding plan swaps ``attn_op`` for a sequence-parallel attention.
    """

    def __init__(self, dim: int, num_heads: int, qk_norm: bool = True, eps: float = 1e-6,
                 attention_backend: str = "auto") -> None:
        super().__init__(dim, num_heads, qk_norm, eps, attention_backend)
        self.fused_qkv = False  # one GEMM for q, k, v (``vidpar.kernels.set_fused_qkv``); same values

    def forward(self, x: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """x ``[B, S, dim]``, rope ``(cos, sin)`` each ``[1, S, 1, head_dim // 2]`` -> ``[B, S, dim]``.

        The projections go to ``attn_op.attend`` as functions, so a sequence-parallel op can overlap its
        all-to-alls with them."""
        cos, sin = rope
        heads = (self.num_heads, -1)
        if self.fused_qkv:
            q_in, k_in, v_in = fused_linear(x, (self.q, self.k, self.v))
            q_of, k_of, v_of = (lambda: q_in), (lambda: k_in), (lambda: v_in)
        else:
            q_of, k_of, v_of = (lambda: self.q(x)), (lambda: self.k(x)), (lambda: self.v(x))
        return self.attn_op.attend(
            lambda: apply_rotary(self.norm_q(q_of()).unflatten(-1, heads), cos, sin),
            lambda: apply_rotary(self.norm_k(k_of()).unflatten(-1, heads), cos, sin),
            lambda: v_of().unflatten(-1, heads),
            out_proj=lambda out: self.o(out.flatten(2)),
        )


class WanCrossAttention(_WanAttention):
    """Cross-attention to text, plus (Wan 2.1 I2V) a second attention to image tokens whose output is added.

    Each query token attends to all text/image tokens independently, so it is per-token in the video sequence, and
    its ``attn_op`` stays local (text/image keys are never split across ranks).
    """

    def __init__(self, dim: int, num_heads: int, qk_norm: bool = True, eps: float = 1e-6,
                 has_image: bool = False, attention_backend: str = "auto") -> None:
        super().__init__(dim, num_heads, qk_norm, eps, attention_backend)
        self.has_image = has_image
        if has_image:
            self.k_img = nn.Linear(dim, dim)
            self.v_img = nn.Linear(dim, dim)
            self.norm_k_img = WanRMSNorm(dim, eps) if qk_norm else nn.Identity()

    def forward(self, x: torch.Tensor, context: torch.Tensor, context_img: torch.Tensor | None = None) -> torch.Tensor:
        """x ``[B, S, dim]``, context ``[B, L, dim]``, context_img ``[B, N, dim]`` or None -> ``[B, S, dim]``."""
        heads = (self.num_heads, -1)
        q = self.norm_q(self.q(x)).unflatten(-1, heads)
        k = self.norm_k(self.k(context)).unflatten(-1, heads)
        v = self.v(context).unflatten(-1, heads)
        out = self.attn_op(q, k, v)
        if self.has_image:
            if context_img is None:
                raise ValueError("this model has an image cross-attention: image_states are required")
            k_img = self.norm_k_img(self.k_img(context_img)).unflatten(-1, heads)
            v_img = self.v_img(context_img).unflatten(-1, heads)
            out = out + self.attn_op(q, k_img, v_img)
        return self.o(out.flatten(2))


def _modulate(x_normed: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x_normed * (1 + scale) + shift


class WanAttentionBlock(nn.Module):
    """One DiT block: AdaLN self-attention, cross-attention, AdaLN FFN.

    The official names are kept, including their order: ``norm3`` is the (affine) cross-attention norm and
    ``norm2`` the FFN norm.
    """

    def __init__(self, dim: int, ffn_dim: int, num_heads: int, qk_norm: bool = True, cross_attn_norm: bool = True,
                 eps: float = 1e-6, has_image: bool = False, attention_backend: str = "auto") -> None:
        super().__init__()
        self.norm1 = WanLayerNorm(dim, eps, elementwise_affine=False)
        self.self_attn = WanSelfAttention(dim, num_heads, qk_norm, eps, attention_backend)
        self.norm3 = WanLayerNorm(dim, eps, elementwise_affine=True) if cross_attn_norm else nn.Identity()
        self.cross_attn = WanCrossAttention(dim, num_heads, qk_norm, eps, has_image, attention_backend)
        self.norm2 = WanLayerNorm(dim, eps, elementwise_affine=False)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(approximate="tanh"), nn.Linear(ffn_dim, dim))
        self.modulation = nn.Parameter(torch.randn(1, 6, dim) / math.sqrt(dim))

    def forward(
        self,
        x: torch.Tensor,
        e0: torch.Tensor,
        context: torch.Tensor,
        context_img: torch.Tensor | None,
        rope: tuple[torch.Tensor, torch.Tensor],
    ) -> torch.Tensor:
        """x ``[B, S, dim]`` fp32, e0 ``[B, 1 or S, 6, dim]``, context ``[B, L, dim]`` -> ``[B, S, dim]`` fp32."""
        dtype = self.ffn[0].weight.dtype
        mod = (wide(self.modulation).unsqueeze(0) + wide(e0)).unbind(2)  # six [B, 1 or S, dim]
        shift_sa, scale_sa, gate_sa, shift_ff, scale_ff, gate_ff = mod

        h = _modulate(self.norm1(x), shift_sa, scale_sa).to(dtype)
        x = x + wide(self.self_attn(h, rope)) * gate_sa
        x = x + wide(self.cross_attn(self.norm3(x).to(dtype), context, context_img))
        h = _modulate(self.norm2(x), shift_ff, scale_ff).to(dtype)
        return x + wide(self.ffn(h)) * gate_ff


class WanHead(nn.Module):
    """Final AdaLN + projection to patch pixels. ``[B, S, dim]`` -> ``[B, S, out_channels * prod(patch)]``."""

    def __init__(self, dim: int, out_channels: int, patch_size: tuple[int, int, int], eps: float = 1e-6) -> None:
        super().__init__()
        self.norm = WanLayerNorm(dim, eps, elementwise_affine=False)
        self.head = nn.Linear(dim, out_channels * math.prod(patch_size))
        self.modulation = nn.Parameter(torch.randn(1, 2, dim) / math.sqrt(dim))

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        """x ``[B, S, dim]``, e ``[B, 1 or S, dim]`` (time embedding) -> ``[B, S, out_channels * prod(patch)]``."""
        shift, scale = (wide(self.modulation).unsqueeze(0) + wide(e).unsqueeze(2)).unbind(2)
        return self.head(_modulate(self.norm(x), shift, scale).to(self.head.weight.dtype))


class WanImageEmbedding(nn.Module):
    """CLIP image states -> model width (official ``MLPProj``). ``[B, N, image_dim]`` -> ``[B, N, dim]``.

    FLF2V adds a learned position embedding ``emb_pos [1, pos_len, image_dim]`` over both images' tokens.
    """

    def __init__(self, image_dim: int, dim: int, pos_len: int | None = None) -> None:
        super().__init__()
        self.proj = nn.Sequential(
            WanLayerNorm(image_dim, eps=1e-5),
            nn.Linear(image_dim, image_dim),
            nn.GELU(),
            nn.Linear(image_dim, dim),
            WanLayerNorm(dim, eps=1e-5),
        )
        self.pos_len = pos_len
        if pos_len is not None:
            self.emb_pos = nn.Parameter(torch.zeros(1, pos_len, image_dim))

    def forward(self, image_states: torch.Tensor) -> torch.Tensor:
        """image_states ``[B, N, image_dim]`` -> ``[B', N', dim]`` (FLF2V regroups tokens by ``pos_len``)."""
        dtype = self.proj[1].weight.dtype
        x = image_states
        if self.pos_len is not None:
            x = wide(x.reshape(-1, self.pos_len, x.shape[-1])) + wide(self.emb_pos)
        x = self.proj[0](x).to(dtype)
        x = self.proj[3](self.proj[2](self.proj[1](x)))
        return self.proj[4](x).to(dtype)
