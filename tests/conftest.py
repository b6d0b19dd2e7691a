"""Shared fixtures: lazily started gloo worker pools (one per world size, reused by every test)."""

from __future__ import annotations

import pytest
import torch

from dist_pool import WorkerPool


@pytest.fixture(scope="session")
def pools():
    """``pools(world_size)`` -> a ``WorkerPool`` started on first use and closed at the end of the session."""
    started: dict[int, WorkerPool] = {}

    def get(world_size: int) -> WorkerPool:
        if world_size not in started:
            started[world_size] = WorkerPool(world_size)
        return started[world_size]

    yield get
    for pool in started.values():
        pool.close()


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
