"""Pipelined VAE decoding: decoder stages on different rank groups, latent time chunks streamed through them.

Stage group ``p`` runs stages ``ranges[p]`` of every chunk with its own feature cache (caches never move) and
hands the activation to group ``p + 1``; while group ``p + 1`` decodes chunk ``t``, group ``p`` already works on
chunk ``t + 1``. Sends are asynchronous (at most two in flight per rank), and the receive of the next chunk's header
is posted before the current chunk is computed.
"""

from __future__ import annotations

from typing import Callable

import torch

from .comm import Comm

PIPE_AXIS = "world"  # hand-offs are point-to-point between world ranks
_HEADER = 8  # ints: ndim, then the shape


def balance_stages(costs: list[float], parts: int) -> list[tuple[int, int]]:
    """Split stages ``0..len(costs)`` into ``parts`` contiguous non-empty ranges minimising the largest cost.

    Returns:
        ``[(start, stop), ...]`` per part, in order. Deterministic (ties go to the earliest split), so every rank
        computes the same ranges from the same costs.
    """
    n = len(costs)
    if not 1 <= parts <= n:
        raise ValueError(f"cannot place {n} decoder stages on {parts} pipeline groups (need 1 <= groups <= {n})")
    prefix = [0.0]
    for c in costs:
        prefix.append(prefix[-1] + float(c))
    inf = float("inf")
    # best[k][i]: minimal max-cost of splitting stages [0, i) into k parts; cut[k][i]: start of the last part.
    best = [[inf] * (n + 1) for _ in range(parts + 1)]
    cut = [[0] * (n + 1) for _ in range(parts + 1)]
    best[0][0] = 0.0
    for k in range(1, parts + 1):
        for i in range(k, n + 1):
            for j in range(k - 1, i):
                v = max(best[k - 1][j], prefix[i] - prefix[j])
                if v < best[k][i]:
                    best[k][i], cut[k][i] = v, j
    ranges, i = [], n
    for k in range(parts, 0, -1):
        j = cut[k][i]
        ranges.append((j, i))
        i = j
    return ranges[::-1]


def _header(x: torch.Tensor) -> torch.Tensor:
    h = torch.zeros(_HEADER, dtype=torch.int64, device=x.device)
    h[0] = x.dim()
    h[1 : 1 + x.dim()] = torch.tensor(x.shape, device=x.device)
    return h


def stream_chunks(
    comm: Comm,
    num_chunks: int,
    first_input: Callable[[int], torch.Tensor] | None,
    compute: Callable[[torch.Tensor, int], torch.Tensor],
    prev_rank: int | None,
    next_rank: int | None,
    dtype: torch.dtype,
    device: torch.device,
) -> list[torch.Tensor]:
    """Run this rank's stages on every chunk, receiving inputs from ``prev_rank`` and sending to ``next_rank``.

    Args:
        first_input: ``t -> chunk t`` for the first stage group (``prev_rank`` None).
        compute: ``(x, t) -> y`` this rank's stages on chunk ``t`` (it owns the feature cache of its stages).
        prev_rank / next_rank: world ranks of the previous / next stage group's counterpart (None at the ends).
    Returns:
        the outputs of every chunk on the last stage group (``next_rank`` None), else an empty list.
    """
    if num_chunks < 1:
        raise ValueError("stream_chunks: no chunks")
    outputs: list[torch.Tensor] = []
    in_flight: list = []
    header_recv = None
    if prev_rank is not None:
        hbuf = torch.empty(_HEADER, dtype=torch.int64, device=device)
        header_recv = (comm.start_exchange([], [(hbuf, prev_rank)], PIPE_AXIS), hbuf)
    for t in range(num_chunks):
        if prev_rank is None:
            x = first_input(t)
        else:
            pending, hbuf = header_recv
            pending.wait()
            shape = hbuf[1 : 1 + int(hbuf[0])].tolist()
            x = torch.empty(shape, dtype=dtype, device=device)
            # Post this payload's receive, then the next header's: the same order the sender sends them in.
            payload = comm.start_exchange([], [(x, prev_rank)], PIPE_AXIS)
            if t + 1 < num_chunks:
                nbuf = torch.empty(_HEADER, dtype=torch.int64, device=device)
                header_recv = (comm.start_exchange([], [(nbuf, prev_rank)], PIPE_AXIS), nbuf)
            payload.wait()
        y = compute(x, t)
        if next_rank is None:
            outputs.append(y)
            continue
        y, header = y.contiguous(), _header(y)
        # Keep the sent tensors referenced until their send completes.
        in_flight.append((comm.start_exchange([(header, next_rank), (y, next_rank)], [], PIPE_AXIS), header, y))
        if len(in_flight) > 2:  # bound the memory held by unfinished sends
            in_flight.pop(0)[0].wait()
    for pending, _, _ in in_flight:
        pending.wait()
    return outputs
