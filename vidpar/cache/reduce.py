"""Decision metrics that are identical on every rank, whatever the mesh.

A metric computed from activations (the probe residual, a per-token modulation) exists in pieces: each rank of a
sequence-parallel group holds its tokens, and with ``cfg=2`` the other half of the ranks evaluates the other
guidance branch at the same time. The decision of a step is taken from the conditional branch, for both branches,
so it must not depend on which ranks hold what:

- each rank turns its piece into partial sums in float64 (``sum |a - b|``, ``sum |b|``, ...), zeros if it does not
  contribute (another branch, or a replicated value that one rank already counts);
- one all-gather over the whole world (every rank whose collectives depend on the decision: the sequence group,
  the other cfg half, FSDP's all-gathers) gives every rank every row;
- every rank adds the contributing rows in rank order, in Python floats: the same numbers in the same order, so
  the same bits everywhere.

A replicated value is counted once (sequence rank 0 of the conditional branch), so a metric from replicated
inputs is bit-identical to the one-process value; a sharded one differs from it only by the rounding of the
partial sums (float64, ~1e-16 relative).
"""

from __future__ import annotations

import torch

from vidpar.parallel import ParallelContext


def rel_l1_parts(current: torch.Tensor, previous: torch.Tensor) -> list[float]:
    """``[sum |current - previous|, sum |previous|]`` in float64 (the relative L1 change is their ratio)."""
    if current.shape != previous.shape:
        raise ValueError(f"cannot compare tensors of shapes {tuple(current.shape)} and {tuple(previous.shape)}")
    a, b = current.double(), previous.double()
    return [(a - b).abs().sum().item(), b.abs().sum().item()]


def norm_ratio_parts(current: torch.Tensor, previous: torch.Tensor) -> list[float]:
    """``[sum over tokens of |current_t| / |previous_t|, token count]`` (norms over the last dim; MagCache's ratio
    is their ratio)."""
    a = current.double().flatten(0, -2).norm(dim=-1)
    b = previous.double().flatten(0, -2).norm(dim=-1)
    return [(a / b).sum().item(), float(a.numel())]


def contributes(ctx: ParallelContext, is_cond: bool, sharded: bool) -> bool:
    """Whether this rank's partial sums count: conditional branch, and (for a replicated value) sequence rank 0."""
    return is_cond and (sharded or ctx.sp_rank == 0)


def global_sums(ctx: ParallelContext, parts: list[float], counts: bool) -> list[float]:
    """The sums of every contributing rank's ``parts``, identical on every rank.

    A collective over the world (one all-gather of ``len(parts) + 1`` float64 per rank, counted as control
    traffic); every rank must call it at the same point with the same ``len(parts)``.
    """
    if ctx.world_size == 1:
        if not counts:
            raise RuntimeError("a one-process decision has no contributing rank")
        return [float(p) for p in parts]
    row = torch.tensor([1.0 if counts else 0.0, *(parts if counts else [0.0] * len(parts))], dtype=torch.float64,
                       device=ctx.device)
    rows = ctx.comm.all_gather(row, "world", control=True).tolist()
    total = [0.0] * len(parts)
    for r in rows:  # rank order
        if r[0] > 0:
            total = [t + v for t, v in zip(total, r[1:])]
    if not any(r[0] > 0 for r in rows):
        raise RuntimeError("no rank contributed to a step-cache decision (no conditional branch ran)")
    return total


def ratio(num: float, den: float) -> float:
    """``num / den``, infinite when ``den`` is 0 (a change from nothing is never "small")."""
    return num / den if den > 0 else float("inf")


__all__ = ["contributes", "global_sums", "norm_ratio_parts", "ratio", "rel_l1_parts"]
