"""Where the HunyuanVideo-1.5 DiT is split for sequence parallelism (applied by ``vidpar.parallelize``).

Video tokens are split right after the patch embedding (with the RoPE table in step), every joint attention runs
sequence-parallel with the text tokens as joint tokens (full on every rank, never sent through the all-to-all;
their queries are computed once in the group), and the final layer's output is gathered before unpatchify. The
text stream, the refiner and the timestep embeddings stay whole on every rank; the model code is unchanged.
"""

from __future__ import annotations

from vidpar.parallel.plan import GatherOutput, ParallelPlan, SequenceParallel, ShardOutput


def hy15_transformer_plan() -> ParallelPlan:
    return {
        "img_in": ShardOutput(dim=1),  # [B, S, dim]
        "rope": ShardOutput(dim=1),  # (cos, sin) [1, S, 1, head_dim/2]
        "blocks.*.attn_op": SequenceParallel(),  # joint attention: video split, text tokens joint
        "final_layer": GatherOutput(dim=1),  # [B, S, C_out * patch volume]
    }
