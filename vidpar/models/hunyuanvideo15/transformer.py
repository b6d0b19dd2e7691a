"""Single-device HunyuanVideo-1.5 diffusion transformer (all released 480p/720p T2V/I2V variants).

Token flow, with the submodules a sharding plan hooks::

    latents [B, C_in, F, H, W]
      -> img_in            -> x [B, S, dim]                  (S = f*h*w, (f, h, w) row-major)
      -> rope(grid)        -> (cos, sin) [1, S, 1, head_dim/2]
      -> time_in(timestep) (+ time_r_in(timestep_r))   -> vec [B, dim]
      -> joint tokens per sample, padding dropped:     [image | glyph | text]  -> context [1, T_b, dim]
      -> blocks[i](x, context, vec, rope)  (attn_op is the only op that mixes tokens)
      -> final_layer(x, vec) -> [B, S, C_out * prod(patch)]
      -> unpatchify          -> [B, C_out, F, H, W]

Padded text, glyph and image tokens never enter the computation: the reference masks them out of every
attention (as keys) and of the text pooling, so dropping them is exact, and no padded value can change a result.
Between ``img_in`` and ``final_layer`` everything touching the video tokens is per-token, so a plan can split the
sequence there without touching this code; the text tokens stay whole on every rank.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from vidpar.models.block_loop import BlockLoop, Stream

from .rope import HunyuanVideo15RotaryEmbedding
from .transformer_config import GLYPH_HIDDEN_DIM, HunyuanVideo15TransformerConfig
from .transformer_layers import (
    HYDoubleStreamBlock,
    HYFinalLayer,
    HYGlyphProjection,
    HYPatchEmbedding,
    HYTimestepEmbedder,
    HYTokenRefiner,
    HYVisionProjection,
    wide,
)
from .transformer_plan import hy15_transformer_plan

# Rows of ``cond_type_embedding`` added to each kind of joint token (official order).
TEXT_TYPE, GLYPH_TYPE, IMAGE_TYPE = 0, 1, 2


class HunyuanVideo15Transformer3D(nn.Module):
    """The HunyuanVideo-1.5 DiT: 54 dual-stream (MMDiT) blocks over video and text tokens.

    Args:
        config: model sizes (``HunyuanVideo15TransformerConfig.preset(name)`` for the released ones).
        attention_backend: backend of every ``LocalAttention`` (see ``vidpar.kernels``), default ``"auto"``.
    """

    def __init__(self, config: HunyuanVideo15TransformerConfig, attention_backend: str = "auto") -> None:
        super().__init__()
        c = config
        self.config = c
        self.attention_backend = attention_backend
        d = c.hidden_size
        self.img_in = HYPatchEmbedding(c.in_channels, d, c.patch_size)
        self.rope = HunyuanVideo15RotaryEmbedding(c.rope_axes_dim, c.rope_theta)
        self.time_in = HYTimestepEmbedder(d)
        if c.use_meanflow:
            self.time_r_in = HYTimestepEmbedder(d)
        self.txt_in = HYTokenRefiner(c.text_dim, d, c.num_heads, c.num_refiner_layers, c.refiner_ffn_dim,
                                     attention_backend)
        self.byt5_in = HYGlyphProjection(c.glyph_dim, GLYPH_HIDDEN_DIM, d)
        self.vision_in = HYVisionProjection(c.image_dim, d)
        self.cond_type_embedding = nn.Embedding(3, d)
        self.blocks = nn.ModuleList(
            HYDoubleStreamBlock(d, c.num_heads, c.ffn_dim, attention_backend) for _ in range(c.num_layers)
        )
        self.final_layer = HYFinalLayer(d, c.out_channels * c.patch_volume)
        # The blocks as one call a step-cache policy can act on (vidpar.models.block_loop): the video stream is
        # split over the sequence-parallel ranks, the text stream is full on every rank and unused after the loop.
        self.block_loop = BlockLoop(self.blocks, (Stream("video", sharded=True),
                                                  Stream("text", sharded=False, output=False)))

    # ------------------------------------------------------------------ construction

    @classmethod
    def from_config(
        cls, config: HunyuanVideo15TransformerConfig | str, attention_backend: str = "auto"
    ) -> "HunyuanVideo15Transformer3D":
        """Randomly initialised model from a config or a preset name (``"hunyuanvideo-1.5-480p-t2v"``...)."""
        if isinstance(config, str):
            config = HunyuanVideo15TransformerConfig.preset(config)
        return cls(config, attention_backend)

    @classmethod
    def from_pretrained(
        cls,
        path: str | Path,
        dtype: torch.dtype | None = None,
        device: torch.device | str = "cpu",
        attention_backend: str = "auto",
    ) -> "HunyuanVideo15Transformer3D":
        """Load a diffusers-layout or official-layout safetensors checkpoint (single file or sharded).

        See ``transformer_loader.load_hunyuanvideo15_transformer``.
        """
        from .transformer_loader import load_hunyuanvideo15_transformer  # the loader imports this module

        return load_hunyuanvideo15_transformer(path, dtype=dtype, device=device, attention_backend=attention_backend)

    # ------------------------------------------------------------------ inputs

    def grid_size(self, latents: torch.Tensor) -> tuple[int, int, int]:
        """Token grid ``(f, h, w)`` of ``latents [B, C, F, H, W]``; raises if not divisible by the patch."""
        sizes = latents.shape[2:]
        if any(n % p for n, p in zip(sizes, self.config.patch_size)):
            raise ValueError(f"latent size {tuple(sizes)} is not divisible by patch size {self.config.patch_size}")
        f, h, w = (n // p for n, p in zip(sizes, self.config.patch_size))
        return f, h, w

    def _check_inputs(self, latents, timestep, text_states, text_mask, glyph_states, glyph_mask, image_states,
                      timestep_r) -> None:
        c = self.config
        if not isinstance(latents, torch.Tensor) or latents.dim() != 5 or latents.shape[1] != c.in_channels:
            raise ValueError(f"latents must be [B, {c.in_channels}, F, H, W], got {_shape(latents)}")
        b = latents.shape[0]
        for name, t in (("timestep", timestep), ("timestep_r", timestep_r)):
            if t is not None and (not isinstance(t, torch.Tensor) or t.shape != (b,)):
                raise ValueError(f"{name} must be [B={b}], got {_shape(t)}")
        if timestep_r is not None and not c.use_meanflow:
            raise ValueError("timestep_r is only for MeanFlow (step-distilled) checkpoints; this config has "
                             "use_meanflow=False")
        for name, states, mask, dim in (("text", text_states, text_mask, c.text_dim),
                                        ("glyph", glyph_states, glyph_mask, c.glyph_dim)):
            if states is None:
                if mask is not None:
                    raise ValueError(f"{name}_mask is given without {name}_states")
                continue
            if not isinstance(states, torch.Tensor) or states.dim() != 3 or states.shape[0] != b \
                    or states.shape[2] != dim:
                raise ValueError(f"{name}_states must be [B={b}, L, {dim}], got {_shape(states)}")
            if mask is not None and (not isinstance(mask, torch.Tensor) or mask.shape != states.shape[:2]):
                raise ValueError(f"{name}_mask must be [B, L] = {tuple(states.shape[:2])}, got {_shape(mask)}")
            if mask is not None and mask.dtype != torch.bool and ((mask != 0) & (mask != 1)).any():
                raise ValueError(f"{name}_mask must hold only 0/1 (or bool) values")
        if text_states is None:
            raise ValueError("text_states are required")
        if text_mask is None and text_states.shape[1] == 0:
            raise ValueError("text_states hold no tokens; every sample needs at least one valid text token")
        if text_mask is not None and (text_mask.sum(dim=1) == 0).any():
            raise ValueError("every sample needs at least one valid text token (text_mask is all zeros for "
                             f"samples {torch.nonzero(text_mask.sum(dim=1) == 0).flatten().tolist()})")
        if image_states is not None and (not isinstance(image_states, torch.Tensor) or image_states.dim() != 3
                                         or image_states.shape[0] != b or image_states.shape[2] != c.image_dim):
            raise ValueError(f"image_states must be [B={b}, N, {c.image_dim}] or None, got {_shape(image_states)}")

    # ------------------------------------------------------------------ forward

    def forward(
        self,
        latents: torch.Tensor,
        timestep: torch.Tensor,
        text_states: torch.Tensor,
        text_mask: torch.Tensor | None = None,
        glyph_states: torch.Tensor | None = None,
        glyph_mask: torch.Tensor | None = None,
        image_states: torch.Tensor | None = None,
        timestep_r: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predict the flow (velocity) for noisy latents.

        Args:
            latents: ``[B, C_in, F, H, W]``: noisy latent, condition latent and mask concatenated on channels
                (32 + 32 + 1 in the releases); F, H, W divisible by the patch size.
            timestep: ``[B]`` flow-matching timesteps (0..1000).
            text_states: ``[B, L, text_dim]`` Qwen2.5-VL states (template prefix cropped).
            text_mask: ``[B, L]`` bool or 0/1, True for valid tokens (None: all valid); >= 1 valid per sample.
            glyph_states: ``[B, L2, glyph_dim]`` ByT5 states of the quoted glyph text, or None (no glyph text).
            glyph_mask: ``[B, L2]`` (None: all valid); an all-zero mask means no glyph tokens.
            image_states: ``[B, N, image_dim]`` SigLIP states of the reference image (I2V), or None for
                text-to-video (no image tokens). All-zero ``image_states`` also mean text-to-video, as in
                diffusers and the official code, whose pipelines pass zeros for it.
            timestep_r: ``[B]`` MeanFlow target timesteps (step-distilled checkpoints only), or None.

        Text, glyph and image inputs and masks must be identical on every rank of a sequence-parallel group.

        Returns:
            ``[B, C_out, F, H, W]`` in the dtype of the final layer's weights.
        """
        self._check_inputs(latents, timestep, text_states, text_mask, glyph_states, glyph_mask, image_states,
                           timestep_r)
        grid = self.grid_size(latents)
        if image_states is not None and not image_states.any():  # the references' text-to-video convention
            image_states = None

        x = wide(self.img_in(latents))  # [B, S, dim]; the residual streams are fp32 (or fp64)
        rope = self.rope(grid, device=latents.device)
        vec = self.time_in(timestep)
        if timestep_r is not None:
            vec = vec + self.time_r_in(timestep_r)
        contexts = [self.joint_tokens(i, timestep, text_states, text_mask, glyph_states, glyph_mask, image_states)
                    for i in range(latents.shape[0])]

        if len({ctx.shape[1] for ctx in contexts}) == 1:  # same number of valid tokens: one batched pass
            x = self.run_blocks(x, torch.cat(contexts), vec, rope)
        else:  # each sample with its own valid tokens (exact; the pipeline calls with B=1 per CFG branch)
            x = torch.cat([self.run_blocks(x[i : i + 1], ctx, vec[i : i + 1], rope)
                           for i, ctx in enumerate(contexts)])
        return self.unpatchify(self.final_layer(x, vec), grid)

    def run_blocks(
        self, x: torch.Tensor, context: torch.Tensor, vec: torch.Tensor, rope: tuple[torch.Tensor, torch.Tensor]
    ) -> torch.Tensor:
        """The dual-stream blocks. x ``[B, S, dim]``, context ``[B, T, dim]``, vec ``[B, dim]`` -> ``[B, S, dim]``."""
        x, _ = self.block_loop((x, context), vec, rope, modulation=vec)
        return x

    def joint_tokens(
        self,
        i: int,
        timestep: torch.Tensor,
        text_states: torch.Tensor,
        text_mask: torch.Tensor | None,
        glyph_states: torch.Tensor | None,
        glyph_mask: torch.Tensor | None,
        image_states: torch.Tensor | None,
    ) -> torch.Tensor:
        """Sample ``i``'s valid joint tokens ``[1, T_i, dim]`` fp32, in the reference's order [image, glyph, text]."""
        cond = wide(self.cond_type_embedding.weight)
        parts = []
        if image_states is not None:
            parts.append(self.vision_in(image_states[i : i + 1]) + cond[IMAGE_TYPE])
        if glyph_states is not None:
            glyph = _valid(glyph_states[i], glyph_mask, i)
            if glyph.shape[0]:
                parts.append(wide(self.byt5_in(glyph[None])) + cond[GLYPH_TYPE])
        text = _valid(text_states[i], text_mask, i)
        parts.append(self.txt_in(text[None], timestep[i : i + 1]) + cond[TEXT_TYPE])
        return torch.cat(parts, dim=1)

    def unpatchify(self, x: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """``[B, S, C_out * pt*ph*pw]`` with ``S = f*h*w`` -> ``[B, C_out, f*pt, h*ph, w*pw]``.

        The channel dim comes before the patch dims (official ``nthwcopq -> nctohpwq``).
        """
        f, h, w = grid
        pt, ph, pw = self.config.patch_size
        b = x.shape[0]
        x = x.reshape(b, f, h, w, -1, pt, ph, pw)
        x = x.permute(0, 4, 1, 5, 2, 6, 3, 7)  # b c f pt h ph w pw
        return x.reshape(b, -1, f * pt, h * ph, w * pw)

    def parallel_plan(self) -> dict:
        """The sequence-parallel sharding plan (see ``transformer_plan``), used by ``vidpar.parallelize``."""
        return hy15_transformer_plan()

    def extra_repr(self) -> str:
        c = self.config
        return (f"dim={c.hidden_size}, heads={c.num_heads}, layers={c.num_layers}, in={c.in_channels}, "
                f"out={c.out_channels}, patch={c.patch_size}, task={c.task!r}, meanflow={c.use_meanflow}")


def _valid(states: torch.Tensor, mask: torch.Tensor | None, i: int) -> torch.Tensor:
    """The rows of ``states [L, D]`` whose mask entry (row ``i`` of ``mask [B, L]``) is set."""
    return states if mask is None else states[mask[i].bool()]


def _shape(t) -> str:
    return str(tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__

