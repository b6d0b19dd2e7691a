"""Naming the rank that failed: per-rank heartbeats and failure notes in the rendezvous store, read when a
collective fails.

When a peer dies, gloo's error on the survivors says only "Connection reset by peer"; when a peer hangs, they see
a timeout. ``PeerMonitor`` runs a side thread per rank that writes, every ``interval`` seconds, a small record to
the c10d key-value store the ranks met through (torchrun's agent store, or rank 0's): a beat counter, the
collective this rank is in (or last left) and its sequence number. A rank that fails writes its error there first
(``report_failed``). When a collective raises, ``Comm`` asks ``explain``: it reads every rank's record, samples the
beats twice, and names the ranks that reported a failure, stopped beating (dead or frozen), or are alive but never
joined this collective — with the collective and axis each was in. Cost: one small store write per rank per
interval; nothing on the collectives' own path but two attribute writes.
"""

from __future__ import annotations

import json
import os
import threading
import time
from datetime import timedelta

STORE_TIMEOUT_S = 5.0


class PeerFailure(RuntimeError):
    """A collective failed because of other ranks; the message names them and what they were doing."""


def _connect_store():
    """A client of the store the process group met through (its own connection, with a short timeout)."""
    import torch.distributed as dist

    host, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    if host and port and port.isdigit():
        try:
            return dist.TCPStore(host, int(port), is_master=False, timeout=timedelta(seconds=STORE_TIMEOUT_S),
                                 wait_for_workers=False)
        except Exception:  # noqa: BLE001 - fall back to the process group's own store
            pass
    from torch.distributed import distributed_c10d

    return distributed_c10d._get_default_store()


class PeerMonitor:
    """Heartbeats of one rank and the reading of everyone's (see the module docstring)."""

    def __init__(self, store, rank: int, world_size: int, interval: float | None = None) -> None:
        self.store = store
        self.rank = rank
        self.world_size = world_size
        # One store write per rank per interval: scale the interval with the world so the store stays idle.
        self.interval = interval if interval is not None else max(1.0, world_size / 256)
        # The n-th context this rank builds (every rank builds them in the same order) gets its own keys, and a
        # torchrun restart its own generation: records of an earlier mesh or attempt are never read.
        restart = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        n = store.add(f"vidpar/contexts/{restart}/{rank}", 1)
        self.prefix = f"vidpar/peers/{restart}/{n}/"
        self.seq = 0  # collectives entered by this rank (the same sequence on every rank)
        self.op: str | None = None  # the collective this rank is in now
        self.last: str | None = None  # the last one it was in
        self.failed: str | None = None
        self._beats = 0
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @classmethod
    def start_for_default_group(cls) -> "PeerMonitor | None":
        """A started monitor for the default process group (None if no store can be reached)."""
        import torch.distributed as dist

        try:
            monitor = cls(_connect_store(), dist.get_rank(), dist.get_world_size())
            monitor._publish()
        except Exception:  # noqa: BLE001 - failure naming is a help, never a reason to fail a run
            return None
        monitor._thread = threading.Thread(target=monitor._run, name="vidpar-heartbeat", daemon=True)
        monitor._thread.start()
        return monitor

    # ---- this rank

    def enter(self, op: str, axis: str) -> None:
        self.seq += 1
        self.op = f"{op} on axis '{axis}' (#{self.seq})"

    def leave(self) -> None:
        self.last, self.op = self.op, None

    def report_failed(self, message: str) -> None:
        """Tell the peers this rank failed, and why (before it exits)."""
        self.failed = message
        try:
            self._publish()
        except Exception:  # noqa: BLE001 - the store may be gone too
            pass

    def _record(self) -> str:
        return json.dumps({"beat": self._beats, "seq": self.seq, "op": self.op, "last": self.last,
                           "failed": self.failed})

    def _publish(self) -> None:
        with self._lock:
            self._beats += 1
            self.store.set(f"{self.prefix}{self.rank}", self._record())

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._publish()
            except Exception:  # noqa: BLE001 - the store is gone (shutdown, or its host died): stop beating
                return

    def stop(self) -> None:
        self._stop.set()

    # ---- everyone

    def _read_all(self) -> dict[int, dict | None]:
        out: dict[int, dict | None] = {}
        for r in range(self.world_size):
            if r == self.rank:
                continue
            key = f"{self.prefix}{r}"
            try:
                out[r] = json.loads(self.store.get(key)) if self.store.check([key]) else None
            except Exception:  # noqa: BLE001 - an unreadable record counts as silent
                out[r] = None
        return out

    def explain(self, error: BaseException, op: str, axis: str) -> str:
        """Who made collective ``op`` on ``axis`` fail with ``error``, as one line."""
        here = f"rank {self.rank} was in {op} on axis '{axis}' (#{self.seq})"
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        first = first.split(". This is typically")[0][:200]  # gloo's advice adds nothing here
        try:
            before = self._read_all()
            failed = {r: rec for r, rec in before.items() if rec and rec.get("failed")}
            silent: dict[int, dict | None] = {}
            if not failed:
                time.sleep(2.5 * self.interval + 0.5)  # long enough for every live rank to beat at least twice
                after = self._read_all()
                failed = {r: rec for r, rec in after.items() if rec and rec.get("failed")}
                silent = {r: before[r] for r, rec in after.items()
                          if rec is None or before[r] is None or rec.get("beat") == before[r].get("beat")}
        except Exception as e:  # noqa: BLE001
            return (f"{here} when it failed ({first}); the rendezvous store is unreachable too ({e}), so its host "
                    "(rank 0, or the launcher) is probably gone")
        parts = []
        primary = {r: rec for r, rec in failed.items() if not rec["failed"].startswith(PeerFailure.__name__)}
        for r, rec in sorted((primary or failed).items()):
            if rec["failed"].startswith(PeerFailure.__name__):
                parts.append(f"rank {r} stopped because of a failed peer")
            else:
                parts.append(f"rank {r} failed ({rec['failed'][:300]}) " + _where(rec))
        silent = {r: rec for r, rec in silent.items() if r not in failed}
        if silent:
            ranks = ", ".join(f"rank {r} ({_where(rec, 'at its last heartbeat ')})"
                              for r, rec in sorted(silent.items()))
            parts.append(f"{ranks} stopped answering (no heartbeat for {2.5 * self.interval + 0.5:.0f} s: dead or "
                         "frozen)")
        if not parts:
            # Every rank runs the same sequence of collectives: a rank behind this one never reached it.
            mine = self.seq
            behind = {r: rec for r, rec in before.items()
                      if rec and (rec.get("seq", 0) < mine or (rec.get("seq") == mine and not rec.get("op")))}
            if behind:
                parts.append(", ".join(f"rank {r} ({_where(rec)})" for r, rec in sorted(behind.items()))
                             + " is alive but never joined this collective (busy, or stuck elsewhere)")
            else:
                parts.append("every rank is alive, at or past this collective, and none reported a failure")
        return f"{'; '.join(parts)}; {here} when it failed: {first}"


def _where(rec: dict | None, prefix: str = "") -> str:
    """Where a rank's record says it was: in a collective, or after its last one."""
    rec = rec or {}
    if rec.get("op"):
        return f"{prefix}in {rec['op']}"
    return f"{prefix}after {rec['last']}" if rec.get("last") else f"{prefix}before its first collective"


__all__ = ["PeerFailure", "PeerMonitor"]
