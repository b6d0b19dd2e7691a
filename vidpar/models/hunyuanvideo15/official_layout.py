"""The encoders of HunyuanVideo-1.5's official checkpoint layout (``tencent/HunyuanVideo-1.5`` + the encoders its
``checkpoints-download.md`` adds), read with safetensors or ``torch.load(weights_only=True)`` only::

    ckpts/
      text_encoder/llm/                       Qwen/Qwen2.5-VL-7B-Instruct (config.json, model-*.safetensors + index,
                                              tokenizer + chat template); only the language model is used
      text_encoder/byt5-small/                google/byt5-small (config.json + tokenizer; its weights are not used)
      text_encoder/Glyph-SDXL-v2/assets/color_idx.json, assets/multilingual_10-lang_idx.json
      text_encoder/Glyph-SDXL-v2/checkpoints/byt5_model.pt   the glyph ByT5 encoder weights (a torch.save file)
      vision_encoder/siglip/image_encoder/, feature_extractor/   black-forest-labs/FLUX.1-Redux-dev's SigLIP

The official code (``hyvideo/models/text_encoders/byT5/__init__.py``) builds the glyph tokenizer from byt5-small,
adds ``<color-i>`` then ``<{lang}-font-{idx}>`` tokens from the two asset files, resizes the embeddings and loads
``byt5_model.pt`` (a plain T5-stack state dict, or ``{"state_dict": {"module.text_tower.encoder.<key>": ...}}``).
"""

from __future__ import annotations

import json
import os
import pickle

import torch

GLYPH_DIR, BYT5_DIR, LLM_DIR = "Glyph-SDXL-v2", "byt5-small", "llm"
_TORCH_LOAD_ERRORS = (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError, ValueError)


def official_encoder_paths(ckpts: str | os.PathLike) -> dict[str, str]:
    """Paths of the encoders under an official ``ckpts`` folder: ``llm``, ``text_encoder`` (the parent of
    byt5-small and Glyph-SDXL-v2) and ``siglip``."""
    ckpts = os.fspath(ckpts)
    return {
        "llm": os.path.join(ckpts, "text_encoder", LLM_DIR),
        "text_encoder": os.path.join(ckpts, "text_encoder"),
        "siglip": os.path.join(ckpts, "vision_encoder", "siglip"),
    }


def _require(path: str, what: str) -> str:
    if not os.path.exists(path):
        raise ValueError(f"{what} not found: {path} (see HunyuanVideo-1.5's checkpoints-download.md)")
    return path


def _safetensors_files(folder: str) -> dict[str, list[str]]:
    """``{file: [keys]}`` of a folder's sharded or single safetensors checkpoint."""
    from safetensors import safe_open

    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.isfile(index):
        with open(index) as f:
            weight_map = json.load(f)["weight_map"]
        files: dict[str, list[str]] = {}
        for key, name in weight_map.items():
            files.setdefault(os.path.join(folder, name), []).append(key)
        return files
    single = os.path.join(folder, "model.safetensors")
    if not os.path.isfile(single):
        found = sorted(os.listdir(folder))
        raise ValueError(f"no safetensors checkpoint in {folder} (found {found}); .bin / .pth files are not read")
    with safe_open(single, "pt") as f:
        return {single: list(f.keys())}


def qwen_text_key(key: str) -> str | None:
    """A Qwen2.5-VL checkpoint key -> ``Qwen2_5_VLTextModel`` key, or None for the vision tower / LM head.

    Both layouts: the hub's ``model.layers.*`` (transformers < 4.52) and ``model.language_model.layers.*``.
    """
    if key.startswith("model.language_model."):
        return key[len("model.language_model.") :]
    if key.startswith("model.") and not key.startswith("model.visual."):
        return key[len("model.") :]
    return None


def load_qwen_text_model(llm_dir: str | os.PathLike, dtype: torch.dtype = torch.bfloat16):
    """The language model of a Qwen2.5-VL folder as a ``Qwen2_5_VLTextModel``; only its tensors are read."""
    from safetensors import safe_open
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLTextModel

    llm_dir = _require(os.fspath(llm_dir), "Qwen2.5-VL folder (text_encoder/llm)")
    config = Qwen2_5_VLConfig.from_pretrained(llm_dir).text_config
    with torch.device("meta"):
        expected = set(Qwen2_5_VLTextModel(config).state_dict())
    state: dict[str, torch.Tensor] = {}
    for path, keys in _safetensors_files(llm_dir).items():
        wanted = {k: qwen_text_key(k) for k in keys if qwen_text_key(k) is not None}
        if not wanted:
            continue
        with safe_open(path, "pt") as f:
            for key, name in wanted.items():
                if name in state:
                    raise ValueError(f"{llm_dir}: {name!r} appears twice (mixed checkpoint layouts)")
                state[name] = f.get_tensor(key).to(dtype)
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise ValueError(f"{llm_dir} does not match Qwen2_5_VLTextModel: missing {missing[:5]}, extra {extra[:5]}")
    # transformers builds the model (non-persistent rotary buffers included) around the checked state dict.
    return Qwen2_5_VLTextModel.from_pretrained(None, config=config, state_dict=state, dtype=dtype).eval()


