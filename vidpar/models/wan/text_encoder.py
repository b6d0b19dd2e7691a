"""Wan's text encoder: the encoder half of umt5-xxl (HF ``UMT5EncoderModel``), 512 tokens, dim 4096.

``encode`` reproduces diffusers' ``WanPipeline._get_t5_prompt_embeds``: pad every prompt to ``max_length`` with an
attention mask, run the encoder, then zero the states past each prompt's real length (EOS included). One
deliberate difference: a prompt longer than ``max_length`` tokens is an error here (diffusers silently truncates).
``check_prompts`` only tokenizes, so every rank can validate prompts before loading weights or entering a collective.

Two checkpoint layouts load:
- diffusers: ``<pipeline>/text_encoder`` (safetensors) and ``<pipeline>/tokenizer`` -> ``WanTextEncoder.from_pretrained``.
- official Wan: ``models_t5_umt5-xxl-enc-bf16.pth`` (Wan's own T5 key names) plus a ``google/umt5-xxl`` tokenizer
  folder -> ``WanTextEncoder.from_official``; keys are renamed with ``official_t5_to_hf``.
"""

from __future__ import annotations

import html
import os
import re
from pathlib import Path
from collections.abc import Sequence

import torch

# transformers is an optional extra ("text"): imported inside functions so ``import vidpar`` never needs it.

_OFFICIAL_BLOCK_KEYS = {
    # official Wan T5 (wan/modules/t5.py) -> HF UMT5 encoder, per block; the same table appears in several
    # independent converters (e.g. HF->Wan umt5 scripts, MLX/JAX ports): gate.0 = wi_0 (GELU branch), fc1 = wi_1.
    "norm1.weight": "layer.0.layer_norm.weight",
    "attn.q.weight": "layer.0.SelfAttention.q.weight",
    "attn.k.weight": "layer.0.SelfAttention.k.weight",
    "attn.v.weight": "layer.0.SelfAttention.v.weight",
    "attn.o.weight": "layer.0.SelfAttention.o.weight",
    "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
    "norm2.weight": "layer.1.layer_norm.weight",
    "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",
    "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",
    "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight",
}


def clean_prompt(text: str) -> str:
    """diffusers' Wan ``prompt_clean``: ftfy (only if installed, as in diffusers), double HTML unescape, collapse
    whitespace."""
    try:
        import ftfy
    except ImportError:
        ftfy = None
    if ftfy is not None:
        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


def load_tokenizer(path: str | os.PathLike):
    """Tokenizer from ``path`` (a tokenizer folder, or a diffusers pipeline folder with a ``tokenizer/`` subfolder)."""
    from transformers import AutoTokenizer

    path = os.fspath(path)
    sub = os.path.join(path, "tokenizer")
    return AutoTokenizer.from_pretrained(sub if os.path.isdir(sub) else path)


def check_prompts(tokenizer, prompts: Sequence[str], max_length: int = 512, clean: bool = True) -> list[int]:
    """Token count (EOS included) of every prompt; raises ``PromptError`` (a ``ValueError``) naming the first
    prompt longer than ``max_length`` tokens (or not a string).

    Tokenization only: cheap, deterministic, identical on every rank.
    """
    from vidpar.models.family import PromptError

    if isinstance(prompts, str):
        raise TypeError("prompts must be a list of str, not one str")
    if len(prompts) == 0:
        raise ValueError("prompts is empty")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise PromptError(i, f"must be a string, got {type(p).__name__}")
    texts = [clean_prompt(p) if clean else p for p in prompts]
    counts = [len(ids) for ids in tokenizer(texts, add_special_tokens=True)["input_ids"]]
    for i, n in enumerate(counts):
        if n > max_length:
            raise PromptError(i, f"{n} tokens incl. EOS, too long for the text encoder (max {max_length})")
    return counts


