"""Which output paths vidpar may write, and the record of what made each output.

vidpar writes only what it owns: a new ``.mp4``/``.npy`` file (written under a temporary name and renamed), or a
new folder of PNG frames. An existing output is replaced only with ``overwrite=True``, and even then only what
vidpar itself wrote: a file needs its record beside it (``x.mp4.vidpar.json``) with the file's current hash; in a
folder, only the frames listed in its manifest (``vidpar.json`` inside) are replaced and everything else in the
folder is left as it is. The root, the home folder, the current folder and its parents, a folder named like a
file (``x.mp4/``), a file where a folder is asked and unknown suffixes are refused outright.

The record (``OutputRecord``) names the model, the request (prompt, negative prompt, seed, sizes, steps, guidance,
sampler and shift, dtype, fps), the mesh, the vidpar version and the time. A resumed batch skips an output only
when its record matches the request; otherwise the differing field is named.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

FILE_SUFFIXES = (".mp4", ".npy")
RECORD_SUFFIX = ".vidpar.json"  # beside a file: x.mp4 -> x.mp4.vidpar.json
MANIFEST = "vidpar.json"  # inside a folder of PNG frames
FRAME_NAME = "{:05d}.png"
FRAME_RE = re.compile(r"^\d{5}\.png$")
RECORD_FORMAT = 1


class OutputError(ValueError):
    """An output path vidpar must not (or cannot) write; the message names the path and what to do."""


def record_path(path: Path) -> Path:
    """Where the record of the file ``path`` lives."""
    return path.with_name(path.name + RECORD_SUFFIX)


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass
class OutputRecord:
    """What made an output: ``request`` holds the fields a resumed run compares (model, prompt, seed, sizes, ...);
    ``info`` the rest (mesh, vidpar version, time). ``files`` maps each written file name to its sha256."""

    request: dict[str, Any]
    info: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"vidpar_output": RECORD_FORMAT, "request": self.request, **self.info, "files": self.files}

    @classmethod
    def read(cls, path: Path) -> "OutputRecord":
        """Parse a record or manifest file; ``OutputError`` if it is not one vidpar wrote."""
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise OutputError(f"{path} is not a vidpar output record ({e}); not touching it") from None
        if not isinstance(raw, dict) or raw.get("vidpar_output") != RECORD_FORMAT or not isinstance(
                raw.get("files"), dict) or not isinstance(raw.get("request"), dict):
            raise OutputError(f"{path} is not a vidpar output record; not touching it")
        info = {k: v for k, v in raw.items() if k not in ("vidpar_output", "request", "files")}
        return cls(raw["request"], info, raw["files"])

    def difference(self, request: dict[str, Any]) -> str | None:
        """The first field of ``request`` this record holds differently, as ``"field: recorded X, requested Y"``
        (None: every field matches)."""
        for key, wanted in request.items():
            if key not in self.request:
                return f"{key}: not in the record, requested {wanted!r}"
            if self.request[key] != wanted:
                return f"{key}: recorded {self.request[key]!r}, requested {wanted!r}"
        return None


REQUEST_FIELDS = ("model", "prompt", "negative_prompt", "seed", "height", "width", "num_frames", "num_steps",
                  "guidance_scale", "guidance_scale_2", "scheduler", "flow_shift", "dtype")


def request_fields(model: str, req: Any, dtype: Any, *, prompt: str | None = None) -> dict[str, Any]:
    """The record fields of a resolved ``GenerationRequest`` ``req`` for ``model`` in ``dtype`` (a torch dtype);
    ``prompt`` replaces the request's own."""
    values = {"model": model, "dtype": str(dtype).replace("torch.", "")}
    for name in REQUEST_FIELDS[1:-1]:
        values[name] = getattr(req, name)
    if prompt is not None:
        values["prompt"] = prompt
    return {k: values[k] for k in REQUEST_FIELDS}


def output_kind(path: str | os.PathLike) -> str:
    """``"file"`` (``.mp4``/``.npy``) or ``"folder"`` (no suffix: PNG frames); ``OutputError`` otherwise."""
    raw = os.fspath(path)
    p = Path(raw)
    _refuse_special(p, raw)
    if p.name in ("", ".", ".."):
        raise OutputError(f"output {raw!r} names no new file or folder; give a name, e.g. clip.mp4 or frames/")
    if p.suffix in FILE_SUFFIXES:
        if raw.endswith(("/", os.sep)):
            raise OutputError(f"output {raw!r} ends with '/' (a folder) but is named like a {p.suffix} file")
        return "file"
    if p.suffix == "":
        return "folder"
    raise OutputError(f"output {raw}: unknown suffix {p.suffix!r}; use .mp4, .npy, or a folder name without a "
                      "suffix (PNG frames)")


