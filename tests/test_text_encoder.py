"""WanTextEncoder against the HF UMT5 encoder run directly (diffusers' Wan recipe), on a tiny offline model."""

from __future__ import annotations

import types

import pytest
import torch

pytest.importorskip("transformers")

from text_reference import TINY_DIM, build_tiny_text_encoder  # noqa: E402

from vidpar.models.wan.text_encoder import (  # noqa: E402
    WanTextEncoder,
    check_prompts,
    clean_prompt,
    load_tokenizer,
    official_t5_to_hf,
)

PROMPTS = ["a cat and dog run on the green grass", "old man", "  a   video of &amp; zebra  at night "]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny_wan")
    model, tokenizer = build_tiny_text_encoder(folder)
    return folder, model, tokenizer


def _reference(model, tokenizer, prompts, max_length):
    """diffusers' ``WanPipeline._get_t5_prompt_embeds`` steps, with the HF model called directly."""
    tok = tokenizer(
        [clean_prompt(p) for p in prompts],
        padding="max_length",
        max_length=max_length,
        truncation=True,
        add_special_tokens=True,
        return_attention_mask=True,
        return_tensors="pt",
    )
    seq_lens = tok.attention_mask.gt(0).sum(dim=1).long()
    with torch.no_grad():
        out = model(tok.input_ids, tok.attention_mask).last_hidden_state
    rows = [u[:v] for u, v in zip(out, seq_lens)]
    return torch.stack([torch.cat([u, u.new_zeros(max_length - u.size(0), u.size(1))]) for u in rows]), seq_lens


@pytest.mark.parametrize("max_length", [16, 12])
def test_encode_matches_hf_reference(tiny, max_length: int) -> None:
    folder, model, tokenizer = tiny
    enc = WanTextEncoder.from_pretrained(folder, dtype=torch.float32)
    states, lengths = enc.encode(PROMPTS, max_length=max_length)
    ref_states, ref_lens = _reference(model, tokenizer, PROMPTS, max_length)
    assert states.shape == (len(PROMPTS), max_length, TINY_DIM) and enc.dim == TINY_DIM
    assert lengths.dtype == torch.int64 and lengths.tolist() == ref_lens.tolist() == [10, 3, 8]
    assert torch.equal(states, ref_states)
    for b, n in enumerate(lengths.tolist()):
        assert states[b, n:].eq(0).all() and states[b, :n].abs().sum(-1).gt(0).all()


def test_encode_matches_diffusers_pipeline(tiny) -> None:
    """The real ``WanPipeline._get_t5_prompt_embeds`` (called on a duck-typed pipeline) as an independent reference."""
    pipeline_wan = pytest.importorskip("diffusers.pipelines.wan.pipeline_wan")
    folder, model, tokenizer = tiny
    fake_pipe = types.SimpleNamespace(tokenizer=tokenizer, text_encoder=model, _execution_device=torch.device("cpu"))
    with torch.no_grad():  # WanPipeline.__call__ is no_grad (HF attention takes another CPU kernel under grad)
        ref = pipeline_wan.WanPipeline._get_t5_prompt_embeds(fake_pipe, PROMPTS, max_sequence_length=16)
    states, _ = WanTextEncoder.from_pretrained(folder, dtype=torch.float32).encode(PROMPTS, max_length=16)
    assert torch.equal(states, ref)
    for text in PROMPTS + ["x &amp;amp; y\n\t z", "  "]:
        assert clean_prompt(text) == pipeline_wan.prompt_clean(text)


def test_batch_independent(tiny) -> None:
    """Padding is masked: a prompt encodes the same alone or in a batch."""
    folder, _, _ = tiny
    enc = WanTextEncoder.from_pretrained(folder, dtype=torch.float32)
    together, _ = enc.encode(PROMPTS, max_length=16)
    alone, _ = enc.encode(PROMPTS[1:2], max_length=16)
    torch.testing.assert_close(together[1:2], alone, rtol=1e-6, atol=1e-6)


def test_too_long_prompt_raises(tiny) -> None:
    folder, _, _ = tiny
    tokenizer = load_tokenizer(folder)  # no weights needed to validate
    assert check_prompts(tokenizer, PROMPTS, max_length=10) == [10, 3, 8]  # exactly max_length is fine
    with pytest.raises(ValueError, match=r"prompt 0: 10 tokens"):
        check_prompts(tokenizer, PROMPTS, max_length=9)
    enc = WanTextEncoder.from_pretrained(folder, dtype=torch.float32)
    with pytest.raises(ValueError, match="too long"):
        enc.encode(PROMPTS, max_length=9)
    with pytest.raises(TypeError):
        check_prompts(tokenizer, "a cat", max_length=8)


def test_bf16_load(tiny) -> None:
    folder, _, _ = tiny
    enc = WanTextEncoder.from_pretrained(folder, dtype=torch.bfloat16)
    states, lengths = enc.encode(PROMPTS[:2], max_length=12)
    assert states.dtype == torch.bfloat16 and states[1, lengths[1] :].eq(0).all()


def _hf_to_official(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Inverse rename, written out independently of the module's table, to fake an official checkpoint."""
    out = {"token_embedding.weight": state["shared.weight"], "norm.weight": state["encoder.final_layer_norm.weight"]}
    for key, value in state.items():
        if not key.startswith("encoder.block."):
            continue
        i, rest = key.split(".")[2], ".".join(key.split(".")[3:])
        name = {
            "layer.0.layer_norm.weight": "norm1.weight",
            "layer.0.SelfAttention.q.weight": "attn.q.weight",
            "layer.0.SelfAttention.k.weight": "attn.k.weight",
            "layer.0.SelfAttention.v.weight": "attn.v.weight",
            "layer.0.SelfAttention.o.weight": "attn.o.weight",
            "layer.0.SelfAttention.relative_attention_bias.weight": "pos_embedding.embedding.weight",
            "layer.1.layer_norm.weight": "norm2.weight",
            "layer.1.DenseReluDense.wi_0.weight": "ffn.gate.0.weight",
            "layer.1.DenseReluDense.wi_1.weight": "ffn.fc1.weight",
            "layer.1.DenseReluDense.wo.weight": "ffn.fc2.weight",
        }[rest]
        out[f"blocks.{i}.{name}"] = value
    return out


def test_official_layout_roundtrip(tiny, tmp_path) -> None:
    folder, model, tokenizer = tiny
    official = {k: v.clone() for k, v in _hf_to_official(model.state_dict()).items()}
    assert "blocks.0.ffn.gate.0.weight" in official and "blocks.1.pos_embedding.embedding.weight" in official
    ckpt = tmp_path / "models_t5_umt5-xxl-enc-bf16.pth"
    torch.save(official, ckpt)
    enc = WanTextEncoder.from_official(ckpt, folder / "tokenizer", dtype=torch.float32)
    assert enc.model.config.d_kv == 8 and enc.model.config.num_heads == 4 and enc.model.config.d_ff == 64
    states, lengths = enc.encode(PROMPTS, max_length=16)
    ref_states, ref_lens = _reference(model, tokenizer, PROMPTS, 16)
    assert torch.equal(states, ref_states) and torch.equal(lengths, ref_lens)
    with pytest.raises(ValueError, match="unexpected key"):
        official_t5_to_hf({"blocks.0.attn.bogus.weight": torch.zeros(1)})
