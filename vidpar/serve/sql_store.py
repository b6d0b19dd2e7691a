"""The SQL both job stores share (SQLite and PostgreSQL differ in connections, placeholders and claim locking).

Every statement that ends or renews a job names its owner and ``status = 'in_progress'``, so a replica that lost
its claim (lease expired, job taken over) changes nothing.
"""

from __future__ import annotations

import json
from abc import abstractmethod
from contextlib import contextmanager
from typing import Any, Iterator

from .jobs import CANCELLED, FINISHED, QUEUED, RUNNING, STATUSES, JobRecord, JobStore, Lease

SELECT = "SELECT " + ", ".join(JobRecord.COLUMNS) + " FROM jobs"
# Marks one job claimed (placeholders: owner, lease_until, started_at, id).
CLAIM_UPDATE = (f"UPDATE jobs SET status = '{RUNNING}', owner = ?, lease_until = ?, attempts = attempts + 1, "
                "started_at = COALESCE(started_at, ?) WHERE id = ?")


class SqlJobStore(JobStore):
    """Job store over a DB-API connection. Subclasses give ``_transaction`` (a cursor inside one transaction),
    the placeholder ``P`` and ``_claim_sql``."""

    P = "?"

    @abstractmethod
    @contextmanager
    def _transaction(self) -> Iterator[Any]:
        """A cursor whose statements commit together (rolled back on error)."""

    @abstractmethod
    def _claim(self, cur, owner: str, lease_s: float, now: float) -> dict | None:
        """Inside a transaction: mark the next runnable job claimed; its row as a dict, or None."""

    def _q(self, sql: str) -> str:
        return sql.replace("?", self.P)

    def _take(self, cur, job_id: str, owner: str, lease_s: float, now: float) -> dict:
        """Inside ``_claim``'s transaction: mark ``job_id`` (the job it found) claimed by ``owner``; its row."""
        cur.execute(self._q(CLAIM_UPDATE), [owner, now + lease_s, now, job_id])
        cur.execute(self._q(f"{SELECT} WHERE id = ?"), [job_id])
        return self._rows(cur)[0]

    def close(self) -> None:
        """Close this thread's connection (subclasses keep one per thread in ``self._local.conn``)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    @staticmethod
    def _rows(cur) -> list[dict]:
        names = [d[0] for d in cur.description]
        return [dict(zip(names, row)) for row in cur.fetchall()]

    def create(self, record: JobRecord) -> JobRecord:
        row = record.to_row()
        cols = [c for c in JobRecord.COLUMNS if c != "seq"]
        with self._transaction() as cur:
            cur.execute(self._q(f"INSERT INTO jobs ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})"),
                        [row[c] for c in cols])
            cur.execute(self._q(f"{SELECT} WHERE id = ?"), [record.id])
            return JobRecord.from_row(self._rows(cur)[0])

    def get(self, job_id: str) -> JobRecord | None:
        with self._transaction() as cur:
            cur.execute(self._q(f"{SELECT} WHERE id = ?"), [job_id])
            rows = self._rows(cur)
        return JobRecord.from_row(rows[0]) if rows else None

    def list(self, *, after: str | None = None, limit: int = 20, order: str = "desc") -> list[JobRecord]:
        if order not in ("asc", "desc"):
            raise ValueError(f"order must be 'asc' or 'desc', got {order!r}")
        where, args = "", []
        if after is not None:
            where = f" WHERE seq {'>' if order == 'asc' else '<'} (SELECT seq FROM jobs WHERE id = ?)"
            args = [after]
        with self._transaction() as cur:
            cur.execute(self._q(f"{SELECT}{where} ORDER BY seq {order.upper()} LIMIT ?"), [*args, int(limit)])
            return [JobRecord.from_row(r) for r in self._rows(cur)]

    def counts(self) -> dict[str, int]:
        with self._transaction() as cur:
            cur.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status")
            found = dict(cur.fetchall())
        return {s: int(found.get(s, 0)) for s in STATUSES}

    def claim(self, owner: str, lease_s: float, now: float) -> JobRecord | None:
        with self._transaction() as cur:
            row = self._claim(cur, owner, lease_s, now)
        return JobRecord.from_row(row) if row else None

    def renew(self, job_id: str, owner: str, lease_s: float, now: float, progress: int | None = None,
              step: int | None = None) -> Lease:
        sets, args = ["lease_until = ?"], [now + lease_s]
        if progress is not None:
            sets.append("progress = ?")
            args.append(int(progress))
        if step is not None:
            sets.append("step = ?")
            args.append(int(step))
        with self._transaction() as cur:
            cur.execute(self._q(f"UPDATE jobs SET {', '.join(sets)} WHERE id = ? AND owner = ? AND status = ?"),
                        [*args, job_id, owner, RUNNING])
            owned = cur.rowcount == 1
            cur.execute(self._q("SELECT cancel_requested FROM jobs WHERE id = ?"), [job_id])
            found = cur.fetchone()
        return Lease(owned, bool(found and found[0]))

    def finish(self, job_id: str, owner: str, status: str, now: float, *, output: str | None = None,
               error: dict[str, str] | None = None) -> bool:
        if status not in FINISHED:
            raise ValueError(f"a job finishes as one of {FINISHED}, not {status!r}")
        progress = 100 if status == "completed" else None
        with self._transaction() as cur:
            cur.execute(
                self._q("UPDATE jobs SET status = ?, completed_at = ?, output = ?, error = ?, lease_until = NULL, "
                        "progress = COALESCE(?, progress) WHERE id = ? AND owner = ? AND status = ?"),
                [status, now, output, None if error is None else json.dumps(error), progress, job_id, owner,
                 RUNNING])
            return cur.rowcount == 1

    def requeue(self, job_id: str, owner: str) -> bool:
        with self._transaction() as cur:
            cur.execute(self._q("UPDATE jobs SET status = ?, owner = NULL, lease_until = NULL "
                                "WHERE id = ? AND owner = ? AND status = ?"), [QUEUED, job_id, owner, RUNNING])
            return cur.rowcount == 1

    def cancel(self, job_id: str, now: float) -> JobRecord | None:
        with self._transaction() as cur:
            cur.execute(self._q("UPDATE jobs SET status = ?, completed_at = ? WHERE id = ? AND status = ?"),
                        [CANCELLED, now, job_id, QUEUED])
            cur.execute(self._q("UPDATE jobs SET cancel_requested = 1 WHERE id = ? AND status = ?"),
                        [job_id, RUNNING])
            cur.execute(self._q(f"{SELECT} WHERE id = ?"), [job_id])
            rows = self._rows(cur)
        return JobRecord.from_row(rows[0]) if rows else None

    def delete(self, job_id: str) -> bool:
        marks = ", ".join("?" for _ in FINISHED)
        with self._transaction() as cur:
            cur.execute(self._q(f"DELETE FROM jobs WHERE id = ? AND status IN ({marks})"), [job_id, *FINISHED])
            return cur.rowcount == 1

    def release(self, owner: str | None) -> list[str]:
        mine, args = ("", []) if owner is None else (" AND owner = ?", [owner])
        with self._transaction() as cur:
            cur.execute(self._q(f"SELECT id FROM jobs WHERE status = ?{mine} ORDER BY seq"), [RUNNING, *args])
            ids = [r[0] for r in cur.fetchall()]
            cur.execute(self._q(f"UPDATE jobs SET status = ?, owner = NULL, lease_until = NULL "
                                f"WHERE status = ?{mine}"), [QUEUED, RUNNING, *args])
        return ids


__all__ = ["SqlJobStore"]
