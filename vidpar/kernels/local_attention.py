"""The attention op that single-device model code calls.

Models call ``self.attn_op(q, k, v)`` with ``[B, S, H, D]`` tensors (joint-attention models add
``joint_q/k/v=``, the tokens attended together with the sequence). ``vidpar.parallelize`` swaps this submodule
for a sequence-parallel one through the model's sharding plan, so model code never changes.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from .backends import attention_plain


def project_output(res, out_proj: Callable[[torch.Tensor], torch.Tensor] | None, has_joint: bool):
    """``out_proj`` applied to an attention result: ``out`` or, with joint tokens, the first of ``(out, joint_out)``
    (the joint output is returned as it is)."""
    if out_proj is None:
        return res
    return (out_proj(res[0]), res[1]) if has_joint else out_proj(res)


class LocalAttention(nn.Module):
    """Non-causal softmax attention on one device.

    Args:
        backend: attention backend name (see ``vidpar.kernels.backend_specs``) or ``"auto"``.
    """

    def __init__(self, backend: str = "auto") -> None:
        super().__init__()
        self.backend = backend

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
        """q ``[B, Sq, H, D]``, k/v ``[B, Sk, H, D]`` -> ``[B, Sq, H, D]``.

        With joint tokens ``joint_q/k/v [B, T, H, D]`` (e.g. text in a joint-attention model) the queries
        ``[joint, q]`` attend to the keys ``[joint, k]`` in one call, and ``(out [B, Sq, H, D],
        joint_out [B, T, H, D])`` is returned: the contract of ``vidpar.parallel.attention``.
        """
        joint = (joint_q, joint_k, joint_v)
        if all(t is None for t in joint):
            return attention_plain(q, k, v, self.backend)
        if any(t is None for t in joint):
            raise ValueError("LocalAttention: give all of joint_q, joint_k, joint_v or none of them")
        t = joint_q.shape[1]
        out = attention_plain(torch.cat([joint_q, q], dim=1), torch.cat([joint_k, k], dim=1),
                              torch.cat([joint_v, v], dim=1), self.backend)
        return out[:, t:], out[:, :t]

    def attend(
        self,
        make_q: Callable[[], torch.Tensor],
        make_k: Callable[[], torch.Tensor],
        make_v: Callable[[], torch.Tensor],
        *,
        out_proj: Callable[[torch.Tensor], torch.Tensor] | None = None,
        joint_q: torch.Tensor | None = None,
        joint_k: torch.Tensor | None = None,
        joint_v: torch.Tensor | None = None,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        """``out_proj(self(make_q(), make_k(), make_v()))``: attention given its projections as functions.

        Models call this form so that a sequence-parallel replacement can overlap its all-to-alls with the
        projections (``vidpar.parallel.ulysses_overlap``); here it is the plain computation, in this order.
        ``out_proj`` must be per-token (``[B, n, H, Dv]`` -> ``[B, n, ...]``); with joint tokens the result is
        ``(out_proj(out), joint_out)``.
        """
        res = self(make_q(), make_k(), make_v(), joint_q=joint_q, joint_k=joint_k, joint_v=joint_v)
        return project_output(res, out_proj, joint_q is not None)

    def extra_repr(self) -> str:
        return f"backend={self.backend!r}"
