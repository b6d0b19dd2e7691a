"""Preemption-safe denoising: atomic snapshots of the latents and scheduler state, and a stop request from signals.

Every rank holds identical latents and scheduler state, so rank 0 alone writes the snapshot; every rank reads it
on resume (the folder must be visible to all ranks, as a shared file system is under Slurm). A snapshot belongs to
one request: resuming with different settings is refused rather than silently mixing two generations.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import signal
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

SNAPSHOT = "denoise_state.pt"
REQUEUE_EXIT_CODE = 3  # stopped, and a snapshot exists: rerun (requeue) to resume; distinct from errors (1)
STOPPED_UNSAVED_EXIT_CODE = 4  # stopped, nothing saved (no checkpoint dir): a rerun starts over, so no requeue


class GenerationInterrupted(Exception):
    """Raised on every rank when a stop was requested: after step ``step``, with the snapshot written to ``path``
    (None: the run had no checkpoint dir, nothing was saved)."""

    def __init__(self, step: int, path: Path | None) -> None:
        saved = f"state saved to {path}" if path is not None else "nothing was saved (no checkpoint dir)"
        super().__init__(f"generation stopped after step {step}; {saved}")
        self.step = step
        self.path = path


class StopRequest:
    """A flag set from signal handlers (SIGTERM, SIGUSR1 and SIGINT/Ctrl-C by default); the loop checks it once per
    step, so every rank stops after the same step (a terminal's Ctrl-C reaches every rank, torchrun forwards the
    others: one stop however many signals arrive)."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signal_name: str | None = None

    def request(self, name: str = "manual") -> None:
        if not self._event.is_set():
            self.signal_name = name  # the first signal is the reason
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def install(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)) -> "StopRequest":
        """Route ``signals`` to this request (main thread only). Returns self."""
        for sig in signals:
            signal.signal(sig, lambda signum, _frame: self.request(signal.Signals(signum).name))
        return self


@dataclass
class DenoiseCheckpoint:
    """Where and how often to snapshot; ``request_key`` identifies the generation the snapshot belongs to."""

    folder: Path
    every: int = 1
    request: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.folder = Path(self.folder)
        if self.every < 1:
            raise ValueError(f"checkpoint interval must be >= 1 step, got {self.every}")

    @property
    def path(self) -> Path:
        return self.folder / SNAPSHOT

    @property
    def request_key(self) -> str:
        return hashlib.sha256(json.dumps(self.request, sort_keys=True, default=str).encode()).hexdigest()

    def save(self, step: int, latents: torch.Tensor, scheduler_state: dict, extra: dict | None = None) -> Path:
        """Write atomically (temporary file + rename): a crash mid-write leaves the previous snapshot intact.

        ``extra``: more state of the same step (e.g. ``{"cache": ...}``, a step-cache session's), saved as is."""
        self.folder.mkdir(parents=True, exist_ok=True)
        state = {
            "request_key": self.request_key,
            "request": json.loads(json.dumps(self.request, default=str)),
            "step": step,
            "latents": latents.detach().cpu(),
            "scheduler": scheduler_state,
        }
        if extra:
            state["extra"] = extra
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=f".{SNAPSHOT}.")
        os.close(fd)
        try:
            torch.save(state, tmp)
            os.replace(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return self.path

    def load(self) -> dict | None:
        """The snapshot for this request, or None if there is none. A snapshot of another request is an error."""
        if not self.path.is_file():
            return None
        try:
            state = torch.load(self.path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - name the file
            raise ValueError(f"{self.path}: the snapshot cannot be read ({type(e).__name__}: {e}); delete it to "
                             "start over") from None
        if not isinstance(state, dict) or state.get("request_key") != self.request_key:
            request = state.get("request") if isinstance(state, dict) else None
            raise ValueError(
                f"{self.path} holds the state of a different generation ({request}); "
                f"use another --checkpoint-dir or delete it"
            )
        logging.getLogger("vidpar").info("resuming from step %d (snapshot %s)", int(state["step"]), self.path)
        return state

    def clear(self) -> None:
        if self.path.is_file():
            self.path.unlink()
