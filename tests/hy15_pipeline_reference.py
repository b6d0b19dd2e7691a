"""Tiny random HunyuanVideo-1.5 pipelines (diffusers' classes), built offline in seconds, for the family's tests.

What is built (every weight randomly perturbed, so a wrong mapping or a skipped weight changes results):
- a Qwen2-style byte-level BPE tokenizer (``Qwen2Tokenizer``) with a ChatML chat template. Its vocabulary holds every
  pre-token of HunyuanVideo-1.5's system message as one token (as the real Qwen2.5-VL tokenizer does), so the
  template prefix is exactly ``CROP_START`` = 108 tokens, the value diffusers hard-codes; any other text falls back
  to byte tokens.
- a tiny ``Qwen2_5_VLTextModel`` (3 layers, so ``hidden_states[-3]`` is an inner layer), a tiny ``T5EncoderModel``
  + ``ByT5Tokenizer`` with Glyph-SDXL-v2-style colour/font tokens added, a tiny ``SiglipVisionModel`` (729 tokens,
  like siglip-so400m-patch14-384) + ``SiglipImageProcessor``;
- a tiny ``HunyuanVideo15Transformer3DModel`` (3 heads x 8, 2 layers) and ``AutoencoderKLHunyuanVideo15`` with the
  real strides (16 spatial, 4 temporal);
- the scheduler and guider diffusers' conversion script writes: ``FlowMatchEulerDiscreteScheduler(shift=5.0)``
  (480p) and ``ClassifierFreeGuidance(guidance_scale=6.0)``.

Entry points:
- ``build_pipeline(task, seed)``: a ``HunyuanVideo15Pipeline`` (``"t2v"``) or ``HunyuanVideo15ImageToVideoPipeline``
  (``"i2v"``) object.
- ``save_pipeline_folder(folder, task, seed)``: ``build_pipeline(...).save_pretrained(folder)`` (safetensors): the
  diffusers layout ``model_index.json``, ``transformer/``, ``vae/``, ``text_encoder/``, ``tokenizer/``,
  ``text_encoder_2/``, ``tokenizer_2/``, ``scheduler/``, ``guider/`` (+ ``image_encoder/``, ``feature_extractor/``
  for i2v); returns the pipeline.
- ``write_official_encoders(ckpts, pipe)``: the encoders of ``pipe`` in the official ``ckpts/`` layout
  (``text_encoder/llm``, ``text_encoder/byt5-small``, ``text_encoder/Glyph-SDXL-v2``, ``vision_encoder/siglip``).
- ``make_image(size, seed)``: a random RGB PIL image; ``GENERATION``: the small generation the family compares.
"""

from __future__ import annotations

import inspect
import json
import os

import numpy as np
import torch

CROP_START = 108
TEXT_DIM, GLYPH_DIM, VISION_DIM = 32, 24, 16
LATENT_CHANNELS = 4
SIGLIP_SIZE, SIGLIP_PATCH = 54, 2  # 27 x 27 = 729 patch tokens, like siglip-so400m-patch14-384
COLORS = {"white": 0, "black": 1, "red": 2}  # Glyph-SDXL-v2 assets/color_idx.json (a small stand-in)
FONTS = {"en-Arial": 0, "zh-SimSun": 1}  # assets/multilingual_10-lang_idx.json (a small stand-in)
WORDS = (
    "a cat dog walks runs on the green grass under blue sky with red ball in kitchen sign that says open "
    "night old man river bright light camera moves left right neon shop window"
).split()
GENERATION = dict(num_frames=9, height=32, width=32, num_inference_steps=2)
# A ChatML template with Qwen2.5-VL's behaviour for string contents (default system turn, generation prompt).
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def system_message() -> str:
    """The system message diffusers' ``HunyuanVideo15Pipeline`` passes to the chat template."""
    from diffusers.pipelines.hunyuan_video1_5.pipeline_hunyuan_video1_5 import HunyuanVideo15Pipeline

    return inspect.signature(HunyuanVideo15Pipeline._get_mllm_prompt_embeds).parameters["system_message"].default


