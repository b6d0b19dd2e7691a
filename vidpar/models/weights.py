"""Reading safetensors checkpoint folders (single file or sharded with an index), for every model family.

Only safetensors are read: nothing is ever unpickled. Shapes and dtypes are read from the headers, so a loader can
check a checkpoint's keys against its model before reading any tensor data.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

_DTYPES = {"F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16, "F64": torch.float64}


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; ``ValueError`` naming the file if it is not one."""
    try:
        with open(path, encoding="utf-8") as fh:
            value = json.load(fh)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from None
    if not isinstance(value, dict):
        raise ValueError(f"{path} must hold a JSON object, got {type(value).__name__}")
    return value


def find_weight_files(folder: Path, explicit: Path | None = None) -> list[Path]:
    """The safetensors files holding the weights in ``folder`` (an index's shards, or the single file).

    ``explicit`` (a ``.safetensors`` or ``.safetensors.index.json`` file) picks one when the folder has several.
    """
    if explicit is not None and explicit.suffix == ".safetensors":
        return [explicit]
    if explicit is not None and explicit.name.endswith(".safetensors.index.json"):
        indexes = [explicit]
    else:
        preferred = folder / "diffusion_pytorch_model.safetensors.index.json"
        indexes = [preferred] if preferred.is_file() else sorted(folder.glob("*.safetensors.index.json"))
    if len(indexes) > 1:
        raise ValueError(f"several safetensors indexes in {folder}: {[p.name for p in indexes]}; pass one of them")
    if indexes:
        weight_map = read_json(indexes[0]).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise ValueError(f"{indexes[0]} has no 'weight_map'")
        files = [folder / name for name in sorted(set(weight_map.values()))]
        absent = [p.name for p in files if not p.is_file()]
        if absent:
            raise FileNotFoundError(f"{indexes[0].name} lists shard(s) missing from {folder}: {absent}")
        return files
    preferred = folder / "diffusion_pytorch_model.safetensors"
    singles = [preferred] if preferred.is_file() else sorted(folder.glob("*.safetensors"))
    if len(singles) == 1:
        return singles
    if len(singles) > 1:
        raise ValueError(f"several .safetensors files and no index in {folder}: {[p.name for p in singles]}")
    pickles = sorted(p.name for ext in ("*.bin", "*.pt", "*.pth", "*.ckpt") for p in folder.glob(ext))
    if pickles:
        raise ValueError(f"{folder} holds only pickle checkpoints {pickles}; vidpar loads safetensors only "
                         f"(it never unpickles). Convert them to safetensors first.")
    raise FileNotFoundError(f"no .safetensors weights in {folder}")


def _unreadable(file: Path, error: Exception) -> ValueError:
    return ValueError(f"{file}: not a readable safetensors file (truncated or corrupt? {error})")


def read_headers(files: list[Path]) -> dict[str, tuple[Path, tuple[int, ...], torch.dtype | None]]:
    """Every key of ``files`` -> (file, shape, dtype), from the headers only; a key in two files is an error.
    A truncated or corrupt file is a ``ValueError`` naming it."""
    found: dict[str, tuple[Path, tuple[int, ...], torch.dtype | None]] = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as fh:
                entries = [(key, fh.get_slice(key)) for key in fh.keys()]
                for key, sl in entries:
                    if key in found:
                        raise ValueError(f"key {key!r} is in both {found[key][0].name} and {file.name}")
                    found[key] = (file, tuple(sl.get_shape()), _DTYPES.get(sl.get_dtype()))
        except (OSError, RuntimeError, SafetensorError) as e:
            raise _unreadable(file, e) from None
    return found


def read_tensors(keys_by_file: dict[Path, list[str]]) -> dict[str, torch.Tensor]:
    """The tensors of the given keys, each file opened once (a file whose data is cut short is named)."""
    out: dict[str, torch.Tensor] = {}
    for file, keys in keys_by_file.items():
        try:
            with safe_open(str(file), framework="pt") as fh:
                for key in keys:
                    out[key] = fh.get_tensor(key)
        except (OSError, RuntimeError, SafetensorError) as e:
            raise _unreadable(file, e) from None
    return out


def format_keys(keys: list[str], limit: int = 12) -> str:
    """``"a, b, c, ... (n more)"`` for error messages."""
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")
