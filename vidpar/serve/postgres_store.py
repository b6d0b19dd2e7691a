"""The shared job store for replicas: PostgreSQL through psycopg 3 (the ``serve`` extra).

Any number of services (one per GPU group, on any node) point ``--job-store`` at one database; each takes the
next job with ``SELECT ... FOR UPDATE SKIP LOCKED``, so two replicas never claim the same queued job and neither
waits for the other's lock. Leases use the replicas' clocks (keep them in sync, as NTP does; leases are minutes).
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

from .jobs import QUEUED, RUNNING
from .sql_store import SqlJobStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    seq BIGSERIAL UNIQUE,
    status TEXT NOT NULL,
    request TEXT NOT NULL,
    model TEXT NOT NULL,
    created_at DOUBLE PRECISION NOT NULL,
    started_at DOUBLE PRECISION,
    completed_at DOUBLE PRECISION,
    progress INTEGER NOT NULL DEFAULT 0,
    step INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    owner TEXT,
    lease_until DOUBLE PRECISION,
    attempts INTEGER NOT NULL DEFAULT 0,
    output TEXT,
    cancel_requested INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_status_seq ON jobs (status, seq);
"""
SCHEMA_LOCK = 715_021  # advisory lock id: replicas starting together create the table once


class PostgresJobStore(SqlJobStore):
    """Jobs in a PostgreSQL table ``jobs`` (created on first use); one connection per thread."""

    shared = True
    P = "%s"

    def __init__(self, url: str) -> None:
        try:
            import psycopg
        except ImportError:
            raise ValueError("--job-store postgresql://... needs psycopg: pip install 'vidpar[serve]'") from None
        self._psycopg = psycopg
        self.url = url
        self._local = threading.local()
        try:
            with self._transaction() as cur:
                cur.execute("SELECT pg_advisory_xact_lock(%s)", [SCHEMA_LOCK])
                cur.execute(SCHEMA)
        except psycopg.Error as e:
            where = url.split("@")[-1]
            raise ValueError(f"job store postgresql {where}: {str(e).strip().splitlines()[0]}") from None

    def _connection(self):
        conn = getattr(self._local, "conn", None)
        if conn is None or conn.closed:
            conn = self._psycopg.connect(self.url, autocommit=True, connect_timeout=10)
            self._local.conn = conn
        return conn

    @contextmanager
    def _transaction(self):
        conn = self._connection()
        with conn.transaction():
            with conn.cursor() as cur:
                yield cur

    def _claim(self, cur, owner, lease_s, now):
        cur.execute(
            "SELECT id FROM jobs WHERE status = %s OR (status = %s AND lease_until < %s) "
            "ORDER BY seq LIMIT 1 FOR UPDATE SKIP LOCKED", [QUEUED, RUNNING, now])
        found = cur.fetchone()
        if found is None:
            return None
        return self._take(cur, found[0], owner, lease_s, now)


__all__ = ["PostgresJobStore"]
