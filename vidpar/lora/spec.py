"""What the user asks for: one LoRA file, its strength and which denoiser(s) it goes into.

``FILE[:STRENGTH[:TARGET]]`` on the command line (``--lora style.safetensors:0.8``,
``--lora high.safetensors:1:high --lora low.safetensors:1:low`` for a LoRA pair made for a model with two
experts). ``TARGET`` names a denoiser of the model (the family names them, e.g. ``high``/``low`` for a high-noise
and a low-noise expert); the default ``both`` puts the LoRA into every denoiser.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

EVERY_DENOISER = "both"
_TARGET_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@dataclass(frozen=True)
class LoraSpec:
    """One LoRA to merge: ``W += strength * (alpha / rank) * B @ A`` (and ``strength * diff`` for full deltas).

    Args:
        path: a ``.safetensors`` LoRA file (read on every rank; nothing is unpickled).
        strength: any finite float (negative values subtract the LoRA, 0 is a no-op).
        target: ``"both"`` (every denoiser) or the name of one denoiser of the model (``"high"``, ``"low"``).
    """

    path: Path
    strength: float = 1.0
    target: str = EVERY_DENOISER

    def __post_init__(self) -> None:
        object.__setattr__(self, "path", Path(self.path))
        try:
            strength = float(self.strength)
        except (TypeError, ValueError):
            raise ValueError(f"LoRA {self.path}: strength must be a number, got {self.strength!r}") from None
        if not math.isfinite(strength):
            raise ValueError(f"LoRA {self.path}: strength must be finite, got {self.strength!r}")
        object.__setattr__(self, "strength", strength)
        if not isinstance(self.target, str) or not _TARGET_RE.match(self.target):
            raise ValueError(f"LoRA {self.path}: target must be 'both' or a denoiser name, got {self.target!r}")

    @classmethod
    def parse(cls, text: str) -> "LoraSpec":
        """``"FILE"``, ``"FILE:STRENGTH"`` or ``"FILE:STRENGTH:TARGET"`` -> ``LoraSpec``.

        A trailing ``:part`` counts as a strength only if it is a number, so a path that itself contains ``:``
        still works when it is followed by a strength. Raises ``ValueError`` naming ``text``.
        """
        if not isinstance(text, str) or not text.strip():
            raise ValueError(f"--lora expects FILE[:STRENGTH[:TARGET]], got {text!r}")
        parts = text.rsplit(":", 2)
        if len(parts) == 3 and _is_number(parts[1]) and _TARGET_RE.match(parts[2]):
            return cls(parts[0], float(parts[1]), parts[2])
        head, _, tail = text.rpartition(":")
        if head and _is_number(tail):
            return cls(head, float(tail))
        if head and re.fullmatch(r"[-+.0-9eE]+|nan|inf", tail.strip().lower()):
            raise ValueError(f"--lora {text!r}: {tail!r} is not a valid strength")
        return cls(text)

    @classmethod
    def coerce(cls, value: "LoraSpec | str | Path | Sequence") -> "LoraSpec":
        """A ``LoraSpec`` from a spec, a ``"FILE[:STRENGTH[:TARGET]]"`` string, a ``Path``, or a tuple
        ``(path, strength)`` / ``(path, strength, target)`` (what ``Pipeline.from_pretrained(loras=...)`` takes)."""
        if isinstance(value, LoraSpec):
            return value
        if isinstance(value, Path):
            return cls(value)
        if isinstance(value, str):
            return cls.parse(value)
        if isinstance(value, (tuple, list)) and 1 <= len(value) <= 3:
            return cls(*value)
        raise ValueError(f"a LoRA is a path, 'FILE[:STRENGTH[:TARGET]]' or (path, strength[, target]); got {value!r}")


def _is_number(text: str) -> bool:
    try:
        return math.isfinite(float(text))
    except ValueError:
        return False


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    """Hex SHA-256 of a file's bytes (what identifies a LoRA, whatever its name)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def lora_set_digest(entries: Iterable[tuple[str, float, str]]) -> str:
    """Stable hex digest of a LoRA set given as ``(file sha256, strength, target)`` triples.

    Order-independent (the merge sums in a canonical order, so loading A then B gives the same weights as B then
    A) and name-independent (a renamed file is the same LoRA). The empty set has a digest too.
    """
    canon = sorted((sha, float(strength), target) for sha, strength, target in entries)
    text = json.dumps([[sha, repr(strength), target] for sha, strength, target in canon])
    return hashlib.sha256(text.encode()).hexdigest()
