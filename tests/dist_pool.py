"""A pool of gloo worker processes that lives for the whole test session.

Importing torch costs seconds per process on small machines, so each world size gets one pool; tests send it a
module-level function ``fn(env, *args)`` that every rank runs. ``env.context(config)`` returns a cached
``ParallelContext`` for that config. Every call has a deadline: a rank that raises or hangs fails the test with the
rank's traceback, and a pool left with busy ranks is replaced so the next test starts clean.
"""

from __future__ import annotations

import importlib
import multiprocessing as mp
import os
import queue
import socket
import sys
import time
import traceback
from dataclasses import dataclass, field
from datetime import timedelta

COLLECTIVE_TIMEOUT_S = 45


class RankFailure(AssertionError):
    """One or more ranks raised (or never answered)."""


@dataclass
class WorkerEnv:
    """What a task function receives on each rank."""

    rank: int
    world_size: int
    contexts: dict = field(default_factory=dict)

    def context(self, config):
        from vidpar.parallel import init_parallel

        if config not in self.contexts:
            self.contexts[config] = init_parallel(config)
        ctx = self.contexts[config]
        ctx.reset_comm_stats()
        return ctx


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker_main(rank: int, world: int, port: int, tasks, results, path: list[str]) -> None:
    sys.path[:] = path
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world))
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=timedelta(seconds=COLLECTIVE_TIMEOUT_S))
    env = WorkerEnv(rank, world)
    results.put((rank, True, "ready"))
    while True:
        item = tasks.get()
        if item is None:
            break
        module, name, args = item
        try:
            fn = getattr(importlib.import_module(module), name)
            results.put((rank, True, fn(env, *args)))
        except BaseException:  # noqa: BLE001 - everything goes back to the test
            results.put((rank, False, traceback.format_exc()))
    dist.destroy_process_group()


class WorkerPool:
    """``world_size`` gloo ranks waiting for work."""

    def __init__(self, world_size: int, start_timeout: float = 120.0) -> None:
        self.world_size = world_size
        self._start_timeout = start_timeout
        self._start()

    def _start(self) -> None:
        ctx = mp.get_context("spawn")
        self._results = ctx.Queue()
        self._tasks = [ctx.Queue() for _ in range(self.world_size)]
        port = _free_port()
        self._procs = [
            ctx.Process(
                target=_worker_main,
                args=(r, self.world_size, port, self._tasks[r], self._results, list(sys.path)),
                daemon=True,
            )
            for r in range(self.world_size)
        ]
        for p in self._procs:
            p.start()
        replies = self._collect(self._start_timeout)
        bad = {r: v for r, (ok, v) in replies.items() if not ok}
        if len(replies) < self.world_size or bad:
            self.close()
            raise RuntimeError(f"worker pool of {self.world_size} failed to start: {bad or 'timeout'}")

    def _collect(self, timeout: float, grace_after_error: float = 5.0) -> dict[int, tuple[bool, object]]:
        replies: dict[int, tuple[bool, object]] = {}
        deadline = time.monotonic() + timeout
        while len(replies) < self.world_size:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                rank, ok, value = self._results.get(timeout=min(left, 1.0))
            except queue.Empty:
                if any(not p.is_alive() for p in self._procs):
                    break
                continue
            replies[rank] = (ok, value)
            if not ok:  # others may be stuck in a collective with the failed rank: bound the wait
                deadline = min(deadline, time.monotonic() + grace_after_error)
        return replies

    def run(self, fn, *args, timeout: float = 90.0) -> list:
        """Run ``fn(env, *args)`` on every rank; returns the per-rank results in rank order."""
        for q in self._tasks:
            q.put((fn.__module__, fn.__qualname__, args))
        replies = self._collect(timeout)
        missing = [r for r in range(self.world_size) if r not in replies]
        errors = {r: v for r, (ok, v) in replies.items() if not ok}
        if missing:
            self.restart()
        if missing or errors:
            msg = [f"rank {r} raised:\n{tb}" for r, tb in sorted(errors.items())]
            if missing:
                msg.append(f"ranks {missing} did not answer within the deadline (pool restarted)")
            raise RankFailure("\n".join(msg))
        return [replies[r][1] for r in range(self.world_size)]

    def restart(self) -> None:
        self.close()
        self._start()

    def close(self) -> None:
        for q in self._tasks:
            try:
                q.put(None)
            except (OSError, ValueError):
                pass
        for p in self._procs:
            p.join(timeout=2)
            if p.is_alive():
                p.kill()
                p.join(timeout=2)
