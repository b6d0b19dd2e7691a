"""The attention backends as ``torch.library`` custom ops, so ``torch.compile`` sees through them.

Under ``torch.compile`` a backend's kernel call (a CUDA extension such as flash-attn, or an aten op with an awkward
signature) is one opaque node with a fake (meta) implementation that gives its output shapes, instead of Python the
compiler would have to trace or break on. Eager code calls the backends directly (``backends.attention_plain`` /
``attention_with_lse`` switch to these ops only while compiling), so eager results are what they always were, and
compiled results come from the very same kernels.

Layouts are the backends' (``[B, S, H, D]``); outputs are contiguous, as the fake implementations promise.
Inference only: no backward is registered.

This module imports nothing from the rest of vidpar.
"""

from __future__ import annotations

import torch


def _lse_dtype(q: torch.Tensor) -> torch.dtype:
    return torch.float64 if q.dtype == torch.float64 else torch.float32


@torch.library.custom_op("vidpar::attention", mutates_args=())
def attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str) -> torch.Tensor:
    """Non-causal attention of backend ``backend`` (a resolved name, not ``"auto"``).

    q ``[B, Sq, H, D]``, k ``[B, Sk, H, D]``, v ``[B, Sk, H, Dv]`` (Sq, Sk, H > 0) -> ``[B, Sq, H, Dv]`` contiguous.
    """
    from .backends import backend_specs

    return backend_specs()[backend].plain_fn(q, k, v).contiguous()


@attention_op.register_fake
def _attention_fake(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str) -> torch.Tensor:
    return q.new_empty(q.shape[0], q.shape[1], q.shape[2], v.shape[-1])


@torch.library.custom_op("vidpar::attention_lse", mutates_args=())
def attention_lse_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention and its log-sum-exp from backend ``backend`` (resolved, with ``has_lse``).

    q ``[B, Sq, H, D]``, k ``[B, Sk, H, D]``, v ``[B, Sk, H, Dv]`` (Sq, Sk, H > 0) -> ``out [B, Sq, H, Dv]`` in q's
    dtype and ``lse [B, H, Sq]`` in fp32 (fp64 for fp64 inputs), both contiguous.
    """
    from .backends import backend_specs

    out, lse = backend_specs()[backend].lse_fn(q, k, v)
    return out.contiguous(), lse.to(_lse_dtype(q)).contiguous()


@attention_lse_op.register_fake
def _attention_lse_fake(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str
) -> tuple[torch.Tensor, torch.Tensor]:
    b, sq, h, _ = q.shape
    return q.new_empty(b, sq, h, v.shape[-1]), q.new_empty(b, h, sq, dtype=_lse_dtype(q))


__all__ = ["attention_lse_op", "attention_op"]
