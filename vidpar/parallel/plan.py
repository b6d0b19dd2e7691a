"""Declarative sharding plans and the one routine that applies them.

A plan maps submodule paths (``fnmatch`` patterns such as ``"blocks.*.self_attn.attn_op"``) to specs:

- ``ShardOutput(dim)``: the submodule's tensor output(s) become this rank's sequence piece along ``dim``;
- ``ShardInput(arg, dim, only_ndim)``: a positional input is sharded before the submodule runs;
- ``GatherOutput(dim)``: the submodule's output is gathered back to the full sequence on every rank;
- ``SequenceParallel()``: the submodule (an attention op ``forward(q, k, v)`` with ``[B, S, H, D]`` tensors and a
  ``backend`` attribute, optionally ``joint_q/k/v=`` tokens every rank holds in full) is replaced by a
  sequence-parallel one.

Model code stays single-device: hooks and submodule swaps do the rest, and ``unparallelize`` removes them.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, field

import torch
from torch import nn

from .attention import attention
from .ulysses_overlap import overlapped_attention
from .context import SP_AXIS, ParallelContext
from .split import split_sizes

_APPLIED_ATTR = "_vidpar_applied_plan"


class SequenceParallelAttention(nn.Module):
    """Drop-in for a local attention op: ``forward(q, k, v, joint_q=, joint_k=, joint_v=)`` on this rank's shards,
    ``[B, S_local, H, D]`` (joint tokens full on every rank).

    When the plan sharded the sequence in this forward, its full length is known on every rank, so the shard
    lengths are passed to ``attention`` and its length exchange (a collective and, on GPU, a sync) is skipped.
    """

    def __init__(self, ctx: ParallelContext, backend: str = "auto", applied: "AppliedPlan | None" = None,
                 overlap: bool = False) -> None:
        super().__init__()
        self.ctx = ctx
        self.backend = backend
        self.applied = applied
        self.overlap = overlap  # Ulysses all-to-alls overlapped with the projections in ``attend``

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        *,
        joint_q: torch.Tensor | None = None,
        joint_k: torch.Tensor | None = None,
        joint_v: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """Joint tokens (``[B, T, H, D]``, full on every rank) pass through to ``attention``, which then returns
        ``(out_local, joint_out)``."""
        full = self.applied.seq_len if self.applied is not None else None
        lens = split_sizes(full, self.ctx.sp_size) if full is not None else None
        return attention(q, k, v, self.ctx, joint_q=joint_q, joint_k=joint_k, joint_v=joint_v,
                         backend=self.backend, seq_lens=lens)

    def attend(self, make_q, make_k, make_v, *, out_proj=None, joint_q=None, joint_k=None, joint_v=None):
        """``LocalAttention.attend`` on this rank's shards; with ``overlap`` the all-to-alls run while the model's
        projections compute (``vidpar.parallel.ulysses_overlap``), otherwise exactly ``out_proj(self(q, k, v))``."""
        full = self.applied.seq_len if self.applied is not None else None
        lens = split_sizes(full, self.ctx.sp_size) if full is not None else None
        return overlapped_attention((make_q, make_k, make_v), self.ctx, out_proj=out_proj, joint_q=joint_q,
                                    joint_k=joint_k, joint_v=joint_v, backend=self.backend, seq_lens=lens,
                                    overlap=self.overlap)

    def extra_repr(self) -> str:
        c = self.ctx.config
        return f"ulysses={c.ulysses}, ring={c.ring}, backend={self.backend!r}, overlap={self.overlap}"


def _map_tensors(value, fn):
    if isinstance(value, torch.Tensor):
        return fn(value)
    if isinstance(value, tuple):
        return tuple(_map_tensors(v, fn) for v in value)
    if isinstance(value, list):
        return [_map_tensors(v, fn) for v in value]
    return value


class _OutputHook:
    """A spec that transforms every tensor a submodule returns (``transform(ctx, applied, t)``)."""

    def transform(self, ctx: ParallelContext, applied: "AppliedPlan", t: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def apply(self, module: nn.Module, ctx: ParallelContext, applied: "AppliedPlan", path: str) -> None:
        def hook(_mod, _args, output):
            return _map_tensors(output, lambda t: self.transform(ctx, applied, t))

        applied.handles.append(module.register_forward_hook(hook))


@dataclass(frozen=True)
class ShardOutput(_OutputHook):
    dim: int

    def transform(self, ctx: ParallelContext, applied: "AppliedPlan", t: torch.Tensor) -> torch.Tensor:
        applied.note_length(t.shape[self.dim])
        return ctx.shard_sequence(t, self.dim)


@dataclass(frozen=True)
class ShardInput:
    arg: int = 0
    dim: int = 1
    only_ndim: int | None = None  # shard only inputs with this many dims (e.g. per-token timesteps)

    def apply(self, module: nn.Module, ctx: ParallelContext, applied: "AppliedPlan", path: str) -> None:
        def hook(_mod, args):
            x = args[self.arg]
            if not isinstance(x, torch.Tensor) or (self.only_ndim is not None and x.dim() != self.only_ndim):
                return None
            applied.note_length(x.shape[self.dim])
            return (*args[: self.arg], ctx.shard_sequence(x, self.dim), *args[self.arg + 1 :])

        applied.handles.append(module.register_forward_pre_hook(hook))


@dataclass(frozen=True)
class GatherOutput(_OutputHook):
    dim: int

    def transform(self, ctx: ParallelContext, applied: "AppliedPlan", t: torch.Tensor) -> torch.Tensor:
        return ctx.gather_sequence(t, self.dim, length=applied.seq_len)


@dataclass(frozen=True)
class SequenceParallel:
    def apply(self, module: nn.Module, ctx: ParallelContext, applied: "AppliedPlan", path: str) -> None:
        if not hasattr(module, "backend"):
            raise TypeError(f"{path}: SequenceParallel replaces attention ops with a 'backend' attribute")
        applied.swap(path, SequenceParallelAttention(ctx, module.backend, applied))


@dataclass
class AppliedPlan:
    """What ``apply_plan`` did to one model, so that ``remove_plan`` can undo it."""

    root: nn.Module
    ctx: ParallelContext
    handles: list = field(default_factory=list)
    swapped: dict[str, nn.Module] = field(default_factory=dict)  # path -> original submodule
    # Full length of the sequence the plan sharded in the current forward (reset when the model's forward starts).
    # It comes from full tensors, identical on every rank, so every rank takes the same collective decisions.
    seq_len: int | None = None

    def note_length(self, length: int) -> None:
        if self.seq_len is not None and self.seq_len != length:
            raise ValueError(
                f"the sharding plan split sequences of lengths {self.seq_len} and {length} in one forward; "
                "a plan may split one token sequence (with tensors aligned to it) per forward"
            )
        self.seq_len = length

    def reset_length(self, *_args) -> None:
        self.seq_len = None

    def swap(self, path: str, new: nn.Module) -> None:
        parent_path, _, name = path.rpartition(".")
        parent = self.root.get_submodule(parent_path) if parent_path else self.root
        self.swapped[path] = getattr(parent, name)
        setattr(parent, name, new)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        for path, original in self.swapped.items():
            parent_path, _, name = path.rpartition(".")
            setattr(self.root.get_submodule(parent_path) if parent_path else self.root, name, original)
        self.handles.clear()
        self.swapped.clear()


ParallelPlan = dict  # pattern -> spec; a plain mapping so plans read as data beside the model


class AxisPlan(dict):
    """A plan applied when mesh axis ``axis`` has more than one rank (a plain dict plan uses ``"sp"``).

    The parallel VAE decode uses every rank (``"world"``), whatever the DiT's layout.
    """

    def __init__(self, axis: str, specs: dict) -> None:
        super().__init__(specs)
        self.axis = axis


def apply_plan(model: nn.Module, plan: ParallelPlan, ctx: ParallelContext) -> nn.Module:
    """Apply ``plan`` to ``model`` in place for the mesh of ``ctx``; returns ``model``.

    Every pattern must match at least one submodule (a plan that silently matches nothing would leave the model
    single-device). With a single-rank sequence axis nothing is hooked: the model runs as it is.
    """
    if getattr(model, _APPLIED_ATTR, None) is not None:
        raise RuntimeError("this model is already parallelized; call vidpar.unparallelize(model) first")
    names = [name for name, _ in model.named_modules() if name]
    matches = {pattern: [n for n in names if fnmatch.fnmatchcase(n, pattern)] for pattern in plan}
    unmatched = [p for p, m in matches.items() if not m]
    if unmatched:
        raise ValueError(f"sharding plan patterns match no submodule of {type(model).__name__}: {unmatched}")
    applied = AppliedPlan(model, ctx)
    if ctx.axis_size(getattr(plan, "axis", SP_AXIS)) > 1:
        applied.handles.append(model.register_forward_pre_hook(applied.reset_length))
        for pattern, spec in plan.items():
            for path in matches[pattern]:
                spec.apply(model.get_submodule(path), ctx, applied, path)
    object.__setattr__(model, _APPLIED_ATTR, applied)
    return model


def set_ulysses_overlap(model: nn.Module, enabled: bool) -> int:
    """Turn the Ulysses overlap of every sequence-parallel attention of ``model`` on or off (default off);
    returns how many were set. Results are the same either way (``vidpar.parallel.ulysses_overlap``)."""
    ops = [m for m in model.modules() if isinstance(m, SequenceParallelAttention)]
    for op in ops:
        op.overlap = bool(enabled)
    return len(ops)


def remove_plan(model: nn.Module) -> nn.Module:
    """Undo ``apply_plan``: remove hooks and put the original submodules back."""
    applied = getattr(model, _APPLIED_ATTR, None)
    if applied is None:
        raise RuntimeError("this model is not parallelized")
    applied.remove()
    object.__setattr__(model, _APPLIED_ATTR, None)
    return model
