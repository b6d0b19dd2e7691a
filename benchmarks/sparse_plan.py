"""Sparse attention at the mission's sizes (modeled) and on the trained tiny model (measured).

``model``: the planner's best 8 x H100 layout for Wan2.1-T2V-14B at 720p x 81, 720p x 241 and 4K x 81 frames, dense
and with each pattern at its defaults (times from the cost model, ring bytes from the windowed schedule).
``adherence``: ``tiny-shapes`` held-out prompt adherence (the detector of ``tests/test_tiny_shapes.py``) with each
pattern at its defaults and with the tiles scaled to the 3 x 4 x 4 token grid of its 64x64 x 9 clips (the model
was trained dense; nothing is tuned to the patterns)::

    python benchmarks/sparse_plan.py model
    python benchmarks/sparse_plan.py adherence
"""

from __future__ import annotations

import argparse

PATTERNS = ("window", "radial", "svg")
CLIPS = (("720p x 81", 720, 1280, 81), ("720p x 241", 720, 1280, 241), ("4K x 81", 2160, 3840, 81))
# The tiny model's grid is 3 x 4 x 4 tokens: the papers' tiles (6x8x8, 1x1x128) cover it whole, i.e. dense.
SCALED = {"window": "window:tile=1x2x2,window=1x1x3", "radial": "radial:tile=1x2x2,min_width=4",
          "svg": "svg:tile=1x2x2,num_samples=16"}


def modeled() -> None:
    from vidpar.planner import make_request, plan_layouts

    print("| clip | attention | best layout | kept pairs | step (s) | total 50 steps (s) | ring GB/step | vs dense |")
    print("|---|---|---|---|---|---|---|---|")
    for label, h, w, f in CLIPS:
        base = None
        for pattern in (None,) + PATTERNS:
            req = make_request("wan2.1-t2v-14b", h, w, f, 8, 8, sparse=pattern)
            ok, _ = plan_layouts(req)
            if not ok:
                print(f"| {label} | {pattern or 'dense'} | (no feasible layout) | | | | | |")
                continue
            best = ok[0]
            base = base or best.total_time_s
            kept = f"{100 * req.sparse_costs().kept:.1f}%" if pattern else "100%"
            ring = best.comm_breakdown.get("ring", 0) / 1e9
            print(f"| {label} | {pattern or 'dense'} | u{best.ulysses} r{best.ring} c{best.cfg}"
                  f"{' fsdp' if best.fsdp else ''} | {kept} | {best.step_time_s:.2f} | {best.total_time_s:.0f} | "
                  f"{ring:.2f} | {base / best.total_time_s:.2f}x |")


def adherence() -> None:
    import numpy as np
    import torch

    from vidpar import Pipeline
    from vidpar.data.shapes import colour_ok, direction_ok, held_out_prompts

    torch.set_num_threads(2)
    pipe = Pipeline.from_pretrained("tiny-shapes")
    prompts = held_out_prompts()
    runs = [("dense", None)] + [(f"{p} (defaults)", p) for p in PATTERNS] + [(f"{p} (tiles 1x2x2)", s)
                                                                             for p, s in SCALED.items()]
    print("| attention | held-out adherence |")
    print("|---|---|")
    for label, spec in runs:
        ok = [colour_ok(fr := pipe.generate(p, seed=1000 + i, sparse_attention=spec).frames, c)
              and direction_ok(fr, c, d) for i, (p, c, _s, d) in enumerate(prompts)]
        print(f"| {label} | {sum(ok)}/{len(ok)} = {np.mean(ok):.1%} |")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("model", "adherence"))
    {"model": modeled, "adherence": adherence}[p.parse_args().what]()


if __name__ == "__main__":
    main()
