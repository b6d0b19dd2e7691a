"""Tiny diffusers ``AutoencoderKLHunyuanVideo15`` references for tests (diffusers is a test dependency only)."""

from __future__ import annotations

from pathlib import Path

import torch

# 8x spatial, 4x temporal, 4 levels: two temporal+spatial upsamplers, one spatial, none (as the released 16x/4x
# VAE has, one spatial level fewer). Latent 4 channels; mid block 16.
TINY = dict(
    latent_channels=4,
    block_out_channels=[8, 8, 16, 16],
    layers_per_block=1,
    spatial_compression_ratio=8,
    temporal_compression_ratio=4,
    scaling_factor=0.7,
)
# Channel-changing levels (no "match_channel"): residual blocks with 1x1x1 shortcut convs, as a variant config.
TINY_SHORTCUTS = dict(TINY, block_out_channels=[8, 16, 16, 32], downsample_match_channel=False,
                      upsample_match_channel=False)
# The released layout's shape at a tiny width: 5 levels, 16x spatial, 4x temporal, 2 blocks per level.
TINY_RELEASED = dict(TINY, block_out_channels=[4, 8, 8, 16, 16], layers_per_block=2, spatial_compression_ratio=16)

KINDS = {"tiny": TINY, "shortcuts": TINY_SHORTCUTS, "released": TINY_RELEASED}


def tiny_kwargs(kind: str = "tiny", **overrides) -> dict:
    """The ``AutoencoderKLHunyuanVideo15`` keyword arguments of the tiny test VAE of ``kind``."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
    return {**KINDS[kind], **overrides}


def perturb(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Add N(0, 0.1) noise to every parameter (norm gammas start at ones, biases at zeros), so that a wrong name
    mapping or op order shows up."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return model


def make_tiny_diffusers_vae(kind: str = "tiny", seed: int = 0, **overrides):
    """A tiny fp32 diffusers ``AutoencoderKLHunyuanVideo15`` with perturbed random weights."""
    from diffusers import AutoencoderKLHunyuanVideo15

    torch.manual_seed(seed)
    return perturb(AutoencoderKLHunyuanVideo15(**tiny_kwargs(kind, **overrides)).eval(), seed + 1)


def save_and_load(ref, root: Path, pipeline_layout: bool = True):
    """Save ``ref`` with ``save_pretrained`` (under ``root/vae`` when ``pipeline_layout``) and load it back through
    vidpar's loader from ``root``."""
    from vidpar.models.hunyuanvideo15 import HunyuanVideo15VAE

    ref.save_pretrained(root / "vae" if pipeline_layout else root)
    return HunyuanVideo15VAE.from_pretrained(root)


def official_conversion_rules(official: dict, block_out_channels, layers_per_block) -> dict:
    """diffusers' ``convert_hunyuan_video_15_vae_checkpoint_to_diffusers`` (scripts/convert_hunyuan_video1_5_to_
    diffusers.py), restated independently of vidpar's mapping: its explicit per-block key list, generalised only
    in the block counts (and ``nin_shortcut``, which the released config never has). Official -> diffusers."""
    out = {}

    def move(new: str, old: str) -> None:
        out[new] = official.pop(old)

    def resnet(new: str, old: str) -> None:
        for part in ("norm1.gamma", "conv1.conv.weight", "conv1.conv.bias", "norm2.gamma", "conv2.conv.weight",
                     "conv2.conv.bias"):
            move(f"{new}.{part}", f"{old}.{part}")
        for part in ("weight", "bias"):
            if f"{old}.nin_shortcut.{part}" in official:
                move(f"{new}.conv_shortcut.{part}", f"{old}.nin_shortcut.{part}")

    def mid(side: str) -> None:
        resnet(f"{side}.mid_block.resnets.0", f"{side}.mid.block_1")
        resnet(f"{side}.mid_block.resnets.1", f"{side}.mid.block_2")
        move(f"{side}.mid_block.attentions.0.norm.gamma", f"{side}.mid.attn_1.norm.gamma")
        for a, b in (("to_q", "q"), ("to_k", "k"), ("to_v", "v"), ("proj_out", "proj_out")):
            for part in ("weight", "bias"):
                move(f"{side}.mid_block.attentions.0.{a}.{part}", f"{side}.mid.attn_1.{b}.{part}")

    for side in ("encoder", "decoder"):
        for part in ("weight", "bias"):
            move(f"{side}.conv_in.conv.{part}", f"{side}.conv_in.conv.{part}")
            move(f"{side}.conv_out.conv.{part}", f"{side}.conv_out.conv.{part}")
        move(f"{side}.norm_out.gamma", f"{side}.norm_out.gamma")
        mid(side)
    for i in range(len(block_out_channels)):
        for j in range(layers_per_block):
            resnet(f"encoder.down_blocks.{i}.resnets.{j}", f"encoder.down.{i}.block.{j}")
        if f"encoder.down.{i}.downsample.conv.conv.weight" in official:
            for part in ("weight", "bias"):
                old = f"encoder.down.{i}.downsample.conv.conv.{part}"
                move(f"encoder.down_blocks.{i}.downsamplers.0.conv.conv.{part}", old)
        for j in range(layers_per_block + 1):
            resnet(f"decoder.up_blocks.{i}.resnets.{j}", f"decoder.up.{i}.block.{j}")
        if f"decoder.up.{i}.upsample.conv.conv.weight" in official:
            for part in ("weight", "bias"):
                old = f"decoder.up.{i}.upsample.conv.conv.{part}"
                move(f"decoder.up_blocks.{i}.upsamplers.0.conv.conv.{part}", old)
    if official:
        raise KeyError(f"keys the conversion does not know: {sorted(official)}")
    return out