def _pre_tokens(text: str) -> list[str]:
    from tokenizers import Regex, pre_tokenizers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    pre = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    return [piece for piece, _ in pre.pre_tokenize_str(text)]


def _bpe(symbols: list[str], ranks: dict[tuple[str, str], int]) -> list[str]:
    """Apply BPE merges (lowest rank first, leftmost on ties) to one pre-token."""
    while len(symbols) > 1:
        found = [(ranks[p], i) for i, p in enumerate(zip(symbols, symbols[1:])) if p in ranks]
        if not found:
            break
        _, i = min(found)
        symbols = symbols[:i] + [symbols[i] + symbols[i + 1]] + symbols[i + 2 :]
    return symbols


def build_qwen_tokenizer():
    """A ``Qwen2Tokenizer`` whose chat-template prefix for HunyuanVideo-1.5's system message is 108 tokens."""
    from tokenizers.pre_tokenizers import ByteLevel
    from transformers import Qwen2Tokenizer

    vocab = {"<|endoftext|>": 0}
    for ch in sorted(ByteLevel.alphabet()):
        vocab[ch] = len(vocab)
    ranks: dict[tuple[str, str], int] = {}
    texts = ["system\n" + system_message(), "user\n", "assistant\n", "\n\n", " ".join(WORDS)]
    for word in sorted({w for t in texts for w in _pre_tokens(t)}):
        # Add merges until the word is one token; a new merge ranks last, so earlier words keep their tokens.
        while len(symbols := _bpe(list(word), ranks)) > 1:
            ranks[(symbols[0], symbols[1])] = len(ranks)
            vocab.setdefault(symbols[0] + symbols[1], len(vocab))
    merges = sorted(ranks, key=ranks.get)
    tok = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"]})
    tok.chat_template = CHAT_TEMPLATE
    return tok


def build_byt5_tokenizer():
    """``ByT5Tokenizer`` with colour and font tokens added the way HunyuanVideo-1.5 adds Glyph-SDXL-v2's."""
    from transformers import ByT5Tokenizer

    tok = ByT5Tokenizer()
    tok.add_tokens(glyph_special_tokens(), special_tokens=True)
    return tok


def glyph_special_tokens(colors: dict = COLORS, fonts: dict = FONTS) -> list[str]:
    """Official order: ``<color-i>`` for every colour, then ``<{lang}-font-{idx}>`` for every font."""
    return [f"<color-{i}>" for i in range(len(colors))] + [f"<{code[:2]}-font-{idx}>" for code, idx in fonts.items()]


def _perturbed(module: torch.nn.Module, std: float) -> torch.nn.Module:
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn_like(p) * std)
    return module.eval()


def build_text_encoder(tokenizer):
    from transformers import Qwen2_5_VLTextConfig, Qwen2_5_VLTextModel

    config = Qwen2_5_VLTextConfig(
        vocab_size=len(tokenizer), bos_token_id=tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        eos_token_id=tokenizer.convert_tokens_to_ids("<|im_end|>"), hidden_size=TEXT_DIM, intermediate_size=48,
        num_hidden_layers=3,
        num_attention_heads=4, num_key_value_heads=2, rope_theta=1000000.0, max_position_embeddings=2048,
        rope_scaling={"type": "default", "rope_type": "default", "mrope_section": [1, 1, 2]},
    )
    return _perturbed(Qwen2_5_VLTextModel(config), 0.05)


def build_glyph_encoder(vocab_size: int):
    from transformers import T5Config, T5EncoderModel

    config = T5Config(
        vocab_size=vocab_size, d_model=GLYPH_DIM, d_kv=8, d_ff=48, num_layers=2, num_heads=3,
        relative_attention_num_buckets=8, feed_forward_proj="gated-gelu", dropout_rate=0.0, is_encoder_decoder=False,
    )
    return _perturbed(T5EncoderModel(config), 0.05)