def official_t5_to_hf(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename an official Wan T5 encoder state dict to HF ``UMT5EncoderModel`` keys.

    Raises ValueError on any unknown or missing key (a shared position embedding, i.e. plain T5, is not UMT5).
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key == "token_embedding.weight":
            out["shared.weight"] = value
            out["encoder.embed_tokens.weight"] = value  # tied in UMT5EncoderModel
        elif key == "norm.weight":
            out["encoder.final_layer_norm.weight"] = value
        else:
            m = re.fullmatch(r"blocks\.(\d+)\.(.+)", key)
            if m is None or m.group(2) not in _OFFICIAL_BLOCK_KEYS:
                raise ValueError(f"unexpected key in official T5 checkpoint: {key!r}")
            out[f"encoder.block.{m.group(1)}.{_OFFICIAL_BLOCK_KEYS[m.group(2)]}"] = value
    return out


def _umt5_config_from_official(state: dict[str, torch.Tensor]):
    """UMT5Config inferred from official tensor shapes; fixed values are those of Wan's ``umt5-xxl`` T5 (and of
    google/umt5-xxl): gated tanh-GELU FFN, 128 max relative distance, RMSNorm eps 1e-6."""
    from transformers import UMT5Config

    vocab, d_model = state["token_embedding.weight"].shape
    num_layers = 1 + max(int(k.split(".")[1]) for k in state if k.startswith("blocks."))
    num_buckets, num_heads = state["blocks.0.pos_embedding.embedding.weight"].shape
    inner = state["blocks.0.attn.q.weight"].shape[0]
    return UMT5Config(
        vocab_size=vocab,
        d_model=d_model,
        d_kv=inner // num_heads,
        d_ff=state["blocks.0.ffn.fc1.weight"].shape[0],
        num_layers=num_layers,
        num_heads=num_heads,
        relative_attention_num_buckets=num_buckets,
        relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu",
        layer_norm_epsilon=1e-6,
        dropout_rate=0.0,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )


class WanTextEncoder:
    """UMT5 encoder + tokenizer producing Wan's text conditioning.

    Args:
        model: a loaded ``transformers.UMT5EncoderModel`` (eval mode is set here).
        tokenizer: its tokenizer (T5 style: appends EOS, pads right with id 0).
        clean: apply diffusers' prompt cleaning before tokenizing (default, for parity with diffusers).
    """

    def __init__(self, model, tokenizer, clean: bool = True) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.clean = clean

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        dtype: torch.dtype = torch.bfloat16,
        device: str | torch.device = "cpu",
        clean: bool = True,
    ) -> WanTextEncoder:
        """Load from a diffusers pipeline folder (``text_encoder/`` + ``tokenizer/``), safetensors only."""
        from transformers import UMT5EncoderModel

        path = os.fspath(path)
        model = UMT5EncoderModel.from_pretrained(os.path.join(path, "text_encoder"), dtype=dtype, use_safetensors=True)
        return cls(model.to(device), load_tokenizer(os.path.join(path, "tokenizer")), clean=clean)

    @classmethod
    def from_official(
        cls,
        checkpoint: str | os.PathLike,
        tokenizer_path: str | os.PathLike,
        dtype: torch.dtype = torch.bfloat16,
        device: str | torch.device = "cpu",
        clean: bool = True,
    ) -> WanTextEncoder:
        """Load Wan's official ``models_t5_umt5-xxl-enc-bf16.pth`` (``torch.load(weights_only=True)``) and a
        ``google/umt5-xxl`` tokenizer folder."""
        from transformers import UMT5EncoderModel

        from vidpar.models.weights import load_torch_file

        state = load_torch_file(Path(checkpoint), mmap=True)
        config = _umt5_config_from_official(state)
        with torch.device("meta"):
            model = UMT5EncoderModel(config)
        hf_state = official_t5_to_hf(state)
        expected = set(model.state_dict().keys())
        if set(hf_state) != expected:
            missing, extra = sorted(expected - set(hf_state)), sorted(set(hf_state) - expected)
            raise ValueError(f"official T5 checkpoint does not match UMT5: missing {missing[:5]}, extra {extra[:5]}")
        hf_state = {k: v.to(dtype) for k, v in hf_state.items()}
        model.load_state_dict(hf_state, assign=True, strict=True)
        model.tie_weights()  # ``shared`` and ``embed_tokens`` must stay one tensor after assign
        return cls(model.to(device), load_tokenizer(tokenizer_path), clean=clean)

    @property
    def dim(self) -> int:
        return self.model.config.d_model

    def check_prompts(self, prompts: Sequence[str], max_length: int = 512) -> list[int]:
        """Token counts; raises ValueError for a prompt longer than ``max_length`` (see module ``check_prompts``)."""
        return check_prompts(self.tokenizer, prompts, max_length, clean=self.clean)

    @torch.no_grad()
    def encode(self, prompts: Sequence[str], max_length: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode prompts as diffusers' Wan pipeline does.

        Args:
            prompts: B strings; each must fit in ``max_length`` tokens including EOS.
            max_length: padded text length L (512 for Wan).
        Returns:
            states: ``[B, L, dim]`` in the model's dtype, on the model's device; rows at and past ``lengths[b]`` are 0.
            lengths: ``[B]`` int64 on CPU, real token count of each prompt (EOS included).
        """
        self.check_prompts(prompts, max_length)
        texts = [clean_prompt(p) if self.clean else p for p in prompts]
        tok = self.tokenizer(
            texts,
            padding="max_length",
            max_length=max_length,
            truncation=True,  # never cuts: lengths were checked above
            add_special_tokens=True,
            return_attention_mask=True,
            return_tensors="pt",
        )
        ids, mask = tok["input_ids"], tok["attention_mask"]
        lengths = mask.gt(0).sum(dim=1).long()
        device = self.model.get_input_embeddings().weight.device
        states = self.model(input_ids=ids.to(device), attention_mask=mask.to(device)).last_hidden_state
        # Zero (not mask-multiply) the padded rows: the DiT's cross-attention sees exactly diffusers' zeros.
        keep = torch.arange(max_length, device=device)[None, :] < lengths.to(device)[:, None]
        return states.masked_fill(~keep[..., None], 0), lengths
