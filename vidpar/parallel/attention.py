"""Sequence-parallel attention: Ulysses, ring, and both at once (USP) on the ``ring x ulysses`` mesh.

Layout inside: tokens are split over ``sp`` ranks in ``sp_rank = ring_rank * ulysses + ulysses_rank`` order, so
the shards of one ulysses group form one contiguous ring block. The Ulysses all-to-all turns the ulysses group's
shards into that whole block for a subset of heads; ring attention then rotates blocks around the ring.

Joint tokens (e.g. text in joint-attention models) are full on every rank. Every rank uses its heads of the joint
keys/values; the joint *queries* are computed once in the whole sp group: each rank takes its heads and its
``split_sizes(T, ring)`` rows of them, and the joint output is assembled with one all-gather.
"""

from __future__ import annotations

import torch

from functools import partial
from typing import TYPE_CHECKING

from vidpar.kernels import BackendSpec, attention_plain, attention_with_lse, resolve_backend

from . import ring as ring_mod
from . import ring_op
from . import ulysses as ulysses_mod
from .context import SP_AXIS, ParallelContext
from .split import split_offsets, split_sizes

if TYPE_CHECKING:
    from .sparse.attend import SparseCall


def _check_local(q, k, v, joint) -> None:
    """Validate this rank's inputs; identical code on every rank, so bad inputs fail before any collective."""
    for name, t in (("q", q), ("k", k), ("v", v)):
        if not isinstance(t, torch.Tensor) or t.dim() != 4:
            raise ValueError(f"attention: {name} must be a 4-D tensor [B, S, H, D], got {_shape(t)}")
    if q.shape[:3] != k.shape[:3] or k.shape[:3] != v.shape[:3]:
        raise ValueError(
            f"attention: q, k, v must share [B, S_local, H]; got q {tuple(q.shape)}, k {tuple(k.shape)}, "
            f"v {tuple(v.shape)}"
        )
    if q.shape[-1] != k.shape[-1]:
        raise ValueError(f"attention: q and k head dims differ ({q.shape[-1]} vs {k.shape[-1]})")
    if not (q.dtype == k.dtype == v.dtype) or not q.is_floating_point():
        raise ValueError(f"attention: q, k, v must share one floating dtype; got {q.dtype}, {k.dtype}, {v.dtype}")
    if not (q.device == k.device == v.device):
        raise ValueError(f"attention: q, k, v are on different devices ({q.device}, {k.device}, {v.device})")
    present = [t is not None for t in joint]
    if any(present) and not all(present):
        raise ValueError("attention: give all of joint_q, joint_k, joint_v or none of them")
    if all(present):
        jq, jk, jv = joint
        for name, t, ref in (("joint_q", jq, q), ("joint_k", jk, k), ("joint_v", jv, v)):
            if not isinstance(t, torch.Tensor) or t.dim() != 4:
                raise ValueError(f"attention: {name} must be a 4-D tensor [B, T, H, D], got {_shape(t)}")
            if t.shape[0] != ref.shape[0] or t.shape[2:] != ref.shape[2:]:
                raise ValueError(
                    f"attention: {name} {tuple(t.shape)} must match [B, T, H, D] of {tuple(ref.shape)}"
                )
            if t.dtype != q.dtype or t.device != q.device:
                raise ValueError(f"attention: {name} must have q's dtype and device ({q.dtype}, {q.device})")
        if not (jq.shape[1] == jk.shape[1] == jv.shape[1]):
            raise ValueError("attention: joint_q, joint_k, joint_v must have the same number of tokens")


def _shape(t) -> str:
    return str(tuple(t.shape)) if isinstance(t, torch.Tensor) else type(t).__name__


@torch.compiler.disable  # a host sync (.tolist()); compiled code gets seq_lens from the plan instead
def _exchange_lengths(ctx: ParallelContext, q, v, joint_tokens: int) -> list[int]:
    """Every sp rank's local length, after checking that all ranks agree on everything else."""
    b, s, h, d = q.shape
    meta = [s, b, h, d, v.shape[-1], joint_tokens, _DTYPE_CODES.get(q.dtype, -1)]
    rows = ctx.comm.exchange_ints(meta, SP_AXIS, q.device)
    if any(row[1:] != meta[1:] for row in rows):
        names = "B, H, D, Dv, joint tokens, dtype code"
        raise ValueError(f"attention: ranks disagree on ({names}): " + ", ".join(str(r[1:]) for r in rows))
    return [row[0] for row in rows]


_DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2, torch.float64: 3}


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    ctx: ParallelContext,
    *,
    joint_q: torch.Tensor | None = None,
    joint_k: torch.Tensor | None = None,
    joint_v: torch.Tensor | None = None,
    backend: str = "auto",
    seq_lens: list[int] | None = None,
    sparse: "SparseCall | None" = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """Non-causal softmax attention over a sequence split across the ``ring x ulysses`` ranks.

    Args:
        q, k: ``[B, S_local, H, D]``; v: ``[B, S_local, H, Dv]`` — this rank's shards as produced by
            ``ctx.shard_sequence(x, dim=1)`` (any lengths, including empty shards).
        ctx: the parallel context.
        joint_q, joint_k: ``[B, T, H, D]``; joint_v: ``[B, T, H, Dv]`` — tokens every rank holds in full
            (identical on every rank), attended jointly with the video tokens.
        backend: local attention backend (``vidpar.kernels``) or ``"auto"``. Ring attention needs a backend that
            returns a log-sum-exp; others are refused with ``ValueError``.
        seq_lens: the shard length of every sp rank, if the caller knows them (identical on every rank, e.g.
            ``split_sizes(S, ctx.sp_size)``). Without them the lengths are exchanged first (a small collective
            that also checks that all ranks agree on B, H, D, dtype and joint tokens).
        sparse: structured sparse attention over the video tokens (``vidpar.parallel.sparse.SparseCall``: the
            pattern and this forward's token grid); None (the default) is dense attention.
    Returns:
        ``out_local [B, S_local, H, Dv]`` — this rank's shard of attention over all (joint + video) keys;
        with joint tokens, ``(out_local, joint_out [B, T, H, Dv])`` with ``joint_out`` full on every rank.
    """
    joint = (joint_q, joint_k, joint_v)
    spec, lengths = _prepare(q, k, v, ctx, joint, backend, seq_lens, sparse)
    num_heads, group_lengths = q.shape[2], _group_lengths(ctx, lengths)

    # 1. Ulysses: this ulysses group's block of tokens, for my heads.
    if ctx.config.ulysses > 1:
        qh, kh, vh = ulysses_mod.seq_to_heads(ctx.comm, [q, k, v], group_lengths, num_heads)
    else:
        qh, kh, vh = q, k, v
    joint_part, video_part = _attend_block(ctx, spec, qh, kh, vh, joint, lengths, num_heads, sparse)

    # 4. Back to sequence shards with all heads.
    if ctx.config.ulysses > 1:
        out_local = ulysses_mod.heads_to_seq(ctx.comm, video_part, group_lengths, num_heads)
    else:
        out_local = video_part
    if joint_q is None:
        return out_local
    return out_local, _gather_joint(ctx, joint_part, joint_q.shape[1], num_heads)


def _prepare(q, k, v, ctx: ParallelContext, joint, backend: str, seq_lens,
             sparse: "SparseCall | None" = None) -> tuple[BackendSpec, list[int]]:
    """Validate this rank's inputs and return the backend and every sp rank's shard length (before any
    collective but the length exchange, which itself checks that the ranks agree)."""
    _check_local(q, k, v, joint)
    spec = resolve_backend(backend, q.device, q.dtype, need_lse=ctx.config.ring > 1 or sparse is not None)
    joint_tokens = joint[0].shape[1] if joint[0] is not None else 0
    if ctx.sp_size == 1:
        lengths = [q.shape[1]]
    elif seq_lens is not None:
        lengths = check_seq_lens(ctx, seq_lens, q.shape[1])
    else:
        lengths = _exchange_lengths(ctx, q, v, joint_tokens)
    if sum(lengths) + joint_tokens == 0:
        raise ValueError("attention: the sequence has no tokens (no video and no joint tokens)")
    if sparse is not None:
        sparse.check(sum(lengths), q.shape[2])
    return spec, lengths


def check_seq_lens(ctx: ParallelContext, seq_lens, local_len: int) -> list[int]:
    """``seq_lens`` as a list after checking that it has one length per sp rank and this rank's is ``local_len``."""
    lengths = list(seq_lens)
    if len(lengths) != ctx.sp_size or lengths[ctx.sp_rank] != local_len:
        raise ValueError(
            f"attention: seq_lens {lengths} do not fit {ctx.sp_size} ranks where rank {ctx.sp_rank} holds "
            f"{local_len} tokens"
        )
    return lengths