def build_vision_encoder():
    from transformers import SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel

    config = SiglipVisionConfig(
        hidden_size=VISION_DIM, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        image_size=SIGLIP_SIZE, patch_size=SIGLIP_PATCH,
    )
    processor = SiglipImageProcessor(
        size={"height": SIGLIP_SIZE, "width": SIGLIP_SIZE}, resample=3, image_mean=[0.5] * 3, image_std=[0.5] * 3
    )
    return _perturbed(SiglipVisionModel(config), 0.05), processor


def build_transformer(task: str):
    from diffusers import HunyuanVideo15Transformer3DModel

    model = HunyuanVideo15Transformer3DModel(
        in_channels=2 * LATENT_CHANNELS + 1, out_channels=LATENT_CHANNELS, num_attention_heads=3,
        attention_head_dim=8, num_layers=2, num_refiner_layers=2, mlp_ratio=2.0, text_embed_dim=TEXT_DIM,
        text_embed_2_dim=GLYPH_DIM, image_embed_dim=VISION_DIM, rope_axes_dim=(2, 2, 4), target_size=32,
        task_type=task,
    )
    return _perturbed(model, 0.05)


def build_vae():
    from diffusers import AutoencoderKLHunyuanVideo15

    vae = AutoencoderKLHunyuanVideo15(
        latent_channels=LATENT_CHANNELS, block_out_channels=(8, 8, 8, 8, 8), layers_per_block=1,
        spatial_compression_ratio=16, temporal_compression_ratio=4,
    )
    return _perturbed(vae, 0.05)


def build_pipeline(task: str = "t2v", seed: int = 0, shift: float = 5.0, guidance_scale: float = 6.0):
    """A tiny diffusers HunyuanVideo-1.5 pipeline for ``task`` (``"t2v"`` or ``"i2v"``), identical for a seed."""
    import diffusers
    from diffusers.guiders import ClassifierFreeGuidance

    if task not in ("t2v", "i2v"):
        raise ValueError(f"task must be 't2v' or 'i2v', got {task!r}")
    tokenizer, tokenizer_2 = build_qwen_tokenizer(), build_byt5_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        parts = dict(
            text_encoder=build_text_encoder(tokenizer), tokenizer=tokenizer,
            text_encoder_2=build_glyph_encoder(len(tokenizer_2)), tokenizer_2=tokenizer_2,
            transformer=build_transformer(task), vae=build_vae(),
            scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=shift),
            guider=ClassifierFreeGuidance(guidance_scale=guidance_scale),
        )
        if task == "t2v":
            return diffusers.HunyuanVideo15Pipeline(**parts)
        image_encoder, feature_extractor = build_vision_encoder()
        return diffusers.HunyuanVideo15ImageToVideoPipeline(
            **parts, image_encoder=image_encoder, feature_extractor=feature_extractor
        )


def save_pipeline_folder(folder: str | os.PathLike, task: str = "t2v", seed: int = 0, **kwargs):
    """Build ``build_pipeline(task, seed, **kwargs)`` and save it to ``folder`` (diffusers layout); returns it."""
    pipe = build_pipeline(task, seed, **kwargs)
    pipe.save_pretrained(os.fspath(folder), safe_serialization=True)
    return pipe


