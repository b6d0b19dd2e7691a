"""HunyuanVideo-1.5's module renaming for ``vidpar.lora``: official and diffusers names -> native paths.

vidpar's native names are the official ones with ``double_blocks.<i>`` written ``blocks.<i>``
(``transformer_keys``). Modules stored differently in the two layouts cannot take a module-level LoRA in the other
naming and are left unresolved (the LoRA loader then names them): the token refiner's fused q/k/v (three diffusers
modules, one official one) and the final modulation (its halves swapped).
"""

from __future__ import annotations

from dataclasses import dataclass

from .transformer_keys import COPY, diffusers_to_native, native_to_diffusers, native_to_official_key, \
    official_to_native_key


@dataclass(frozen=True)
class HunyuanLoraKeys:
    """``vidpar.lora.LoraKeyMap`` for ``HunyuanVideo15Transformer3D``."""

    namings: tuple[str, ...] = ("original", "diffusers")

    def to_native(self, name: str, naming: str) -> str:
        """``transformer_blocks.0.attn.to_q`` (diffusers) or ``double_blocks.0.img_attn_q`` (original) ->
        ``blocks.0.img_attn_q``; a name with no one-to-one native module comes back unchanged (unresolved)."""
        if naming == "original":
            return official_to_native_key(name)
        if naming != "diffusers":
            raise ValueError(f"HunyuanVideo-1.5 LoRA names are 'original' or 'diffusers', not {naming!r}")
        try:
            native, _, kind = diffusers_to_native(name + ".weight")
        except KeyError:
            return name
        return native[: -len(".weight")] if kind == COPY else name

    def from_native(self, native: str, naming: str) -> str:
        """The inverse of ``to_native``."""
        if naming == "original":
            return native_to_official_key(native)
        if naming != "diffusers":
            raise ValueError(f"HunyuanVideo-1.5 LoRA names are 'original' or 'diffusers', not {naming!r}")
        try:
            names, kind = native_to_diffusers(native + ".weight")
        except KeyError:
            return native
        return names[0][: -len(".weight")] if kind == COPY else native


HUNYUAN_LORA_KEYS = HunyuanLoraKeys()
