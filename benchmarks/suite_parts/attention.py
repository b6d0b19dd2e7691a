"""Attention TFLOP/s per backend, bf16 GEMM TFLOP/s and memory bandwidth (the planner's efficiency inputs)."""

from __future__ import annotations

import torch

from vidpar.kernels import available_backends, backend_specs

from .common import Budget, rel_err, skipped, timed


def _candidates(device: torch.device, dtype: torch.dtype, tokens: int) -> list[str]:
    """Every installed backend for this device and dtype; ``math`` (O(S^2) memory) only for small shapes."""
    specs = backend_specs()
    names = [n for n in available_backends(device.type) if dtype in specs[n].dtypes]
    return [n for n in names if n != "math" or tokens <= 4096]


def attention_tflops(shapes: list[tuple[str, int, int, int]], dtype: torch.dtype, device: torch.device,
                     repeats: int, budget: Budget) -> list[dict]:
    """For each ``(name, heads, head_dim, tokens)`` and backend: non-causal self-attention over ``tokens`` queries
    and keys, ``4 * S^2 * H * D`` FLOPs per call. Backends with a log-sum-exp are timed through that kernel (the
    one ring attention and joint tokens use); ``sdpa`` is torch's own kernel choice without one. ``err``: max
    relative difference to ``sdpa``'s output."""
    rows = []
    specs = backend_specs()
    for name, heads, head_dim, tokens in shapes:
        g = torch.Generator(device=device).manual_seed(0)
        q, k, v = (torch.randn(1, tokens, heads, head_dim, device=device, dtype=dtype, generator=g)
                   for _ in range(3))
        flops = 4 * tokens * tokens * heads * head_dim
        ref = specs["sdpa"].plain_fn(q, k, v)
        for backend in _candidates(device, dtype, tokens):
            row = {"shape": name, "heads": heads, "head_dim": head_dim, "tokens": tokens, "backend": backend,
                   "dtype": str(dtype).replace("torch.", "")}
            if not budget.allows(30):
                rows.append({**row, **skipped("time budget")})
                continue
            spec = specs[backend]
            fn = (lambda: spec.lse_fn(q, k, v)[0]) if spec.has_lse and backend != "sdpa" else \
                (lambda: spec.plain_fn(q, k, v))
            try:
                err = rel_err(fn(), ref)
                t = timed(fn, device, repeats)
            except Exception as e:  # noqa: BLE001 - a kernel that does not run here is a result too
                rows.append({**row, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"})
                continue
            rows.append({**row, **t, "tflops": _sig(flops / (t["median_ms"] * 1e-3) / 1e12),
                         "err_vs_sdpa": err})
        del q, k, v, ref
    return rows


def gemm_tflops(shapes: list[tuple[int, int, int]], dtype: torch.dtype, device: torch.device, repeats: int,
                budget: Budget) -> list[dict]:
    """``[M, K] @ [K, N]`` at the DiT's projection shapes: ``2 M K N`` FLOPs per call."""
    rows = []
    for m, k, n in shapes:
        if not budget.allows(10):
            rows.append({"m": m, "k": k, "n": n, **skipped("time budget")})
            continue
        g = torch.Generator(device=device).manual_seed(0)
        a = torch.randn(m, k, device=device, dtype=dtype, generator=g)
        b = torch.randn(k, n, device=device, dtype=dtype, generator=g)
        t = timed(lambda: a @ b, device, repeats)
        rows.append({"m": m, "k": k, "n": n, "dtype": str(dtype).replace("torch.", ""), **t,
                     "tflops": _sig(2 * m * k * n / (t["median_ms"] * 1e-3) / 1e12)})
    return rows


def copy_bandwidth(nbytes: int, device: torch.device, repeats: int) -> dict:
    """``dst.copy_(src)`` of ``nbytes``: read + write, ``2 * nbytes`` per call."""
    src = torch.empty(nbytes // 2, dtype=torch.bfloat16, device=device).normal_()
    dst = torch.empty_like(src)
    t = timed(lambda: dst.copy_(src), device, repeats)
    return {"bytes": nbytes, **t, "gbs": _sig(2 * nbytes / (t["median_ms"] * 1e-3) / 1e9)}


def _sig(x: float) -> float:
    """Four significant digits (tiny smoke numbers stay non-zero)."""
    return float(f"{x:.4g}")
