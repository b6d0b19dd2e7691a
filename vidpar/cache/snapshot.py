"""A session's cached tensors in a checkpoint snapshot: gathered to full tensors on rank 0, re-split on resume.

Cached tensors are this rank's pieces (its tokens of the video stream, its guidance branch with ``cfg=2``). For a
snapshot they are gathered along the token dim within each sequence group, and the second cfg half's entries are
sent to rank 0; on resume every rank takes back its piece of the branches it runs. The snapshot therefore holds
full tensors and does not depend on the mesh: a run may resume on another one.
"""

from __future__ import annotations

import io

import torch

from vidpar.parallel import ParallelContext


def runs_branch(ctx: ParallelContext, branch: str) -> bool:
    """Whether this rank evaluates ``branch`` (both with ``cfg=1``; its half's with ``cfg=2``)."""
    if ctx.config.cfg == 1:
        return True
    return (ctx.coords["cfg"] == 0) == (branch == "cond")


def gather_entries(ctx: ParallelContext, entries: dict[str, tuple[torch.Tensor, bool]]) -> dict[str, torch.Tensor]:
    """Full tensors of every rank's ``entries`` (``key -> (piece, sharded)``) on rank 0; {} elsewhere.

    A collective: every rank calls it at the same point. Ranks of one sequence group hold the same keys (they run
    the same branches and decisions), so their gathers pair up.
    """
    full: dict[str, torch.Tensor] = {}
    for key in sorted(entries):
        piece, sharded = entries[key]
        full[key] = ctx.gather_sequence(piece.contiguous(), 1) if sharded else piece
    if ctx.config.cfg == 2 and ctx.sp_rank == 0:  # the cfg pair of sequence rank 0 holds both branches in full
        other = _exchange_over_cfg(ctx, {k: v.detach().cpu() for k, v in full.items()})
        full.update(other)
    return {k: v.detach().cpu() for k, v in full.items()} if ctx.rank == 0 else {}


def _exchange_over_cfg(ctx: ParallelContext, mine: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The partner's dict of tensors (serialised; lengths exchanged first, then one padded all-gather)."""
    buf = io.BytesIO()
    torch.save(mine, buf)
    data = torch.frombuffer(bytearray(buf.getvalue()), dtype=torch.uint8)
    lengths = [row[0] for row in ctx.comm.exchange_ints([data.numel()], "cfg", ctx.device)]
    padded = torch.zeros(max(lengths), dtype=torch.uint8)
    padded[: data.numel()] = data
    both = ctx.comm.all_gather(padded.to(ctx.device), "cfg").cpu()
    partner = 1 - ctx.coords["cfg"]
    raw = both[partner, : lengths[partner]].numpy().tobytes()
    return torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)


def restore_entry(ctx: ParallelContext, full: torch.Tensor, sharded: bool) -> torch.Tensor:
    """This rank's piece of a gathered entry, on its device."""
    full = full.to(ctx.device)
    return ctx.shard_sequence(full, 1) if sharded else full


__all__ = ["gather_entries", "restore_entry", "runs_branch"]
