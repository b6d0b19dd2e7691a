"""From a file's module names to the native module paths of a denoiser.

A model family supplies a ``LoraKeyMap`` (in its own folder under ``vidpar/models/``) that renames module paths
between its checkpoint namings (``"original"``: the authors' names, ``"diffusers"``) and its native module
tree. Everything else here is model-neutral: the kohya naming is the original one with ``.`` written as ``_``, and
a bare file (no prefix) is read in whichever naming matches all of its names.
"""

from __future__ import annotations

from typing import Protocol

from torch import nn


class LoraKeyMap(Protocol):
    """A family's renaming of module paths (not parameter keys: ``blocks.0.attn1.to_q``, not ``...to_q.weight``).

    ``namings``: the checkpoint namings it knows, ``"original"`` first. Unknown names may pass through unchanged;
    a name that does not exist in the model is caught by the caller.
    """

    namings: tuple[str, ...]

    def to_native(self, name: str, naming: str) -> str:
        """A module path in ``naming`` -> the native module path (e.g. ``blocks.0.self_attn.q``)."""
        ...

    def from_native(self, native: str, naming: str) -> str:
        """A native module path -> its name in ``naming`` (used to build the kohya table)."""
        ...


class NameResolver:
    """Resolves the module names of one file against one denoiser.

    Native targets are the denoiser's named modules and named parameters (a ``.diff`` may patch a bare
    parameter such as a modulation table).
    """

    def __init__(self, denoiser: nn.Module, keys: LoraKeyMap) -> None:
        self.keys = keys
        self.modules = dict(denoiser.named_modules())
        self.params = dict(denoiser.named_parameters())
        self._kohya: dict[str, str | None] | None = None

    def exists(self, native: str) -> bool:
        return native in self.modules or native in self.params

    def resolve(self, name: str, naming: str) -> str | None:
        """The native path of ``name`` in ``naming`` (``"kohya"`` included), or None if nothing matches."""
        if naming == "kohya":
            return self._kohya_table().get(name)
        if naming not in self.keys.namings:
            raise ValueError(f"naming {naming!r} is not one this model knows ({', '.join(self.keys.namings)})")
        native = self.keys.to_native(name, naming)
        return native if native and self.exists(native) else None

    def resolve_all(self, names: list[str], naming: str) -> tuple[str, dict[str, str], str | None]:
        """``(naming used, {name: native}, first unresolved name or None)``; ``"bare"`` tries every naming."""
        candidates = self.keys.namings if naming == "bare" else (naming,)
        first_try = None
        for cand in candidates:
            found, missing = {}, None
            for name in names:
                native = self.resolve(name, cand)
                if native is None:
                    missing = name
                    break
                found[name] = native
            if missing is None:
                return cand, found, None
            first_try = first_try or (cand, found, missing)
        return first_try

    def _kohya_table(self) -> dict[str, str | None]:
        if self._kohya is None:
            table: dict[str, str | None] = {}
            for native in (*self.modules, *self.params):
                if not native:
                    continue
                flat = self.keys.from_native(native, "original").replace(".", "_")
                # two native paths with one underscored name cannot be told apart: refuse that name
                table[flat] = None if table.get(flat, native) != native else native
            self._kohya = table
        return self._kohya
