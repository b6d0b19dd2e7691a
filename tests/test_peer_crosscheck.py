"""vidpar's sequence-parallel attention agrees with independent peers on the same shards (gloo, worlds 2 and 4).

- DeepSpeed-Ulysses (``deepspeed.sequence.layer.DistributedAttention``), when ``deepspeed`` is installed.
  ``deepspeed.init_distributed`` wraps the pool's existing gloo process group (it does not create another one).
- yunchang's ``LongContextAttention`` (Ulysses, ring ``basic_pytorch``, and 2x2 hybrid at world 4), when
  ``yunchang`` is installed. Peer workaround (test-only, never in vidpar): yunchang's torch backend calls the
  CUDA-only op ``aten._scaled_dot_product_flash_attention``; ``_yunchang_on_cpu`` points yunchang's module-level
  alias at the CPU op ``aten._scaled_dot_product_flash_attention_for_cpu`` (same ``(out, lse)`` contract).

Shapes are ones both peers support (heads and tokens divisible by the world size); where the peers fail
(uneven heads or tokens) is measured by ``benchmarks/peers_attention.py``, not asserted here. Every output is
also checked against fp64 attention on the full tensors. Tolerance: fp32 relative 1e-5.
"""

from __future__ import annotations

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from vidpar.parallel import ParallelConfig, attention

TOL = 1e-5
SHAPE = dict(batch=2, seq=96, heads=8, head_dim=16)
FIRST_CALL_TIMEOUT_S = 300.0  # deepspeed.init_distributed JIT-builds a C++ shm op on CPU the first time


def _qkv(world: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Full fp32 q, k, v ``[B, S, H, D]`` (same on every rank) and fp64 attention of them ``[B, S, H, D]``."""
    g = torch.Generator().manual_seed(7 + world)
    b, s, h, d = SHAPE["batch"], SHAPE["seq"], SHAPE["heads"], SHAPE["head_dim"]
    qkv = [torch.randn(b, s, h, d, generator=g) for _ in range(3)]
    ref = F.scaled_dot_product_attention(*(t.double().transpose(1, 2) for t in qkv)).transpose(1, 2)
    return qkv, ref


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def _local_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``[B, S, h, D]`` -> ``[B, S, h, D]`` plain SDPA (DeepSpeed's local attention)."""
    return F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2)).transpose(1, 2)


class _LocalAttention(torch.nn.Module):
    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        return _local_attention(q, k, v)


@torch.no_grad()
def deepspeed_task(env) -> dict[str, float]:
    import deepspeed
    import torch.distributed as dist
    from deepspeed.sequence.layer import DistributedAttention

    deepspeed.init_distributed(dist_backend="gloo")  # no-op after the first call in this worker
    world = env.world_size
    ctx = env.context(ParallelConfig(ulysses=world))
    qkv, ref = _qkv(world)
    shards = [t.chunk(world, dim=1)[env.rank].contiguous() for t in qkv]  # S divisible: same split as vidpar's
    assert torch.equal(shards[0], ctx.shard_sequence(qkv[0], dim=1))
    ds = DistributedAttention(_LocalAttention(), dist.group.WORLD, scatter_idx=2, gather_idx=1)(*shards, batch_dim_idx=0)
    ours = attention(*shards, ctx)
    ref_local = ref.chunk(world, dim=1)[env.rank]
    return {"vidpar_vs_deepspeed": _rel(ours, ds), "deepspeed_vs_ref": _rel(ds, ref_local), "vidpar_vs_ref": _rel(ours, ref_local)}


def _yunchang_on_cpu() -> None:
    """Documented peer workaround (see module docstring); touches yunchang only."""
    import yunchang.kernels.attention as yka

    yka._scaled_dot_product_flash_attention = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu


@torch.no_grad()
def yunchang_task(env, ulysses: int, ring: int) -> dict[str, float]:
    from yunchang import LongContextAttention, set_seq_parallel_pg
    from yunchang.kernels import AttnType

    _yunchang_on_cpu()
    world = env.world_size
    set_seq_parallel_pg(ulysses, ring, env.rank, world)  # yunchang's groups live in its global; the layer copies them
    layer = LongContextAttention(ring_impl_type="basic_pytorch", attn_type=AttnType.TORCH_FLASH)
    ctx = env.context(ParallelConfig(ulysses=ulysses, ring=ring))
    qkv, ref = _qkv(world)
    shards = [t.chunk(world, dim=1)[env.rank].contiguous() for t in qkv]  # yunchang's basic_extract_local
    assert torch.equal(shards[0], ctx.shard_sequence(qkv[0], dim=1))
    theirs = layer(*shards)
    ours = attention(*shards, ctx)
    ref_local = ref.chunk(world, dim=1)[env.rank]
    return {"vidpar_vs_yunchang": _rel(ours, theirs), "yunchang_vs_ref": _rel(theirs, ref_local), "vidpar_vs_ref": _rel(ours, ref_local)}


def _check(results: list[dict[str, float]], label: str) -> None:
    for rank, errs in enumerate(results):
        for name, err in errs.items():
            assert err <= TOL, f"{label} rank {rank}: {name} rel err {err:.2e}"


@pytest.mark.parametrize("world", [2, 4])
def test_ulysses_matches_deepspeed(pools, world):
    pytest.importorskip("deepspeed")
    _check(pools(world).run(deepspeed_task, timeout=FIRST_CALL_TIMEOUT_S), f"world {world}")


@pytest.mark.skipif(importlib.util.find_spec("yunchang") is None, reason="yunchang not installed")
@pytest.mark.parametrize("world,ulysses,ring", [(2, 2, 1), (2, 1, 2), (4, 4, 1), (4, 1, 4), (4, 2, 2)])
def test_matches_yunchang(pools, world, ulysses, ring):
    _check(pools(world).run(yunchang_task, ulysses, ring), f"world {world} ulysses={ulysses} ring={ring}")
