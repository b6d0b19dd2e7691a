"""Typed, ranged reads of a config file's fields (a JSON object already parsed), for every model family.

JSON gives ``4.7`` where an int is meant, ``null`` where a size is meant, or a bare ``2`` where a list is meant;
``int(x)`` and ``tuple(x)`` would silently truncate or fail with a bare ``TypeError``. ``ConfigFields`` refuses each
of these with a ``ValueError`` that names the field, the expected type and range, and the value found; the caller
that knows the file prefixes its path (``"<file>: num_heads must be an int >= 1, got 4.7"``).

A small reader rather than pydantic: no runtime dependency, the config classes stay the plain frozen dataclasses
the models and the planner already use, and the messages say exactly what a checkpoint author needs to fix.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

_MISSING = object()


class ConfigFields:
    """Reads the fields of one config mapping; every method returns the default when the key is absent."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        if not isinstance(data, Mapping):
            raise ValueError(f"expected a JSON object, got {type(data).__name__}")
        self.data = data

    def has(self, name: str) -> bool:
        return name in self.data

    def _get(self, name: str, default: Any) -> Any:
        if name in self.data:
            return self.data[name]
        if default is _MISSING:
            raise ValueError(f"{name} is required")
        return default

    @staticmethod
    def _fail(name: str, what: str, value: Any) -> ValueError:
        return ValueError(f"{name} must be {what}, got {value!r}")

    @staticmethod
    def _range(lo: float | None, hi: float | None) -> str:
        if lo is not None and hi is not None:
            return f" in [{lo}, {hi}]"
        if lo is not None:
            return f" >= {lo}"
        return f" <= {hi}" if hi is not None else ""

    def int(self, name: str, default: Any = _MISSING, *, min: int | None = None, max: int | None = None) -> int:
        """An int (JSON ``4``; ``4.0``, ``4.7``, ``true``, ``"4"`` and ``null`` are refused) within the bounds."""
        value = self._get(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or (min is not None and value < min) or (
                max is not None and value > max):
            raise self._fail(name, "an int" + self._range(min, max), value)
        return value

    def optional_int(self, name: str, default: int | None = None, *, min: int | None = None) -> int | None:
        """An int within the bounds, or None (``null`` or absent)."""
        if self.data.get(name, default) is None:
            return None
        value = self._get(name, default)
        if isinstance(value, bool) or not isinstance(value, int) or (min is not None and value < min):
            raise self._fail(name, "an int" + self._range(min, None) + " or null", value)
        return value

    def float(self, name: str, default: Any = _MISSING, *, min: float | None = None,
              positive: bool = False) -> float:
        """A finite number (ints accepted); ``positive``: > 0."""
        value = self._get(name, default)
        ok = not isinstance(value, bool) and isinstance(value, (int, float)) and math.isfinite(value)
        if ok and positive and value <= 0:
            ok = False
        if ok and min is not None and value < min:
            ok = False
        if not ok:
            what = "a finite number" + (" > 0" if positive else "") + self._range(min, None)
            raise self._fail(name, what, value)
        return float(value)

    def bool(self, name: str, default: Any = _MISSING) -> bool:
        value = self._get(name, default)
        if not isinstance(value, bool):
            raise self._fail(name, "true or false", value)
        return value

    def str(self, name: str, default: Any = _MISSING, *, choices: Sequence[str] | None = None) -> str:
        value = self._get(name, default)
        if not isinstance(value, str) or (choices is not None and value not in choices):
            raise self._fail(name, "a string" + (f" (one of {list(choices)})" if choices else ""), value)
        return value

    def _list(self, name: str, default: Any, length: int | None, what: str, check) -> tuple:
        value = self._get(name, default)
        if isinstance(value, tuple):
            value = list(value)
        desc = f"a list of {length} {what}" if length is not None else f"a list of {what}"
        if not isinstance(value, list) or (length is not None and len(value) != length) or not all(
                check(v) for v in value):
            raise self._fail(name, desc, value)
        return tuple(value)

    def int_list(self, name: str, default: Any = _MISSING, *, length: int | None = None,
                 min: int | None = None) -> tuple[int, ...]:
        def ok(v):
            return not isinstance(v, bool) and isinstance(v, int) and (min is None or v >= min)

        return self._list(name, default, length, "ints" + self._range(min, None), ok)

    def float_list(self, name: str, default: Any = _MISSING, *, length: int | None = None,
                   positive: bool = False) -> tuple[float, ...]:
        def ok(v):
            good = not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)
            return good and (not positive or v > 0)

        values = self._list(name, default, length, "finite numbers" + (" > 0" if positive else ""), ok)
        return tuple(float(v) for v in values)

    def bool_list(self, name: str, default: Any = _MISSING, *, length: int | None = None) -> tuple[bool, ...]:
        return self._list(name, default, length, "true/false values", lambda v: isinstance(v, bool))


__all__ = ["ConfigFields"]
