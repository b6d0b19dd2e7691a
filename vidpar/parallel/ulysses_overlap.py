"""Ulysses attention with its all-to-alls overlapped with the projections around it.

The model hands over its projections as functions (``make_q``, ``make_k``, ``make_v`` and a per-token output
projection), so the exchange can follow issue -> compute -> wait:

- input: q is projected and its all-to-all started, then k is projected while q travels, then v while k travels;
- output: this rank's tokens are cut into ``out_chunks`` pieces; the all-to-all of piece c+1 is in flight while
  piece c goes through the output projection (a per-token function, so the pieces give the rows of the whole).

Each value is computed by the same operations as in ``attention`` (the exchange only moves values), so results
equal the non-overlapped path; the bytes sent are the same too. Only the Ulysses all-to-alls are overlapped; the
ring and the joint-token gather run as in ``attention``. Without known shard lengths (``seq_lens``), on a single
ulysses rank, or with ``overlap=False`` the call is exactly ``out_proj(attention(make_q(), make_k(), make_v()))``.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from .attention import _attend_block, _check_local, _gather_joint, _group_lengths, _prepare, attention, check_seq_lens
from .context import ParallelContext
from .split import split_offsets, split_sizes
from .ulysses import start_heads_to_seq, start_seq_to_heads

Projection = Callable[[], torch.Tensor]
OutProjection = Callable[[torch.Tensor], torch.Tensor]


def overlapped_attention(
    project: Sequence[Projection],
    ctx: ParallelContext,
    *,
    out_proj: OutProjection | None = None,
    joint_q: torch.Tensor | None = None,
    joint_k: torch.Tensor | None = None,
    joint_v: torch.Tensor | None = None,
    backend: str = "auto",
    seq_lens: list[int] | None = None,
    overlap: bool = True,
    out_chunks: int = 2,
    trace: list[tuple[str, str]] | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """``out_proj(attention(q, k, v))`` with the Ulysses all-to-alls overlapped with the projections.

    Args:
        project: ``(make_q, make_k, make_v)``, called once each in this order; they return this rank's
            ``q, k [B, S_local, H, D]`` and ``v [B, S_local, H, Dv]``.
        out_proj: a per-token function of ``[B, n, H, Dv]`` -> ``[B, n, ...]`` applied to the output (None: none).
        joint_q/k/v, backend, seq_lens: as for ``attention`` (``seq_lens`` is needed for overlap).
        overlap: False runs the plain path.
        out_chunks: pieces of the output exchange (>= 1).
        trace: if given, ``(event, what)`` pairs are appended in order: ``("project", "q")``, ``("issue", "q")``,
            ``("wait", "q")``, ``("attend", "")``, ``("issue", "out0")``, ``("project", "out0")``...
    Returns:
        ``out_proj(out_local)`` (or ``out_local [B, S_local, H, Dv]``); with joint tokens
        ``(that, joint_out [B, T, H, Dv])`` (the joint output is not projected).
    """
    if not isinstance(out_chunks, int) or out_chunks < 1:
        raise ValueError(f"out_chunks must be a positive int, got {out_chunks!r}")
    make_q, make_k, make_v = project
    log = (lambda event, what="": trace.append((event, what))) if trace is not None else (lambda *_: None)
    joint = (joint_q, joint_k, joint_v)
    if not overlap or ctx.config.ulysses == 1 or seq_lens is None:
        res = attention(make_q(), make_k(), make_v(), ctx, joint_q=joint_q, joint_k=joint_k, joint_v=joint_v,
                        backend=backend, seq_lens=seq_lens)
        if out_proj is None:
            return res
        return (out_proj(res[0]), res[1]) if joint_q is not None else out_proj(res)

    # Every rank checks what decides the exchange's splits (q's shape, the lengths) before the first collective.
    log("project", "q")
    q = make_q()
    _check_local(q, q, q, (None, None, None))
    lengths = check_seq_lens(ctx, seq_lens, q.shape[1])
    num_heads, group_lengths = q.shape[2], _group_lengths(ctx, lengths)

    def start(name: str, t: torch.Tensor):
        log("issue", name)
        return start_seq_to_heads(ctx.comm, [t], group_lengths, num_heads)

    pending_q = start("q", q)
    log("project", "k")
    k = make_k()
    pending_k = start("k", k)
    log("project", "v")
    v = make_v()
    pending_v = start("v", v)
    heads = []
    for name, p in (("q", pending_q), ("k", pending_k), ("v", pending_v)):
        log("wait", name)
        heads.append(p.wait()[0])
    # The rest of the validation (k and v against q, joint tokens, backend): identical on every rank, after the
    # exchanges every rank has started and finished alike.
    spec, _ = _prepare(q, k, v, ctx, joint, backend, lengths)

    log("attend")
    joint_part, video_part = _attend_block(ctx, spec, *heads, joint, lengths, num_heads)
    out = _projected_heads_to_seq(ctx, video_part, group_lengths, num_heads, out_proj, out_chunks, log)
    if joint_q is None:
        return out
    return out, _gather_joint(ctx, joint_part, joint_q.shape[1], num_heads)


def _projected_heads_to_seq(ctx, x, group_lengths, num_heads, out_proj, chunks, log) -> torch.Tensor:
    """``out_proj(heads_to_seq(x))`` in ``chunks`` pieces of every rank's tokens, the next piece's exchange in
    flight while the current piece is projected. x ``[B, sum(group_lengths), H_mine, Dv]``."""
    starts = _offsets(group_lengths)
    piece_off = [split_offsets(s, chunks) for s in group_lengths]

    def start(c: int):
        sizes = [split_sizes(s, chunks)[c] for s in group_lengths]
        rows = [x[:, starts[j] + piece_off[j][c] : starts[j] + piece_off[j][c + 1]] for j in range(len(sizes))]
        log("issue", f"out{c}")
        return start_heads_to_seq(ctx.comm, torch.cat(rows, dim=1), sizes, num_heads)

    outs, pending = [], start(0)
    for c in range(chunks):
        following = start(c + 1) if c + 1 < chunks else None
        log("wait", f"out{c}")
        piece = pending.wait()
        log("project", f"out{c}")
        outs.append(out_proj(piece) if out_proj is not None else piece)
        pending = following
    return outs[0] if chunks == 1 else torch.cat(outs, dim=1)


def _offsets(lengths: list[int]) -> list[int]:
    out = [0]
    for n in lengths:
        out.append(out[-1] + n)
    return out


__all__ = ["overlapped_attention"]
