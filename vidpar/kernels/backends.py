"""Local (single-device) attention backends.

Every backend takes ``q [B, Sq, H, D]``, ``k [B, Sk, H, D]``, ``v [B, Sk, H, Dv]`` and computes non-causal
softmax attention with scale ``1/sqrt(D)``. Backends that can return the log-sum-exp of the attention logits
(natural log, fp32 — float64 for float64 inputs — ``[B, H, Sq]``) say so in ``BackendSpec.has_lse``; ring attention needs it to merge partial
results, and refuses backends that cannot give a correct one.

This module imports nothing from the rest of vidpar.
"""

from __future__ import annotations

import importlib.util
import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from . import ops  # noqa: F401 - registers torch.ops.vidpar.attention / attention_lse

LseFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], "tuple[torch.Tensor, torch.Tensor]"]


@dataclass(frozen=True)
class BackendSpec:
    """What a backend can do. ``lse_fn`` is None for backends that cannot return a log-sum-exp."""

    name: str
    devices: tuple[str, ...]
    dtypes: tuple[torch.dtype, ...]
    has_lse: bool
    lse_fn: LseFn | None
    plain_fn: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    requires: str | None = None  # importable module the backend needs

    def installed(self) -> bool:
        return self.requires is None or _importable(self.requires)


@torch.compiler.assume_constant_result
def _importable(module: str) -> bool:
    """Whether ``module`` can be imported (a constant to ``torch.compile``: it never traces the import machinery)."""
    return importlib.util.find_spec(module) is not None


def _bhsd(x: torch.Tensor) -> torch.Tensor:
    return x.transpose(1, 2)


