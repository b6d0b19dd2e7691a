"""HunyuanVideo-1.5 prompt encoding (Qwen2.5-VL text + ByT5 glyph) against diffusers' ``encode_prompt`` on a tiny
saved pipeline folder; prompt checks without weights; the template-crop check; the official checkpoint layout."""

from __future__ import annotations

import os
import shutil

import pytest
import torch

pytest.importorskip("transformers")
diffusers = pytest.importorskip("diffusers")

import hy15_pipeline_reference as ref  # noqa: E402

from vidpar.models.hunyuanvideo15 import (  # noqa: E402
    GlyphEncoder,
    HunyuanPromptEncoder,
    HunyuanTextEncoder,
    PromptTokenizers,
    TemplateTokenizer,
    extract_glyph_text,
)
from vidpar.models.hunyuanvideo15.glyph_encoder import GLYPH_TOKENS  # noqa: E402
from vidpar.models.hunyuanvideo15.image_encoder import VISION_TOKENS  # noqa: E402
from vidpar.models.hunyuanvideo15.official_layout import load_glyph_state, qwen_text_key  # noqa: E402
from vidpar.models.hunyuanvideo15.text_encoder import CROP_START, MAX_TEXT_TOKENS, SYSTEM_MESSAGE  # noqa: E402

PROMPTS = [
    'a cat walks on the green grass under a sign that says "OPEN" at night',
    "old man",
    "“neon” shop window, “neon” and “OPEN” light",  # curly quotes, a repeat
]
CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def t2v(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hy15_t2v")
    pipe = ref.save_pipeline_folder(folder, "t2v")
    reference = diffusers.HunyuanVideo15Pipeline.from_pretrained(folder)  # diffusers' own loading of the folder
    encoder = HunyuanPromptEncoder.from_pretrained(folder, dtype=torch.float32)
    return folder, pipe, reference, encoder, encoder.encode(PROMPTS)


def _diffusers_encode(pipe, prompts, batch_size):
    with torch.no_grad():  # the pipeline's __call__ is no_grad
        return pipe.encode_prompt(prompt=prompts, device=CPU, dtype=torch.float32, batch_size=batch_size)


def test_constants_match_diffusers(t2v) -> None:
    _, _, reference, _, _ = t2v
    assert SYSTEM_MESSAGE == reference.system_message == ref.system_message()
    assert CROP_START == reference.prompt_template_encode_start_idx == ref.CROP_START
    assert MAX_TEXT_TOKENS == reference.tokenizer_max_length
    assert GLYPH_TOKENS == reference.tokenizer_2_max_length
    assert VISION_TOKENS == reference.vision_num_semantic_tokens


def test_encode_matches_diffusers(t2v) -> None:
    """Prompt and negative prompt: all four outputs of diffusers' ``encode_prompt``, bit for bit."""
    _, _, reference, encoder, ours = t2v
    expected = _diffusers_encode(reference, PROMPTS, len(PROMPTS))
    for name, mine, theirs in zip(("states", "mask", "glyph_states", "glyph_mask"), ours.tensors(), expected):
        assert mine.shape == theirs.shape, name
        assert torch.equal(mine.to(theirs.dtype), theirs), name
    # diffusers' negative branch without a negative prompt encodes prompt=None -> [""]; "" is encoded as " "
    negative = encoder.encode([""])
    for mine, theirs in zip(negative.tensors(), _diffusers_encode(reference, None, 1)):
        assert torch.equal(mine.to(theirs.dtype), theirs)
    assert negative.mask.sum().item() == 1 + 5 and negative.glyph_mask.eq(0).all()  # " " + end of turn + assistant
    assert ours.mask.dtype == ours.glyph_mask.dtype == torch.int64
    counts = encoder.text.check_prompts(PROMPTS)
    assert ours.mask.sum(1).tolist() == counts
    assert ours.glyph_mask.sum(1).tolist() == encoder.glyph.check_prompts(PROMPTS)
    assert ours.glyph_mask[1].eq(0).all() and ours.glyph_states[1].eq(0).all()  # no quoted text: zeros
    assert ours.glyph_states[0].abs().sum(-1)[: ours.glyph_mask[0].sum()].gt(0).all()


def test_crop_keeps_exactly_the_prompt(t2v) -> None:
    """The kept tokens start with the prompt's own tokens, and the kept states are those of an unpadded run."""
    _, pipe, _, encoder, _ = t2v
    ids, mask = encoder.text.tokenizer(["a cat walks"])
    own = pipe.tokenizer("a cat walks", add_special_tokens=False)["input_ids"]
    assert ids[0, CROP_START : CROP_START + len(own)].tolist() == own
    states, kept = encoder.text.encode(["a cat walks"])
    n = int(kept.sum())
    with torch.no_grad():
        alone = pipe.text_encoder(input_ids=ids[:, : CROP_START + n], output_hidden_states=True).hidden_states[-3]
    torch.testing.assert_close(states[:, :n], alone[:, CROP_START:], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(states[:, :n], alone[:, CROP_START - 1 : -1])  # an off-by-one crop would differ


def test_spec_gives_shapes_without_running(t2v) -> None:
    folder, _, _, encoder, out = t2v
    spec = encoder.spec()
    assert PromptTokenizers.from_pretrained(folder).spec(torch.float32) == spec
    b = len(PROMPTS)
    for (shape, dtype), tensor in zip(spec.shapes(b).values(), out.tensors()):
        assert tensor.shape == shape and tensor.dtype == dtype
    assert [t.shape for t in spec.empty(b).tensors()] == [t.shape for t in out.tensors()]
    assert spec.text_len == MAX_TEXT_TOKENS and spec.glyph_len == GLYPH_TOKENS


def _weightless_copy(folder, dest):
    """The pipeline folder without any weight file: only tokenizers and configs."""
    shutil.copytree(folder, dest, ignore=shutil.ignore_patterns("*.safetensors"))
    assert not any(name.endswith(".safetensors") for _, _, files in os.walk(dest) for name in files)
    return dest


def test_too_long_prompt_refused_without_weights(t2v, tmp_path) -> None:
    folder, _, _, encoder, _ = t2v
    tokenizers = PromptTokenizers.from_pretrained(_weightless_copy(folder, tmp_path / "no_weights"))
    fits = "a" + " cat" * (MAX_TEXT_TOKENS - 6)  # one token per word + the 5-token end of turn
    assert tokenizers.text.check([fits]) == [MAX_TEXT_TOKENS]
    with pytest.raises(ValueError, match=rf"prompt 1: {MAX_TEXT_TOKENS + 1} tokens"):
        tokenizers.check(["old man", fits + " cat"])
    with pytest.raises(ValueError, match="too long for the text encoder"):
        encoder.encode([fits + " cat"])
    quoted = 'a sign that says "' + "x" * 300 + '"'
    with pytest.raises(ValueError, match=r"glyph encoder \(max 256 ByT5 tokens\): prompt 0: 3\d\d tokens"):
        tokenizers.check([quoted])
    with pytest.raises(TypeError):
        tokenizers.check("a cat")


def test_crop_start_is_checked(t2v) -> None:
    _, pipe, _, _, _ = t2v
    with pytest.raises(ValueError, match=r"prefix .* is 108 tokens, but crop_start is 107"):
        TemplateTokenizer(pipe.tokenizer, crop_start=107)
    with pytest.raises(ValueError, match=r"is 110 tokens, but crop_start is 108"):
        TemplateTokenizer(pipe.tokenizer, system_message=SYSTEM_MESSAGE + " cat dog")
    tok = TemplateTokenizer(pipe.tokenizer)
    assert len(tok.prefix) == CROP_START
    with pytest.raises(ValueError, match="prompt 1 .* changes the template's first 108 tokens"):
        tok.check(["a cat", "\na cat"])  # the leading newline merges with the prefix's last token


def test_glyph_extraction_matches_diffusers() -> None:
    from diffusers.pipelines.hunyuan_video1_5.pipeline_hunyuan_video1_5 import extract_glyph_texts

    cases = PROMPTS + ["", 'say "" and "a" "a"', 'one "A" two "B" "A"', "“x” and \"y\"", 'unclosed "quote', '"a"']
    for prompt in cases:
        assert extract_glyph_text(prompt) == extract_glyph_texts(prompt), prompt


@pytest.mark.parametrize("llm_layout, prefixed", [("hub", True), ("nested", False)])
def test_official_layout(t2v, tmp_path, llm_layout: str, prefixed: bool) -> None:
    """The official ``ckpts/`` layout loads to the same encoders (bit for bit) as the diffusers folder."""
    _, pipe, _, encoder, ours = t2v
    ckpts = tmp_path / "ckpts"
    ref.write_official_encoders(ckpts, pipe, byt5_prefixed=prefixed, llm_layout=llm_layout)
    official = HunyuanPromptEncoder.from_official(ckpts, dtype=torch.float32)
    for mine, theirs in zip(official.encode(PROMPTS).tensors(), ours.tensors()):
        assert torch.equal(mine, theirs)
    assert PromptTokenizers.from_official(ckpts).spec(torch.float32) == encoder.spec()
    assert len(official.glyph.tokenizer.tokenizer) == len(pipe.tokenizer_2) == 384 + len(ref.glyph_special_tokens())


def test_official_layout_refusals(t2v, tmp_path) -> None:
    _, pipe, _, _, _ = t2v
    ckpts = tmp_path / "ckpts"
    ref.write_official_encoders(ckpts, pipe)
    glyph_pt = ckpts / "text_encoder" / "Glyph-SDXL-v2" / "checkpoints" / "byt5_model.pt"
    torch.save({"state_dict": {}, "args": _NotATensor()}, glyph_pt)  # needs unpickling of a class
    with pytest.raises(ValueError, match=r"cannot be read with torch.load\(weights_only=True\)"):
        load_glyph_state(glyph_pt)
    with pytest.raises(ValueError, match="cannot be read"):
        GlyphEncoder.from_official(ckpts / "text_encoder")
    llm = ckpts / "text_encoder" / "llm"
    for name in os.listdir(llm):
        if name.endswith(".safetensors") or name.endswith(".index.json"):
            os.remove(llm / name)
    torch.save({}, llm / "pytorch_model.bin")
    with pytest.raises(ValueError, match="no safetensors checkpoint"):
        HunyuanTextEncoder.from_official(llm)
    with pytest.raises(ValueError, match="not found"):
        HunyuanPromptEncoder.from_official(tmp_path / "missing")
    assert qwen_text_key("model.layers.0.mlp.up_proj.weight") == "layers.0.mlp.up_proj.weight"
    assert qwen_text_key("model.language_model.norm.weight") == "norm.weight"
    assert qwen_text_key("visual.blocks.0.attn.qkv.weight") is None
    assert qwen_text_key("model.visual.merger.mlp.0.bias") is None and qwen_text_key("lm_head.weight") is None


class _NotATensor:
    """Stands in for pickled training state (argparse namespaces, optimizers) that weights_only refuses."""


def test_bf16_load(t2v) -> None:
    folder, _, _, _, _ = t2v
    encoder = HunyuanPromptEncoder.from_pretrained(folder, dtype=torch.bfloat16)
    out = encoder.encode(PROMPTS[:1])
    assert out.states.dtype == out.glyph_states.dtype == torch.bfloat16 and encoder.spec().dtype == torch.bfloat16
