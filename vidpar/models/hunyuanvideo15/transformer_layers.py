"""Building blocks of the HunyuanVideo-1.5 DiT. Parameter names follow the official checkpoints.

Precision policy: the two residual streams (video and text tokens), LayerNorms, timestep embeddings, AdaLN
modulation and rotary embedding run in fp32; the Linear layers and attention run in the parameters' dtype.
"fp32" means at least fp32: a float64 model stays float64 throughout (``wide``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vidpar.kernels import LocalAttention, fused_linear

from .rope import apply_rotary

FREQ_DIM = 256  # sinusoidal timestep features, both references


def wide(x: torch.Tensor) -> torch.Tensor:
    """``x`` in fp32, or kept in float64 if it already is (the "fp32" of the precision policy)."""
    return x if x.dtype == torch.float64 else x.float()


def _modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


class HYLayerNorm(nn.LayerNorm):
    """LayerNorm computed in fp32 whatever the input or parameter dtype; returns fp32 ``[..., dim]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else wide(self.weight)
        b = None if self.bias is None else wide(self.bias)
        return F.layer_norm(wide(x), self.normalized_shape, w, b, self.eps)


class HYRMSNorm(nn.Module):
    """RMS norm over the last dim (per head for Q/K), normalised in fp32 then scaled in ``x.dtype``."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = wide(x)
        normed = xf * torch.rsqrt(xf.pow(2).mean(dim=-1, keepdim=True) + self.eps)
        return normed.to(x.dtype) * self.weight.to(x.dtype)


class HYMLP(nn.Module):
    """``fc1 -> act -> fc2`` (official ``MLP``). ``[..., dim]`` -> ``[..., out]`` in the weights' dtype."""

    def __init__(self, dim: int, hidden: int, out: int | None = None, act: nn.Module | None = None) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = act if act is not None else nn.GELU(approximate="tanh")
        self.fc2 = nn.Linear(hidden, out or dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x.to(self.fc1.weight.dtype))))


class HYModulation(nn.Module):
    """AdaLN modulation ``linear(silu(vec))`` (official ``ModulateDiT``). ``[B, dim]`` -> ``[B, factor*dim]`` fp32."""

    def __init__(self, dim: int, factor: int) -> None:
        super().__init__()
        self.linear = nn.Linear(dim, factor * dim)

    def forward(self, vec: torch.Tensor) -> torch.Tensor:
        return wide(self.linear(F.silu(wide(vec)).to(self.linear.weight.dtype)))


def timestep_features(t: torch.Tensor, dim: int = FREQ_DIM) -> torch.Tensor:
    """``t [N]`` -> ``[N, dim]`` = ``[cos, sin]`` of ``t * 10000^(-i/(dim/2))``, in fp32 as both references."""
    half = dim // 2
    exponent = -math.log(10000.0) * torch.arange(0, half, dtype=torch.float32, device=t.device) / half
    args = t.float()[:, None] * torch.exp(exponent)[None, :]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


class HYTimestepEmbedder(nn.Module):
    """Timestep -> vector (official ``TimestepEmbedder``: ``mlp`` = Linear, SiLU, Linear). ``[B]`` -> ``[B, dim]``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(FREQ_DIM, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return wide(self.mlp(timestep_features(t).to(self.mlp[0].weight.dtype)))


class HYPatchEmbedding(nn.Module):
    """Non-overlapping 3-D patches -> tokens (official ``img_in.proj``). ``[B, C, F, H, W]`` -> ``[B, S, dim]``."""

    def __init__(self, in_channels: int, dim: int, patch_size: tuple[int, int, int]) -> None:
        super().__init__()
        self.proj = nn.Conv3d(in_channels, dim, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.to(self.proj.weight.dtype)).flatten(2).transpose(1, 2).contiguous()


class HYProjection(nn.Module):
    """``linear_1 -> act -> linear_2`` (official ``TextProjection``, the refiner's pooled-text embedder)."""

    def __init__(self, dim_in: int, dim: int) -> None:
        super().__init__()
        self.linear_1 = nn.Linear(dim_in, dim)
        self.act_1 = nn.SiLU()
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act_1(self.linear_1(x.to(self.linear_1.weight.dtype))))


class HYGlyphProjection(nn.Module):
    """ByT5 glyph states -> model width (official ``ByT5Mapper``, no residual). ``[B, L, in]`` -> ``[B, L, dim]``."""

    def __init__(self, dim_in: int, hidden: int, dim: int) -> None:
        super().__init__()
        self.layernorm = HYLayerNorm(dim_in)  # eps 1e-5, affine, as nn.LayerNorm's defaults in both references
        self.fc1 = nn.Linear(dim_in, hidden)
        self.fc2 = nn.Linear(hidden, hidden)
        self.fc3 = nn.Linear(hidden, dim)
        self.act_fn = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act_fn(self.fc1(self.layernorm(x).to(self.fc1.weight.dtype)))
        return self.fc3(self.act_fn(self.fc2(h)))


