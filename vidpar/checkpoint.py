"""Preemption-safe denoising: atomic snapshots of the latents and scheduler state, and a stop request from signals.

Every rank holds identical latents and scheduler state, so rank 0 alone writes the snapshot; every rank reads it
on resume (the folder must be visible to all ranks, as a shared file system is under Slurm). A snapshot belongs to
one request: resuming with different settings is refused rather than silently mixing two generations.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch

SNAPSHOT = "denoise_state.pt"
REQUEUE_EXIT_CODE = 3  # distinct from errors (1) so launch scripts can requeue


class GenerationInterrupted(Exception):
    """Raised on every rank when a stop was requested; the snapshot at ``step`` has been written."""

    def __init__(self, step: int, path: Path | None) -> None:
        super().__init__(f"generation stopped after step {step}; state saved to {path}")
        self.step = step
        self.path = path


class StopRequest:
    """A flag set from signal handlers (SIGTERM, SIGUSR1 by default); the loop checks it once per step."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signal_name: str | None = None

    def request(self, name: str = "manual") -> None:
        self.signal_name = name
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def install(self, signals: tuple[int, ...] = (signal.SIGTERM, signal.SIGUSR1)) -> "StopRequest":
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
        state = torch.load(self.path, map_location="cpu", weights_only=True)
        if state.get("request_key") != self.request_key:
            raise ValueError(
                f"{self.path} holds the state of a different generation ({state.get('request')}); "
                f"use another --checkpoint-dir or delete it"
            )
        return state

    def clear(self) -> None:
        if self.path.is_file():
            self.path.unlink()
