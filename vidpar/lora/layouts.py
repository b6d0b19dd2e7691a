"""Read a LoRA file in any of the common key layouts into one neutral form (no model needed).

Layouts, recognised from the keys (``NAME`` is a module path in the naming shown):

========================  =========================================================  ==============
layout                    keys                                                       naming of NAME
========================  =========================================================  ==============
diffusers/PEFT            ``transformer.NAME.lora_A.weight`` / ``.lora_B.weight``     diffusers
                          (+ ``.lora_B.bias``); alpha in the safetensors metadata
                          written by diffusers' ``save_lora_weights``
official/ComfyUI          ``diffusion_model.NAME.lora_down.weight`` / ``.lora_up``    original
                          (or ``.lora_A`` / ``.lora_B``), ``.alpha``, ``.diff``,
                          ``.diff_b``
kohya (musubi-tuner)      ``lora_unet_NAME_WITH_UNDERSCORES.lora_down.weight`` ...    original, ``.`` -> ``_``
bare                      ``NAME.lora_A.weight`` ... without a prefix                 original, else diffusers
========================  =========================================================  ==============

Scale of a low-rank pair: ``alpha / rank`` with ``alpha`` from the module's ``.alpha`` key, else from the
metadata (``lora_alpha``, ``alpha_pattern``, ``use_rslora``: ``alpha / sqrt(rank)``), else ``alpha = rank``.
``.diff`` / ``.diff_b`` are full deltas of a weight (or of a bare parameter) / of a bias, scaled by the strength
only; a PEFT ``lora_B.bias`` belongs to the low-rank branch and is scaled like it.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from .spec import file_sha256

# (key prefix, naming, layout name). Longest prefixes first; "" is the bare layout.
_PREFIXES = (
    ("transformer.", "diffusers", "diffusers/PEFT"),
    ("diffusion_model.", "original", "official/ComfyUI"),
    ("lora_unet_", "kohya", "kohya"),
    ("", "bare", "bare"),
)
# key suffix -> what it holds.
_SUFFIXES = (
    (".lora_A.default.weight", "down"),
    (".lora_B.default.weight", "up"),
    (".lora_A.weight", "down"),
    (".lora_B.weight", "up"),
    (".lora_B.bias", "up_bias"),
    (".lora_down.weight", "down"),
    (".lora_up.weight", "up"),
    (".alpha", "alpha"),
    (".diff_b", "diff_b"),
    (".diff", "diff"),
)
_UNSUPPORTED = {
    "dora_scale": "DoRA", "lora_magnitude_vector": "DoRA", "lora_mid": "LoCon/LyCORIS (lora_mid)",
    "hada_": "LoHa", "lokr_": "LoKr", "oft_": "OFT", "ia3": "IA3",
}
METADATA_KEY = "lora_adapter_metadata"  # diffusers' save_lora_weights


@dataclass
class LoraModule:
    """Everything one file holds for one module. Tensors are on the CPU, in the file's dtype.

    ``down [rank, in, *kernel]`` and ``up [out, rank, *ones]`` come together; ``scale`` is ``alpha / rank``
    (strength not included). ``up_bias [out]`` is PEFT's ``lora_B.bias``. ``diff`` has the shape of the target
    weight (or bare parameter), ``diff_b [out]`` that of its bias.
    """

    name: str
    first_key: str
    down: torch.Tensor | None = None
    up: torch.Tensor | None = None
    up_bias: torch.Tensor | None = None
    alpha: float | None = None
    diff: torch.Tensor | None = None
    diff_b: torch.Tensor | None = None
    scale: float = 1.0
    keys: dict[str, str] = field(default_factory=dict)  # what -> file key, for messages

    @property
    def rank(self) -> int | None:
        return None if self.down is None else int(self.down.shape[0])


@dataclass
class LoraFile:
    """A parsed LoRA file: its modules by name (in ``naming``), its layout and content hash."""

    path: Path
    layout: str  # "diffusers/PEFT", "official/ComfyUI", "kohya", "bare"
    naming: str  # "diffusers", "original", "kohya" or "bare" (original, else diffusers)
    modules: dict[str, LoraModule]
    sha256: str


def read_lora_file(path: str | Path) -> LoraFile:
    """Parse a LoRA ``.safetensors`` file. Raises ``ValueError`` naming the file and the first bad key."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"LoRA file {path} does not exist")
    try:
        with safe_open(str(path), framework="pt") as fh:
            keys = sorted(fh.keys())
            metadata = fh.metadata() or {}
            tensors = {k: fh.get_tensor(k) for k in keys}
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"LoRA file {path} is not a readable safetensors file ({e}); vidpar reads LoRAs from "
                         f"safetensors only (it never unpickles .pt/.bin/.ckpt files)") from None
    if not keys:
        raise ValueError(f"LoRA file {path} holds no tensors")
    prefix, naming, layout = _layout_of(path, keys)
    modules: dict[str, LoraModule] = {}
    for key in keys:
        name, what = _split_key(path, key, prefix)
        mod = modules.setdefault(name, LoraModule(name, key))
        if what in mod.keys:
            raise ValueError(f"LoRA {path}: key {key!r} repeats {mod.keys[what]!r} (two {what} tensors for {name})")
        mod.keys[what] = key
        value = tensors[key]
        if what == "alpha":
            if value.numel() != 1:
                raise ValueError(f"LoRA {path}: key {key!r} must be a scalar alpha, has shape {list(value.shape)}")
            mod.alpha = float(value.double().item())
        else:
            setattr(mod, what, value)
    alphas = _metadata_alphas(path, metadata, prefix)
    for mod in modules.values():
        _check_module(path, mod)
        if mod.down is not None:
            mod.scale = _scale(path, mod, alphas)
    return LoraFile(path, layout, naming, modules, file_sha256(path))


