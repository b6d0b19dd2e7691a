"""Loading HunyuanVideo-1.5 VAE weights: diffusers folders, official folders and single weight files.

Layouts:

- diffusers (``hunyuanvideo-community/HunyuanVideo-1.5-Diffusers-*``): ``vae/config.json`` with ``_class_name``
  ``AutoencoderKLHunyuanVideo15`` and ``diffusion_pytorch_model.safetensors`` (or a sharded index) in diffusers'
  names, which :class:`HunyuanVideo15VAE` uses;
- official (``tencent/HunyuanVideo-1.5``, ``ckpts/vae``): ``config.json`` with ``_class_name``
  ``AutoencoderKLConv3D`` (``ffactor_*`` names, ``shift_factor``) and ``diffusion_pytorch_model.safetensors`` in the
  official module's names (``down.N.block.J``, ``mid.block_1`` / ``attn_1.q``, ``up.N.upsample``, ``nin_shortcut``),
  renamed here as diffusers' ``scripts/convert_hunyuan_video1_5_to_diffusers.py`` does, for any config;
- a single ``.safetensors`` or ``.pt`` / ``.pth`` / ``.ckpt`` file (read with ``weights_only=True``) in either
  naming; its config is the one given, else the released preset.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Mapping

import torch

from vidpar.models.state_dict_check import state_dict_mismatch

from .vae import HunyuanVideo15VAE
from .vae_config import HunyuanVideo15VAEConfig

_WEIGHTS = "diffusion_pytorch_model.safetensors"
_INDEX = "diffusion_pytorch_model.safetensors.index.json"
_CLASSES = ("AutoencoderKLHunyuanVideo15", "AutoencoderKLConv3D")  # diffusers', official

# Official -> diffusers renaming rules, applied in order to each key (first match of each rule).
_OFFICIAL_TO_DIFFUSERS = (
    (r"^encoder\.down\.(\d+)\.block\.(\d+)\.", r"encoder.down_blocks.\1.resnets.\2."),
    (r"^encoder\.down\.(\d+)\.downsample\.", r"encoder.down_blocks.\1.downsamplers.0."),
    (r"^decoder\.up\.(\d+)\.block\.(\d+)\.", r"decoder.up_blocks.\1.resnets.\2."),
    (r"^decoder\.up\.(\d+)\.upsample\.", r"decoder.up_blocks.\1.upsamplers.0."),
    (r"^(encoder|decoder)\.mid\.block_1\.", r"\1.mid_block.resnets.0."),
    (r"^(encoder|decoder)\.mid\.block_2\.", r"\1.mid_block.resnets.1."),
    (r"^(encoder|decoder)\.mid\.attn_1\.(q|k|v)\.", r"\1.mid_block.attentions.0.to_\2."),
    (r"^(encoder|decoder)\.mid\.attn_1\.", r"\1.mid_block.attentions.0."),
    (r"\.nin_shortcut\.", r".conv_shortcut."),
)
_DIFFUSERS_TO_OFFICIAL = (
    (r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.", r"encoder.down.\1.block.\2."),
    (r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample."),
    (r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.", r"decoder.up.\1.block.\2."),
    (r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.", r"decoder.up.\1.upsample."),
    (r"^(encoder|decoder)\.mid_block\.resnets\.0\.", r"\1.mid.block_1."),
    (r"^(encoder|decoder)\.mid_block\.resnets\.1\.", r"\1.mid.block_2."),
    (r"^(encoder|decoder)\.mid_block\.attentions\.0\.to_(q|k|v)\.", r"\1.mid.attn_1.\2."),
    (r"^(encoder|decoder)\.mid_block\.attentions\.0\.", r"\1.mid.attn_1."),
    (r"\.conv_shortcut\.", r".nin_shortcut."),
)


def _rename(key: str, rules) -> str:
    for pattern, repl in rules:
        key = re.sub(pattern, repl, key, count=1)
    return key


def official_to_diffusers_key(key: str) -> str:
    """The diffusers (= vidpar) name of an official-layout parameter name (unknown names pass through)."""
    return _rename(key, _OFFICIAL_TO_DIFFUSERS)


def diffusers_to_official_key(key: str) -> str:
    """The official-layout name of a diffusers-named parameter (e.g. to write test checkpoints)."""
    return _rename(key, _DIFFUSERS_TO_OFFICIAL)


def diffusers_to_official(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a diffusers-layout state dict to the official layout."""
    return {diffusers_to_official_key(k): v for k, v in state_dict.items()}


