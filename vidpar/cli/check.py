"""``vidpar check``: the built-in parity mode.

One denoiser forward (any model family) on a seeded random latent, timestep and prompt states (and image
conditioning for image-to-video models), shaped as the model's card and specs say: the model parallelized on the
current mesh against the same model with its plan removed (``vidpar.unparallelize``), run on rank 0 alone. Prints the max
absolute and relative difference and exits 1 above the tolerance (default: 1e-5 fp32, 2e-2 bf16/fp16, 1e-12
float64 — the project's parity tolerances).
"""

from __future__ import annotations

import argparse
import json
import os
import time

import torch

from vidpar.launch_env import apply_launch_env
from vidpar.models.family import StepInfo

from .common import (
    DTYPES, EXIT_FAILED, EXIT_OK, UsageError, add_model_arguments, check_model, finish_distributed,
    parallel_config, report_failure, setup_logging, timeout_of, usage_error,
)
from .jobs import check_attention_backend

TOLERANCES = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-2, torch.float64: 1e-12}


def add_check_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    parser.add_argument("--height", type=int, default=64, help="video height of the test latent (default 64)")
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--frames", type=int, default=9, help="4k+1 video frames of the test latent (default 9)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--tolerance", type=float, default=None, help="max relative difference allowed")
    parser.add_argument("--json", action="store_true", help="print the result as JSON (rank 0)")


def _inputs(pipe, shape: tuple[int, ...], seed: int):
    """Seeded latent ``[1, C, T, h, w]``, step, prompt states and (image-to-video) conditioning, the same on every
    rank: drawn on the CPU from ``seed`` with the shapes of the model's specs."""
    g = torch.Generator().manual_seed(seed)
    dev, comps = pipe.ctx.device, pipe.comps
    x = torch.randn(shape, generator=g, dtype=torch.float64).to(dev, pipe.latent_dtype)
    t = (torch.rand(1, generator=g, dtype=torch.float64) * 1000).to(dev, torch.float32)[0]
    text = {k: s.example(g, dev) for k, s in comps.text_spec(pipe.dtype).items()}
    image = None
    if pipe.card.image == "required":
        spec = comps.image_spec(shape, pipe.dtype, pipe.latent_dtype)
        image = {k: s.example(g, dev) for k, s in spec.items()}
    return x, StepInfo(0, 1, t), text, image


def run_check(args: argparse.Namespace) -> int:
    """Entry of ``vidpar check``; 0 when the mesh matches one rank within the tolerance, 1 otherwise."""
    launch = apply_launch_env()
    rank = launch.rank
    log = setup_logging(rank, args.verbose)
    try:
        _family, source, card = check_model(args.model)
        shape = card.geometry.latent_shape(args.height, args.width, args.frames)
        config = parallel_config(args, launch.world_size, source, (args.height, args.width, args.frames))
        timeout = timeout_of(args)
        check_attention_backend(args, card, config, launch.world_size)
    except (UsageError, ValueError) as e:
        return usage_error(rank, "vidpar check", e, args.verbose)
    try:
        from vidpar.parallelize import unparallelize
        from vidpar.pipeline import Pipeline

        pipe = Pipeline.from_pretrained(source, parallel=config, dtype=DTYPES[args.dtype],
                                        attention_backend=args.attention_backend, backend=args.backend,
                                        timeout=timeout)
        x, step, text, image = _inputs(pipe, shape, args.seed)
        ctx = pipe.ctx

        def forward():
            return pipe.comps.predict_flow(x, step, text, image, 1.0)

        with torch.no_grad():
            t0 = time.perf_counter()
            out = forward()  # full output on every rank
            t_mesh = time.perf_counter() - t0
            for dit in pipe.comps.denoisers():
                unparallelize(dit)
            verdict = torch.zeros(3, dtype=torch.float64, device=ctx.device)  # abs, rel, one-rank seconds
            if rank == 0:
                t0 = time.perf_counter()
                ref = forward()
                verdict[2] = time.perf_counter() - t0
                diff = (out.double() - ref.double()).abs().max()
                verdict[0], verdict[1] = diff, diff / ref.double().abs().max().clamp_min(1e-300)
            # every rank learns the verdict, so every rank exits with the same code
            verdict = ctx.comm.broadcast(verdict, 0, "world") if ctx.world_size > 1 else verdict
        tol = args.tolerance if args.tolerance is not None else TOLERANCES.get(pipe.dtype, 1e-5)
        abs_err, rel_err, t_one = verdict.tolist()
        ok = rel_err <= tol
        if rank == 0:
            result = dict(model=args.model, world_size=ctx.world_size, ulysses=config.ulysses, ring=config.ring,
                          cfg=config.cfg, dtype=str(pipe.dtype).replace("torch.", ""), latent=list(shape),
                          max_abs_diff=abs_err, max_rel_diff=rel_err, tolerance=tol, ok=ok,
                          mesh_seconds=t_mesh, one_rank_seconds=t_one)
            if args.json:
                print(json.dumps(result))
            else:
                print(f"vidpar check: {args.model} {result['dtype']} latent {tuple(shape)} on {ctx.world_size} ranks "
                      f"(ulysses={config.ulysses} ring={config.ring} cfg={config.cfg}) vs one rank: "
                      f"max abs diff {abs_err:.3e}, max rel diff {rel_err:.3e} (tolerance {tol:.1e}) -> "
                      f"{'OK' if ok else 'FAILED'}; forward {t_mesh:.3f} s on the mesh, {t_one:.3f} s on one rank")
        log.debug("check done")
    except Exception as e:  # noqa: BLE001 - name the rank, exit non-zero, never hang
        report_failure(rank, e, args.verbose)
        os._exit(EXIT_FAILED)
    finish_distributed()
    return EXIT_OK if ok else EXIT_FAILED
