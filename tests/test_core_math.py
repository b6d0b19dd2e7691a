"""Pure math of the core, no process group: split rule, LSE merge, local backends, config validation."""

from __future__ import annotations

import pytest
import torch

from vidpar.kernels import attention_plain, attention_with_lse, available_backends, resolve_backend
from vidpar.parallel import ParallelConfig, init_parallel, split_offsets, split_sizes
from vidpar.parallel.lse import PartialAttention


@pytest.mark.parametrize("length,parts", [(0, 1), (1, 4), (3, 4), (64, 4), (1001, 4), (12, 8), (7, 3)])
def test_split_sizes(length, parts):
    sizes = split_sizes(length, parts)
    assert len(sizes) == parts and sum(sizes) == length
    assert max(sizes) - min(sizes) <= 1
    assert sizes == sorted(sizes, reverse=True)  # the extra items go to the first ranks
    assert split_offsets(length, parts)[-1] == length


def test_split_sizes_rejects_bad_parts():
    with pytest.raises(ValueError):
        split_sizes(3, 0)


def _ref_with_lse(q, k, v):
    logits = torch.einsum("bqhd,bkhd->bhqk", q.double(), k.double()) / q.shape[-1] ** 0.5
    lse = torch.logsumexp(logits, -1)
    return torch.einsum("bhqk,bkhd->bqhd", logits.softmax(-1), v.double()), lse


@pytest.mark.parametrize("backend", available_backends("cpu"))
def test_cpu_backends_match_reference(backend):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, n, 3, 16, generator=g) for n in (7, 11, 11))
    ref_out, ref_lse = _ref_with_lse(q, k, v)
    spec = resolve_backend(backend, q.device, q.dtype, need_lse=False)
    out = attention_plain(q, k, v, backend)
    assert ((out.double() - ref_out).abs().max() / ref_out.abs().max()) < 1e-5
    if spec.has_lse:
        out, lse = attention_with_lse(q, k, v, backend)
        assert lse.shape == (2, 3, 7) and lse.dtype == torch.float32
        assert (lse.double() - ref_lse).abs().max() < 1e-5
        assert ((out.double() - ref_out).abs().max() / ref_out.abs().max()) < 1e-5


def test_lse_merge_equals_attention_over_union():
    g = torch.Generator().manual_seed(1)
    q = torch.randn(1, 5, 2, 8, generator=g) * 3  # large logits stress the merge
    blocks = [(torch.randn(1, n, 2, 8, generator=g) * 3, torch.randn(1, n, 2, 8, generator=g)) for n in (4, 1, 9)]
    acc = PartialAttention()
    for k, v in blocks:
        acc.merge(*attention_with_lse(q, k, v, "math"))
    ref, _ = _ref_with_lse(q, torch.cat([b[0] for b in blocks], 1), torch.cat([b[1] for b in blocks], 1))
    assert (acc.result(torch.float32).double() - ref).abs().max() / ref.abs().max() < 1e-6


def test_empty_key_block_has_minus_inf_lse():
    q = torch.randn(1, 3, 2, 8)
    out, lse = attention_with_lse(q, q[:, :0], q[:, :0])
    assert torch.all(out == 0) and torch.all(torch.isinf(lse)) and torch.all(lse < 0)


def test_backend_refusals():
    q = torch.randn(1, 2, 1, 8)
    with pytest.raises(ValueError, match="log-sum-exp"):
        resolve_backend("sdpa", q.device, q.dtype, need_lse=True)
    with pytest.raises(ValueError, match="unknown attention backend"):
        resolve_backend("nope", q.device, q.dtype, need_lse=False)
    with pytest.raises(ValueError, match="does not run on cpu"):
        resolve_backend("sdpa_flash", q.device, torch.bfloat16, need_lse=True)
    assert resolve_backend("auto", q.device, q.dtype, need_lse=True).name == "sdpa_cpu"
    assert resolve_backend("auto", q.device, q.dtype, need_lse=False).name == "sdpa"


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2", None])
def test_config_rejects_non_positive_ints(bad):
    for axis in ("ulysses", "ring", "cfg"):
        with pytest.raises(ValueError, match=axis):
            ParallelConfig(**{axis: bad})


def test_config_world_size_and_immutability():
    cfg = ParallelConfig(ulysses=2, ring=3, cfg=2)
    assert cfg.world_size == 12 and cfg.sp_degree == 6 and cfg.mesh_shape() == (2, 3, 2)
    with pytest.raises(Exception):
        cfg.ulysses = 4  # frozen


def test_init_parallel_single_process_without_distributed(monkeypatch):
    import torch.distributed as dist

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    ctx = init_parallel(ParallelConfig())
    assert not dist.is_initialized()
    assert ctx.world_size == 1 and ctx.sp_size == 1 and ctx.mesh is None
    x = torch.randn(2, 5, 3)
    assert torch.equal(ctx.gather_sequence(ctx.shard_sequence(x, 1), 1), x)
    assert ctx.comm_stats() == {}


def test_init_parallel_rejects_wrong_world_size_before_touching_distributed(monkeypatch):
    import torch.distributed as dist

    monkeypatch.setenv("WORLD_SIZE", "1")
    with pytest.raises(ValueError, match="needs 2 ranks"):
        init_parallel(ParallelConfig(ulysses=2))
    assert not dist.is_initialized()
