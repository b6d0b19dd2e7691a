"""The one place that maps model names and checkpoint folders to families.

Adding a family = a folder ``vidpar/models/<family>/`` with a ``ModelFamily`` subclass, plus one line in
``FAMILIES``. Families are imported lazily, so using one never imports another's code.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from .family import LoadedModel, ModelCard, ModelFamily

# name -> "module:ClassName" of the family's description object.
FAMILIES: tuple[tuple[str, str], ...] = (
    ("wan", "vidpar.models.wan.family:WanFamily"),
    ("hunyuanvideo-1.5", "vidpar.models.hunyuanvideo15.family:HunyuanVideo15Family"),
)


def families() -> list[ModelFamily]:
    """Every registered family (fresh, stateless instances)."""
    out = []
    for _name, target in FAMILIES:
        module, _, cls = target.partition(":")
        out.append(getattr(importlib.import_module(module), cls)())
    return out


def builtin_names() -> list[str]:
    return [n for f in families() for n in f.builtin_names()]


def find_family(source: str | Path) -> ModelFamily:
    """The family of a built-in name or a checkpoint folder; ``ValueError`` saying what was looked for."""
    fams = families()
    for fam in fams:
        if str(source) in fam.builtin_names():
            return fam
    path = Path(source)
    if not path.is_dir():
        names = ", ".join(n for f in fams for n in f.builtin_names())
        raise ValueError(f"unknown model {str(source)!r}: not a built-in name ({names}) and not a folder")
    matches = [fam for fam in fams if fam.recognizes(path)]
    if len(matches) > 1:
        raise ValueError(f"{path} looks like a checkpoint of several families ({[f.name for f in matches]})")
    if not matches:
        # Name the family whose files are closest, so the error says what is missing.
        for fam in fams:
            try:
                fam.check_source(path)
            except ValueError as e:
                raise ValueError(f"{path} is not a checkpoint folder vidpar knows ({e})") from None
        raise ValueError(f"{path} is not a checkpoint folder of a known family ({[f.name for f in fams]})")
    return matches[0]


def check_source(source: str | Path) -> tuple[ModelFamily, str | Path]:
    """``(family, normalised source)`` after validating the files (no weights; run it on every rank)."""
    fam = find_family(source)
    return fam, fam.check_source(source)


def model_card(source: str | Path) -> ModelCard:
    """The ``ModelCard`` of a built-in name or checkpoint folder (configs only)."""
    fam, checked = check_source(source)
    return fam.card(checked)


def load_model(source: str | Path, **options: Any) -> LoadedModel:
    """Load a model (see ``ModelFamily.load`` for the options)."""
    fam, checked = check_source(source)
    return fam.load(checked, **options)


def planner_model(name: str | Path) -> Any:
    """The planner's ``ModelSpec`` of a released configuration (``"wan2.1-t2v-14b"``...), a built-in model, or a
    folder holding a family's config files (weights are not needed)."""
    key = str(name).lower()
    fams = families()
    presets = {}
    for fam in fams:
        presets.update(fam.planner_presets())
    if key in presets:
        return presets[key]
    if any(str(name) in fam.builtin_names() for fam in fams):
        return model_card(name).workload
    path = Path(name)
    if not path.exists():
        raise ValueError(f"unknown model {str(name)!r}: not a planner preset ({', '.join(sorted(presets))}), "
                         f"a built-in model nor a folder")
    if path.is_file():
        path = path.parent
    for fam in fams:
        spec = fam.planner_spec(path)
        if spec is not None:
            return spec
    raise ValueError(f"{path} holds no model config vidpar knows (families: {[f.name for f in fams]})")


__all__ = ["FAMILIES", "builtin_names", "check_source", "families", "find_family", "load_model", "model_card",
           "planner_model"]
