"""Wan's module renaming for ``vidpar.lora``: diffusers and official (ComfyUI, kohya) names -> native paths.

vidpar's native Wan names are the official ones (``blocks.0.self_attn.q``), except the timestep MLPs under
``time_embedder.``; the renaming reuses the checkpoint key converters of ``transformer_loader``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .transformer_loader import (
    diffusers_to_official_key,
    native_to_official_key,
    official_to_diffusers_key,
    official_to_native_key,
)


def _rename_module(path: str, convert: Callable[[str], str]) -> str:
    """Apply a parameter-key converter to a module path.

    Whole-name pairs (parameters such as ``scale_shift_table``) match the path itself; prefix pairs
    (``attn1.to_q.``) need the trailing dot a parameter key would have."""
    whole = convert(path)
    if whole != path and not whole.endswith("."):  # "blocks.0" must not come back as "blocks.0."
        return whole
    return convert(path + ".")[:-1]


@dataclass(frozen=True)
class WanLoraKeys:
    """``vidpar.lora.LoraKeyMap`` for ``WanTransformer3D`` (Wan 2.1 and 2.2, every variant)."""

    namings: tuple[str, ...] = ("original", "diffusers")

    def to_native(self, name: str, naming: str) -> str:
        """``blocks.0.attn1.to_q`` (diffusers) or ``blocks.0.self_attn.q`` (original) -> ``blocks.0.self_attn.q``."""
        if naming == "diffusers":
            name = _rename_module(name, diffusers_to_official_key)
        elif naming != "original":
            raise ValueError(f"Wan LoRA names are 'original' or 'diffusers', not {naming!r}")
        return _rename_module(name, official_to_native_key)

    def from_native(self, native: str, naming: str) -> str:
        """The inverse of ``to_native``."""
        official = _rename_module(native, native_to_official_key)
        if naming == "diffusers":
            return _rename_module(official, official_to_diffusers_key)
        if naming != "original":
            raise ValueError(f"Wan LoRA names are 'original' or 'diffusers', not {naming!r}")
        return official


WAN_LORA_KEYS = WanLoraKeys()
