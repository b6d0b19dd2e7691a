"""Built-in models that need no download.

``tiny``: a small Wan-architecture DiT, a small Wan 2.1-style VAE and a small UMT5 with a character-level tokenizer,
all with random weights drawn deterministically (seeded, in a forked RNG so the caller's RNG is untouched). It makes
the whole pipeline run in seconds anywhere; the video is noise-like by design.
"""

from __future__ import annotations

import string

import torch

from .text_encoder import WanTextEncoder
from .transformer import WanTransformer3D
from .transformer_config import WanTransformerConfig
from .vae import WanVAE
from .vae_config import WanVAEConfig

TINY_TEXT_LEN = 128
TINY_TEXT_DIM = 32
# The tiny UMT5 text encoder (width TINY_TEXT_DIM), in ``umt5_encoder_params``' names.
TINY_UMT5 = dict(vocab=128, d_kv=8, num_heads=4, d_ff=64, num_layers=2, num_buckets=8)


def char_tokenizer():
    """T5-style character tokenizer (pad 0, eos 1, unk 2, one token per printable character)."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2}
    for ch in string.printable[:95]:
        vocab.setdefault(ch, len(vocab))
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex("."), behavior="isolated")
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>", padding_side="right"
    )


def tiny_transformer_config() -> WanTransformerConfig:
    return WanTransformerConfig(
        dim=48, num_heads=3, num_layers=2, ffn_dim=96, in_channels=16, out_channels=16,
        text_dim=TINY_TEXT_DIM, freq_dim=32, text_len=TINY_TEXT_LEN,
    )


def tiny_vae_config() -> WanVAEConfig:
    return WanVAEConfig(base_dim=8, z_dim=16, dim_mult=(1, 1, 1, 1), num_res_blocks=1)


def _perturbed(module: torch.nn.Module, std: float) -> torch.nn.Module:
    # Default inits leave zeros and ones (norms, biases); noise makes every weight matter.
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * std)
    return module.eval()


def build_tiny(
    seed: int = 0, load_text_encoder: bool = True, attention_backend: str = "auto"
) -> tuple[WanTransformer3D, WanVAE, WanTextEncoder | None, object]:
    """The ``tiny`` model: ``(transformer, vae, text_encoder or None, tokenizer)``, identical on every call."""
    from transformers import UMT5Config, UMT5EncoderModel

    tokenizer = char_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        transformer = _perturbed(WanTransformer3D(tiny_transformer_config(), attention_backend), 0.05)
        vae = _perturbed(WanVAE(tiny_vae_config()), 0.05)
        text_encoder = None
        if load_text_encoder:
            u = TINY_UMT5
            config = UMT5Config(
                vocab_size=u["vocab"], d_model=TINY_TEXT_DIM, d_kv=u["d_kv"], num_heads=u["num_heads"],
                d_ff=u["d_ff"], num_layers=u["num_layers"], relative_attention_num_buckets=u["num_buckets"],
                feed_forward_proj="gated-gelu", dropout_rate=0.0, pad_token_id=0, eos_token_id=1,
                decoder_start_token_id=0,
            )
            text_encoder = WanTextEncoder(_perturbed(UMT5EncoderModel(config), 0.02), tokenizer)
    return transformer, vae, text_encoder, tokenizer
