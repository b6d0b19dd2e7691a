"""Both HunyuanVideo-1.5 prompt encoders together: what diffusers' ``encode_prompt`` returns, with fixed shapes.

``HunyuanPromptEncoder.encode(prompts)`` returns the four tensors of ``HunyuanVideo15Pipeline.encode_prompt``
(Qwen states + mask, ByT5 states + mask); diffusers also casts them, masks included, to the transformer's dtype,
which is left to the caller here (masks stay int64). ``PromptTokenizers`` checks prompts without weights, and
``PromptSpec`` gives every rank the shapes and dtypes of the result without running an encoder (the pipeline
encodes on one rank and broadcasts).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from .glyph_encoder import GlyphEncoder, GlyphTokenizer
from .official_layout import official_encoder_paths
from .text_encoder import HunyuanTextEncoder, TemplateTokenizer

FIELDS = ("states", "mask", "glyph_states", "glyph_mask")


@dataclass(frozen=True)
class PromptSpec:
    """Shapes and dtypes of :class:`PromptStates` for a batch, known without weights.

    Attributes:
        text_len, text_dim: Qwen states ``[B, text_len, text_dim]`` (1000 x 3584 for the real model).
        glyph_len, glyph_dim: ByT5 states ``[B, glyph_len, glyph_dim]`` (256 x 1472).
        dtype: of the states (masks are int64).
    """

    text_len: int
    text_dim: int
    glyph_len: int
    glyph_dim: int
    dtype: torch.dtype

    def shapes(self, batch: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """``{field: (shape, dtype)}`` in :data:`FIELDS` order."""
        return {
            "states": ((batch, self.text_len, self.text_dim), self.dtype),
            "mask": ((batch, self.text_len), torch.int64),
            "glyph_states": ((batch, self.glyph_len, self.glyph_dim), self.dtype),
            "glyph_mask": ((batch, self.glyph_len), torch.int64),
        }

    def empty(self, batch: int, device: str | torch.device = "cpu") -> PromptStates:
        """Uninitialised tensors of the right shapes (receive buffers for a broadcast)."""
        return PromptStates(*(torch.empty(s, dtype=d, device=device) for s, d in self.shapes(batch).values()))


@dataclass
class PromptStates:
    """Encoded prompts; see :meth:`HunyuanPromptEncoder.encode` for shapes."""

    states: torch.Tensor
    mask: torch.Tensor
    glyph_states: torch.Tensor
    glyph_mask: torch.Tensor

    def tensors(self) -> tuple[torch.Tensor, ...]:
        """The four tensors in :data:`FIELDS` order (the order to broadcast them in)."""
        return tuple(getattr(self, f) for f in FIELDS)

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> PromptStates:
        """Move all four; ``dtype`` applies to the states only."""
        return PromptStates(
            self.states.to(device=device, dtype=dtype), self.mask.to(device),
            self.glyph_states.to(device=device, dtype=dtype), self.glyph_mask.to(device),
        )


def _hidden_size(config_path: str) -> int:
    """Hidden size from a ``config.json`` (Qwen2.5-VL folders nest it under ``text_config`` in newer saves)."""
    with open(config_path) as f:
        config = json.load(f)
    config = config.get("text_config") or config
    dim = config.get("hidden_size", config.get("d_model"))
    if not isinstance(dim, int):
        raise ValueError(f"{config_path}: no hidden_size / d_model")
    return dim


@dataclass
class PromptTokenizers:
    """Both tokenizers and the output spec, loaded without any weight (cheap on every rank)."""

    text: TemplateTokenizer
    glyph: GlyphTokenizer
    text_dim: int
    glyph_dim: int

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> PromptTokenizers:
        """From a diffusers pipeline folder (``tokenizer/``, ``tokenizer_2/``, the encoders' ``config.json``)."""
        path = os.fspath(path)
        return cls(
            TemplateTokenizer.from_folder(os.path.join(path, "tokenizer")),
            GlyphTokenizer.from_folder(os.path.join(path, "tokenizer_2")),
            _hidden_size(os.path.join(path, "text_encoder", "config.json")),
            _hidden_size(os.path.join(path, "text_encoder_2", "config.json")),
        )

    @classmethod
    def from_official(cls, ckpts: str | os.PathLike) -> PromptTokenizers:
        """From an official ``ckpts`` folder (the glyph tokenizer gets Glyph-SDXL-v2's added tokens)."""
        from transformers import AutoTokenizer

        from .official_layout import BYT5_DIR, GLYPH_DIR, glyph_special_tokens

        paths = official_encoder_paths(ckpts)
        small = os.path.join(paths["text_encoder"], BYT5_DIR)
        if not os.path.isdir(small):
            raise ValueError(f"google/byt5-small folder not found: {small}")
        glyph = AutoTokenizer.from_pretrained(small)
        assets = os.path.join(paths["text_encoder"], GLYPH_DIR, "assets")
        glyph.add_tokens(glyph_special_tokens(assets), special_tokens=True)
        return cls(
            TemplateTokenizer.from_folder(paths["llm"]), GlyphTokenizer(glyph),
            _hidden_size(os.path.join(paths["llm"], "config.json")), _hidden_size(os.path.join(small, "config.json")),
        )

    def check(self, prompts: Sequence[str]) -> None:
        """ValueError for a prompt too long for either encoder or one that breaks the template crop."""
        self.text.check(prompts)
        self.glyph.check(prompts)

    def spec(self, dtype: torch.dtype) -> PromptSpec:
        return PromptSpec(self.text.max_length, self.text_dim, self.glyph.max_length, self.glyph_dim, dtype)


class HunyuanPromptEncoder:
    """The Qwen2.5-VL text encoder and the ByT5 glyph encoder.

    Args:
        text: a :class:`HunyuanTextEncoder`.
        glyph: a :class:`GlyphEncoder`.
    """

    def __init__(self, text: HunyuanTextEncoder, glyph: GlyphEncoder) -> None:
        self.text = text
        self.glyph = glyph

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cpu"
    ) -> HunyuanPromptEncoder:
        """From a diffusers ``HunyuanVideo15Pipeline`` / ``HunyuanVideo15ImageToVideoPipeline`` folder."""
        text = HunyuanTextEncoder.from_pretrained(path, dtype, device)
        return cls(text, GlyphEncoder.from_pretrained(path, dtype, device))

    @classmethod
    def from_official(
        cls, ckpts: str | os.PathLike, dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cpu"
    ) -> HunyuanPromptEncoder:
        """From an official ``ckpts`` folder (``text_encoder/llm``, ``byt5-small``, ``Glyph-SDXL-v2``)."""
        paths = official_encoder_paths(ckpts)
        return cls(
            HunyuanTextEncoder.from_official(paths["llm"], dtype, device),
            GlyphEncoder.from_official(paths["text_encoder"], dtype, device),
        )

    def check_prompts(self, prompts: Sequence[str]) -> None:
        self.text.check_prompts(prompts)
        self.glyph.check_prompts(prompts)

    def spec(self) -> PromptSpec:
        """Output shapes/dtypes (states in the text model's dtype; the glyph states are cast to it by ``encode``)."""
        return PromptSpec(self.text.max_length, self.text.dim, self.glyph.max_length, self.glyph.dim, self.text.dtype)

    def encode(self, prompts: Sequence[str]) -> PromptStates:
        """Encode B prompts (both encoders, checked first, before any model runs).

        Returns :class:`PromptStates`: ``states [B, 1000, text_dim]``, ``mask [B, 1000]`` int64,
        ``glyph_states [B, 256, glyph_dim]`` (cast to ``states.dtype``), ``glyph_mask [B, 256]`` int64, all on the
        text model's device. For the negative branch pass ``""`` (what diffusers encodes for no negative prompt).
        """
        self.check_prompts(prompts)
        states, mask = self.text.encode(prompts)
        glyph_states, glyph_mask = self.glyph.encode(prompts)
        return PromptStates(
            states, mask, glyph_states.to(device=states.device, dtype=states.dtype), glyph_mask.to(states.device)
        )
