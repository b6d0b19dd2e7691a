"""A few-step, guidance-1.0 run against the 50-step CFG default on the same model and size: forwards and wall time.

Distilled LoRAs (lightx2v-style) are published for 4 steps at guidance 1.0 with the Euler sampler; the point is the
forward count (4 vs 100: one branch per step and 25x fewer steps), so any Wan model shows it. Run::

    python benchmarks/few_step.py --model tiny-shapes
    python benchmarks/few_step.py --model tiny-shapes --lora my_distill.safetensors   # with a real LoRA
"""

from __future__ import annotations

import argparse
import time

import torch

from vidpar import Pipeline


def run(pipe: Pipeline, prompt: str, **kw) -> tuple[int, float]:
    """``(DiT forwards, seconds)`` of one generation."""
    calls = []
    handle = pipe.comps.denoisers()[0].register_forward_pre_hook(lambda *_: calls.append(1))
    try:
        t0 = time.perf_counter()
        pipe.generate(prompt, **kw)
        return len(calls), time.perf_counter() - t0
    finally:
        handle.remove()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="tiny-shapes")
    p.add_argument("--lora", action="append", default=[], metavar="FILE[:STRENGTH]")
    p.add_argument("--prompt", default="a red circle moving right")
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    pipe = Pipeline.from_pretrained(args.model, loras=args.lora)
    d = pipe.card.defaults
    size = dict(height=d.height, width=d.width, num_frames=d.num_frames, seed=0)
    run(pipe, args.prompt, num_steps=2, **size)  # warm-up
    base = run(pipe, args.prompt, num_steps=50, guidance_scale=5.0, **size)
    few = run(pipe, args.prompt, num_steps=4, guidance_scale=1.0, scheduler="euler", flow_shift=5.0, **size)
    print(f"{args.model} {d.width}x{d.height} x {d.num_frames} frames, {args.threads} threads")
    print("| run | steps | guidance | DiT forwards | seconds |")
    print("|---|---|---|---|---|")
    print(f"| default (CFG) | 50 | 5.0 | {base[0]} | {base[1]:.2f} |")
    print(f"| few-step | 4 | 1.0 | {few[0]} | {few[1]:.2f} |")
    print(f"forwards {base[0] / few[0]:.0f}x fewer, wall time {base[1] / few[1]:.1f}x shorter")


if __name__ == "__main__":
    main()