def glyph_special_tokens(assets_dir: str | os.PathLike) -> list[str]:
    """Glyph-SDXL-v2's added tokens in the official order: ``<color-i>`` for each colour, then
    ``<{code[:2]}-font-{idx}>`` for each font of ``multilingual_10-lang_idx.json``."""
    assets_dir = os.fspath(assets_dir)
    with open(_require(os.path.join(assets_dir, "color_idx.json"), "Glyph-SDXL-v2 colour table")) as f:
        colors = json.load(f)
    with open(_require(os.path.join(assets_dir, "multilingual_10-lang_idx.json"), "Glyph-SDXL-v2 font table")) as f:
        fonts = json.load(f)
    return [f"<color-{i}>" for i in range(len(colors))] + [f"<{code[:2]}-font-{idx}>" for code, idx in fonts.items()]


def load_glyph_state(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Glyph ByT5 weights as T5-stack keys (``embed_tokens.weight``, ``block.*``, ``final_layer_norm.weight``).

    ``byt5_model.safetensors`` next to ``byt5_model.pt`` is preferred; the ``.pt`` is read with
    ``torch.load(weights_only=True)``: a file that needs unpickling of code is refused, never executed.
    """
    path = os.fspath(path)
    st = os.path.splitext(path)[0] + ".safetensors"
    if os.path.isfile(st):
        from safetensors.torch import load_file

        state = load_file(st)
    else:
        _require(path, "glyph checkpoint (Glyph-SDXL-v2/checkpoints/byt5_model.pt)")
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except _TORCH_LOAD_ERRORS as e:
            raise ValueError(
                f"{path} cannot be read with torch.load(weights_only=True) (it needs unpickling of code, which vidpar "
                f"refuses); convert its tensors to {os.path.basename(st)} with a trusted tool. Cause: {e}"
            ) from e
    if isinstance(state, dict) and "state_dict" in state:
        prefix = "module.text_tower.encoder."
        state = {k[len(prefix) :]: v for k, v in state["state_dict"].items() if k.startswith(prefix)}
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} is not a state dict of tensors")
    return state


def load_glyph_byt5(text_encoder_dir: str | os.PathLike, dtype: torch.dtype = torch.float32):
    """``(T5EncoderModel, GlyphTokenizer)`` from ``text_encoder/byt5-small`` + ``text_encoder/Glyph-SDXL-v2``."""
    from transformers import AutoTokenizer, T5Config, T5EncoderModel

    from .glyph_encoder import GlyphTokenizer

    root = os.fspath(text_encoder_dir)
    small = _require(os.path.join(root, BYT5_DIR), "google/byt5-small folder (config + tokenizer)")
    glyph = _require(os.path.join(root, GLYPH_DIR), "Glyph-SDXL-v2 folder")
    tokenizer = AutoTokenizer.from_pretrained(small)
    tokenizer.add_tokens(glyph_special_tokens(os.path.join(glyph, "assets")), special_tokens=True)
    stack = load_glyph_state(os.path.join(glyph, "checkpoints", "byt5_model.pt"))
    if "embed_tokens.weight" not in stack:
        raise ValueError(f"{glyph}: the glyph checkpoint has no embed_tokens.weight (keys: {sorted(stack)[:5]})")
    vocab = stack["embed_tokens.weight"].shape[0]
    if vocab != len(tokenizer):
        raise ValueError(
            f"{glyph}: the glyph checkpoint has {vocab} token embeddings but byt5-small + the asset tokens make "
            f"{len(tokenizer)} tokens"
        )
    config = T5Config.from_pretrained(small)
    config.vocab_size = vocab
    with torch.device("meta"):
        expected = set(T5EncoderModel(config).state_dict())
    state = {f"encoder.{k}": v.to(dtype) for k, v in stack.items()}
    state["shared.weight"] = state["encoder.embed_tokens.weight"]  # one embedding, tied in T5EncoderModel
    if set(state) != expected:
        missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
        raise ValueError(f"{glyph}: checkpoint does not match T5EncoderModel: missing {missing[:5]}, extra {extra[:5]}")
    model = T5EncoderModel.from_pretrained(None, config=config, state_dict=state, dtype=dtype)
    return model.eval(), GlyphTokenizer(tokenizer)
