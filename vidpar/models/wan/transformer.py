"""Single-device Wan diffusion transformer (Wan 2.1 T2V/I2V, Wan 2.2 A14B experts and TI2V-5B).

Token flow, with the submodules a sharding plan hooks::

    latents [B, C, F, H, W]
      -> patch_embedding -> x [B, S, dim]            (S = f*h*w, (f, h, w) row-major)
      -> rope(grid)      -> (cos, sin) [1, S, 1, head_dim/2]
      -> time_embedder(timestep [B] or [B, S]) -> e [B, 1|S, dim], e0 [B, 1|S, 6, dim]
      -> blocks[i] (self_attn.attn_op is the only op that mixes tokens)
      -> head(x, e) -> [B, S, C_out * prod(patch)]
      -> unpatchify -> [B, C_out, F, H, W]

Between ``patch_embedding`` and ``head`` everything is per-token and takes its token count from the tensors it
receives, so a plan can split the sequence there without touching this code.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn

from vidpar.models.block_loop import BlockLoop, Stream

from .rope import WanRotaryEmbedding
from .transformer_config import WanTransformerConfig
from .transformer_plan import wan_transformer_plan
from .transformer_layers import (
    wide,
    WanAttentionBlock,
    WanHead,
    WanImageEmbedding,
    WanPatchEmbedding,
    WanTimeEmbedding,
)


class WanTransformer3D(nn.Module):
    """The Wan DiT.

    Args:
        config: model sizes (see ``WanTransformerConfig``; ``WanTransformerConfig.preset(name)`` for real ones).
        attention_backend: backend of every ``LocalAttention`` (see ``vidpar.kernels``), default ``"auto"``.
    """

    def __init__(self, config: WanTransformerConfig, attention_backend: str = "auto") -> None:
        super().__init__()
        c = config
        self.config = c
        self.attention_backend = attention_backend
        self.patch_embedding = WanPatchEmbedding(c.in_channels, c.dim, c.patch_size)
        self.rope = WanRotaryEmbedding(c.head_dim, c.rope_theta)
        self.text_embedding = nn.Sequential(
            nn.Linear(c.text_dim, c.dim), nn.GELU(approximate="tanh"), nn.Linear(c.dim, c.dim)
        )
        self.time_embedder = WanTimeEmbedding(c.freq_dim, c.dim)
        has_image = c.image_dim is not None
        if has_image:
            self.img_emb = WanImageEmbedding(c.image_dim, c.dim, c.image_pos_embed_len)
        self.blocks = nn.ModuleList(
            WanAttentionBlock(
                c.dim, c.ffn_dim, c.num_heads, c.qk_norm, c.cross_attn_norm, c.eps, has_image, attention_backend
            )
            for _ in range(c.num_layers)
        )
        self.head = WanHead(c.dim, c.out_channels, c.patch_size, c.eps)
        # The blocks as one call a step-cache policy can act on (vidpar.models.block_loop); the video tokens are
        # the one residual stream, split over the sequence-parallel ranks by the plan.
        self.block_loop = BlockLoop(self.blocks, (Stream("video", sharded=True),))

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_config(cls, config: WanTransformerConfig | str, attention_backend: str = "auto") -> "WanTransformer3D":
        """Randomly initialised model from a config or a preset name (``"wan2.1-t2v-1.3b"``...)."""
        if isinstance(config, str):
            config = WanTransformerConfig.preset(config)
        return cls(config, attention_backend)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        dtype: torch.dtype | None = None,
        device: torch.device | str = "cpu",
        attention_backend: str = "auto",
    ) -> "WanTransformer3D":
        """Load a diffusers-layout or official-layout safetensors checkpoint (single file or sharded).

        ``dtype`` casts the weights, except the timestep embedding, the modulation tables and the affine
        LayerNorms, which stay fp32 (they feed fp32 math). See ``transformer_loader.load_wan_transformer``.
        """
        from .transformer_loader import load_wan_transformer  # the loader imports this module

        return load_wan_transformer(path, dtype=dtype, device=device, attention_backend=attention_backend)

    # ------------------------------------------------------------------ forward

    def grid_size(self, latents: torch.Tensor) -> tuple[int, int, int]:
        """Token grid ``(f, h, w)`` of ``latents [B, C, F, H, W]``; raises if not divisible by the patch."""
        sizes = latents.shape[2:]
        if any(n % p for n, p in zip(sizes, self.config.patch_size)):
            raise ValueError(f"latent size {tuple(sizes)} is not divisible by patch size {self.config.patch_size}")
        f, h, w = (n // p for n, p in zip(sizes, self.config.patch_size))
        return f, h, w

    def _check_inputs(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        text_states: torch.Tensor,
        image_states: torch.Tensor | None,
        num_tokens: int,
    ) -> None:
        c = self.config
        if latents.dim() != 5 or latents.shape[1] != c.in_channels:
            raise ValueError(f"latents must be [B, {c.in_channels}, F, H, W], got {tuple(latents.shape)}")
        b = latents.shape[0]
        if timestep.dim() not in (1, 2) or timestep.shape[0] != b:
            raise ValueError(f"timestep must be [B] or [B, S] with B={b}, got {tuple(timestep.shape)}")
        if timestep.dim() == 2 and timestep.shape[1] != num_tokens:
            raise ValueError(f"per-token timestep must be [B, S] with S={num_tokens}, got {tuple(timestep.shape)}")
        if text_states.dim() != 3 or text_states.shape[0] != b or text_states.shape[2] != c.text_dim:
            raise ValueError(f"text_states must be [B={b}, L, {c.text_dim}], got {tuple(text_states.shape)}")
        if c.image_dim is None and image_states is not None:
            raise ValueError("this model has no image embedding (it is not Wan 2.1 I2V); pass image_states=None")
        if c.image_dim is not None:
            if image_states is None:
                raise ValueError(f"this model needs image_states [B, N, {c.image_dim}] (CLIP image features)")
            if image_states.dim() != 3 or image_states.shape[-1] != c.image_dim:
                raise ValueError(f"image_states must be [B, N, {c.image_dim}], got {tuple(image_states.shape)}")

    def forward(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        text_states: torch.Tensor,
        image_states: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the flow (velocity) for noisy latents.

        Args:
            latents: ``[B, C_in, F, H, W]``; F, H, W divisible by the patch size.
            timestep: ``[B]``, or ``[B, S]`` per token (Wan 2.2 TI2V), ``S = (F/pt)*(H/ph)*(W/pw)``.
            text_states: ``[B, L, text_dim]`` (umT5 states; the pipeline pads them to 512 tokens).
            image_states: ``[B, 257, image_dim]`` CLIP states for Wan 2.1 I2V (``[B, 514, image_dim]`` FLF2V);
                None otherwise.

        Returns:
            ``[B, C_out, F, H, W]`` in the dtype of the head's weights.
        """
        grid = self.grid_size(latents)
        self._check_inputs(latents, timestep, text_states, image_states, math.prod(grid))

        x = wide(self.patch_embedding(latents))  # [B, S, dim]; the residual stream is fp32 (or fp64)
        rope = self.rope(grid, device=latents.device)
        e, e0 = self.time_embedder(timestep)

        dtype = self.text_embedding[0].weight.dtype
        context = self.text_embedding(text_states.to(dtype))
        context_img = self.img_emb(image_states) if image_states is not None else None
        if context_img is not None and context_img.shape[0] != x.shape[0]:
            raise ValueError(f"image_states give {context_img.shape[0]} images per batch of {x.shape[0]}")

        (x,) = self.block_loop((x,), e0, context, context_img, rope, modulation=e0,
                               modulation_sharded=timestep.dim() == 2)
        return self.unpatchify(self.head(x, e), grid)

    def unpatchify(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """``[B, S, C_out * pt*ph*pw]`` with ``S = f*h*w`` -> ``[B, C_out, f*pt, h*ph, w*pw]``."""
        f, h, w = grid
        pt, ph, pw = self.config.patch_size
        b = x.shape[0]
        x = x.reshape(b, f, h, w, pt, ph, pw, -1)
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)  # b c f pt h ph w pw
        return x.reshape(b, -1, f * pt, h * ph, w * pw)

    def parallel_plan(self) -> dict:
        """The sequence-parallel sharding plan (see ``transformer_plan``), used by ``vidpar.parallelize``."""
        return wan_transformer_plan()

    def extra_repr(self) -> str:
        c = self.config
        return (f"dim={c.dim}, heads={c.num_heads}, layers={c.num_layers}, ffn={c.ffn_dim}, "
                f"in={c.in_channels}, out={c.out_channels}, image_dim={c.image_dim}")