def write_official_encoders(
    ckpts: str | os.PathLike, pipe, byt5_prefixed: bool = True, llm_layout: str = "hub"
) -> None:
    """Write ``pipe``'s encoders in HunyuanVideo-1.5's official ``ckpts/`` layout.

    - ``text_encoder/llm``: a Qwen2.5-VL folder: ``config.json`` and two safetensors shards + index, with the
      language model under ``model.*`` next to ``visual.*`` and ``lm_head.*`` that a text-only loader must skip
      (``llm_layout="hub"``, as Qwen/Qwen2.5-VL-7B-Instruct), or a nested ``text_config`` and
      ``model.language_model.*`` / ``model.visual.*`` (``"nested"``, newer transformers); and the tokenizer;
    - ``text_encoder/byt5-small``: the ByT5 config and the plain ByT5 tokenizer (no glyph tokens);
    - ``text_encoder/Glyph-SDXL-v2``: ``assets/color_idx.json``, ``assets/multilingual_10-lang_idx.json`` and
      ``checkpoints/byt5_model.pt`` (``torch.save`` of the T5 stack's tensors; ``byt5_prefixed`` wraps them as
      ``{"state_dict": {"module.text_tower.encoder.<key>": ...}}`` like a training checkpoint);
    - ``vision_encoder/siglip``: ``image_encoder/`` + ``feature_extractor/`` (FLUX.1-Redux-dev's layout), if any.
    """
    from safetensors.torch import save_file
    from transformers import ByT5Tokenizer, Qwen2_5_VLConfig

    ckpts = os.fspath(ckpts)
    llm = os.path.join(ckpts, "text_encoder", "llm")
    os.makedirs(llm, exist_ok=True)
    text = pipe.text_encoder.config.to_dict()
    vision = {"depth": 1, "hidden_size": 8, "num_heads": 2, "intermediate_size": 16, "out_hidden_size": TEXT_DIM}
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision).to_dict()
    if llm_layout == "hub":  # Qwen/Qwen2.5-VL-7B-Instruct: text fields at the top level, keys model.* / visual.*
        config.pop("text_config")
        config.update({k: v for k, v in text.items() if k != "model_type"})
        prefix, visual = "model.", "visual."
    elif llm_layout == "nested":  # transformers >= 4.52 saves: text_config, model.language_model.* / model.visual.*
        prefix, visual = "model.language_model.", "model.visual."
    else:
        raise ValueError(f"llm_layout must be 'hub' or 'nested', got {llm_layout!r}")
    with open(os.path.join(llm, "config.json"), "w") as f:
        json.dump(config, f)
    state = {f"{prefix}{k}": v.contiguous() for k, v in pipe.text_encoder.state_dict().items()}
    state[f"{visual}patch_embed.proj.weight"] = torch.zeros(8, 3, 2, 14, 14)
    state["lm_head.weight"] = torch.zeros_like(state[f"{prefix}embed_tokens.weight"])
    keys = sorted(state)
    half = len(keys) // 2
    shards = {"model-00001-of-00002.safetensors": keys[:half], "model-00002-of-00002.safetensors": keys[half:]}
    for name, names in shards.items():
        save_file({k: state[k] for k in names}, os.path.join(llm, name), metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: name for name, names in shards.items() for k in names}}
    with open(os.path.join(llm, "model.safetensors.index.json"), "w") as f:
        json.dump(index, f)
    pipe.tokenizer.save_pretrained(llm)

    small = os.path.join(ckpts, "text_encoder", "byt5-small")
    plain = {**pipe.text_encoder_2.config.to_dict(), "vocab_size": 384}  # byt5-small has no glyph tokens
    pipe.text_encoder_2.config.__class__(**plain).save_pretrained(small)
    ByT5Tokenizer().save_pretrained(small)
    glyph = os.path.join(ckpts, "text_encoder", "Glyph-SDXL-v2")
    os.makedirs(os.path.join(glyph, "assets"), exist_ok=True)
    os.makedirs(os.path.join(glyph, "checkpoints"), exist_ok=True)
    with open(os.path.join(glyph, "assets", "color_idx.json"), "w") as f:
        json.dump(COLORS, f)
    with open(os.path.join(glyph, "assets", "multilingual_10-lang_idx.json"), "w") as f:
        json.dump(FONTS, f)
    stack = {k: v.clone() for k, v in pipe.text_encoder_2.encoder.state_dict().items()}
    if byt5_prefixed:
        stack = {"state_dict": {f"module.text_tower.encoder.{k}": v for k, v in stack.items()}}
    torch.save(stack, os.path.join(glyph, "checkpoints", "byt5_model.pt"))

    if getattr(pipe, "image_encoder", None) is not None:
        siglip = os.path.join(ckpts, "vision_encoder", "siglip")
        pipe.image_encoder.save_pretrained(os.path.join(siglip, "image_encoder"), safe_serialization=True)
        pipe.feature_extractor.save_pretrained(os.path.join(siglip, "feature_extractor"))


def make_image(size: tuple[int, int] = (40, 28), seed: int = 3):
    """A random RGB PIL image of ``size`` (width, height)."""
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels, mode="RGB")
