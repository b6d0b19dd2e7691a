"""What rank 0's HTTP threads and its worker loop share: the job store, the LoRA registry, the validators, the stop
flag, metrics."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from vidpar.checkpoint import StopRequest
from vidpar.lora import LoraSpec
from vidpar.models.family import ModelCard

from .jobs import JobStore
from .lora_registry import LoraRegistry
from .metrics import Metrics
from .protocol import VideoRequest


@dataclass
class ServiceState:
    """Rank 0's service. ``validate`` raises ``ValueError`` for a request the model cannot run (no collective);
    ``tokenizer_lock`` keeps it from using the tokenizer while a job's prompt is being encoded (fast tokenizers
    refuse concurrent use with different settings). ``check_lora`` reads a LoRA file and checks it against the
    loaded denoisers (names and shapes only: no weight changes, no collective); it returns the file's SHA-256 or
    raises ``ValueError``."""

    store: JobStore
    card: ModelCard
    served_names: tuple[str, ...]
    validate: Callable[[VideoRequest], None]
    stop: StopRequest
    metrics: Metrics
    state_dir: Path
    replica_id: str
    world_size: int
    loras: LoraRegistry
    check_lora: Callable[[LoraSpec], str]
    api_key: str | None = None
    wake: threading.Event = field(default_factory=threading.Event)  # set when a job was submitted
    tokenizer_lock: threading.Lock = field(default_factory=threading.Lock)
    running: str | None = None  # the job this replica runs now
    _cancel: threading.Event = field(default_factory=threading.Event)

    @property
    def fps(self) -> int:
        return self.card.defaults.fps

    @property
    def videos_dir(self) -> Path:
        return self.state_dir / "videos"

    def output_path(self, job_id: str, fmt: str = "mp4") -> Path:
        """Where the video of a job goes (``fmt``: ``"mp4"`` or ``"npy"``)."""
        return self.videos_dir / f"{job_id}.{fmt}"

    def checkpoint_dir(self, job_id: str) -> Path:
        return self.state_dir / "checkpoints" / job_id

    def start_job(self, job_id: str) -> None:
        self._cancel.clear()
        self.running = job_id

    def end_job(self) -> None:
        self.running = None
        self._cancel.clear()

    def cancel_local(self, job_id: str) -> None:
        """A DELETE for the job this replica runs: stop it at the next step without waiting for the store poll."""
        if self.running == job_id:
            self._cancel.set()

    def cancel_requested_locally(self) -> bool:
        return self._cancel.is_set()


__all__ = ["ServiceState"]
