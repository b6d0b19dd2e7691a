"""Load a Wan DiT from a diffusers-layout or official-layout safetensors checkpoint.

Layouts (both single-file and sharded ``*.safetensors.index.json``):

* diffusers: ``config.json`` with ``_class_name: WanTransformer3DModel`` and ``diffusion_pytorch_model*.safetensors``
  (the ``transformer/`` folder of the ``Wan-AI/*-Diffusers`` repositories; a pipeline root is accepted too).
* official Wan: ``config.json`` with ``dim``, ``num_heads``, ``model_type``... and the original key names
  (``blocks.0.self_attn.q.weight``, ``head.head.weight``, ``img_emb.proj.1.weight``...).

vidpar's parameter names are the official ones, except that the timestep MLPs live under ``time_embedder.``.
The diffusers <-> official renaming is the one in diffusers' ``convert_wan_transformer_to_diffusers``.
Only safetensors are read: nothing is ever unpickled.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import torch

from vidpar.models.weights import find_weight_files, iter_tensors, read_headers, read_json

from .transformer import WanTransformer3D
from .transformer_config import WanTransformerConfig

# (diffusers, official) name pairs. A name ending in "." is a prefix; otherwise the whole name must match.
_TOP_LEVEL_PAIRS: tuple[tuple[str, str], ...] = (
    ("condition_embedder.time_embedder.linear_1.", "time_embedding.0."),
    ("condition_embedder.time_embedder.linear_2.", "time_embedding.2."),
    ("condition_embedder.time_proj.", "time_projection.1."),
    ("condition_embedder.text_embedder.linear_1.", "text_embedding.0."),
    ("condition_embedder.text_embedder.linear_2.", "text_embedding.2."),
    ("condition_embedder.image_embedder.norm1.", "img_emb.proj.0."),
    ("condition_embedder.image_embedder.ff.net.0.proj.", "img_emb.proj.1."),
    ("condition_embedder.image_embedder.ff.net.2.", "img_emb.proj.3."),
    ("condition_embedder.image_embedder.norm2.", "img_emb.proj.4."),
    ("condition_embedder.image_embedder.pos_embed", "img_emb.emb_pos"),
    ("scale_shift_table", "head.modulation"),
    ("proj_out.", "head.head."),
)
# Inside ``blocks.<i>.``. diffusers orders the norms norm1/norm2/norm3 by use; the official norm3 is the
# cross-attention norm (diffusers norm2) and the official norm2 the parameterless FFN norm.
_ATTN_PAIRS = (("to_q.", "q."), ("to_k.", "k."), ("to_v.", "v."), ("to_out.0.", "o."),
               ("norm_q.", "norm_q."), ("norm_k.", "norm_k."))
_BLOCK_PAIRS: tuple[tuple[str, str], ...] = (
    *((f"attn1.{d}", f"self_attn.{o}") for d, o in _ATTN_PAIRS),
    *((f"attn2.{d}", f"cross_attn.{o}") for d, o in _ATTN_PAIRS),
    ("attn2.add_k_proj.", "cross_attn.k_img."),
    ("attn2.add_v_proj.", "cross_attn.v_img."),
    ("attn2.norm_added_k.", "cross_attn.norm_k_img."),
    ("norm2.", "norm3."),
    ("ffn.net.0.proj.", "ffn.0."),
    ("ffn.net.2.", "ffn.2."),
    ("scale_shift_table", "modulation"),
)
# (official, vidpar) pairs.
_NATIVE_PAIRS = (("time_embedding.", "time_embedder.time_embedding."),
                 ("time_projection.", "time_embedder.time_projection."))
# diffusers itself ignores these when loading (left over from older conversions).
_DIFFUSERS_IGNORED = ("norm_added_q",)
# Parameters that feed fp32 math stay fp32 whatever ``dtype`` is asked for.
_KEEP_FP32 = ("time_embedder.", "modulation", ".norm3.", "img_emb.proj.0.", "img_emb.proj.4.", "img_emb.emb_pos")


def _rename(key: str, pairs: Iterable[tuple[str, str]], forward: bool) -> str:
    for a, b in pairs:
        src, dst = (a, b) if forward else (b, a)
        if src.endswith(".") and key.startswith(src):
            return dst + key[len(src):]
        if key == src:
            return dst
    return key


def _rename_blocks(key: str, forward: bool) -> str:
    if key.startswith("blocks."):
        idx, _, rest = key[len("blocks."):].partition(".")
        return f"blocks.{idx}.{_rename(rest, _BLOCK_PAIRS, forward)}"
    return _rename(key, _TOP_LEVEL_PAIRS, forward)


def diffusers_to_official_key(key: str) -> str:
    """diffusers ``WanTransformer3DModel`` parameter name -> official Wan name (unknown names pass through)."""
    return _rename_blocks(key, forward=True)


def official_to_diffusers_key(key: str) -> str:
    """Official Wan parameter name -> diffusers name (unknown names pass through)."""
    return _rename_blocks(key, forward=False)


def official_to_native_key(key: str) -> str:
    """Official Wan name -> vidpar ``WanTransformer3D`` name (strips a ``model.diffusion_model.`` prefix)."""
    key = key.removeprefix("model.diffusion_model.")
    return _rename(key, _NATIVE_PAIRS, forward=True)


def native_to_official_key(key: str) -> str:
    """vidpar ``WanTransformer3D`` name -> official Wan name."""
    return _rename(key, _NATIVE_PAIRS, forward=False)


# ---------------------------------------------------------------------- files


def _model_dir(path: Path) -> Path:
    if not path.exists():
        raise FileNotFoundError(f"Wan checkpoint path does not exist: {path}")
    if path.is_file():
        return path.parent
    if not (path / "config.json").is_file() and (path / "transformer" / "config.json").is_file():
        return path / "transformer"  # a diffusers pipeline root
    return path


# ---------------------------------------------------------------------- loading


def _format_keys(keys: list[str], limit: int = 12) -> str:
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def _config_and_layout(cfg: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> tuple[WanTransformerConfig, str]:
    if cfg.get("_class_name") == "WanTransformer3DModel" or "num_attention_heads" in cfg:
        return WanTransformerConfig.from_diffusers_config(cfg), "diffusers"
    if "dim" in cfg and "num_heads" in cfg:
        # The config cannot tell Wan 2.1 I2V (CLIP image embedding) from Wan 2.2 I2V (none); the keys can.
        keys = {official_to_native_key(k): s for k, s in shapes.items()}
        img = keys.get("img_emb.proj.0.weight")
        config = WanTransformerConfig.from_official_config(cfg, image_dim=None if img is None else int(img[0]))
        pos = keys.get("img_emb.emb_pos")
        if pos is not None and config.image_dim is not None:
            config = config.replace(image_pos_embed_len=int(pos[1]))
        return config, "official"
    raise ValueError("config.json is neither a diffusers WanTransformer3DModel config nor an official Wan config "
                     "(expected '_class_name: WanTransformer3DModel' or keys 'dim' and 'num_heads')")


def _to_native(key: str, layout: str) -> str | None:
    if layout == "diffusers":
        if any(part in key for part in _DIFFUSERS_IGNORED):
            return None
        key = diffusers_to_official_key(key)
    return official_to_native_key(key)


def _from_native(key: str, layout: str) -> str:
    key = native_to_official_key(key)
    return official_to_diffusers_key(key) if layout == "diffusers" else key


def _read_config(folder: Path, files: list[Path]) -> tuple[WanTransformerConfig, str, dict[str, tuple[int, ...]]]:
    """``(config, layout, checkpoint key -> shape)`` from ``config.json`` and the safetensors headers (no tensor
    data is read; a truncated or corrupt weight file is refused naming it)."""
    config_path = folder / "config.json"
    headers = read_headers(files)
    shapes = {k: shape for k, (_file, shape, _dtype) in headers.items()}
    try:
        config, layout = _config_and_layout(read_json(config_path), shapes)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{config_path}: {e}") from None
    return config, layout, shapes


def read_wan_transformer_config(path: str | Path) -> WanTransformerConfig:
    """The ``WanTransformerConfig`` of a checkpoint folder, either layout, from its config and weight-file headers
    (cheap: no tensor data is read)."""
    folder = _model_dir(Path(path))
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"no config.json in {folder}")
    return _read_config(folder, find_weight_files(folder))[0]


def load_wan_transformer(
    path: str | Path,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
    attention_backend: str = "auto",
) -> WanTransformer3D:
    """Build a ``WanTransformer3D`` from a checkpoint folder (or one of its ``.safetensors``/index files).

    ``dtype=None`` uses the dtype of the checkpoint's first block weights. The timestep embedding, modulation
    tables and affine LayerNorms stay fp32. Raises ``ValueError`` naming the keys (in the checkpoint's own
    naming) when keys are missing, unexpected or of the wrong shape, before reading any tensor data.
    """
    path = Path(path)
    folder = _model_dir(path)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"no config.json in {folder}")
    files = find_weight_files(folder, path if path.is_file() else None)
    config, layout, shapes = _read_config(folder, files)
    where: dict[str, tuple[Path, str]] = {}  # native name -> (file, checkpoint name)
    for k, (file, _shape, _dtype) in read_headers(files).items():
        native = _to_native(k, layout)
        if native is not None:
            where[native] = (file, k)

    with torch.device("meta"):
        model = WanTransformer3D(config, attention_backend=attention_backend)
    expected = {k: tuple(p.shape) for k, p in model.state_dict().items()}
    problems = []
    missing = sorted(_from_native(k, layout) for k in expected if k not in where)
    if missing:
        problems.append(f"missing {len(missing)} key(s): {_format_keys(missing)}")
    unexpected = sorted(ck for k, (_, ck) in where.items() if k not in expected)
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} key(s): {_format_keys(unexpected)}")
    wrong = sorted(f"{ck} has shape {list(shapes[ck])}, expected {list(expected[k])}"
                   for k, (_, ck) in where.items() if k in expected and shapes[ck] != expected[k])
    if wrong:
        problems.append(f"{len(wrong)} key(s) with the wrong shape: {_format_keys(wrong)}")
    if problems:
        raise ValueError(f"Wan checkpoint {folder} ({layout} layout) does not match the config: "
                         + "; ".join(problems))

    if dtype is None:
        probe_file, probe_key = where["blocks.0.ffn.0.weight"] if config.num_layers else where["head.head.weight"]
        dtype = read_headers([probe_file])[probe_key][2] or torch.float32

    by_file: dict[Path, list[tuple[str, str]]] = {}
    for native, (file, ck) in where.items():
        by_file.setdefault(file, []).append((native, ck))
    state: dict[str, torch.Tensor] = {}
    for file, items in by_file.items():
        natives = dict((ck, native) for native, ck in items)
        for ck, t in iter_tensors(file, [ck for _, ck in items]):  # one tensor in host memory at a time
            native = natives[ck]
            keep = any(p in native for p in _KEEP_FP32) and dtype in (torch.float16, torch.bfloat16)
            state[native] = t.to(device=device, dtype=torch.float32 if keep else dtype)
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval().requires_grad_(False)


def native_state_dict_to_official(model: WanTransformer3D) -> dict[str, torch.Tensor]:
    """The model's weights under official Wan names (e.g. to write an official-layout checkpoint)."""
    return {native_to_official_key(k): v for k, v in model.state_dict().items()}