def _refuse_special(path: Path, raw: str) -> None:
    resolved = path.resolve()
    cwd = Path.cwd().resolve()
    special = {Path(resolved.anchor): "the file system root"}
    try:
        special[Path.home().resolve()] = "the home folder"
    except RuntimeError:  # no home folder known
        pass
    if resolved in special:
        raise OutputError(f"output {raw!r} is {special[resolved]}; vidpar writes only new files or folders")
    if resolved == cwd or resolved in cwd.parents:
        raise OutputError(f"output {raw!r} is the current folder or one of its parents; give a new folder name")


def _frames_owned(folder: Path) -> OutputRecord | None:
    manifest = folder / MANIFEST
    if manifest.exists() or manifest.is_symlink():
        if not manifest.is_file():
            raise OutputError(f"output folder {folder}: {manifest.name} is not a vidpar manifest; not touching it")
        return OutputRecord.read(manifest)
    return None


def check_output_target(path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Validate an output path before any work; returns it as a ``Path``.

    Refused (``OutputError``): the special folders (module docstring), an unknown suffix, a missing or read-only
    parent folder, a file where a folder is asked and the reverse, and an existing output unless ``overwrite``.
    With ``overwrite``, an existing file must carry a vidpar record matching its contents, and an existing folder
    must hold no frame-named file (``00000.png``...) its manifest does not list as vidpar's own.
    """
    raw = os.fspath(path)
    kind = output_kind(raw)
    path = Path(raw)
    parent = path.resolve().parent
    if not parent.is_dir():
        raise OutputError(f"output {raw}: folder {parent} does not exist")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise OutputError(f"output {raw}: folder {parent} is not writable")
    if kind == "file":
        if path.is_dir():
            raise OutputError(f"output {raw} is an existing folder, not a {path.suffix} file; not touching it")
        rec = record_path(path)
        if rec.exists() and not rec.is_file():
            raise OutputError(f"output {raw}: {rec.name} exists and is not a vidpar record; not touching it")
        if rec.is_file():
            OutputRecord.read(rec)  # a file of that name that vidpar did not write is never replaced
        if path.exists() or path.is_symlink():
            if not overwrite:
                raise OutputError(f"output {raw} exists; pass --overwrite (overwrite=True) to replace a video "
                                  "vidpar wrote, or choose another name")
            _check_file_owned(path)
        return path
    if path.exists() and not path.is_dir():
        raise OutputError(f"output {raw} is an existing file, but a folder of PNG frames was asked; not touching it")
    if path.is_dir():
        if not overwrite:
            raise OutputError(f"output folder {raw} exists; pass --overwrite (overwrite=True) to replace the frames "
                              "vidpar wrote there (other files are kept), or choose a new folder")
        _check_folder_owned(path)
    return path


def _check_file_owned(path: Path) -> OutputRecord:
    rec = record_path(path)
    if not rec.is_file():
        raise OutputError(f"output {path} exists and has no vidpar record ({rec.name}): vidpar did not write it, "
                          "so it is not replaced")
    record = OutputRecord.read(rec)
    if not path.is_file() or path.is_symlink() or record.files.get(path.name) != sha256_of(path):
        raise OutputError(f"output {path} was changed since vidpar wrote it (its record does not match); "
                          "not replacing it")
    return record


def _check_folder_owned(folder: Path) -> OutputRecord | None:
    record = _frames_owned(folder)
    owned = record.files if record is not None else {}
    for entry in sorted(folder.iterdir()):
        if FRAME_RE.match(entry.name) and entry.name not in owned:
            raise OutputError(f"output folder {folder}: {entry.name} was not written by vidpar (its manifest does "
                              "not list it); not replacing it")
    for name, digest in owned.items():
        frame = folder / name
        if not FRAME_RE.match(name) or frame.is_symlink() or (frame.exists() and (
                not frame.is_file() or sha256_of(frame) != digest)):
            raise OutputError(f"output folder {folder}: {name} was changed since vidpar wrote it; not replacing it")
    return record


def existing_record(path: str | os.PathLike) -> OutputRecord | None:
    """The record of an existing output (None: nothing there, or something without a vidpar record)."""
    path = Path(path)
    try:
        if path.is_dir():
            return _check_folder_owned(path)
        if path.is_file():
            return _check_file_owned(path) if record_path(path).is_file() else None
    except OutputError:
        return None
    return None


def plan_output(path: str | os.PathLike, request: dict[str, Any], *, overwrite: bool, resume: bool) -> str:
    """What a run does with output ``path`` for ``request`` (``OutputRecord.request`` fields): ``"write"`` or,
    when resuming (``resume``) and the existing output's record matches, ``"skip"``. ``OutputError`` otherwise,
    naming the differing field."""
    path = Path(path)
    if resume and (path.exists() or path.is_symlink()):
        record = existing_record(path)
        if record is not None:
            diff = record.difference(request)
            if diff is None:
                return "skip"
            if not overwrite:
                raise OutputError(f"output {path} exists and was made by another request ({diff}); use another "
                                  "--out, or --overwrite to replace it")
    check_output_target(path, overwrite=overwrite)
    return "write"


def _atomic_json(path: Path, data: dict[str, Any]) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=1, sort_keys=True)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_file_output(path: Path, write: Callable[[str], None], record: OutputRecord, *,
                      overwrite: bool) -> Path:
    """Write a file output atomically (``write(temporary_name)`` then a rename) and its record beside it."""
    path = check_output_target(path, overwrite=overwrite)
    fd, tmp = tempfile.mkstemp(dir=path.resolve().parent, prefix=f".{path.name}.", suffix=path.suffix)
    os.close(fd)
    try:
        write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp creates 0600; a video is meant to be shared
        record.files = {path.name: sha256_of(Path(tmp))}
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    _atomic_json(record_path(path), _stamped(record))
    return path


def write_folder_output(path: Path, frames: list[Callable[[str], None]], record: OutputRecord, *,
                        overwrite: bool) -> Path:
    """Write PNG frames (``frames[i](filename)`` writes frame i) into a new folder (built under a temporary name,
    then renamed) or, with ``overwrite``, into a folder vidpar wrote before: its listed frames are replaced, stale
    listed frames removed, every other file left alone."""
    path = check_output_target(path, overwrite=overwrite)
    names = [FRAME_NAME.format(i) for i in range(len(frames))]
    if not path.exists():
        tmp = Path(tempfile.mkdtemp(dir=path.resolve().parent, prefix=f".{path.name}.tmp"))
        try:
            for name, write in zip(names, frames):
                write(str(tmp / name))
            record.files = {n: sha256_of(tmp / n) for n in names}
            _atomic_json(tmp / MANIFEST, _stamped(record))
            os.chmod(tmp, 0o755)
            os.rename(tmp, path)  # fails (nothing lost) if someone created the folder meanwhile
        finally:
            if tmp.exists():
                for f in tmp.iterdir():
                    f.unlink()
                tmp.rmdir()
        return path
    old = _check_folder_owned(path)
    old_files = dict(old.files) if old is not None else {}
    staged = []
    try:
        for name, write in zip(names, frames):
            fd, tmp_name = tempfile.mkstemp(dir=path, prefix=f".{name}.", suffix=".png")
            os.close(fd)
            staged.append(tmp_name)
            write(tmp_name)
            os.chmod(tmp_name, 0o644)
        new_files = {n: sha256_of(Path(t)) for n, t in zip(names, staged)}
        # While frames are swapped, the manifest lists old and new ones: an interruption leaves nothing unowned.
        _atomic_json(path / MANIFEST, _stamped(OutputRecord(record.request, record.info, {**old_files, **new_files})))
        for name, tmp_name in zip(names, staged):
            os.replace(tmp_name, path / name)
        staged = []
        for name in sorted(set(old_files) - set(new_files)):  # frames of the longer video vidpar wrote before
            (path / name).unlink(missing_ok=True)
        record.files = new_files
        _atomic_json(path / MANIFEST, _stamped(record))
    finally:
        for tmp_name in staged:
            if os.path.exists(tmp_name):
                os.remove(tmp_name)
    return path


def _stamped(record: OutputRecord) -> dict[str, Any]:
    import vidpar

    data = record.to_json()
    data.setdefault("vidpar_version", vidpar.__version__)
    data["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return data


def frame_files(folder: Path) -> list[Path]:
    """The frames of a PNG folder vidpar wrote, in order (its manifest's list; without one, ``NNNNN.png``)."""
    record = _frames_owned(folder)
    names = sorted(record.files) if record is not None else sorted(p.name for p in folder.iterdir()
                                                                    if FRAME_RE.match(p.name))
    return [folder / n for n in names]


__all__ = ["FILE_SUFFIXES", "MANIFEST", "OutputError", "OutputRecord", "RECORD_SUFFIX", "REQUEST_FIELDS",
           "check_output_target", "existing_record", "frame_files", "output_kind", "plan_output", "record_path",
           "request_fields", "write_file_output", "write_folder_output"]