def is_official_layout(state_dict: Mapping[str, torch.Tensor]) -> bool:
    """True if any key uses the official module names (``encoder.down.N`` / ``decoder.up.N`` / ``.mid.``)."""
    return any(re.match(r"(encoder\.down|decoder\.up|(encoder|decoder)\.mid)\.", k) for k in state_dict)


def check_state_dict(model: HunyuanVideo15VAE, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise ``ValueError`` naming ``source`` and the missing, unexpected and wrong-shape keys (``model`` may live
    on the meta device)."""
    mismatch = state_dict_mismatch(model.state_dict(), state_dict)
    if mismatch is not None:
        raise ValueError(f"HunyuanVideo-1.5 VAE checkpoint {source} does not match the model config; " + mismatch)


def _read_safetensors_folder(folder: Path) -> tuple[dict[str, torch.Tensor], str]:
    from safetensors.torch import load_file

    if (folder / _WEIGHTS).is_file():
        return load_file(str(folder / _WEIGHTS)), str(folder / _WEIGHTS)
    if (folder / _INDEX).is_file():
        try:
            shards = sorted(set(json.loads((folder / _INDEX).read_text())["weight_map"].values()))
        except (ValueError, KeyError, AttributeError) as e:
            raise ValueError(f"{folder / _INDEX} is not a safetensors index (needs a 'weight_map'): {e}") from None
        out: dict[str, torch.Tensor] = {}
        for shard in shards:
            if not (folder / shard).is_file():
                raise ValueError(f"{folder / _INDEX} names shard {shard}, which is missing")
            out.update(load_file(str(folder / shard)))
        return out, str(folder / _INDEX)
    raise ValueError(f"no {_WEIGHTS} (or its index) in {folder}")


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    if path.suffix not in (".pt", ".pth", ".ckpt", ".bin"):
        raise ValueError(f"{path}: unknown weights format (use .safetensors, or .pt/.pth/.ckpt/.bin)")
    # weights_only: never run pickled code from a checkpoint.
    sd = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path} is not a plain dict of tensors")
    return sd


def read_config(folder: Path) -> HunyuanVideo15VAEConfig:
    """The config in ``folder/config.json`` (diffusers or official); ``ValueError`` naming the file otherwise."""
    path = folder / "config.json"
    try:
        raw = json.loads(path.read_text())
    except ValueError as e:
        raise ValueError(f"{path} is not valid JSON: {e}") from None
    cls = raw.get("_class_name") if isinstance(raw, dict) else None
    if cls is not None and cls not in _CLASSES:
        raise ValueError(f"{path} describes a {cls}, not a HunyuanVideo-1.5 VAE ({' or '.join(_CLASSES)})")
    try:
        return HunyuanVideo15VAEConfig.from_dict(raw)
    except (ValueError, TypeError) as e:
        raise ValueError(f"{path}: {e}") from None


def load_hunyuanvideo15_vae(
    path: str | os.PathLike,
    config: HunyuanVideo15VAEConfig | dict | None = None,
    dtype: torch.dtype | None = None,
    attention_backend: str = "auto",
) -> HunyuanVideo15VAE:
    """Build a :class:`HunyuanVideo15VAE` and load its weights (see :meth:`HunyuanVideo15VAE.from_pretrained`)."""
    p = Path(path)
    if isinstance(config, dict):
        config = HunyuanVideo15VAEConfig.from_dict(config)
    if p.is_dir():
        folder = p / "vae" if (p / "vae" / "config.json").is_file() else p
        if config is None:
            if not (folder / "config.json").is_file():
                raise ValueError(f"no config.json in {folder} (and no config given)")
            config = read_config(folder)
        state_dict, source = _read_safetensors_folder(folder)
    elif p.is_file():
        state_dict, source = _read_file(p), str(p)
        if config is None:
            config = HunyuanVideo15VAEConfig()
    else:
        raise ValueError(f"HunyuanVideo-1.5 VAE checkpoint not found: {p}")
    if is_official_layout(state_dict):
        state_dict = {official_to_diffusers_key(k): v for k, v in state_dict.items()}
    # Built on the meta device and checked there: the released VAE has 1.26e9 parameters, not worth initialising.
    with torch.device("meta"):
        model = HunyuanVideo15VAE(config, attention_backend=attention_backend)
    check_state_dict(model, state_dict, source)
    model = model.to_empty(device="cpu")
    model.load_state_dict(dict(state_dict), strict=True)  # copies into fp32 parameters
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()
