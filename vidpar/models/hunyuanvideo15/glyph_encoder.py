"""HunyuanVideo-1.5's glyph encoder: ByT5 (Glyph-SDXL-v2 weights) over the quoted text of a prompt.

``encode`` reproduces diffusers' ``HunyuanVideo15Pipeline._get_byt5_prompt_embeds``: the text inside ``"..."`` or
``“...”`` is extracted (repeats dropped when there are several), formatted ``Text "<t1>". Text "<t2>". ``,
byte-tokenized to 256 tokens (EOS included, padded) and encoded one prompt at a time by a ``T5EncoderModel``; a
prompt without quoted text gets all-zero states and an all-zero mask. One deliberate difference: quoted text longer
than 256 tokens is a ``ValueError`` (diffusers truncates it). ``GlyphTokenizer.check`` tokenizes only.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import torch

GLYPH_TOKENS = 256  # diffusers' tokenizer_2_max_length, the official byt5_max_length
_QUOTED = re.compile(r"\"(.*?)\"|“(.*?)”")


def extract_glyph_text(prompt: str) -> str | None:
    """The ByT5 input for ``prompt``: ``'Text "a". Text "b". '`` for quoted ``a`` and ``b``, or None if none.

    As diffusers and the official code: straight or curly double quotes, non-greedy, an empty pair counts, and
    repeated texts are kept once (in first-seen order) only when there are several.
    """
    texts = [straight or curly for straight, curly in _QUOTED.findall(prompt)]
    if len(texts) > 1:
        texts = list(dict.fromkeys(texts))
    if not texts:
        return None
    return "".join(f'Text "{t}". ' for t in texts)


class GlyphTokenizer:
    """``ByT5Tokenizer`` (with Glyph-SDXL-v2's colour/font tokens) applied to the extracted glyph text.

    Args:
        tokenizer: a ``transformers.ByT5Tokenizer``.
        max_length: tokens per prompt (EOS included).
    """

    def __init__(self, tokenizer, max_length: int = GLYPH_TOKENS) -> None:
        if max_length < 1:
            raise ValueError(f"max_length must be >= 1, got {max_length}")
        self.tokenizer = tokenizer
        self.max_length = int(max_length)

    @classmethod
    def from_folder(cls, path: str | os.PathLike, **kwargs) -> GlyphTokenizer:
        """From a tokenizer folder, or a diffusers pipeline folder with a ``tokenizer_2/`` subfolder."""
        from transformers import AutoTokenizer

        path = os.fspath(path)
        sub = os.path.join(path, "tokenizer_2")
        folder = sub if os.path.isdir(sub) else path
        if not os.path.isdir(folder):  # never let transformers treat a missing path as a hub id
            raise ValueError(f"ByT5 tokenizer folder not found: {folder}")
        return cls(AutoTokenizer.from_pretrained(folder), **kwargs)

    def check(self, prompts: Sequence[str]) -> list[int]:
        """Glyph tokens of every prompt (0 without quoted text); ValueError if one exceeds ``max_length``."""
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise TypeError("prompts must be a list of str")
        counts = []
        for prompt in prompts:
            text = extract_glyph_text(prompt)
            counts.append(0 if text is None else len(self.tokenizer(text, add_special_tokens=True)["input_ids"]))
        too_long = [(i, n) for i, n in enumerate(counts) if n > self.max_length]
        if too_long:
            detail = ", ".join(f"prompt {i}: {n} tokens" for i, n in too_long)
            raise ValueError(
                f"quoted text too long for the glyph encoder (max {self.max_length} ByT5 tokens): {detail}"
            )
        return counts

    def __call__(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(input_ids, attention_mask)`` ``[1, max_length]`` int64 for one prompt, or None without quoted text."""
        self.check([prompt])
        text = extract_glyph_text(prompt)
        if text is None:
            return None
        out = self.tokenizer(
            text, padding="max_length", max_length=self.max_length, truncation=True, add_special_tokens=True,
            return_tensors="pt",
        )
        return out["input_ids"], out["attention_mask"]


class GlyphEncoder:
    """ByT5 encoder + :class:`GlyphTokenizer`.

    Args:
        model: a ``transformers.T5EncoderModel`` (eval mode is set here).
        tokenizer: a :class:`GlyphTokenizer` (or a raw ByT5 tokenizer, wrapped with the defaults).
    """

    def __init__(self, model, tokenizer) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer if isinstance(tokenizer, GlyphTokenizer) else GlyphTokenizer(tokenizer)
        vocab = model.get_input_embeddings().weight.shape[0]
        if len(self.tokenizer.tokenizer) > vocab:
            raise ValueError(f"glyph tokenizer has {len(self.tokenizer.tokenizer)} tokens, the encoder only {vocab}")

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
    ) -> GlyphEncoder:
        """Load a diffusers pipeline folder's ``text_encoder_2/`` (safetensors) and ``tokenizer_2/``."""
        from transformers import T5EncoderModel

        path = os.fspath(path)
        tokenizer = GlyphTokenizer.from_folder(os.path.join(path, "tokenizer_2"))
        model = T5EncoderModel.from_pretrained(os.path.join(path, "text_encoder_2"), dtype=dtype, use_safetensors=True)
        return cls(model.to(device), tokenizer)

    @classmethod
    def from_official(
        cls, text_encoder_dir: str | os.PathLike, dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu"
    ) -> GlyphEncoder:
        """Load ``ckpts/text_encoder/{byt5-small, Glyph-SDXL-v2}`` (see ``official_layout.load_glyph_byt5``)."""
        from .official_layout import load_glyph_byt5

        model, tokenizer = load_glyph_byt5(text_encoder_dir, dtype)
        return cls(model.to(device), tokenizer)

    @property
    def dim(self) -> int:
        return self.model.config.d_model

    @property
    def max_length(self) -> int:
        return self.tokenizer.max_length

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    def check_prompts(self, prompts: Sequence[str]) -> list[int]:
        return self.tokenizer.check(prompts)

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode prompts one at a time, as diffusers.

        Returns:
            states: ``[B, max_length, dim]`` in the model's dtype on its device; all zeros for a prompt without
                quoted text.
            mask: ``[B, max_length]`` int64, 1 for real tokens (EOS included), all zeros without quoted text.
        """
        self.check_prompts(prompts)
        device = self.model.get_input_embeddings().weight.device
        states, masks = [], []
        for prompt in prompts:
            tokens = self.tokenizer(prompt)
            if tokens is None:
                states.append(torch.zeros(1, self.max_length, self.dim, dtype=self.dtype, device=device))
                masks.append(torch.zeros(1, self.max_length, dtype=torch.int64, device=device))
                continue
            ids, mask = tokens[0].to(device), tokens[1].to(device)
            # A float mask, as diffusers and the official code pass it.
            states.append(self.model(input_ids=ids, attention_mask=mask.float())[0])
            masks.append(mask)
        return torch.cat(states), torch.cat(masks)
