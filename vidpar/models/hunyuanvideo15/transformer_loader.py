"""Load a HunyuanVideo-1.5 DiT from a diffusers-layout or official-layout safetensors checkpoint.

Layouts (single file or sharded ``*.safetensors.index.json``):

* diffusers: ``config.json`` with ``_class_name: HunyuanVideo15Transformer3DModel`` and
  ``diffusion_pytorch_model*.safetensors`` (``transformer/`` of a ``HunyuanVideo15Pipeline`` folder; a pipeline
  root is accepted too).
* official: ``transformer/<variant>/`` of ``tencent/HunyuanVideo-1.5`` (``480p_t2v``, ``720p_i2v_distilled``...):
  ``config.json`` with ``hidden_size``, ``heads_num``, ``mm_double_blocks_depth``... and the original key names
  (``double_blocks.0.img_attn_q.weight``, ``txt_in.individual_token_refiner.blocks.0.self_attn_qkv.weight``...).
  A repository root with one variant under ``transformer/`` is accepted; with several, pass the variant folder.

Names and tensor layouts: ``transformer_keys``. Only safetensors are read: nothing is ever unpickled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from vidpar.models.weights import find_weight_files, format_keys, read_headers, read_json, read_tensors

from .transformer import HunyuanVideo15Transformer3D
from .transformer_config import HunyuanVideo15TransformerConfig
from .transformer_keys import (
    DIFFUSERS,
    OFFICIAL,
    join_from_layout,
    layout_names,
    native_state_dict_to_layout,
    split_shape,
)


def _model_dir(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"HunyuanVideo-1.5 checkpoint path does not exist: {path}")
    if path.is_file():
        return path.parent
    sub = path / "transformer"
    if not sub.is_dir():
        return path
    if (sub / "config.json").is_file():
        return sub  # a diffusers pipeline root
    variants = sorted(p.parent.name for p in sub.glob("*/config.json"))
    if len(variants) == 1:
        return sub / variants[0]  # an official repository root holding one transformer variant
    if len(variants) > 1:
        raise ValueError(f"{path} holds several transformer variants {variants}; pass one of {sub}/<variant>")
    return path


def config_and_layout(
    cfg: dict[str, Any], shapes: dict[str, tuple[int, ...]] | None = None, source: Path | str = "config.json"
) -> tuple[HunyuanVideo15TransformerConfig, str]:
    """The model config of a ``config.json`` dict and its layout (``"diffusers"`` or ``"official"``).

    The official config does not state the ByT5 width (the official code hard-codes 1472); with the
    checkpoint's key ``shapes`` it is read from ``byt5_in.layernorm.weight``.
    """
    try:
        if cfg.get("_class_name") == "HunyuanVideo15Transformer3DModel" or "num_attention_heads" in cfg:
            return HunyuanVideo15TransformerConfig.from_diffusers_config(cfg), DIFFUSERS
        if "hidden_size" in cfg and "heads_num" in cfg:
            config = HunyuanVideo15TransformerConfig.from_official_config(cfg)
            glyph = (shapes or {}).get("byt5_in.layernorm.weight")
            if glyph is not None and len(glyph) == 1 and glyph[0] != config.glyph_dim:
                config = config.replace(glyph_dim=int(glyph[0]))
            return config, OFFICIAL
    except ValueError as err:
        raise ValueError(f"{source}: {err}") from None
    raise ValueError(f"{source} is neither a diffusers HunyuanVideo15Transformer3DModel config nor an official "
                     "HunyuanVideo-1.5 config (expected '_class_name: HunyuanVideo15Transformer3DModel' or keys "
                     "'hidden_size' and 'heads_num')")


def read_transformer_config(path: str | Path) -> HunyuanVideo15TransformerConfig:
    """The config of a checkpoint folder (either layout) from its ``config.json`` and weight-file headers (cheap:
    no tensor data is read)."""
    folder = _model_dir(Path(path))
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"no config.json in {folder}")
    found = read_headers(find_weight_files(folder))
    return config_and_layout(read_json(config_path), {k: v[1] for k, v in found.items()}, config_path)[0]


def load_hunyuanvideo15_transformer(
    path: str | Path,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    attention_backend: str = "auto",
) -> HunyuanVideo15Transformer3D:
    """Build a ``HunyuanVideo15Transformer3D`` from a checkpoint folder (or one of its safetensors/index files).

    ``dtype=None`` keeps the dtype of the checkpoint's block weights. Every parameter takes ``dtype``: diffusers
    keeps none of this model in fp32, and vidpar's fp32 math (norms, modulation, residual streams) upcasts on the
    fly. Raises ``ValueError`` naming the keys (in the checkpoint's own naming, with their files) when keys are
    missing, unexpected or of the wrong shape, before reading any tensor data.
    """
    path = Path(path)
    folder = _model_dir(path)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"no config.json in {folder}")
    files = find_weight_files(folder, path if path.is_file() else None)
    found = read_headers(files)  # checkpoint name -> (file, shape, dtype)
    config, layout = config_and_layout(read_json(config_path), {k: v[1] for k, v in found.items()}, config_path)

    with torch.device("meta"):
        model = HunyuanVideo15Transformer3D(config, attention_backend=attention_backend)
    sources: dict[str, tuple[tuple[str, ...], str]] = {}  # vidpar name -> (checkpoint names, storage kind)
    expected: dict[str, tuple[int, ...]] = {}  # checkpoint name -> shape
    for native, param in model.state_dict().items():
        names, kind = layout_names(native, layout)
        sources[native] = (names, kind)
        expected.update((n, split_shape(tuple(param.shape), kind, len(names))) for n in names)

    problems = []
    missing = sorted(k for k in expected if k not in found)
    if missing:
        problems.append(f"missing {len(missing)} key(s): {format_keys(missing)}")
    unexpected = sorted(f"{k} (in {found[k][0].name})" for k in found if k not in expected)
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} key(s): {format_keys(unexpected)}")
    wrong = sorted(f"{k} (in {found[k][0].name}) has shape {list(found[k][1])}, expected {list(shape)}"
                   for k, shape in expected.items() if k in found and found[k][1] != shape)
    if wrong:
        problems.append(f"{len(wrong)} key(s) with the wrong shape: {format_keys(wrong)}")
    if problems:
        raise ValueError(f"HunyuanVideo-1.5 checkpoint {folder} ({layout} layout) does not match its config.json: "
                         + "; ".join(problems))

    if dtype is None:
        probe = sources["blocks.0.img_attn_q.weight" if config.num_layers else "final_layer.linear.weight"][0][0]
        dtype = found[probe][2] or torch.float32
    by_file: dict[Path, list[str]] = {}
    for key in expected:
        by_file.setdefault(found[key][0], []).append(key)
    tensors = read_tensors(by_file)
    state = {native: join_from_layout([tensors.pop(n) for n in names], kind).to(device=device, dtype=dtype)
             for native, (names, kind) in sources.items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval().requires_grad_(False)


def native_state_dict_to_official(model: HunyuanVideo15Transformer3D) -> dict[str, torch.Tensor]:
    """The model's weights under official names (e.g. to write an official-layout checkpoint)."""
    return native_state_dict_to_layout(model.state_dict(), OFFICIAL)


def native_state_dict_to_diffusers(model: HunyuanVideo15Transformer3D) -> dict[str, torch.Tensor]:
    """The model's weights under diffusers' names and layout."""
    return native_state_dict_to_layout(model.state_dict(), DIFFUSERS)
