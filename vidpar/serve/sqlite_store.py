"""The default job store: one SQLite file in ``--state-dir`` (write-ahead log, one connection per thread).

Meant for one replica: ``vidpar serve`` holds a lock file beside it, so a second service on the same state folder
is refused instead of sharing the queue (use PostgreSQL for replicas).
"""

from __future__ import annotations

import sqlite3
import threading
from contextlib import contextmanager
from pathlib import Path

from .jobs import QUEUED, RUNNING, JobRecord
from .sql_store import SELECT, SqlJobStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL UNIQUE,
    status TEXT NOT NULL,
    request TEXT NOT NULL,
    model TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL,
    completed_at REAL,
    progress INTEGER NOT NULL DEFAULT 0,
    step INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    owner TEXT,
    lease_until REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    output TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_status_seq ON jobs (status, seq);
"""


class SqliteJobStore(SqlJobStore):
    """Jobs in a SQLite file (created with its table on first use)."""

    shared = False

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if not self.path.parent.is_dir():
            raise ValueError(f"job store {self.path}: folder {self.path.parent} does not exist")
        self._local = threading.local()
        try:
            with self._transaction() as cur:
                cur.executescript(SCHEMA)
        except sqlite3.Error as e:
            raise ValueError(f"job store {self.path}: {e}") from None

    def _connection(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=FULL")  # a finished job survives a power cut
            self._local.conn = conn
        return conn

    @contextmanager
    def _transaction(self):
        conn = self._connection()
        cur = conn.cursor()
        cur.execute("BEGIN IMMEDIATE")  # take the write lock now: no upgrade deadlock between threads
        try:
            yield cur
        except BaseException:
            conn.rollback()
            raise
        else:
            conn.commit()
        finally:
            cur.close()

    def create(self, record):
        # seq: the next number, assigned inside the write lock
        with self._transaction() as cur:
            cur.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM jobs")
            record.seq = cur.fetchone()[0]
            row = record.to_row()
            cols = list(row)
            cur.execute(f"INSERT INTO jobs ({', '.join(cols)}) VALUES ({', '.join('?' for _ in cols)})",
                        [row[c] for c in cols])
            cur.execute(f"{SELECT} WHERE id = ?", [record.id])
            return JobRecord.from_row(self._rows(cur)[0])

    def _claim(self, cur, owner, lease_s, now):
        cur.execute("SELECT id FROM jobs WHERE status = ? OR (status = ? AND lease_until < ?) ORDER BY seq LIMIT 1",
                    [QUEUED, RUNNING, now])
        found = cur.fetchone()
        if found is None:
            return None
        return self._take(cur, found[0], owner, lease_s, now)


__all__ = ["SqliteJobStore"]
