"""Graph breaks of the whole parallelized DiT under ``torch._dynamo.explain``, per mesh and family (CPU/gloo).

    python benchmarks/graph_breaks.py                              # one process
    torchrun --nproc-per-node 2 benchmarks/graph_breaks.py         # ulysses=2, ring=2
    torchrun --nproc-per-node 4 benchmarks/graph_breaks.py         # ulysses=4, ring=4, 2x2

Tiny 2-layer models (Wan: 3 heads, 45 tokens; HunyuanVideo-1.5: 3 heads, 105 video + 18 joint tokens) with the
tests' seeded weights. ``explain`` traces with dynamo only (no code generation), so it shows where a compile of
the whole model would split; the regional compile of ``vidpar.compile`` compiles the blocks alone. It uses only
public APIs, so it runs against older vidpar versions too (for before/after counts: ``VIDPAR_FROM_PATH=1
PYTHONPATH=/path/to/old/checkout``).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import torch
import torch.distributed as dist

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))  # the tests' tiny models
if os.environ.get("VIDPAR_FROM_PATH") != "1":  # VIDPAR_FROM_PATH=1: the vidpar on PYTHONPATH (e.g. an older one)
    sys.path.insert(0, str(REPO))

import vidpar  # noqa: E402
from vidpar.parallel import ParallelConfig, init_parallel  # noqa: E402

MESHES = {1: [(1, 1, 1)], 2: [(2, 1, 1), (1, 2, 1)], 4: [(4, 1, 1), (1, 4, 1), (2, 2, 1)]}


def models():
    from hy15_reference import make_inputs as hy15_inputs
    from test_hy15_parallel import build_model as build_hy15
    from test_wan_parallel import build_model as build_wan, make_inputs as wan_inputs

    wan = build_wan("t2v_3heads")
    yield "wan", wan, wan_inputs(wan, "t2v_3heads"), {}
    hy = build_hy15("3heads")
    yield "hy15", hy, (), hy15_inputs(hy.config, grid=(3, 5, 7), batch=1, text_valid=(13,), glyph_valid=(4,),
                                      image_tokens=5, seed=1)


@torch.no_grad()
def main() -> None:
    torch.set_num_threads(1)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    for degrees in MESHES[world]:
        ctx = init_parallel(ParallelConfig(*degrees))
        for family, model, args, kwargs in models():
            vidpar.parallelize(model, ctx)
            torch._dynamo.reset()
            t0 = time.perf_counter()
            ex = torch._dynamo.explain(model)(*args, **kwargs)
            dt = time.perf_counter() - t0
            vidpar.unparallelize(model)
            if ctx.rank == 0:
                reasons = sorted({str(b.reason).splitlines()[0][:60] for b in ex.break_reasons})
                print(f"{family:5s} ulysses={degrees[0]} ring={degrees[1]}: graphs {ex.graph_count:2d}, "
                      f"breaks {ex.graph_break_count:2d}  ({dt:5.1f} s) {'; '.join(reasons)}", flush=True)
    if dist.is_initialized():
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
