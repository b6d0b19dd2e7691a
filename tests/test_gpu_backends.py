"""CUDA attention backends return the right output and log-sum-exp (skipped without a CUDA device)."""

from __future__ import annotations

import pytest
import torch

from vidpar.kernels import attention_plain, attention_with_lse, available_backends, backend_specs

pytestmark = pytest.mark.gpu

TOL = {torch.float32: 1e-5, torch.float16: 5e-3, torch.bfloat16: 2e-2}


def _reference(q, k, v):
    logits = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) / q.shape[-1] ** 0.5
    return torch.einsum("bhqk,bkhd->bqhd", logits.softmax(-1), v.double()), torch.logsumexp(logits, -1)


@pytest.mark.parametrize("name", [n for n, s in backend_specs().items() if "cuda" in s.devices])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cuda_backend_matches_reference(name, dtype):
    spec = backend_specs()[name]
    if name not in available_backends("cuda") or dtype not in spec.dtypes:
        pytest.skip(f"{name} not installed or no {dtype}")
    g = torch.Generator(device="cuda").manual_seed(0)
    q, k, v = (torch.randn(2, n, 12, 128, device="cuda", generator=g, dtype=dtype) for n in (333, 517, 517))
    ref_out, ref_lse = _reference(q, k, v)
    out = attention_plain(q, k, v, name)
    assert ((out.double() - ref_out).abs().max() / ref_out.abs().max()).item() <= TOL[dtype]
    if spec.has_lse:
        out, lse = attention_with_lse(q, k, v, name)
        assert lse.shape == (2, 12, 333)
        assert ((out.double() - ref_out).abs().max() / ref_out.abs().max()).item() <= TOL[dtype]
        lse_tol = 1e-4 if dtype == torch.float32 else 1e-2
        assert (lse.double() - ref_lse).abs().max().item() <= lse_tol
