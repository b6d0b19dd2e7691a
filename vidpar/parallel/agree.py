"""Run a step on every rank and agree on its outcome, so that no rank is left waiting in a later collective.

Each rank runs ``fn``; then one all-gather (the same collective on every rank, whatever happened) tells every
rank whether any rank failed and, optionally, whether all ranks computed the same fingerprint (e.g. the hash of
the files they read). A rank that failed re-raises its own error; the others raise a ``RuntimeError`` naming it.
"""

from __future__ import annotations

from typing import Callable, Sequence, TypeVar

from .context import ParallelContext

T = TypeVar("T")


def run_agreed(
    ctx: ParallelContext | None,
    fn: Callable[[], T],
    fingerprint: Callable[[T], Sequence[int]] | None = None,
    fingerprint_len: int = 0,
    what: str = "this step",
) -> T:
    """``fn()`` on this rank, with the outcome agreed by every rank of ``ctx`` (no collective without ``ctx`` or
    with one rank).

    Args:
        fingerprint: ``fn``'s result -> ``fingerprint_len`` ints (int64) that must be equal on every rank;
            ``ValueError`` on every rank if they differ.
        what: words for the messages ("loading LoRAs").
    """
    result, error = None, None
    try:
        result = fn()
    except Exception as e:  # noqa: BLE001 - re-raised below, after every rank has heard of it
        error = e
    if ctx is None or ctx.world_size == 1:
        if error is not None:
            raise error
        return result
    values = [0] * fingerprint_len
    if error is None and fingerprint is not None:
        values = [int(v) for v in fingerprint(result)]
        if len(values) != fingerprint_len:
            error = RuntimeError(f"fingerprint of {what} has {len(values)} values, expected {fingerprint_len}")
            values = [0] * fingerprint_len
    rows = ctx.comm.exchange_ints([1 if error is not None else 0, *values], "world", ctx.device)
    failed = [r for r, row in enumerate(rows) if row[0]]
    if error is not None:
        raise error
    if failed:
        raise RuntimeError(f"{what} failed on rank(s) {failed} (see their error messages); stopping rank "
                           f"{ctx.rank} too")
    if fingerprint is not None and any(row[1:] != rows[0][1:] for row in rows):
        differ = [r for r, row in enumerate(rows) if row[1:] != rows[0][1:]]
        raise ValueError(f"{what}: rank(s) {differ} computed something different from rank 0 (for files, the "
                         f"ranks read different contents; every rank must see the same files)")
    return result
