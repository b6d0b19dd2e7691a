"""Weight sharding with torch FSDP2 (``fully_shard``) over every rank, so large models leave room for activations.

Each listed block and the root become FSDP units: a rank keeps ``1/P`` of every weight and all-gathers a unit's
weights just before its forward (and frees them after). The computation is unchanged, so results are identical to
the unsharded model. FSDP's own collectives do not pass through ``Comm``; their volume is known exactly (every
forward gathers each unit once), so it is counted here under the ``"fsdp"`` axis.
"""

from __future__ import annotations

import torch
from torch import nn

from .context import ParallelContext


def shard_weights(module: nn.Module, blocks: list[nn.Module], ctx: ParallelContext) -> nn.Module:
    """Apply ``fully_shard`` to each of ``blocks`` and then to ``module`` over the world; returns ``module``.

    With a world of one rank this is a no-op. ``module`` must hold identical weights on every rank.
    """
    if ctx.world_size == 1:
        return module
    import torch.distributed as dist
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.fsdp import fully_shard

    mesh = DeviceMesh.from_group(dist.group.WORLD, ctx.device.type)
    for block in blocks:
        fully_shard(block, mesh=mesh, reshard_after_forward=True)
        _count_gathers(block, ctx)
    fully_shard(module, mesh=mesh, reshard_after_forward=True)
    _count_gathers(module, ctx, exclude=blocks)
    return module


def _count_gathers(unit: nn.Module, ctx: ParallelContext, exclude: list[nn.Module] = ()) -> None:
    """Count the bytes this rank sends when ``unit``'s weights are all-gathered: its shard to every other rank."""
    excluded = {id(p) for m in exclude for p in m.parameters()}
    shard_bytes = sum(
        p.to_local().numel() * p.element_size() for p in unit.parameters() if id(p) not in excluded
    )
    sent = shard_bytes * (ctx.world_size - 1)

    def count(_module, _args):
        ctx.comm._count("fsdp", sent)  # through Comm: also counted right inside compiled blocks

    unit.register_forward_pre_hook(count)


def full_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded weights of an FSDP-sharded module (a collective: call on every rank)."""
    return {k: (v.full_tensor() if hasattr(v, "full_tensor") else v) for k, v in module.state_dict().items()}

