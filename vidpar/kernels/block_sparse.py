"""Local block-sparse attention: only the listed (query rows, key rows) blocks are computed.

A *work item* is one group of query rows with the key rows it attends to (the kept key blocks of one query
block, concatenated) and, where some pairs inside are masked, an exact boolean mask. Each item is one dense
attention call over the gathered rows, so a query row appears in at most one item per call and its result is
final for these keys: ``(out, lse)`` are scattered, not merged. Rows in no item get ``out = 0`` and
``lse = -inf`` (they contribute nothing to a later log-sum-exp merge).

Kernels: unmasked items use the LSE backend of ``backends.py``; masked items use the CPU flash kernel with an
additive mask (``_scaled_dot_product_flash_attention_for_cpu`` takes a float mask and returns the LSE), the
CUDA memory-efficient kernel with a bias, or fp32/fp64 math for ``backend="math"``. Fully masked rows are set to
``out = 0, lse = -inf`` explicitly (the CPU kernel reports ``lse = 0`` for them).

Measured on CPU (torch 2.13, see ``benchmarks/sparse_attention.py``): ``flex_attention`` compiled on CPU cannot
return the LSE ("torch.compile on CPU only supports inference and `return_lse` is not supported yet") and, without
it, ran slower than dense SDPA at 67% block sparsity (S=4096: 0.18 s vs 0.13 s, after a 26 s compile); eager
``flex_attention`` materialises the full score matrix (3.4 s). Hence this gather-and-call kernel.

This module imports nothing from the rest of vidpar.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .backends import attention_with_lse


@dataclass(frozen=True)
class SparseWork:
    """One query block and its kept keys.

    Attributes:
        q_index: ``[n]`` int64 rows of ``q``.
        k_index: ``[m]`` int64 rows of ``k``/``v``.
        keep: ``[n, m]`` bool (True = attend), or None when every pair is kept.
        bias: ``[n, m]`` additive mask (0 / -inf) in the attention dtype, or None; built once by ``prepared`` so
            repeated calls do not rebuild it.
        empty_rows: ``[n]`` bool, rows with no kept key (set by ``prepared``).
    """

    q_index: torch.Tensor
    k_index: torch.Tensor
    keep: torch.Tensor | None = None
    bias: torch.Tensor | None = None
    empty_rows: torch.Tensor | None = None

    @property
    def pairs(self) -> int:
        """Query-key pairs this item computes (its FLOPs are ``4 * pairs * D`` per head)."""
        return self.q_index.numel() * self.k_index.numel()

    def prepared(self, device: torch.device, dtype: torch.dtype) -> "SparseWork":
        """This item on ``device`` with its additive mask built for ``dtype`` attention."""
        if self.keep is None:
            return SparseWork(self.q_index.to(device), self.k_index.to(device))
        keep = self.keep.to(device)
        bias = torch.zeros(keep.shape, dtype=dtype, device=device).masked_fill_(~keep, float("-inf"))
        return SparseWork(self.q_index.to(device), self.k_index.to(device), keep, bias, ~keep.any(dim=1))


def _acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def _bhsd(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(1, 2)


def masked_attention_with_lse(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    keep: torch.Tensor,
    backend: str = "auto",
    bias: torch.Tensor | None = None,
    empty_rows: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention restricted by a token mask.

    Args:
        q: ``[B, n, H, D]``; k: ``[B, m, H, D]``; v: ``[B, m, H, Dv]``; keep: ``[n, m]`` bool.
        backend: ``"math"`` for the fp32/fp64 reference, anything else picks the device's masked kernel.
        bias, empty_rows: ``keep`` as an additive mask in q's dtype and its rows with no kept key, if already
            built (see ``SparseWork.prepared``).
    Returns:
        ``out [B, n, H, Dv]`` in q's dtype, ``lse [B, H, n]`` fp32 (fp64 for fp64); rows with no kept key give
        ``out = 0`` and ``lse = -inf``.
    """
    b, n, h, _ = q.shape
    if min(b, n, h, k.shape[1]) == 0:  # nothing to compute (kernels may not accept empty dims)
        lse = torch.full((b, h, n), float("-inf"), dtype=_acc_dtype(q.dtype), device=q.device)
        return q.new_zeros(b, n, h, v.shape[-1]), lse
    if empty_rows is None:
        empty_rows = ~keep.any(dim=1)  # [n]
    if backend == "math" or q.device.type not in ("cpu", "cuda"):
        out, lse = _masked_math(q, k, v, keep)
    elif q.device.type == "cpu":
        if bias is None or bias.dtype != q.dtype:
            bias = torch.zeros(keep.shape, dtype=q.dtype, device=q.device).masked_fill_(~keep, float("-inf"))
        o, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
            _bhsd(q), _bhsd(k), _bhsd(v), dropout_p=0.0, is_causal=False, attn_mask=bias
        )
        out, lse = _bhsd(o), lse.to(_acc_dtype(q.dtype))
    elif q.dtype == torch.float64:
        out, lse = _masked_math(q, k, v, keep)
    else:  # CUDA memory-efficient kernel with an additive bias (its last dim padded to a multiple of 16)
        m = keep.shape[1]
        m_pad = -(-m // 16) * 16
        bias = torch.full((n, m_pad), float("-inf"), dtype=q.dtype, device=q.device)
        bias[:, :m].masked_fill_(keep, 0.0)
        bias = bias[:, :m].expand(q.shape[0], q.shape[2], n, m)
        res = torch.ops.aten._scaled_dot_product_efficient_attention(
            _bhsd(q), _bhsd(k), _bhsd(v), bias, True, dropout_p=0.0, is_causal=False
        )
        out, lse = _bhsd(res[0]), res[1][..., :n].float()
    if bool(empty_rows.any()):
        out = out.masked_fill(empty_rows[None, :, None, None], 0.0)
        lse = lse.masked_fill(empty_rows[None, None, :], float("-inf"))
    return out, lse


def _masked_math(q, k, v, keep):
    acc = _acc_dtype(q.dtype)
    logits = torch.einsum("bqhd,bkhd->bhqk", q.to(acc), k.to(acc)) / math.sqrt(q.shape[-1])
    logits = logits.masked_fill(~keep, float("-inf"))
    lse = torch.logsumexp(logits, dim=-1)
    probs = torch.exp(logits - lse.unsqueeze(-1)).nan_to_num(0.0)
    out = torch.einsum("bhqk,bkhd->bqhd", probs, v.to(acc))
    return out.to(q.dtype), lse


def block_sparse_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    works: list[SparseWork],
    backend: str = "auto",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention of ``q`` over ``k``/``v`` computed only on the given work items.

    Args:
        q: ``[B, Sq, H, D]``; k: ``[B, Sk, H, D]``; v: ``[B, Sk, H, Dv]``.
        works: items with disjoint ``q_index`` sets (rows of q) and their key rows / masks.
        backend: LSE backend for unmasked items (see ``backends.backend_specs``) or ``"auto"``; ``"math"`` also
            makes masked items use the math reference.
    Returns:
        ``out [B, Sq, H, Dv]`` in q's dtype and ``lse [B, H, Sq]`` fp32 (fp64 for fp64), natural log; rows in no
        item (or with every key masked) have ``out = 0`` and ``lse = -inf``.
    """
    b, sq, h, _ = q.shape
    out = q.new_zeros(b, sq, h, v.shape[-1])
    lse = torch.full((b, h, sq), float("-inf"), dtype=_acc_dtype(q.dtype), device=q.device)
    if h == 0:
        return out, lse
    for w in works:
        if w.q_index.numel() == 0 or w.k_index.numel() == 0:
            continue
        qs = q.index_select(1, w.q_index)
        ks, vs = k.index_select(1, w.k_index), v.index_select(1, w.k_index)
        if w.keep is None:
            o, l = attention_with_lse(qs, ks, vs, backend)
        else:
            o, l = masked_attention_with_lse(qs, ks, vs, w.keep, backend, w.bias, w.empty_rows)
        out.index_copy_(1, w.q_index, o.to(out.dtype))
        lse.index_copy_(2, w.q_index, l.to(lse.dtype))
    return out, lse
