"""Where the Wan DiT is split for sequence parallelism (applied by ``vidpar.parallelize``).

Tokens are split right after the patch embedding (with the RoPE table and per-token timesteps in step), every
self-attention runs sequence-parallel, and the head's output is gathered before unpatchify. Everything between is
per-token, so the model code is unchanged.
"""

from __future__ import annotations

from vidpar.parallel.plan import GatherOutput, ParallelPlan, SequenceParallel, ShardInput, ShardOutput


def wan_transformer_plan() -> ParallelPlan:
    return {
        "patch_embedding": ShardOutput(dim=1),  # [B, S, dim]
        "rope": ShardOutput(dim=1),  # (cos, sin) [1, S, 1, head_dim/2]
        "time_embedder": ShardInput(arg=0, dim=1, only_ndim=2),  # per-token timesteps [B, S] (TI2V)
        "blocks.*.self_attn.attn_op": SequenceParallel(),
        "head": GatherOutput(dim=1),  # [B, S, C_out * patch volume]
    }