def _math_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Reference attention in fp32 (fp64 for fp64 inputs): exact LSE on any device, O(Sq*Sk) memory."""
    acc = torch.float64 if q.dtype == torch.float64 else torch.float32
    scale = 1.0 / math.sqrt(q.shape[-1])
    logits = torch.einsum("bqhd,bkhd->bhqk", q.to(acc), k.to(acc)) * scale
    lse = torch.logsumexp(logits, dim=-1)
    probs = torch.exp(logits - lse.unsqueeze(-1))
    out = torch.einsum("bhqk,bkhd->bqhd", probs, v.to(acc))
    return out.to(q.dtype), _lse_dtype(lse, q)


def _lse_dtype(lse: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    return lse.double() if q.dtype == torch.float64 else lse.float()


def _math_plain(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return _math_lse(q, k, v)[0]


def _sdpa_plain(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return _bhsd(F.scaled_dot_product_attention(_bhsd(q), _bhsd(k), _bhsd(v)))


def _sdpa_cpu_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    out, lse = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu(
        _bhsd(q), _bhsd(k), _bhsd(v), dropout_p=0.0, is_causal=False
    )
    return _bhsd(out), _lse_dtype(lse, q)


def _sdpa_flash_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    res = torch.ops.aten._scaled_dot_product_flash_attention(
        _bhsd(q), _bhsd(k), _bhsd(v), dropout_p=0.0, is_causal=False, return_debug_mask=False
    )
    return _bhsd(res[0]), res[1].float()


def _sdpa_efficient_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    res = torch.ops.aten._scaled_dot_product_efficient_attention(
        _bhsd(q), _bhsd(k), _bhsd(v), None, True, dropout_p=0.0, is_causal=False
    )
    # Older kernels pad the LSE's sequence dim to a multiple of 32.
    return _bhsd(res[0]), res[1][..., : q.shape[1]].float()


def _sdpa_cudnn_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    res = torch.ops.aten._scaled_dot_product_cudnn_attention(
        _bhsd(q), _bhsd(k), _bhsd(v), None, True, 0.0, False, False
    )
    lse = res[1]
    if lse.dim() == 4:  # some versions return [B, H, S, 1]
        lse = lse.squeeze(-1)
    return _bhsd(res[0]), lse.float()


def _flash_attn_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from flash_attn import flash_attn_func  # optional extra

    out, lse, _ = flash_attn_func(q, k, v, causal=False, return_attn_probs=True)
    return out, lse.float()


def _flash_attn_plain(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    from flash_attn import flash_attn_func

    return flash_attn_func(q, k, v, causal=False)


def _flash_attn3_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from flash_attn_interface import flash_attn_func  # FlashAttention-3 (Hopper build), optional

    try:
        res = flash_attn_func(q, k, v, causal=False, return_attn_probs=True)
    except TypeError:  # early FA3 releases always return (out, lse) and take no return_attn_probs
        res = flash_attn_func(q, k, v, causal=False)
    return res[0], res[1].float()


def _flash_attn3_plain(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    from flash_attn_interface import flash_attn_func

    res = flash_attn_func(q, k, v, causal=False)
    return res[0] if isinstance(res, tuple) else res


def _xformers_lse(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    from xformers.ops import fmha  # optional extra

    out, lse = fmha.memory_efficient_attention_forward_requires_grad(q, k, v)
    return out, lse[..., : q.shape[1]].float()


def _xformers_plain(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    from xformers.ops import memory_efficient_attention

    return memory_efficient_attention(q, k, v)


_FLOATS = (torch.float32, torch.float16, torch.bfloat16)
_HALF = (torch.float16, torch.bfloat16)


def backend_specs() -> dict[str, BackendSpec]:
    """All known backends by name (installed or not)."""
    specs = [
        # Plain SDPA lets torch pick the fastest kernel but never exposes the LSE.
        BackendSpec("sdpa", ("cpu", "cuda"), _FLOATS + (torch.float64,), False, None, _sdpa_plain),
        BackendSpec("math", ("cpu", "cuda"), _FLOATS + (torch.float64,), True, _math_lse, _math_plain),
        BackendSpec("sdpa_cpu", ("cpu",), _FLOATS + (torch.float64,), True, _sdpa_cpu_lse, _sdpa_plain),
        BackendSpec("sdpa_flash", ("cuda",), _HALF, True, _sdpa_flash_lse, _sdpa_plain),
        BackendSpec("sdpa_efficient", ("cuda",), _FLOATS, True, _sdpa_efficient_lse, _sdpa_plain),
        BackendSpec("sdpa_cudnn", ("cuda",), _HALF, True, _sdpa_cudnn_lse, _sdpa_plain),
        BackendSpec("flash_attn", ("cuda",), _HALF, True, _flash_attn_lse, _flash_attn_plain, "flash_attn"),
        BackendSpec("xformers", ("cuda",), _FLOATS, True, _xformers_lse, _xformers_plain, "xformers"),
        BackendSpec("flash_attn3", ("cuda",), _HALF, True, _flash_attn3_lse, _flash_attn3_plain,
                    "flash_attn_interface"),
    ]
    return {s.name: s for s in specs}


def available_backends(device: str = "cpu") -> list[str]:
    """Names of the backends installed and usable on ``device`` ("cpu" or "cuda")."""
    return [s.name for s in backend_specs().values() if device in s.devices and s.installed()]


def resolve_backend(name: str, device: torch.device, dtype: torch.dtype, need_lse: bool) -> BackendSpec:
    """Pick the backend called ``name`` (or the best one for ``"auto"``) and check it can serve this call.

    Raises ``ValueError`` with the reason when the backend is unknown, not installed, does not run on this
    device or dtype, or cannot return the log-sum-exp that ring attention needs.
    """
    specs = backend_specs()
    dev = device.type
    if name == "auto":
        if not need_lse:
            return specs["sdpa"]
        order = ["sdpa_cpu"] if dev == "cpu" else ["flash_attn", "sdpa_flash", "sdpa_efficient"]
        for cand in order + ["math"]:
            s = specs[cand]
            if dev in s.devices and dtype in s.dtypes and s.installed():
                return s
    if name not in specs:
        raise ValueError(f"unknown attention backend {name!r}; known: {sorted(specs)} or 'auto'")
    s = specs[name]
    if not s.installed():
        raise ValueError(f"attention backend {name!r} needs the '{s.requires}' package, which is not installed")
    if dev not in s.devices:
        raise ValueError(f"attention backend {name!r} does not run on {dev} (runs on {list(s.devices)})")
    if dtype not in s.dtypes:
        raise ValueError(f"attention backend {name!r} does not support {dtype} (supports {list(s.dtypes)})")
    if need_lse and not s.has_lse:
        raise ValueError(
            f"attention backend {name!r} cannot return a log-sum-exp, which ring attention and joint-token "
            f"merging need; use 'auto' or one of {[n for n, t in specs.items() if t.has_lse]}"
        )
    return s


def attention_with_lse(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Non-causal attention that also returns the log-sum-exp.

    Args:
        q: ``[B, Sq, H, D]``; k: ``[B, Sk, H, D]``; v: ``[B, Sk, H, Dv]``.
        backend: a name from ``backend_specs()`` or ``"auto"``.
    Returns:
        ``out [B, Sq, H, Dv]`` in q's dtype and ``lse [B, H, Sq]`` in fp32 (natural log). With ``Sk == 0``
        the output is zeros and the LSE is ``-inf`` (an empty block contributes nothing to a merge).
    """
    B, Sq, H, _ = q.shape
    if k.shape[1] == 0 or Sq == 0 or H == 0:
        out = q.new_zeros(B, Sq, H, v.shape[-1])
        lse_dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
        return out, torch.full((B, H, Sq), float("-inf"), device=q.device, dtype=lse_dtype)
    spec = resolve_backend(backend, q.device, q.dtype, need_lse=True)
    if torch.compiler.is_compiling():  # one opaque node with a fake implementation (see ``ops``)
        return torch.ops.vidpar.attention_lse(q, k, v, spec.name)
    return spec.lse_fn(q, k, v)  # type: ignore[misc]


def attention_plain(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, backend: str = "auto") -> torch.Tensor:
    """Non-causal attention, ``q [B, Sq, H, D]``, ``k/v [B, Sk, H, D]`` -> ``[B, Sq, H, D]``."""
    if q.shape[1] == 0 or q.shape[2] == 0:
        return q.new_zeros(*q.shape[:3], v.shape[-1])
    spec = resolve_backend(backend, q.device, q.dtype, need_lse=False)
    if torch.compiler.is_compiling():
        return torch.ops.vidpar.attention(q, k, v, spec.name)
    return spec.plain_fn(q, k, v)
