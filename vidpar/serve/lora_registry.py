"""The service's LoRA registry: names -> LoRA files, kept durably in ``<state-dir>/loras.json``.

A name is registered with ``vidpar serve --lora NAME=FILE[:SCALE[:TARGET]]`` or ``POST /v1/loras``; a request then
names it (``"loras": [{"name": "style", "scale": 0.8}]``). Each entry holds the file's absolute path, its SHA-256
(what identifies the LoRA) and the defaults a request may leave out (``scale``: the strength; ``target``: which
denoiser(s)). A job stores the path and SHA-256 it was accepted with, so a name registered again later cannot
change a queued job, and a file that changed on disk fails that job instead of running another LoRA.

The file is rewritten atomically (a temporary file, fsync, rename) under a lock file, so replicas that share the
state folder see one consistent registry; readers take no lock. A path must be the same file on every rank and
replica, as the state folder is.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import re
import tempfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Iterator, Mapping

from vidpar.lora import EVERY_DENOISER, LoraFile, LoraSpec, build_plan, read_lora_file

from .protocol import LoraRef, RequestError, VideoRequest

REGISTRY_FILE = "loras.json"
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
NAME_RULE = "1-64 letters, digits, '.', '_' or '-', starting with a letter or digit"


class LoraConflict(ValueError):
    """A name that is already registered with another file (or other defaults)."""


def check_name(name: str) -> str:
    """``name`` if it is a valid LoRA name, else ``ValueError`` naming it."""
    if not isinstance(name, str) or NAME_RE.fullmatch(name) is None:
        raise ValueError(f"LoRA name {name!r} is not valid: use {NAME_RULE}")
    return name


@dataclass(frozen=True)
class RegisteredLora:
    """One registry entry. ``path``: absolute; ``scale`` / ``target``: the defaults of a request naming it;
    ``created_at``: Unix seconds."""

    name: str
    path: str
    sha256: str
    scale: float = 1.0
    target: str = EVERY_DENOISER
    created_at: float = 0.0

    def same_registration(self, other: "RegisteredLora") -> bool:
        """Whether ``other`` registers the same file with the same defaults (registering it again is a no-op)."""
        return (self.path, self.sha256, self.scale, self.target) == (other.path, other.sha256, other.scale,
                                                                      other.target)

    def api_object(self) -> dict:
        """The entry as ``GET /v1/loras`` lists it."""
        return {"object": "lora", **asdict(self), "created_at": int(self.created_at)}


def parse_lora_flag(text: str) -> tuple[str, LoraSpec]:
    """``--lora NAME=FILE[:SCALE[:TARGET]]`` -> ``(name, spec)`` with the path made absolute; ``ValueError``."""
    name, sep, rest = text.partition("=")
    if not sep or not rest:
        raise ValueError(f"--lora {text!r}: expected NAME=FILE[:SCALE[:TARGET]]")
    check_name(name)
    spec = LoraSpec.parse(rest)
    return name, replace(spec, path=spec.path.expanduser().resolve())


def read_checked_lora(spec: LoraSpec, denoisers: Mapping | None = None, keys=None) -> LoraFile:
    """Read ``spec``'s file (its layout recognised) and, with ``denoisers`` and the family's ``keys``, check that
    it fits them (``build_plan``: module names and shapes; no weight is changed). ``ValueError`` naming the file
    and the first offending key."""
    lora = read_lora_file(spec.path)
    if denoisers is not None:
        build_plan(denoisers, [(spec, lora)], keys)
    return lora


def parse_registration(body) -> tuple[str, LoraSpec]:
    """The body of ``POST /v1/loras`` (``{"name", "path", "scale"?, "target"?}``) -> ``(name, spec)``.

    ``RequestError`` 422 for a malformed body, 400 for values the service cannot use (a relative path: every rank
    must open the same file)."""
    if not isinstance(body, dict):
        raise RequestError("the request body must be a JSON object", 422)
    known = ("name", "path", "scale", "target")
    unknown = sorted(set(body) - set(known))
    if unknown:
        raise RequestError(f"unknown field(s) {unknown}; known: {list(known)}", 422, unknown[0])
    for field in ("name", "path"):
        if not isinstance(body.get(field), str):
            raise RequestError(f"{field} is required (a string)", 422, field)
    scale = body.get("scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
        raise RequestError(f"scale must be a finite number, got {scale!r}", 422, "scale")
    target = body.get("target", EVERY_DENOISER)
    if not isinstance(target, str):
        raise RequestError(f"target must be a string, got {target!r}", 422, "target")
    try:
        check_name(body["name"])
    except ValueError as e:
        raise RequestError(str(e), 400, "name") from None
    path = Path(body["path"])
    if not path.is_absolute():
        raise RequestError(f"path {body['path']!r} must be absolute (every rank opens the same file)", 400, "path")
    try:
        spec = LoraSpec(path, float(scale), target)
    except ValueError as e:
        raise RequestError(str(e), 400, "target") from None
    return body["name"], spec


class LoraRegistry:
    """The registry file of one state folder (shared by every replica that shares the folder)."""

    def __init__(self, state_dir: str | Path) -> None:
        self.path = Path(state_dir) / REGISTRY_FILE
        self._lock_path = Path(state_dir) / (REGISTRY_FILE + ".lock")

    def list(self) -> list[RegisteredLora]:
        """Every entry, by name."""
        return sorted(self._read().values(), key=lambda e: e.name)

    def get(self, name: str) -> RegisteredLora | None:
        return self._read().get(name)

    def conflict(self, entry: RegisteredLora) -> str | None:
        """Why ``entry`` cannot be registered (its name holds another file), or None."""
        have = self.get(entry.name)
        if have is None or have.same_registration(entry):
            return None
        return (f"LoRA name {entry.name!r} is already registered with {have.path} (sha256 {have.sha256[:12]}..., "
                f"scale {have.scale:g}, target {have.target!r}); DELETE /v1/loras/{entry.name} first or use "
                "another name")

    def add(self, entry: RegisteredLora) -> tuple[RegisteredLora, bool]:
        """Register ``entry``; returns ``(the entry as stored, whether it is new)``. The same registration again
        is a no-op; another file under a taken name raises ``LoraConflict``."""
        with self._locked():
            entries = self._read()
            have = entries.get(entry.name)
            if have is not None:
                if have.same_registration(entry):
                    return have, False
                raise LoraConflict(self.conflict(entry))
            entry = replace(entry, created_at=entry.created_at or time.time())
            entries[entry.name] = entry
            self._write(entries)
            return entry, True

    def remove(self, name: str) -> bool:
        """Unregister ``name`` (jobs already accepted keep their file); False if it was not registered."""
        with self._locked():
            entries = self._read()
            if entries.pop(name, None) is None:
                return False
            self._write(entries)
            return True

    def resolve(self, vr: VideoRequest) -> VideoRequest:
        """``vr`` with each named LoRA resolved to its file, SHA-256 and defaults; ``RequestError`` 400 naming an
        unknown (or repeated) name."""
        if not vr.loras:
            return vr
        entries = self._read()
        resolved, seen = [], set()
        for i, ref in enumerate(vr.loras):
            if ref.name in seen:
                raise RequestError(f"loras[{i}]: {ref.name!r} is named twice", 400, "loras")
            seen.add(ref.name)
            entry = entries.get(ref.name)
            if entry is None:
                known = ", ".join(repr(n) for n in sorted(entries)) or "none"
                raise RequestError(f"loras[{i}]: no LoRA named {ref.name!r} is registered (registered: {known}; "
                                   "POST /v1/loras adds one)", 400, "loras")
            scale = entry.scale if ref.scale is None else ref.scale
            resolved.append(LoraRef(ref.name, scale, entry.path, entry.sha256, entry.target))
        return replace(vr, loras=tuple(resolved))

    # ---- the file ----

    def _read(self) -> dict[str, RegisteredLora]:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as e:
            raise ValueError(f"LoRA registry {self.path} is not readable ({e})") from None
        return {item["name"]: RegisteredLora(**item) for item in data.get("loras", [])}

    def _write(self, entries: dict[str, RegisteredLora]) -> None:
        data = {"version": 1, "loras": [asdict(e) for e in sorted(entries.values(), key=lambda e: e.name)]}
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(data, fh, indent=1, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        dir_fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(dir_fd)  # the rename itself survives a power cut
        finally:
            os.close(dir_fd)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """One writer at a time, across threads, processes and replicas sharing the folder."""
        with open(self._lock_path, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


__all__ = ["LoraConflict", "LoraRegistry", "REGISTRY_FILE", "RegisteredLora", "check_name", "parse_lora_flag",
           "parse_registration", "read_checked_lora"]