class HYVisionProjection(nn.Module):
    """SigLIP image states -> model width (official ``VisionProjection``). ``[B, N, in]`` -> ``[B, N, dim]`` fp32."""

    def __init__(self, dim_in: int, dim: int) -> None:
        super().__init__()
        self.proj = nn.Sequential(HYLayerNorm(dim_in), nn.Linear(dim_in, dim_in), nn.GELU(), nn.Linear(dim_in, dim),
                                  HYLayerNorm(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.proj[1](self.proj[0](x).to(self.proj[1].weight.dtype))
        return self.proj[4](self.proj[3](self.proj[2](h)))


class HYRefinerBlock(nn.Module):
    """One block of the text token refiner: gated self-attention and MLP over the valid text tokens only.

    Official names (``IndividualTokenRefinerBlock``); Q, K, V come from one fused ``self_attn_qkv`` projection.
    """

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, attention_backend: str = "auto") -> None:
        super().__init__()
        self.num_heads = num_heads
        self.norm1 = HYLayerNorm(dim, eps=1e-6)
        self.self_attn_qkv = nn.Linear(dim, 3 * dim)
        self.self_attn_proj = nn.Linear(dim, dim)
        self.norm2 = HYLayerNorm(dim, eps=1e-6)
        self.mlp = HYMLP(dim, ffn_dim, act=nn.SiLU())
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))
        self.attn_op = LocalAttention(attention_backend)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        """x ``[B, L, dim]`` fp32 (valid tokens only), c ``[B, dim]`` conditioning -> ``[B, L, dim]`` fp32."""
        dtype = self.self_attn_qkv.weight.dtype
        mod = self.adaLN_modulation[1](F.silu(wide(c)).to(dtype))
        gate_msa, gate_mlp = wide(mod).unsqueeze(1).chunk(2, dim=-1)
        q, k, v = self.self_attn_qkv(self.norm1(x).to(dtype)).unflatten(-1, (3, self.num_heads, -1)).unbind(2)
        x = x + wide(self.self_attn_proj(self.attn_op(q, k, v).flatten(2))) * gate_msa
        return x + wide(self.mlp(self.norm2(x))) * gate_mlp


