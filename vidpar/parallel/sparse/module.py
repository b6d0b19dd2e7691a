"""Turning sparse attention on for a model: swap its self-attention ops, learn the token grid each forward, and
let the denoising loop say which step is running (dense warm-up / final steps).

``enable_sparse_attention`` works on any mesh, including one process (where no sharding plan is applied), and
after ``vidpar.parallelize``: each swapped op keeps the op it replaced (``LocalAttention`` or the plan's
``SequenceParallelAttention``) and calls it unchanged whenever the step or layer is dense, so dense steps are
bit-identical to running without sparsity.
"""

from __future__ import annotations

import fnmatch
from typing import Callable

import torch
from torch import nn

from vidpar.kernels.local_attention import project_output

from ..attention import attention
from ..context import ParallelContext
from ..split import split_sizes
from .attend import SparseCall
from .config import SparseAttention
from .grid import TokenGrid
from .layout import LayoutCache

GridFn = Callable[[tuple, dict], "TokenGrid | tuple[int, int, int]"]


class SparseRuntime:
    """The switch shared by a model's sparse ops: the current step, the current forward's grid, the layouts.

    Holds no process groups; one per model (not module-level state).
    """

    def __init__(self, config: SparseAttention, num_layers: int) -> None:
        self.config = config
        self.num_layers = num_layers
        self.cache = LayoutCache()
        self.grid: TokenGrid | None = None
        self.step: int | None = None
        self.num_steps: int | None = None

    def set_step(self, step: int | None, num_steps: int | None = None) -> None:
        """Declare denoising step ``step`` of ``num_steps`` (``None``: not in a loop — only dense layers apply).

        Call it on every rank with the same values before the step's forwards (it decides collectives).
        """
        if step is not None and (not isinstance(num_steps, int) or not 0 <= step < num_steps):
            raise ValueError(f"sparse attention: step {step!r} must be in [0, num_steps={num_steps!r})")
        self.step, self.num_steps = step, num_steps

    def sparse_now(self, layer: int) -> bool:
        return self.config.is_sparse(self.step, self.num_steps, layer, self.num_layers)


class SparseAttentionOp(nn.Module):
    """Replaces one attention op ``forward(q, k, v, **joint)`` (``[B, S_local, H, D]``).

    Deliberately has no ``backend`` attribute, so a sharding plan applied after it fails loudly instead of
    silently replacing it.
    """

    def __init__(self, dense: nn.Module, ctx: ParallelContext, runtime: SparseRuntime, layer: int) -> None:
        super().__init__()
        self.dense = dense
        self.ctx = ctx
        self.runtime = runtime
        self.layer = layer

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, **joint):
        rt = self.runtime
        if not rt.sparse_now(self.layer):
            return self.dense(q, k, v, **joint)
        if rt.grid is None:
            raise RuntimeError("sparse attention: no token grid for this forward (the model's grid hook did not run)")
        applied = getattr(self.dense, "applied", None)
        full = getattr(applied, "seq_len", None)
        lens = split_sizes(full, self.ctx.sp_size) if full is not None and self.ctx.sp_size > 1 else None
        backend = getattr(self.dense, "backend", "auto")
        call = SparseCall(rt.config, rt.grid, rt.cache)
        return attention(q, k, v, self.ctx, backend=backend, seq_lens=lens, sparse=call, **joint)

    def attend(self, make_q, make_k, make_v, *, out_proj=None, **joint):
        """The model's ``attn_op.attend`` form: dense layers and steps go to the dense op's own ``attend`` (with its
        Ulysses overlap, if on); sparse ones project first, then attend sparse."""
        if not self.runtime.sparse_now(self.layer):
            return self.dense.attend(make_q, make_k, make_v, out_proj=out_proj, **joint)
        res = self(make_q(), make_k(), make_v(), **joint)
        return project_output(res, out_proj, joint.get("joint_q") is not None)

    def extra_repr(self) -> str:
        return f"layer={self.layer}, {self.runtime.config.describe()}"


class SparseHandle:
    """What ``enable_sparse_attention`` did; ``set_step`` drives it, ``remove`` undoes it."""

    def __init__(self, model: nn.Module, runtime: SparseRuntime, swapped: dict[str, nn.Module], hook) -> None:
        self.model = model
        self.runtime = runtime
        self._swapped = swapped
        self._hook = hook

    def set_step(self, step: int | None, num_steps: int | None = None) -> None:
        self.runtime.set_step(step, num_steps)

    def remove(self) -> None:
        """Put the original ops back (call before ``vidpar.unparallelize``: undo in reverse order)."""
        for path, original in self._swapped.items():
            parent, name = _parent(self.model, path)
            if not isinstance(getattr(parent, name), SparseAttentionOp):
                raise RuntimeError(f"{path} is no longer the sparse op: undo sparse attention before the plan")
            setattr(parent, name, original)
        self._hook.remove()
        self._swapped.clear()


def _parent(model: nn.Module, path: str) -> tuple[nn.Module, str]:
    parent_path, _, name = path.rpartition(".")
    return (model.get_submodule(parent_path) if parent_path else model), name


def enable_sparse_attention(
    model: nn.Module,
    ctx: ParallelContext,
    config: SparseAttention,
    grid_fn: GridFn,
    ops: str | list[str] = "blocks.*.self_attn.attn_op",
) -> SparseHandle:
    """Make the self-attention ops of ``model`` sparse (after ``vidpar.parallelize``, if the model is parallel).

    Args:
        model: the DiT.
        ctx: its parallel context (``init_parallel(ParallelConfig())`` on one process).
        config: the pattern.
        grid_fn: ``grid_fn(args, kwargs) -> (frames, rows, cols)`` of the video tokens, from the model's forward
            arguments (e.g. Wan: ``lambda a, kw: model.grid_size(a[0] if a else kw["latents"])``); it runs in a
            forward pre-hook, on full inputs, so it is identical on every rank.
        ops: ``fnmatch`` pattern(s) of the attention ops to replace, in layer order (module order).
    Returns:
        a handle: ``handle.set_step(i, num_steps)`` each denoising step, ``handle.remove()`` to undo.
    """
    patterns = [ops] if isinstance(ops, str) else list(ops)
    paths = [n for n, _ in model.named_modules() if n and any(fnmatch.fnmatchcase(n, p) for p in patterns)]
    if not paths:
        raise ValueError(f"sparse attention: no submodule of {type(model).__name__} matches {patterns}")
    if any(isinstance(model.get_submodule(p), SparseAttentionOp) for p in paths):
        raise RuntimeError("sparse attention is already enabled on this model")
    runtime = SparseRuntime(config, len(paths))
    swapped: dict[str, nn.Module] = {}
    for layer, path in enumerate(paths):
        parent, name = _parent(model, path)
        swapped[path] = getattr(parent, name)
        setattr(parent, name, SparseAttentionOp(swapped[path], ctx, runtime, layer))

    def note_grid(_module, args, kwargs):
        runtime.grid = TokenGrid.of(grid_fn(args, kwargs))

    hook = model.register_forward_pre_hook(note_grid, with_kwargs=True)
    return SparseHandle(model, runtime, swapped, hook)
