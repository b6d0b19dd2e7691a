"""The durable job store: one ``JobRecord`` per video request, and the ``JobStore`` interface the service uses.

Lifecycle: ``queued`` -> ``in_progress`` (claimed by one replica, which holds a lease it renews while it runs the
job) -> ``completed`` / ``failed`` / ``cancelled``. A job whose replica died goes back to ``queued`` when that
replica restarts (``release``) or when its lease runs out (another replica's ``claim`` takes it); it then resumes
from its denoising checkpoint. Every write that ends a job is fenced by the owner (``finish`` only succeeds for
the replica that holds the claim), so a job is completed at most once even if two replicas ever ran it.

Stores: ``SqliteJobStore`` (a file in ``--state-dir``, one replica) and ``PostgresJobStore`` (shared by several
replicas; claims use ``FOR UPDATE SKIP LOCKED``). ``open_store`` picks one from ``--job-store``.
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

QUEUED, RUNNING, COMPLETED, FAILED, CANCELLED = "queued", "in_progress", "completed", "failed", "cancelled"
STATUSES = (QUEUED, RUNNING, COMPLETED, FAILED, CANCELLED)
FINISHED = (COMPLETED, FAILED, CANCELLED)


@dataclass
class JobRecord:
    """One video job as stored. ``request`` holds the resolved generation settings (JSON values, see
    ``vidpar.serve.protocol.VideoRequest.to_json``); times are Unix seconds."""

    id: str
    status: str
    request: dict[str, Any]
    model: str
    created_at: float
    seq: int | None = None  # queue order (assigned by the store)
    started_at: float | None = None
    completed_at: float | None = None
    progress: int = 0  # percent of denoising steps done
    step: int = 0  # denoising steps done (from the checkpoint when resumed)
    error: dict[str, str] | None = None  # {"code": ..., "message": ...}
    owner: str | None = None  # replica id holding the claim
    lease_until: float | None = None
    attempts: int = 0  # claims so far (1 for a job that ran once)
    output: str | None = None  # the mp4's path once completed
    cancel_requested: bool = False

    COLUMNS = ("id", "seq", "status", "request", "model", "created_at", "started_at", "completed_at", "progress",
               "step", "error", "owner", "lease_until", "attempts", "output", "cancel_requested")

    def to_row(self) -> dict[str, Any]:
        row = {c: getattr(self, c) for c in self.COLUMNS}
        row["request"] = json.dumps(self.request, sort_keys=True)
        row["error"] = None if self.error is None else json.dumps(self.error)
        row["cancel_requested"] = int(self.cancel_requested)
        return row

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> "JobRecord":
        values = dict(row)
        values["request"] = json.loads(values["request"])
        values["error"] = None if values["error"] is None else json.loads(values["error"])
        values["cancel_requested"] = bool(values["cancel_requested"])
        return cls(**values)


@dataclass(frozen=True)
class Lease:
    """What a renewal tells the running replica: whether it still owns the job and whether a cancel was asked."""

    owned: bool
    cancel_requested: bool = False


class JobStore(ABC):
    """Where jobs live. Every method is one transaction; safe to call from several threads."""

    shared: bool = False  # True: several replicas may use this store at once

    @abstractmethod
    def create(self, record: JobRecord) -> JobRecord:
        """Insert a new ``queued`` job; returns it with its ``seq``."""

    @abstractmethod
    def get(self, job_id: str) -> JobRecord | None:
        """The job, or None if there is no such job."""

    @abstractmethod
    def list(self, *, after: str | None = None, limit: int = 20, order: str = "desc") -> list[JobRecord]:
        """Jobs by creation order (``"asc"`` or ``"desc"``), starting after the job ``after``."""

    @abstractmethod
    def counts(self) -> dict[str, int]:
        """Number of jobs per status (every status present, 0 where none)."""

    @abstractmethod
    def claim(self, owner: str, lease_s: float, now: float) -> JobRecord | None:
        """Take the oldest ``queued`` job, or an ``in_progress`` one whose lease ran out, for ``owner``: status
        ``in_progress``, lease until ``now + lease_s``, ``attempts + 1``. None when there is nothing to run."""

    @abstractmethod
    def renew(self, job_id: str, owner: str, lease_s: float, now: float, progress: int | None = None,
              step: int | None = None) -> Lease:
        """Extend ``owner``'s lease (and record progress); says whether it still owns the job and whether a
        cancellation was requested."""

    @abstractmethod
    def finish(self, job_id: str, owner: str, status: str, now: float, *, output: str | None = None,
               error: dict[str, str] | None = None) -> bool:
        """End ``owner``'s running job as ``completed``/``failed``/``cancelled``; False if ``owner`` no longer
        holds it (its lease was taken over): then nothing is written."""

    @abstractmethod
    def requeue(self, job_id: str, owner: str) -> bool:
        """Put ``owner``'s running job back in the queue (drain: its checkpoint resumes it); False if not owned."""

    @abstractmethod
    def cancel(self, job_id: str, now: float) -> JobRecord | None:
        """A queued job becomes ``cancelled`` (it never runs); a running one gets ``cancel_requested`` (its
        replica stops it at the next step). Returns the updated job, None if unknown."""

    @abstractmethod
    def delete(self, job_id: str) -> bool:
        """Remove a finished job's record; False if unknown or not finished."""

    @abstractmethod
    def release(self, owner: str | None) -> list[str]:
        """At start-up: requeue the running jobs of ``owner`` (None: every running job, for a store only one
        replica uses) left by a crash; returns their ids."""

    def close(self) -> None:
        """Release connections."""


@dataclass(frozen=True)
class StoreLocation:
    """A parsed ``--job-store`` value."""

    kind: str  # "sqlite" or "postgresql"
    target: str  # a file path, or the PostgreSQL connection URL
    extra: dict = field(default_factory=dict)

    def describe(self) -> str:
        if self.kind == "sqlite":
            return f"sqlite {self.target}"
        return "postgresql " + self.target.split("@")[-1]  # no password in logs


def parse_store_location(url: str | None, state_dir: Path) -> StoreLocation:
    """``None`` -> ``<state_dir>/jobs.sqlite``; ``sqlite:///path`` or a ``.sqlite``/``.db`` path; or
    ``postgresql://...`` (also ``postgres://``). ``ValueError`` for anything else."""
    if url is None:
        return StoreLocation("sqlite", str(Path(state_dir) / "jobs.sqlite"))
    if url.startswith(("postgresql://", "postgres://")):
        return StoreLocation("postgresql", url)
    if url.startswith("sqlite:///"):
        return StoreLocation("sqlite", url[len("sqlite:///"):])  # sqlite:///rel/path, sqlite:////abs/path
    if "://" not in url and Path(url).suffix in (".sqlite", ".db"):
        return StoreLocation("sqlite", url)
    raise ValueError(f"--job-store {url!r}: use postgresql://user@host:port/db, sqlite:///path/jobs.sqlite, or "
                     "leave it out (a SQLite file in --state-dir)")


def open_store(location: StoreLocation) -> JobStore:
    """Connect (and create the table if needed); ``ValueError`` if the store cannot be reached."""
    if location.kind == "sqlite":
        from .sqlite_store import SqliteJobStore

        return SqliteJobStore(location.target)
    from .postgres_store import PostgresJobStore

    return PostgresJobStore(location.target)


__all__ = ["CANCELLED", "COMPLETED", "FAILED", "FINISHED", "JobRecord", "JobStore", "Lease", "QUEUED", "RUNNING",
           "STATUSES", "StoreLocation", "open_store", "parse_store_location"]
