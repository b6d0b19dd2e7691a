"""Tiny UMT5 text encoder + word-level tokenizer in diffusers' folder layout, built offline for tests.

``build_tiny_text_encoder(folder)`` writes ``folder/text_encoder`` (safetensors) and ``folder/tokenizer``, the
layout of a diffusers Wan pipeline folder, and returns ``(model, tokenizer)``.
"""

from __future__ import annotations

import os

import torch

WORDS = (
    "a cat and dog run on the green grass under blue sky with red ball in kitchen baking cake slowly "
    "video of an old man walking near river at night bright light camera moves left right"
).split()
TINY_DIM = 32


def build_tiny_tokenizer():
    """Word-level T5-style tokenizer: pad 0, eos 1, unk 2, EOS appended; returns a ``PreTrainedTokenizerFast``."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for w in WORDS:
        vocab.setdefault(w, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", padding_side="right"
    )


def build_tiny_umt5(vocab_size: int = 64, seed: int = 0):
    """Random tiny ``UMT5EncoderModel`` (2 layers, d_model 32, 4 heads x 8, gated GELU FFN 64, 8 buckets)."""
    from transformers import UMT5Config, UMT5EncoderModel

    config = UMT5Config(
        vocab_size=vocab_size,
        d_model=TINY_DIM,
        d_kv=8,
        num_heads=4,
        d_ff=64,
        num_layers=2,
        relative_attention_num_buckets=8,
        relative_attention_max_distance=128,
        feed_forward_proj="gated-gelu",
        dropout_rate=0.0,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    torch.manual_seed(seed)
    model = UMT5EncoderModel(config).eval()
    # HF initializes norms to 1 and a small-std embedding; randomize everything so a wrong mapping cannot hide.
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    return model


def build_tiny_text_encoder(folder: str | os.PathLike, seed: int = 0):
    """Save a tiny UMT5 + tokenizer as ``folder/text_encoder`` and ``folder/tokenizer``; returns (model, tokenizer)."""
    tokenizer = build_tiny_tokenizer()
    assert len(tokenizer) <= 64
    model = build_tiny_umt5(seed=seed)
    model.save_pretrained(os.path.join(folder, "text_encoder"), safe_serialization=True)
    tokenizer.save_pretrained(os.path.join(folder, "tokenizer"))
    return model, tokenizer
