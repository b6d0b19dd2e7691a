"""The one rule for splitting a length over ranks (tokens over ranks, heads over ulysses ranks)."""

from __future__ import annotations


def split_sizes(length: int, parts: int) -> list[int]:
    """Sizes of ``parts`` contiguous pieces of ``length`` items, as even as possible.

    The first ``length % parts`` pieces get one extra item; with ``length < parts`` the last pieces are empty.
    """
    if parts < 1 or length < 0:
        raise ValueError(f"cannot split {length} items into {parts} parts")
    base, extra = divmod(length, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


def split_offsets(length: int, parts: int) -> list[int]:
    """Start offsets of the pieces from ``split_sizes`` (``parts + 1`` values, last == length)."""
    offsets = [0]
    for size in split_sizes(length, parts):
        offsets.append(offsets[-1] + size)
    return offsets
