"""Reading safetensors checkpoint folders (single file or sharded with an index), for every model family.

Only safetensors are read: nothing is ever unpickled. Shapes and dtypes are read from the headers, so a loader can
check a checkpoint's keys against its model before reading any tensor data.
"""

from __future__ import annotations

import json
import math
import os
import struct
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

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


def check_safetensors(file: Path) -> dict[str, tuple[tuple[int, ...], str]]:
    """Key -> (shape, dtype name) from a safetensors file's header, after checking that the file is complete
    (the header parses and the data section is exactly as long as the header says). Reads the header only.

    Raises ``ValueError`` naming the file: truncated (a partial download or copy), corrupt header, or not a
    safetensors file at all.
    """
    file = Path(file)
    try:
        size = os.path.getsize(file)
        with open(file, "rb") as fh:
            head = fh.read(8)
            if len(head) < 8:
                raise ValueError(f"{size} bytes: too short for a safetensors header")
            (length,) = struct.unpack("<Q", head)
            if length > size - 8:
                raise ValueError(f"truncated: the header says {length} header bytes, the file has {size - 8}")
            header = json.loads(fh.read(length))
    except OSError as e:
        raise ValueError(f"{file}: cannot read ({e.strerror or e})") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"{file}: not a complete safetensors file ({e}); re-download or re-convert it") from None
    if not isinstance(header, dict):
        raise ValueError(f"{file}: not a safetensors file (its header is not a JSON object)")
    out: dict[str, tuple[tuple[int, ...], str]] = {}
    end = 0
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        try:
            shape, dtype, (begin, stop) = tuple(entry["shape"]), entry["dtype"], entry["data_offsets"]
        except (TypeError, KeyError, ValueError):
            raise ValueError(f"{file}: corrupt safetensors header (entry {key!r})") from None
        out[key] = (shape, dtype)
        end = max(end, stop)
    data = size - 8 - length
    if data != end:
        what = "truncated" if data < end else "has trailing bytes"
        raise ValueError(f"{file}: {what}: the header describes {end} data bytes, the file holds {data}; "
                         "re-download or re-convert it")
    return out


def safetensors_params(files: list[Path]) -> int:
    """Parameter count of the tensors in ``files`` (headers only, each file checked for completeness)."""
    return sum(math.prod(shape) for f in files for shape, _ in check_safetensors(f).values())


def check_torch_file(file: Path) -> None:
    """Refuse a truncated torch checkpoint (a zip archive whose directory cannot be read), naming the file.
    Reads the zip directory only; files in the legacy (non-zip) format are left to ``load_torch_file``."""
    file = Path(file)
    try:
        with open(file, "rb") as fh:
            magic = fh.read(4)
    except OSError as e:
        raise ValueError(f"{file}: cannot read ({e.strerror or e})") from None
    if magic != b"PK\x03\x04":
        return
    try:
        with zipfile.ZipFile(file) as archive:
            archive.infolist()
    except (zipfile.BadZipFile, OSError, EOFError) as e:
        raise ValueError(f"{file}: not a complete torch checkpoint (its zip directory is unreadable: {e}); "
                         "re-download it") from None


def load_torch_file(file: Path, **options: Any) -> Any:
    """``torch.load(file, weights_only=True, ...)`` with errors naming the file (never unpickles code)."""
    check_torch_file(file)
    try:
        return torch.load(str(file), map_location="cpu", weights_only=True, **options)
    except Exception as e:  # noqa: BLE001 - re-raised with the file named
        raise ValueError(f"{file}: cannot be read with torch.load(weights_only=True) ({type(e).__name__}: {e})") \
            from None


def load_safetensors_file(file: Path) -> dict[str, torch.Tensor]:
    """Every tensor of one safetensors file (checked for completeness first); errors name the file."""
    check_safetensors(file)
    return read_tensors({Path(file): None})


def _opened(file: Path):
    try:
        return safe_open(str(file), framework="pt")
    except Exception as e:  # noqa: BLE001 - safetensors raises its own error type; name the file
        raise ValueError(f"{file}: not a complete safetensors file ({e}); re-download or re-convert it") from None


def read_headers(files: list[Path]) -> dict[str, tuple[Path, tuple[int, ...], torch.dtype | None]]:
    """Every key of ``files`` -> (file, shape, dtype), from the headers only (each file checked for completeness
    first: a truncated one is named); a key in two files is an error."""
    found: dict[str, tuple[Path, tuple[int, ...], torch.dtype | None]] = {}
    for file in files:
        check_safetensors(file)
        with _opened(file) as fh:
            for key in fh.keys():
                if key in found:
                    raise ValueError(f"key {key!r} is in both {found[key][0].name} and {file.name}")
                sl = fh.get_slice(key)
                found[key] = (file, tuple(sl.get_shape()), _DTYPES.get(sl.get_dtype()))
    return found


def iter_tensors(file: Path, keys: list[str] | None = None):
    """``(key, tensor)`` of ``keys`` (None: every key) of one safetensors file, one tensor at a time (so a loader
    can convert or move each before the next is read). A read that fails (a file cut short after its header was
    checked, an I/O error) names the file and the key."""
    with _opened(file) as fh:
        for key in (list(fh.keys()) if keys is None else keys):
            try:
                tensor = fh.get_tensor(key)
            except Exception as e:  # noqa: BLE001 - name the file
                raise ValueError(f"{file}: reading tensor {key!r} failed ({e}); the file may be truncated or "
                                 "corrupt") from None
            yield key, tensor


def read_tensors(keys_by_file: dict[Path, list[str] | None]) -> dict[str, torch.Tensor]:
    """The tensors of the given keys (None: every key), each file opened once (see ``iter_tensors``)."""
    out: dict[str, torch.Tensor] = {}
    for file, keys in keys_by_file.items():
        out.update(iter_tensors(file, keys))
    return out


def format_keys(keys: list[str], limit: int = 12) -> str:
    """``"a, b, c, ... (n more)"`` for error messages."""
    shown = ", ".join(keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")
