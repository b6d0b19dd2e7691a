"""``vidpar.parallelize``: make a model run on the mesh of a ``ParallelContext`` by applying its own plan."""

from __future__ import annotations

from torch import nn

from vidpar.parallel.context import ParallelContext
from vidpar.parallel.plan import apply_plan, remove_plan


def parallelize(module: nn.Module, ctx: ParallelContext, **options) -> nn.Module:
    """Apply the sharding plan that ``module`` declares (``module.parallel_plan(**options)``), in place.

    Args:
        module: a model whose class defines ``parallel_plan`` (every family's denoisers and VAEs do).
        ctx: from ``vidpar.parallel.init_parallel``.
        options: plan options of the model family (e.g. ``vae_mode="patch"`` for VAEs).
    Returns:
        the same module; its forward takes and returns full tensors on every rank, computed in parallel.
    """
    plan_fn = getattr(module, "parallel_plan", None)
    if plan_fn is None:
        raise TypeError(f"{type(module).__name__} declares no parallel_plan; vidpar cannot parallelize it")
    return apply_plan(module, plan_fn(**options), ctx)


def unparallelize(module: nn.Module) -> nn.Module:
    """Remove what ``parallelize`` applied; the module runs single-device again."""
    return remove_plan(module)
