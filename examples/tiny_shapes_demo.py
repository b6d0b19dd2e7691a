"""Generate clips with the built-in ``tiny-shapes`` model, time them, and write a frame strip PNG and an animated GIF.

    python examples/tiny_shapes_demo.py --prompt "a red circle moving right" --out docs/tiny-shapes
    torchrun --nproc-per-node 2 examples/tiny_shapes_demo.py --prompt "a red circle moving right" --out /tmp/x

writes ``<out>-strip.png`` (the frames side by side) and ``<out>.gif`` on rank 0 and prints the generation time
(load excluded; the first, warm-up generation excluded too) for BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from vidpar.pipeline import Pipeline
from vidpar.video import Video


def write_strip(frames: np.ndarray, path: Path, scale: int = 2) -> None:
    """Frames ``[F, H, W, 3]`` uint8 side by side (2 px gaps), upscaled ``scale`` x, as one PNG file."""
    gap = np.full((frames.shape[1], 2, 3), 255, dtype=np.uint8)
    parts = [p for f in frames for p in (f, gap)][:-1]
    strip = np.concatenate(parts, axis=1).repeat(scale, axis=0).repeat(scale, axis=1)
    with tempfile.TemporaryDirectory(dir=path.parent) as tmp:
        folder = Video(strip[None]).save(Path(tmp) / "strip")
        shutil.move(str(folder / "00000.png"), str(path))


def write_gif(frames: np.ndarray, path: Path, fps: int = 6, scale: int = 2) -> None:
    """An animated GIF (PyAV's GIF encoder, 8-bit RGB palette), upscaled ``scale`` x."""
    import av

    big = frames.repeat(scale, axis=1).repeat(scale, axis=2)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("gif", rate=fps)
        stream.width, stream.height, stream.pix_fmt = big.shape[2], big.shape[1], "rgb8"
        for f in big:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--prompt", default="a red circle moving right")
    p.add_argument("--out", type=Path, default=Path("docs/tiny-shapes"))
    p.add_argument("--frames", type=int, default=9)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--guidance-scale", type=float, default=5.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeats", type=int, default=3, help="timed generations after one warm-up")
    args = p.parse_args()
    pipe = Pipeline.from_pretrained("tiny-shapes", dtype=torch.float32)
    kw = dict(height=64, width=64, num_frames=args.frames, num_steps=args.steps, guidance_scale=args.guidance_scale,
              seed=args.seed)
    video = pipe.generate(args.prompt, **kw)  # warm-up
    times = []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        video = pipe.generate(args.prompt, **kw)
        times.append(time.perf_counter() - t0)
    if pipe.ctx.rank == 0:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        write_strip(video.frames, args.out.with_name(args.out.name + "-strip.png"))
        write_gif(video.frames, args.out.with_suffix(".gif"))
        print(f"world {pipe.ctx.world_size} {args.frames} frames 64x64 {args.steps} steps cfg {args.guidance_scale}: "
              f"median {np.median(times):.2f}s (min {min(times):.2f}s) over {len(times)} runs; "
              f"threads/process {torch.get_num_threads()}")


if __name__ == "__main__":
    main()
