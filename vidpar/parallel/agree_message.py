"""Agreeing on a rank-local outcome: every rank learns the first rank's message, so all raise the same error.

A check that only one rank can make (rank 0 takes a lock; one rank's read fails) must not leave the others
running into their next collective. One all-gather of a small fixed-size buffer (a control message) tells every
rank what the first failing rank said.
"""

from __future__ import annotations

import torch

MESSAGE_BYTES = 1024  # longer messages are cut (they are one-line errors)


def agree_message(ctx, message: str | None) -> str | None:
    """The message of the lowest rank that has one (None: no rank has), identical on every rank of ``ctx``.

    Every rank must call it (it is one collective over the ``world`` axis); ``message`` is this rank's (or None).
    """
    if ctx.world_size == 1:
        return message
    buf = torch.zeros(MESSAGE_BYTES + 1, dtype=torch.uint8)
    if message is not None:
        data = message.encode("utf-8")[:MESSAGE_BYTES]
        buf[0] = 1
        buf[1 : 1 + len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    rows = ctx.comm.all_gather(buf.to(ctx.device), "world", control=True).cpu()
    for row in rows:
        if row[0].item():
            return bytes(row[1:].tolist()).rstrip(b"\0").decode("utf-8", errors="replace")
    return None


__all__ = ["agree_message"]