def _group_lengths(ctx: ParallelContext, lengths: list[int]) -> list[int]:
    """The shard lengths of my ulysses group (a contiguous run of sp ranks)."""
    u, ring_rank = ctx.config.ulysses, ctx.coords["ring"]
    return lengths[ring_rank * u : (ring_rank + 1) * u]


def _attend_block(ctx: ParallelContext, spec: BackendSpec, qh, kh, vh, joint, lengths: list[int], num_heads: int,
                  sparse: "SparseCall | None" = None):
    """Steps 2 and 3 on the head-sharded block ``qh/kh/vh [B, S_block, H_mine, D]``: add the joint tokens (my heads,
    my ring rank's rows of the joint queries) and attend over every key, locally or around the ring (or sparse).

    Returns ``(joint_part [B, rows_mine, H_mine, Dv], video_part [B, S_block, H_mine, Dv])``.
    """
    u, r = ctx.config.ulysses, ctx.config.ring
    ring_rank, uly_rank = ctx.coords["ring"], ctx.coords["ulysses"]
    block_lengths = [sum(lengths[i * u : (i + 1) * u]) for i in range(r)]
    has_joint = joint[0] is not None
    joint_tokens = joint[0].shape[1] if has_joint else 0
    head_lo = split_offsets(num_heads, u)[uly_rank]
    head_n = split_sizes(num_heads, u)[uly_rank]

    # 2. Joint tokens: my heads; my ring rank's rows of the joint queries.
    row_off = split_offsets(joint_tokens, r)
    j_rows = row_off[ring_rank + 1] - row_off[ring_rank]
    if has_joint:
        jq, jk, jv = (t[:, :, head_lo : head_lo + head_n] for t in joint)
        queries = torch.cat([jq[:, row_off[ring_rank] : row_off[ring_rank + 1]], qh], dim=1)
    else:
        queries = qh

    # 3. Attention over every key: local for a single ring block, ring otherwise (or sparse, opt-in).
    if sparse is not None:
        from .sparse.attend import sparse_attend  # imported only when used

        out = sparse_attend(ctx, sparse, qh, kh, vh, (jq, jk, jv) if has_joint else None, block_lengths, head_lo,
                            num_heads, spec.name)
    elif r == 1:
        keys = torch.cat([jk, kh], dim=1) if has_joint else kh
        values = torch.cat([jv, vh], dim=1) if has_joint else vh
        out = attention_plain(queries, keys, values, spec.name)
    elif torch.compiler.is_compiling():  # P2P transfers cannot be traced: the ring is one custom op
        out = ring_op.ring_attention_compiled(ctx.comm, queries, kh, vh, block_lengths, spec.name,
                                              local_kv=(jk, jv) if has_joint else None)
    else:
        out = ring_mod.ring_attention(
            ctx.comm, queries, kh, vh, block_lengths, partial(attention_with_lse, backend=spec.name), local_kv=(jk, jv) if has_joint else None
        )
    return out[:, :j_rows], out[:, j_rows:]


def _gather_joint(ctx: ParallelContext, part: torch.Tensor, joint_tokens: int, num_heads: int) -> torch.Tensor:
    """Assemble ``[B, T, H, Dv]`` from every sp rank's ``[B, rows_r, heads_u, Dv]`` piece with one all-gather."""
    cfg = ctx.config
    if ctx.sp_size == 1:
        return part
    rows, heads = split_sizes(joint_tokens, cfg.ring), split_sizes(num_heads, cfg.ulysses)
    row_off, head_off = split_offsets(joint_tokens, cfg.ring), split_offsets(num_heads, cfg.ulysses)
    b, _, _, dv = part.shape
    padded = part.new_zeros(b, max(rows), max(heads), dv)
    padded[:, : part.shape[1], : part.shape[2]] = part
    pieces = ctx.comm.all_gather(padded, SP_AXIS)  # [P, B, rows_max, heads_max, Dv], P in sp-rank order
    out = part.new_empty(b, joint_tokens, num_heads, dv)
    for p in range(ctx.sp_size):
        ri, ui = divmod(p, cfg.ulysses)
        out[:, row_off[ri] : row_off[ri] + rows[ri], head_off[ui] : head_off[ui] + heads[ui]] = pieces[
            p, :, : rows[ri], : heads[ui]
        ]
    return out
