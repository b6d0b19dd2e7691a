"""One run per checkpoint folder: a lock file with its owner and a heartbeat.

Two runs sharing a ``--checkpoint-dir`` would overwrite one snapshot and the first to finish would delete it. The
run that uses a folder holds ``vidpar.lock`` in it: host, pid, start time, a token and a heartbeat that a side
thread refreshes every few seconds. Another run is refused, naming the owner. A lock is stale, and taken over,
when its owner is a dead process on this host, its heartbeat is older than ``stale_after`` seconds (an owner on
another host that died, or a killed job), or it belongs to an earlier attempt of this same run (a torchrun restart
or a Slurm requeue after a crash: same job/run id, lower restart count); the lock is removed when the run ends.

Only one process of a run takes the lock (rank 0); ``hold_checkpoint_dir`` makes every rank agree on the outcome.
"""

from __future__ import annotations

import json
import os
import socket
import tempfile
import threading
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

LOCK_NAME = "vidpar.lock"
HEARTBEAT_S = 5.0
STALE_AFTER_S = 60.0


class LockedError(ValueError):
    """The folder is held by another live run."""


def _run_identity() -> tuple[str | None, list[int]]:
    """``(run id, attempt)`` of this process: the Slurm job and torchrun run it belongs to (None outside both), and
    its restart counts ``[Slurm requeues, torchrun restarts]``."""
    job, elastic = os.environ.get("SLURM_JOB_ID"), os.environ.get("TORCHELASTIC_RUN_ID")
    run = "/".join(x for x in (job, elastic) if x) or None
    attempt = [int(os.environ.get(v, "0") or 0) for v in ("SLURM_RESTART_COUNT", "TORCHELASTIC_RESTART_COUNT")]
    return run, attempt


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


class CheckpointLock:
    """The lock of one checkpoint folder, held by this process between ``acquire`` and ``release``."""

    def __init__(self, folder: str | os.PathLike, *, stale_after: float = STALE_AFTER_S,
                 heartbeat: float = HEARTBEAT_S) -> None:
        self.folder = Path(folder)
        self.path = self.folder / LOCK_NAME
        self.stale_after = stale_after
        self.interval = heartbeat
        self.token = uuid.uuid4().hex
        self.held = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- owner records

    def _record(self, started: float | None = None) -> dict:
        now = time.time()
        run, attempt = _run_identity()
        return {"host": socket.gethostname(), "pid": os.getpid(), "started": started or now, "heartbeat": now,
                "token": self.token, "job": run, "attempt": attempt}

    def read_owner(self) -> dict | None:
        """The current owner's record (None: no lock file, or one being written right now)."""
        try:
            owner = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}
        return owner if isinstance(owner, dict) else {}

    def stale_reason(self, owner: dict) -> str | None:
        """Why ``owner``'s lock no longer counts (None: it is live)."""
        run, attempt = _run_identity()
        if run is not None and owner.get("job") == run and isinstance(owner.get("attempt"), list) \
                and owner["attempt"] < attempt:
            return f"it belongs to an earlier attempt of this run (restart {owner['attempt']}, now {attempt})"
        if owner.get("host") == socket.gethostname() and isinstance(owner.get("pid"), int) \
                and not _pid_alive(owner["pid"]):
            return f"its owner, pid {owner['pid']} on this host, is gone"
        beat = owner.get("heartbeat")
        if not isinstance(beat, (int, float)):
            try:
                beat = self.path.stat().st_mtime
            except OSError:
                return "it vanished"
        age = time.time() - beat
        if age > self.stale_after:
            return f"its heartbeat is {age:.0f} s old (limit {self.stale_after:.0f} s)"
        return None

    def _write(self, record: dict) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.folder, prefix=f".{LOCK_NAME}.")
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(record, fh)
            os.replace(tmp, self.path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)

    # ---- holding

    def held_by_this_process(self) -> bool:
        owner = self.read_owner() or {}
        return owner.get("host") == socket.gethostname() and owner.get("pid") == os.getpid()

    def acquire(self) -> "CheckpointLock":
        """Take the lock (creating the folder) or raise ``LockedError`` naming the live owner."""
        self.folder.mkdir(parents=True, exist_ok=True)
        record = self._record()
        for _attempt in range(20):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self.read_owner()
                if owner == {}:  # being written by its owner right now, or garbage: look again shortly
                    time.sleep(0.05)
                    owner = self.read_owner()
                if owner is None:
                    continue  # released meanwhile: try again
                reason = self.stale_reason(owner)  # an unreadable file ages by its modification time
                if reason is None:
                    raise LockedError(self._held_message(owner)) from None
                self._write(record)  # take over the stale lock, then make sure no one else did too
                time.sleep(0.05)
                if (self.read_owner() or {}).get("token") != self.token:
                    continue
            else:
                with os.fdopen(fd, "w", encoding="utf-8") as fh:
                    json.dump(record, fh)
            self.held = True
            self._start_heartbeat(record["started"])
            return self
        raise LockedError(f"--checkpoint-dir {self.folder}: could not take {LOCK_NAME} (another run keeps taking it)")

    def _held_message(self, owner: dict) -> str:
        started = owner.get("started")
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if isinstance(started, (int, float)) \
            else "?"
        beat = owner.get("heartbeat")
        age = f"{time.time() - beat:.0f} s ago" if isinstance(beat, (int, float)) else "unknown"
        job = f", job {owner['job']}" if owner.get("job") else ""
        return (f"--checkpoint-dir {self.folder} is in use by another run (host {owner.get('host')}, pid "
                f"{owner.get('pid')}{job}, started {since}, last heartbeat {age}); wait for it to end or use another "
                f"folder (a lock whose owner died is taken over: at once on the same host, else after "
                f"{self.stale_after:.0f} s without heartbeat)")

    def _start_heartbeat(self, started: float) -> None:
        def beat() -> None:
            while not self._stop.wait(self.interval):
                try:
                    if (self.read_owner() or {}).get("token") != self.token:
                        return  # taken over (we were presumed dead): stop touching it
                    self._write(self._record(started))
                except OSError:
                    pass  # a transient file-system error; the next beat retries

        self._thread = threading.Thread(target=beat, name="vidpar-lock-heartbeat", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop the heartbeat and remove the lock file if it is still ours."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.interval + 1)
        if self.held and (self.read_owner() or {}).get("token") == self.token:
            try:
                self.path.unlink()
            except FileNotFoundError:
                pass
        self.held = False


@contextmanager
def hold_checkpoint_dir(ctx, folder: str | os.PathLike | None) -> Iterator[CheckpointLock | None]:
    """Rank 0 holds ``folder``'s lock for the duration (every rank raises ``LockedError`` if another run has it).
    Re-entrant: a folder this process already holds (the CLI holds the run's folder) is used as it is."""
    from vidpar.parallel.agree_message import agree_message

    lock, message = None, None
    if folder is not None and ctx.rank == 0:
        candidate = CheckpointLock(folder)
        if not candidate.held_by_this_process():
            try:
                lock = candidate.acquire()
            except (LockedError, OSError) as e:
                message = str(e)
    if folder is not None:
        message = agree_message(ctx, message)
    if message is not None:
        raise LockedError(message)
    try:
        yield lock
    finally:
        if lock is not None:
            lock.release()


__all__ = ["CheckpointLock", "HEARTBEAT_S", "LOCK_NAME", "LockedError", "STALE_AFTER_S", "hold_checkpoint_dir"]