def _layout_of(path: Path, keys: list[str]) -> tuple[str, str, str]:
    kinds = [next(p for p in _PREFIXES if k.startswith(p[0])) for k in keys]
    first = kinds[0]
    for key, kind in zip(keys, kinds):
        if kind is not first:
            raise ValueError(f"LoRA {path}: key {key!r} is in the {kind[2]} layout but {keys[0]!r} is in the "
                             f"{first[2]} layout (one file, one layout)")
    return first


def _split_key(path: Path, key: str, prefix: str) -> tuple[str, str]:
    body = key[len(prefix):]
    for suffix, what in _SUFFIXES:
        if body.endswith(suffix) and len(body) > len(suffix):
            return body[: -len(suffix)], what
    kind = next((v for k, v in _UNSUPPORTED.items() if k in key), None)
    if kind is not None:
        raise ValueError(f"LoRA {path}: key {key!r} belongs to a {kind} adapter, which vidpar does not merge")
    raise ValueError(f"LoRA {path}: unknown key {key!r} (vidpar understands <module>.lora_A/.lora_B/.lora_down/"
                     f".lora_up weights, .lora_B.bias, .alpha, .diff and .diff_b)")


def _check_module(path: Path, mod: LoraModule) -> None:
    if (mod.down is None) != (mod.up is None):
        have, need = ("down (A)", "up (B)") if mod.up is None else ("up (B)", "down (A)")
        raise ValueError(f"LoRA {path}: key {mod.first_key!r} gives the {have} matrix of {mod.name} but the file "
                         f"has no {need} matrix for it")
    if mod.down is None:
        for what in ("alpha", "up_bias"):
            if what in mod.keys:
                raise ValueError(f"LoRA {path}: key {mod.keys[what]!r} has no lora_A/lora_B pair for {mod.name}")
        return
    down, up = mod.down, mod.up
    if down.dim() < 2 or up.dim() < 2 or up.shape[1] != down.shape[0] or any(s != 1 for s in up.shape[2:]):
        raise ValueError(f"LoRA {path}: {mod.name} has down {list(down.shape)} and up {list(up.shape)}: not a "
                         f"low-rank pair (up must be [out, rank(, 1...)], down [rank, in(, kernel...)])")
    if down.shape[0] == 0:
        raise ValueError(f"LoRA {path}: key {mod.keys['down']!r} has rank 0")
    if mod.up_bias is not None and tuple(mod.up_bias.shape) != (up.shape[0],):
        raise ValueError(f"LoRA {path}: key {mod.keys['up_bias']!r} has shape {list(mod.up_bias.shape)}, "
                         f"expected [{up.shape[0]}]")