class HYTokenRefiner(nn.Module):
    """Qwen text states -> refined text tokens (official ``SingleTokenRefiner``).

    Called with the valid (unpadded) tokens only: the reference's masked self-attention and masked mean pooling
    equal plain attention and plain mean over the valid tokens.
    """

    def __init__(self, text_dim: int, dim: int, num_heads: int, depth: int, ffn_dim: int,
                 attention_backend: str = "auto") -> None:
        super().__init__()
        self.input_embedder = nn.Linear(text_dim, dim)
        self.t_embedder = HYTimestepEmbedder(dim)
        self.c_embedder = HYProjection(text_dim, dim)
        self.individual_token_refiner = nn.Module()
        self.individual_token_refiner.blocks = nn.ModuleList(
            HYRefinerBlock(dim, num_heads, ffn_dim, attention_backend) for _ in range(depth)
        )

    def forward(self, text: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        """text ``[B, L, text_dim]`` (valid tokens, L >= 1), timestep ``[B]`` -> ``[B, L, dim]`` fp32."""
        dtype = self.input_embedder.weight.dtype
        pooled = wide(text).sum(dim=1) / text.shape[1]
        c = self.t_embedder(timestep) + wide(self.c_embedder(pooled.to(dtype)))
        x = wide(self.input_embedder(text.to(dtype)))
        for block in self.individual_token_refiner.blocks:
            x = block(x, c)
        return x


class HYDoubleStreamBlock(nn.Module):
    """One dual-stream block (official ``MMDoubleStreamBlock``): video and text tokens keep their own weights
    and attend jointly.

    ``attn_op(q, k, v, joint_q=, joint_k=, joint_v=)`` is the only op that mixes tokens; the sharding plan swaps
    it for a sequence-parallel one that splits the video tokens and keeps the text tokens whole on every rank.
    """

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, attention_backend: str = "auto") -> None:
        super().__init__()
        self.num_heads = num_heads
        head_dim = dim // num_heads
        for stream in ("img", "txt"):
            self.add_module(f"{stream}_mod", HYModulation(dim, 6))
            self.add_module(f"{stream}_norm1", HYLayerNorm(dim, eps=1e-6, elementwise_affine=False))
            for name in ("q", "k", "v"):
                self.add_module(f"{stream}_attn_{name}", nn.Linear(dim, dim))
            self.add_module(f"{stream}_attn_q_norm", HYRMSNorm(head_dim, eps=1e-6))
            self.add_module(f"{stream}_attn_k_norm", HYRMSNorm(head_dim, eps=1e-6))
            self.add_module(f"{stream}_attn_proj", nn.Linear(dim, dim))
            self.add_module(f"{stream}_norm2", HYLayerNorm(dim, eps=1e-6, elementwise_affine=False))
            self.add_module(f"{stream}_mlp", HYMLP(dim, ffn_dim))
        self.attn_op = LocalAttention(attention_backend)
        self.fused_qkv = False  # one GEMM per stream for q, k, v (``vidpar.kernels.set_fused_qkv``); same values

    def _qkv(self, stream: str, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor):
        """Functions giving one stream's ``q, k, v [B, S, H, head_dim]`` (q and k normed, no rotary)."""
        get = lambda name: getattr(self, f"{stream}_{name}")  # noqa: E731
        h = _modulate(get("norm1")(x), shift, scale).to(get("attn_q").weight.dtype)
        heads = (self.num_heads, -1)
        layers = (get("attn_q"), get("attn_k"), get("attn_v"))
        if self.fused_qkv:
            q_in, k_in, v_in = fused_linear(h, layers)
            q_of, k_of, v_of = (lambda: q_in), (lambda: k_in), (lambda: v_in)
        else:
            q_of, k_of, v_of = (lambda: layers[0](h)), (lambda: layers[1](h)), (lambda: layers[2](h))
        return (lambda: get("attn_q_norm")(q_of().unflatten(-1, heads)),
                lambda: get("attn_k_norm")(k_of().unflatten(-1, heads)),
                lambda: v_of().unflatten(-1, heads))

    def _finish(self, stream: str, x: torch.Tensor, attn_out: torch.Tensor, mods: tuple) -> torch.Tensor:
        """The residual updates after attention; ``attn_out [B, S, dim]`` is already through ``attn_proj``."""
        get = lambda name: getattr(self, f"{stream}_{name}")  # noqa: E731
        _, _, gate1, shift2, scale2, gate2 = mods
        x = x + wide(attn_out) * gate1
        return x + wide(get("mlp")(_modulate(get("norm2")(x), shift2, scale2))) * gate2

    def forward(
        self,
        x: torch.Tensor,
        context: torch.Tensor,
        vec: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """x ``[B, S, dim]`` fp32 video tokens, context ``[B, T, dim]`` fp32 text tokens (valid ones only),
        vec ``[B, dim]``, rope ``(cos, sin)`` each ``[1, S, 1, head_dim // 2]`` -> (x, context), same shapes.

        The video projections go to ``attn_op.attend`` as functions, so a sequence-parallel op can overlap its
        all-to-alls with them."""
        img_mods = self.img_mod(vec).unsqueeze(1).chunk(6, dim=-1)  # six [B, 1, dim]
        txt_mods = self.txt_mod(vec).unsqueeze(1).chunk(6, dim=-1)
        q_of, k_of, v_of = self._qkv("img", x, img_mods[0], img_mods[1])
        cos, sin = rope
        tq, tk, tv = [f() for f in self._qkv("txt", context, txt_mods[0], txt_mods[1])]
        attn, txt_attn = self.attn_op.attend(
            lambda: apply_rotary(q_of(), cos, sin), lambda: apply_rotary(k_of(), cos, sin), v_of,
            out_proj=lambda out: self.img_attn_proj(out.flatten(2)), joint_q=tq, joint_k=tk, joint_v=tv,
        )
        return (self._finish("img", x, attn, img_mods),
                self._finish("txt", context, self.txt_attn_proj(txt_attn.flatten(2)), txt_mods))


class HYFinalLayer(nn.Module):
    """Final AdaLN + projection to patch pixels (official ``FinalLayer``; its modulation is ``(shift, scale)``).

    ``[B, S, dim]`` -> ``[B, S, out_channels * prod(patch)]`` in the weights' dtype.
    """

    def __init__(self, dim: int, out_features: int) -> None:
        super().__init__()
        self.norm_final = HYLayerNorm(dim, eps=1e-6, elementwise_affine=False)
        self.linear = nn.Linear(dim, out_features)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), nn.Linear(dim, 2 * dim))

    def forward(self, x: torch.Tensor, vec: torch.Tensor) -> torch.Tensor:
        """x ``[B, S, dim]``, vec ``[B, dim]`` -> ``[B, S, out_features]``."""
        dtype = self.linear.weight.dtype
        shift, scale = wide(self.adaLN_modulation[1](F.silu(wide(vec)).to(dtype))).unsqueeze(1).chunk(2, dim=-1)
        return self.linear(_modulate(self.norm_final(x), shift, scale).to(dtype))
