"""HunyuanVideo-1.5's main text encoder: the Qwen2.5-VL language model read through a chat template.

``encode`` reproduces diffusers' ``HunyuanVideo15Pipeline._get_mllm_prompt_embeds``: every prompt becomes the
conversation ``[system: SYSTEM_MESSAGE, user: prompt]`` (an empty prompt becomes ``" "``) rendered with the
tokenizer's chat template plus the assistant header, padded to ``crop_start + max_length`` tokens; the model's
``hidden_states[-(skip_layers + 1)]`` (layer -3, no final norm) and the attention mask are returned without the
first ``crop_start`` tokens (the template prefix: system turn + ``<|im_start|>user\\n``).

Two deliberate differences, both refusals of inputs diffusers would silently get wrong:
- a prompt with more than ``max_length`` tokens after the prefix (the 5-token end of turn + assistant header
  included) is a ``ValueError`` (diffusers truncates it);
- the template prefix must be exactly ``crop_start`` tokens (diffusers hard-codes 108, the length for the real
  Qwen2.5-VL tokenizer), checked when the tokenizer is wrapped, and every prompt must leave those tokens unchanged
  (a prompt starting with a newline merges with the prefix's last token); otherwise the crop would cut prompt
  tokens or keep template tokens.
Both checks tokenize only, so every rank can run them before any weight is loaded or any collective.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

# transformers is an optional extra ("text"): imported inside functions so ``import vidpar`` never needs it.

#: HunyuanVideo-1.5's video system prompt (the official ``li-dit-encode-video-json`` template; diffusers' string).
SYSTEM_MESSAGE = (
    "You are a helpful assistant. Describe the video by detailing the following aspects: "
    "        1. The main content and theme of the video. "
    "        2. The color, shape, size, texture, quantity, text, and spatial relationships of the objects. "
    "        3. Actions, events, behaviors temporal relationships, physical movement changes of the objects. "
    "        4. background environment, light, style and atmosphere. "
    "        5. camera angles, movements, and transitions used in the video."
)
CROP_START = 108  # template prefix length with the real Qwen2.5-VL tokenizer (diffusers' hard-coded value)
MAX_TEXT_TOKENS = 1000  # text tokens the DiT sees (after the crop)
SKIP_LAYERS = 2  # hidden_states[-(2 + 1)]
USER_MARKER = "<|im_start|>user\n"


def _conversations(prompts: Sequence[str], system_message: str) -> list[list[dict[str, str]]]:
    return [[{"role": "system", "content": system_message}, {"role": "user", "content": p or " "}] for p in prompts]


def _check_str_list(prompts: Sequence[str]) -> None:
    if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
        raise TypeError("prompts must be a list of str")
    if len(prompts) == 0:
        raise ValueError("prompts is empty")


class TemplateTokenizer:
    """The Qwen2 tokenizer with HunyuanVideo-1.5's chat template, crop and length limit (no weights).

    Args:
        tokenizer: a ``transformers`` Qwen2 tokenizer with a chat template.
        crop_start: tokens of the template prefix that are cropped from the model's output.
        max_length: text tokens kept after the crop (the DiT's text length).
        system_message: the system turn.
    Raises:
        ValueError: if the template prefix is not ``crop_start`` tokens long.
    """

    def __init__(
        self,
        tokenizer,
        crop_start: int = CROP_START,
        max_length: int = MAX_TEXT_TOKENS,
        system_message: str = SYSTEM_MESSAGE,
    ) -> None:
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError("the Qwen tokenizer has no chat template (chat_template.jinja / tokenizer_config.json)")
        if crop_start < 1 or max_length < 1:
            raise ValueError(f"crop_start and max_length must be >= 1, got {crop_start} and {max_length}")
        self.tokenizer = tokenizer
        self.crop_start = int(crop_start)
        self.max_length = int(max_length)
        self.system_message = system_message
        self.prefix = self._prefix_ids()

    @classmethod
    def from_folder(cls, path: str | os.PathLike, **kwargs) -> TemplateTokenizer:
        """From a tokenizer folder, or a diffusers pipeline folder with a ``tokenizer/`` subfolder."""
        from transformers import AutoTokenizer

        path = os.fspath(path)
        sub = os.path.join(path, "tokenizer")
        folder = sub if os.path.isdir(sub) else path
        if not os.path.isdir(folder):  # never let transformers treat a missing path as a hub id
            raise ValueError(f"Qwen tokenizer folder not found: {folder}")
        return cls(AutoTokenizer.from_pretrained(folder, padding_side="right"), **kwargs)

    def _ids(self, prompts: Sequence[str]) -> list[list[int]]:
        out = self.tokenizer.apply_chat_template(
            _conversations(prompts, self.system_message), add_generation_prompt=True, tokenize=True, return_dict=True
        )
        return [list(ids) for ids in out["input_ids"]]

    def _prefix_ids(self) -> list[int]:
        """The prefix tokens (system turn + user marker), found as the official code does; must be ``crop_start``."""
        ids = self._ids(["a"])[0]
        marker = self.tokenizer(USER_MARKER, add_special_tokens=False)["input_ids"]
        starts = [i for i in range(len(ids) - len(marker) + 1) if ids[i : i + len(marker)] == marker]
        if not starts:
            raise ValueError(f"the chat template renders no {USER_MARKER!r} turn; cannot find the prompt's start")
        length = starts[0] + len(marker)
        if length != self.crop_start:
            raise ValueError(
                f"the tokenizer's template prefix (system message + {USER_MARKER!r}) is {length} tokens, but "
                f"crop_start is {self.crop_start}: cropping {self.crop_start} tokens would "
                f"{'keep template tokens' if length > self.crop_start else 'cut prompt tokens'}"
            )
        return ids[:length]

    def check(self, prompts: Sequence[str]) -> list[int]:
        """Text tokens of every prompt after the crop (end of turn + assistant header included).

        Raises ValueError naming the prompt if one is longer than ``max_length`` or changes the prefix tokens.
        """
        _check_str_list(prompts)
        counts = []
        for i, ids in enumerate(self._ids(prompts)):
            if ids[: self.crop_start] != self.prefix:
                raise ValueError(
                    f"prompt {i} ({prompts[i][:40]!r}) changes the template's first {self.crop_start} tokens (a "
                    f"leading newline merges with the prefix); strip leading whitespace"
                )
            counts.append(len(ids) - self.crop_start)
        too_long = [(i, n) for i, n in enumerate(counts) if n > self.max_length]
        if too_long:
            detail = ", ".join(f"prompt {i}: {n} tokens" for i, n in too_long)
            raise ValueError(
                f"prompt too long for the text encoder (max {self.max_length} tokens after the {self.crop_start}-token "
                f"template prefix, end of turn included): {detail}"
            )
        return counts

    def __call__(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(input_ids, attention_mask)``, both ``[B, crop_start + max_length]`` int64, padded right (checked)."""
        self.check(prompts)
        out = self.tokenizer.apply_chat_template(
            _conversations(prompts, self.system_message),
            add_generation_prompt=True,
            tokenize=True,
            return_dict=True,
            padding="max_length",
            max_length=self.crop_start + self.max_length,
            truncation=True,  # never cuts: lengths were checked above
            return_tensors="pt",
        )
        return out["input_ids"], out["attention_mask"]


class HunyuanTextEncoder:
    """Qwen2.5-VL text model + :class:`TemplateTokenizer`, producing HunyuanVideo-1.5's main text states.

    Args:
        model: a ``transformers.Qwen2_5_VLTextModel`` (eval mode is set here).
        tokenizer: the :class:`TemplateTokenizer` (or a raw Qwen2 tokenizer, wrapped with the defaults).
        skip_layers: the states are ``hidden_states[-(skip_layers + 1)]``.
    """

    def __init__(self, model, tokenizer, skip_layers: int = SKIP_LAYERS) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer if isinstance(tokenizer, TemplateTokenizer) else TemplateTokenizer(tokenizer)
        self.skip_layers = int(skip_layers)
        if not 0 <= self.skip_layers < model.config.num_hidden_layers:
            raise ValueError(f"skip_layers {skip_layers} outside [0, {model.config.num_hidden_layers})")

    @classmethod
    def from_pretrained(
        cls, path: str | os.PathLike, dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cpu"
    ) -> HunyuanTextEncoder:
        """Load a diffusers pipeline folder's ``text_encoder/`` (safetensors) and ``tokenizer/``."""
        from transformers import Qwen2_5_VLTextModel

        path = os.fspath(path)
        tokenizer = TemplateTokenizer.from_folder(os.path.join(path, "tokenizer"))  # checked before any weight
        model = Qwen2_5_VLTextModel.from_pretrained(
            os.path.join(path, "text_encoder"), dtype=dtype, use_safetensors=True
        )
        return cls(model.to(device), tokenizer)

    @classmethod
    def from_official(
        cls, llm_dir: str | os.PathLike, dtype: torch.dtype = torch.bfloat16, device: str | torch.device = "cpu"
    ) -> HunyuanTextEncoder:
        """Load the official ``ckpts/text_encoder/llm`` (a Qwen2.5-VL-7B-Instruct folder): its language model only."""
        from .official_layout import load_qwen_text_model

        tokenizer = TemplateTokenizer.from_folder(llm_dir)
        return cls(load_qwen_text_model(llm_dir, dtype).to(device), tokenizer)

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size

    @property
    def max_length(self) -> int:
        return self.tokenizer.max_length

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    def check_prompts(self, prompts: Sequence[str]) -> list[int]:
        """Token counts after the crop; raises ValueError (see :meth:`TemplateTokenizer.check`)."""
        return self.tokenizer.check(prompts)

    @torch.no_grad()
    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode prompts as diffusers' HunyuanVideo-1.5 pipelines do.

        Args:
            prompts: B strings, each within ``max_length`` tokens after the template prefix.
        Returns:
            states: ``[B, max_length, dim]`` in the model's dtype, on its device (padded rows are the model's raw
                states, as in diffusers; the DiT drops them by the mask).
            mask: ``[B, max_length]`` int64 on the model's device, 1 for real tokens.
        """
        ids, mask = self.tokenizer(prompts)
        device = self.model.get_input_embeddings().weight.device
        ids, mask = ids.to(device), mask.to(device)
        out = self.model(input_ids=ids, attention_mask=mask, output_hidden_states=True)
        states = out.hidden_states[-(self.skip_layers + 1)]
        crop = self.tokenizer.crop_start
        return states[:, crop:], mask[:, crop:]