@dataclass(frozen=True)
class _MetadataAlphas:
    lora_alpha: float | None = None
    alpha_pattern: tuple[tuple[str, float], ...] = ()
    r: int | None = None
    rank_pattern: tuple[tuple[str, int], ...] = ()
    rslora: bool = False


def _metadata_alphas(path: Path, metadata: dict[str, str], prefix: str) -> _MetadataAlphas:
    """The LoraConfig fields diffusers stores under ``lora_adapter_metadata`` (keys ``transformer.lora_alpha``...)."""
    raw = metadata.get(METADATA_KEY)
    if not raw:
        return _MetadataAlphas()
    try:
        packed = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"LoRA {path}: metadata {METADATA_KEY!r} is not JSON ({e})") from None
    if not isinstance(packed, dict):
        raise ValueError(f"LoRA {path}: metadata {METADATA_KEY!r} is not a JSON object")
    pre = prefix if prefix.endswith(".") else ""
    cfg = {k[len(pre):]: v for k, v in packed.items() if k.startswith(pre)}
    if cfg.get("use_dora"):
        raise ValueError(f"LoRA {path}: its metadata says use_dora=true; vidpar does not merge DoRA adapters")
    try:
        return _MetadataAlphas(
            lora_alpha=None if cfg.get("lora_alpha") is None else float(cfg["lora_alpha"]),
            alpha_pattern=tuple((str(k), float(v)) for k, v in (cfg.get("alpha_pattern") or {}).items()),
            r=None if cfg.get("r") is None else int(cfg["r"]),
            rank_pattern=tuple((str(k), int(v)) for k, v in (cfg.get("rank_pattern") or {}).items()),
            rslora=bool(cfg.get("use_rslora", False)),
        )
    except (TypeError, ValueError, AttributeError) as e:
        raise ValueError(f"LoRA {path}: bad alpha/rank fields in metadata {METADATA_KEY!r} ({e})") from None


def _pattern_value(patterns: tuple[tuple[str, float], ...], name: str):
    """PEFT's rule: the first pattern that matches the end of the module name at a dot boundary."""
    for pattern, value in patterns:
        if re.match(rf"(.*\.)?({pattern})$", name):
            return value
    return None


def _scale(path: Path, mod: LoraModule, meta: _MetadataAlphas) -> float:
    rank = mod.rank
    want_rank = _pattern_value(meta.rank_pattern, mod.name)
    want_rank = meta.r if want_rank is None else want_rank
    if mod.alpha is None and want_rank is not None and want_rank != rank:
        raise ValueError(f"LoRA {path}: key {mod.keys['down']!r} has rank {rank} but the metadata says {want_rank}")
    alpha = mod.alpha
    if alpha is None:
        alpha = _pattern_value(meta.alpha_pattern, mod.name)
        alpha = meta.lora_alpha if alpha is None else alpha
    if alpha is None:
        return 1.0  # no alpha anywhere: alpha = rank
    if not math.isfinite(alpha):
        raise ValueError(f"LoRA {path}: {mod.name} has a non-finite alpha {alpha}")
    return alpha / math.sqrt(rank) if meta.rslora and mod.alpha is None else alpha / rank
