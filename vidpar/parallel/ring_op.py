"""Ring attention as one ``torch.library`` custom op, so ``torch.compile`` traces a ring layout without breaks.

The ring's point-to-point transfers (``batch_isend_irecv``) cannot be traced; wrapped as the op
``vidpar::ring_attention`` with a fake implementation (its output shape), the whole rotation is one opaque node
of the compiled graph. Its eager implementation is ``ring.ring_attention`` itself (same transfers, same overlap,
same merge), run on the ring group named by ``group_name``; eager code calls ``ring.ring_attention`` directly.

The op cannot carry the ``Comm`` object, so the bytes it sends are counted here, outside the op, from values
every rank knows (the block lengths): the same numbers ``ring.ring_attention`` counts when called eagerly.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.distributed as dist

from vidpar.kernels import attention_with_lse

from . import ring as ring_mod
from .comm import AxisGroup, Comm, group_name


@torch.library.custom_op("vidpar::ring_attention", mutates_args=())
def ring_attention_op(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    joint_k: torch.Tensor | None,
    joint_v: torch.Tensor | None,
    block_lengths: list[int],
    group_name: str,
    ranks: list[int],
    rank_in_group: int,
    backend: str,
) -> torch.Tensor:
    """``ring.ring_attention`` on the process group ``group_name`` (global ``ranks``, this rank at
    ``rank_in_group``). Shapes as there; returns ``[B, Sq, H, Dv]`` contiguous."""
    group = dist.distributed_c10d._resolve_process_group(group_name)
    comm = Comm({ring_mod.AXIS: AxisGroup(ring_mod.AXIS, group, list(ranks), rank_in_group)})
    local_kv = (joint_k, joint_v) if joint_k is not None else None
    out = ring_mod.ring_attention(comm, q, k, v, list(block_lengths), partial(attention_with_lse, backend=backend),
                                  local_kv=local_kv)
    return out.contiguous()


@ring_attention_op.register_fake
def _ring_attention_fake(q, k, v, joint_k, joint_v, block_lengths, group_name, ranks, rank_in_group, backend):
    return q.new_empty(q.shape[0], q.shape[1], q.shape[2], v.shape[-1])


def ring_attention_compiled(
    comm: Comm,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    block_lengths: list[int],
    backend: str,
    local_kv: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> torch.Tensor:
    """``ring.ring_attention`` through the custom op (for code being compiled), with the same byte accounting.

    Args:
        q: ``[B, Sq, H, D]``; k, v: ``[B, block_lengths[rank], H, D / Dv]``; local_kv: ``[B, T, H, D / Dv]`` or
            None; backend: a resolved backend name that returns a log-sum-exp.
    Returns:
        ``[B, Sq, H, Dv]`` in q's dtype.
    """
    g = comm.group(ring_mod.AXIS)
    size, me = g.size, g.rank_in_group
    per_token = k.shape[0] * k.shape[2] * (k.shape[-1] + v.shape[-1]) * k.element_size()
    # At step s this rank sends the block it holds, block (me - s); the last step sends nothing.
    comm._count(ring_mod.AXIS, sum(block_lengths[(me - s) % size] for s in range(size - 1)) * per_token)
    jk, jv = local_kv if local_kv is not None else (None, None)
    return torch.ops.vidpar.ring_attention(q, k, v, jk, jv, list(block_lengths), group_name(g), list(g.ranks),
                                           me, backend)


__all__ = ["ring_attention_compiled", "ring_attention_op"]
