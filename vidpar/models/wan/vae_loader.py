"""Loading Wan VAE weights: diffusers folders and the official ``Wan2.1_VAE.pth`` / ``Wan2.2_VAE.pth`` files.

Official key names are mapped to diffusers' (the names :class:`WanVAE` uses) following diffusers'
``scripts/convert_wan_to_diffusers.py`` (``convert_vae`` / ``convert_vae_22``), generalised from its hard-coded
``num_res_blocks=2`` indices to any config: official 2.1 keeps one flat ``decoder.upsamples.N`` list of
``num_res_blocks+1`` residual blocks then one resample per stage; 2.2 nests ``upsamples.N.upsamples.J`` /
``downsamples.N.downsamples.J`` with the resample last.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Mapping

import torch

from vidpar.models.state_dict_check import state_dict_mismatch
from vidpar.models.weights import load_safetensors_file, load_torch_file, read_json

from .vae import WanVAE
from .vae_config import WanVAEConfig

_WEIGHTS = "diffusion_pytorch_model.safetensors"
_INDEX = "diffusion_pytorch_model.safetensors.index.json"

# diffusers residual-block parameter names -> official (``residual`` is an nn.Sequential in the original).
_RESNET_TO_OFFICIAL = (
    ("norm1.gamma", "residual.0.gamma"),
    ("conv1.", "residual.2."),
    ("norm2.gamma", "residual.3.gamma"),
    ("conv2.", "residual.6."),
    ("conv_shortcut.", "shortcut."),
)


def _resnet_part(rest: str) -> str:
    for new, old in _RESNET_TO_OFFICIAL:
        if rest.startswith(new):
            return old + rest[len(new) :]
    raise ValueError(f"not a residual-block parameter: {rest!r}")


def official_key(key: str, cfg: WanVAEConfig) -> str:
    """The official checkpoint name of the diffusers-named parameter ``key`` of a VAE built from ``cfg``."""
    nrb = cfg.num_res_blocks
    if key.startswith("quant_conv."):
        return "conv1." + key[len("quant_conv.") :]
    if key.startswith("post_quant_conv."):
        return "conv2." + key[len("post_quant_conv.") :]
    side, rest = key.split(".", 1)
    if rest.startswith("conv_in."):
        return f"{side}.conv1.{rest[len('conv_in.'):]}"
    if rest.startswith("norm_out."):
        return f"{side}.head.0.{rest[len('norm_out.'):]}"
    if rest.startswith("conv_out."):
        return f"{side}.head.2.{rest[len('conv_out.'):]}"
    m = re.fullmatch(r"mid_block\.resnets\.(\d)\.(.+)", rest)
    if m:
        return f"{side}.middle.{2 * int(m[1])}.{_resnet_part(m[2])}"
    m = re.fullmatch(r"mid_block\.attentions\.0\.(.+)", rest)
    if m:
        return f"{side}.middle.1.{m[1]}"
    m = re.fullmatch(r"down_blocks\.(\d+)\.(.+)", rest)
    if m and side == "encoder":
        n, sub = int(m[1]), m[2]
        if not cfg.is_residual:  # flat list in both layouts; only residual-block names differ
            is_resample = sub.startswith(("resample.", "time_conv."))
            return f"encoder.downsamples.{n}.{sub if is_resample else _resnet_part(sub)}"
        r = re.fullmatch(r"resnets\.(\d+)\.(.+)", sub)
        if r:
            return f"encoder.downsamples.{n}.downsamples.{r[1]}.{_resnet_part(r[2])}"
        if sub.startswith("downsampler."):
            return f"encoder.downsamples.{n}.downsamples.{nrb}.{sub[len('downsampler.'):]}"
    m = re.fullmatch(r"up_blocks\.(\d+)\.(.+)", rest)
    if m and side == "decoder":
        n, sub = int(m[1]), m[2]
        r = re.fullmatch(r"resnets\.(\d+)\.(.+)", sub)
        if cfg.is_residual:
            if r:
                return f"decoder.upsamples.{n}.upsamples.{r[1]}.{_resnet_part(r[2])}"
            if sub.startswith("upsampler."):
                return f"decoder.upsamples.{n}.upsamples.{nrb + 1}.{sub[len('upsampler.'):]}"
        else:
            base = n * (nrb + 2)  # each earlier stage: nrb+1 residual blocks and one resample
            if r:
                return f"decoder.upsamples.{base + int(r[1])}.{_resnet_part(r[2])}"
            if sub.startswith("upsamplers.0."):
                return f"decoder.upsamples.{base + nrb + 1}.{sub[len('upsamplers.0.'):]}"
    raise ValueError(f"no official name known for parameter {key!r}")


def diffusers_to_official(state_dict: Mapping[str, torch.Tensor], cfg: WanVAEConfig) -> dict[str, torch.Tensor]:
    """Rename a diffusers-layout VAE state dict to the official Wan layout (e.g. to write test checkpoints)."""
    return {official_key(k, cfg): v for k, v in state_dict.items()}


def official_to_diffusers(
    state_dict: Mapping[str, torch.Tensor], model: WanVAE
) -> dict[str, torch.Tensor]:
    """Rename an official-layout state dict to ``model``'s (diffusers) names; unknown keys pass through unchanged
    so that the strict check reports them."""
    table = {official_key(k, model.config): k for k in model.state_dict()}
    return {table.get(k, k): v for k, v in state_dict.items()}


def is_official_layout(state_dict: Mapping[str, torch.Tensor]) -> bool:
    return "decoder.conv1.weight" in state_dict or any(k.startswith("decoder.upsamples.") for k in state_dict)


def preset_for_official(state_dict: Mapping[str, torch.Tensor]) -> WanVAEConfig:
    """2.2 if the checkpoint has the nested ``upsamples.N.upsamples.J`` layout, else 2.1."""
    nested = any(re.match(r"decoder\.upsamples\.\d+\.upsamples\.", k) for k in state_dict)
    return WanVAEConfig.wan22() if nested else WanVAEConfig.wan21()


def load_state_dict_checked(model: WanVAE, state_dict: Mapping[str, torch.Tensor]) -> None:
    """Strict load; raise ``ValueError`` naming missing, unexpected and wrong-shape keys."""
    mismatch = state_dict_mismatch(model.state_dict(), state_dict)
    if mismatch is not None:
        raise ValueError("Wan VAE checkpoint does not match the model config; " + mismatch)
    model.load_state_dict(dict(state_dict), strict=True)


def _read_safetensors(folder: Path) -> dict[str, torch.Tensor]:
    if (folder / _WEIGHTS).is_file():
        return load_safetensors_file(folder / _WEIGHTS)
    if (folder / _INDEX).is_file():
        shards = sorted(set(read_json(folder / _INDEX).get("weight_map", {}).values()))
        out: dict[str, torch.Tensor] = {}
        for shard in shards:
            out.update(load_safetensors_file(folder / shard))
        return out
    raise ValueError(f"no {_WEIGHTS} (or its index) in {folder}")


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        return load_safetensors_file(path)
    sd = load_torch_file(path)  # weights_only: never run pickled code from a checkpoint
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path} is not a plain dict of tensors")
    return sd


def load_wan_vae(
    path: str | os.PathLike,
    config: WanVAEConfig | dict | None = None,
    dtype: torch.dtype | None = None,
) -> WanVAE:
    """Build a :class:`WanVAE` and load its weights (see :meth:`WanVAE.from_pretrained`)."""
    p = Path(path)
    if isinstance(config, dict):
        config = WanVAEConfig.from_dict(config)
    if p.is_dir():
        folder = p / "vae" if (p / "vae" / "config.json").is_file() else p
        if config is None:
            if not (folder / "config.json").is_file():
                raise ValueError(f"no config.json in {folder} (and no config given)")
            try:
                config = WanVAEConfig.from_dict(read_json(folder / "config.json"))
            except ValueError as e:
                raise ValueError(f"{folder / 'config.json'}: {e}") from None
        state_dict = _read_safetensors(folder)
    elif p.is_file():
        state_dict = _read_file(p)
        if config is None:
            config = preset_for_official(state_dict) if is_official_layout(state_dict) else WanVAEConfig.wan21()
    else:
        raise ValueError(f"Wan VAE checkpoint not found: {p}")
    model = WanVAE(config)
    if is_official_layout(state_dict):
        state_dict = official_to_diffusers(state_dict, model)
    load_state_dict_checked(model, state_dict)
    if dtype is not None:
        model = model.to(dtype)
    return model.eval()
