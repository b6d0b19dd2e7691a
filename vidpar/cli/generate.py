"""``vidpar generate``: prompts in, videos out, on whatever mesh the launcher started.

Order of work, so that mistakes are cheap and no rank hangs:
1. every rank validates the arguments, the model's configs and weight-file headers, every prompt against the
   tokenizer, the degrees, the attention backend and the output paths (no weights, no collective; ``jobs.py``) —
   bad input exits with code 2 and one line, printed by every rank;
2. the process group starts with a timeout (``--timeout``) and a heartbeat channel, so a dead or stuck peer turns
   into an error naming it, not a hang; a signal before this point ends the process at once (nothing to save);
3. agreed checks (identical verdict on every rank, exit 2): the predicted memory of the request and the lock of
   ``--checkpoint-dir`` (one run per folder);
4. the model loads (failures on any rank are agreed on by ``Pipeline``) and each prompt is generated;
5. SIGTERM/SIGUSR1 stop every rank after the current step: exit 3 with a snapshot saved (``--checkpoint-dir``),
   exit 4 with nothing saved. Rank 0 writes its exit code to ``$VIDPAR_EXIT_FILE`` if set (torchrun reports any
   non-zero rank exit as 1; the Slurm templates read the real code there).
"""

from __future__ import annotations

import argparse
import logging
import os
import time
from contextlib import ExitStack
from pathlib import Path
from types import SimpleNamespace

import torch

from vidpar.checkpoint import REQUEUE_EXIT_CODE, STOPPED_UNSAVED_EXIT_CODE, GenerationInterrupted, StopRequest
from vidpar.launch_env import apply_launch_env

from .cache_args import add_cache_arguments
from .compile_args import add_compile_arguments, compile_options
from .common import (
    DTYPES, EXIT_FAILED, EXIT_OK, VAE_MODES, UsageError, add_model_arguments, finish_distributed, record_exit,
    report_failure, setup_logging, timeout_of, usage_error,
)
from .jobs import Job, output_path, plan_jobs, planned_dtype  # noqa: F401 - output_path: part of this module's API

# Test hooks (read once at start-up, off unless set): "RANK:N" makes that rank raise at its N-th DiT forward,
# "RANK:N:exit" makes it die (os._exit), "RANK:N:hang=S" makes it sleep S seconds there, "RANK:N:nan" makes that
# forward's output NaN; a number of seconds in VIDPAR_DEBUG_SLOW slows every DiT forward (to interrupt runs on time).
DEBUG_FAIL_ENV = "VIDPAR_DEBUG_FAIL"
DEBUG_SLOW_ENV = "VIDPAR_DEBUG_SLOW"


def add_generate_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--prompt", help="the text prompt")
    what.add_argument("--prompts", metavar="FILE", help="a file with one prompt per line (model loaded once)")
    parser.add_argument("--negative-prompt", default=None, help="negative prompt (default: the model's, usually empty)")
    parser.add_argument("--image", default=None, metavar="FILE",
                        help="first frame for image-to-video models (see 'vidpar info --model X')")
    parser.add_argument("--out", required=True,
                        help="output .mp4, .npy (raw uint8 frames) or a new folder name (PNGs); each gets a record "
                             "of what made it (x.mp4.vidpar.json, or vidpar.json inside the folder). With --prompts: "
                             "'{index}' in the name is replaced (e.g. out_{index:03d}.mp4), otherwise _000, _001, ... "
                             "is added before the suffix")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing output, but only what vidpar wrote (a file with its record, the "
                             "listed frames of a folder; other files are never touched)")
    own = parser.add_argument_group("sampling (each defaults to the model's own: 'vidpar info --model X')")
    own.add_argument("--height", type=int, default=None)
    own.add_argument("--width", type=int, default=None)
    own.add_argument("--frames", type=int, default=None, help="video frames (the model's frame rule, e.g. 4k+1)")
    own.add_argument("--steps", type=int, default=None, help="denoising steps")
    own.add_argument("--guidance-scale", type=float, default=None)
    own.add_argument("--guidance-scale-2", type=float, default=None, help="second expert's scale (Wan 2.2 A14B)")
    own.add_argument("--scheduler", default=None, choices=("unipc", "euler", "euler-linear"),
                     help="default: the checkpoint's")
    own.add_argument("--flow-shift", type=float, default=None, help="default: the checkpoint's")
    own.add_argument("--fps", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sparse-attention", default=None, metavar="PATTERN[:key=value,...]",
                        help="structured sparse self-attention: window (STA), radial or svg, with options such as "
                             "window:window=3x3x5,tile=6x8x8,dense_first=20%% (default: dense)")
    parser.add_argument("--lora", action="append", default=[], type=lora_arg, metavar="FILE[:STRENGTH[:TARGET]]",
                        help="merge a LoRA (repeatable; strength default 1.0; TARGET 'both', or 'high'/'low' for one "
                             "expert of a two-expert model). Few-step LoRAs: see the README")
    parser.add_argument("--vae-mode", choices=VAE_MODES, default="auto", help="parallel VAE decode layout")
    parser.add_argument("--checkpoint-dir", default=None,
                        help="snapshot the denoising state here (shared by all nodes; locked by the run); rerunning "
                             "the same command resumes, and skips prompts whose output's record matches the request")
    parser.add_argument("--checkpoint-every", type=int, default=1, metavar="K", help="snapshot every K steps")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--no-memory-check", action="store_true",
                        help="run even if the memory model predicts the request does not fit")
    add_cache_arguments(parser)
    add_compile_arguments(parser)


def lora_arg(value: str):
    """``--lora FILE[:STRENGTH[:TARGET]]`` -> ``LoraSpec`` (argparse shows the parse error as a usage error)."""
    from vidpar.lora import LoraSpec

    try:
        spec = LoraSpec.parse(value)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    if not Path(spec.path).is_file():
        raise argparse.ArgumentTypeError(f"{spec.path}: no such file")
    return spec


def debug_hooks(rank: int, fail_spec: str | None) -> list[tuple[str, object]]:
    """The ``VIDPAR_DEBUG_*`` test hooks that apply to this rank, as ``("pre" | "post", hook)`` (usually none);
    ``fail_spec`` is the ``"RANK:N[:mode]"`` failure to inject, if any."""
    hooks = []
    if seconds := float(os.environ.get(DEBUG_SLOW_ENV) or 0):
        hooks.append(("pre", lambda _module, _inputs: time.sleep(seconds)))
    if fail_spec and int(fail_spec.split(":")[0]) == rank:
        hooks.append(failure_hook(fail_spec))
    return hooks


def install_debug_hooks(modules: list, rank: int, fail_spec: str | None) -> None:
    """Registers this rank's :func:`debug_hooks` on each of ``modules`` (the denoisers)."""
    for kind, hook in debug_hooks(rank, fail_spec):
        for module in modules:
            register = module.register_forward_pre_hook if kind == "pre" else module.register_forward_hook
            register(hook)


def failure_hook(spec: str) -> tuple[str, object]:
    """A forward hook that acts at the N-th call of ``"RANK:N[:exit|:hang=S|:nan]"``."""
    parts = spec.split(":")
    at, mode = int(parts[1]), (parts[2] if len(parts) > 2 else "raise")
    calls = [0]

    def pre(_module, _inputs):
        calls[0] += 1
        if calls[0] == at:
            if mode == "exit":
                os._exit(17)  # simulate a crashed process: no exception handler, no goodbye
            if mode.startswith("hang="):
                time.sleep(float(mode.split("=", 1)[1]))  # alive (its heartbeat goes on) but not in a collective
                return
            raise RuntimeError(f"{DEBUG_FAIL_ENV}: injected failure at DiT forward {at}")

    def post(_module, _inputs, output):
        calls[0] += 1
        return output * float("nan") if calls[0] == at else output

    return ("post", post) if mode == "nan" else ("pre", pre)


def pending_jobs(jobs: list[Job], ctx) -> list[Job]:
    """Jobs still to run: rank 0's view of which outputs already hold their request (``Job.skip``) is sent to
    every rank, so all ranks run the same generations (a shared file system may show a file to some nodes later)."""
    skip = torch.tensor([1.0 if j.skip else 0.0 for j in jobs], device=ctx.device)
    skip = ctx.comm.broadcast(skip, 0, "world")
    return [j for j, s in zip(jobs, skip.tolist()) if s == 0.0]


def agreed_checks(ctx, args: argparse.Namespace, stack: ExitStack) -> None:
    """After the rendezvous, before loading: the memory model and the checkpoint folder's lock, each decided
    identically on every rank (``UsageError``, exit 2)."""
    from vidpar.checkpoint_lock import LockedError, hold_checkpoint_dir
    from vidpar.preflight import check_fits

    if not args.no_memory_check:
        sizes = SimpleNamespace(height=args.height, width=args.width, num_frames=args.frames)
        try:
            check_fits(args.model_card, sizes, ctx, planned_dtype(args, ctx.world_size), args.vae_mode)
        except ValueError as e:
            raise UsageError(str(e)) from None
    if args.checkpoint_dir is not None:
        try:
            stack.enter_context(hold_checkpoint_dir(ctx, args.checkpoint_dir))
        except LockedError as e:
            raise UsageError(str(e)) from None


def run_generate(args: argparse.Namespace) -> int:
    """Entry of ``vidpar generate``; returns the exit code (0 ok, 1 failed, 2 bad input, 3 stopped with a
    snapshot, 4 stopped with nothing saved)."""
    launch = apply_launch_env()
    rank = launch.rank
    log = setup_logging(rank, args.verbose)
    try:
        source, config, jobs = plan_jobs(args, launch.world_size)
    except UsageError as e:
        return record_exit(rank, usage_error(rank, "vidpar generate", e, args.verbose))
    stop, ctx = StopRequest(), None
    with ExitStack() as stack:
        try:
            from vidpar.parallel import init_parallel
            from vidpar.pipeline import Pipeline

            t0 = time.perf_counter()
            log.info("%s; mesh ulysses=%d ring=%d cfg=%d", launch.describe(), config.ulysses, config.ring, config.cfg)
            ctx = init_parallel(config, backend=args.backend, timeout=timeout_of(args))
            stop.install()  # from here a signal stops every rank after its step (before, it ends the process)
            agreed_checks(ctx, args, stack)
            todo = pending_jobs(jobs, ctx)
            for job in jobs:
                if job not in todo:
                    log.info("prompt %d: %s already holds this request (its record matches), skipped", job.index,
                             job.out)
            if todo:
                pipe = Pipeline.from_pretrained(source, parallel=ctx, dtype=DTYPES[args.dtype],
                                                attention_backend=args.attention_backend, vae_mode=args.vae_mode,
                                                loras=args.lora, compile=compile_options(args),
                                                ulysses_overlap=args.ulysses_overlap, fused_qkv=args.fused_qkv)
                install_debug_hooks(pipe.comps.denoisers()[:1], rank, os.environ.get(DEBUG_FAIL_ENV))
                log.info("loaded %s (%s) in %.1f s; %dx%d, %d frames, %d steps, guidance %g, %s shift %g", args.model,
                         pipe.dtype, time.perf_counter() - t0, args.width, args.height, args.frames, args.steps,
                         args.guidance_scale, args.scheduler, args.flow_shift)
                for job in todo:
                    run_job(pipe, job, args, stop, log)
        except UsageError as e:  # decided identically on every rank after the rendezvous
            code = usage_error(rank, "vidpar generate", e, args.verbose)
            stack.close()
            _finish(ctx)
            return record_exit(rank, code)
        except GenerationInterrupted as e:
            code = REQUEUE_EXIT_CODE if e.path is not None else STOPPED_UNSAVED_EXIT_CODE
            if rank == 0:
                saved = (f"state saved to {e.path}. Run the same command to resume" if e.path is not None else
                         "nothing was saved (no --checkpoint-dir); a rerun starts over")
                log.warning("stopped by %s after step %d; %s (exit %d).", stop.signal_name, e.step, saved, code)
            # No rank leaves before rank 0 has written the snapshot: a launcher that kills the remaining ranks once
            # one exits (srun --kill-on-bad-exit) must not cut the save short.
            stack.close()
            _finish(ctx)
            return record_exit(rank, code)
        except Exception as e:  # noqa: BLE001 - any failure: name the rank, exit non-zero, never hang
            report_failure(rank, e, args.verbose, ctx)
            stack.close()  # releases the checkpoint folder's lock (rank 0)
            record_exit(rank, EXIT_FAILED)
            logging.shutdown()
            os._exit(EXIT_FAILED)  # peers may be gone: skip teardown that could block on them
    _finish(ctx)
    return record_exit(rank, EXIT_OK)


def _finish(ctx) -> None:
    if ctx is not None:
        ctx.close()
    finish_distributed(barrier=True)


def read_image(path: str):
    """An image file (PNG, JPEG, ...) as a PIL image; the pipeline resizes it to the video size."""
    from PIL import Image

    with Image.open(path) as im:
        return im.convert("RGB")


def run_job(pipe, job: Job, args: argparse.Namespace, stop: StopRequest, log: logging.Logger) -> None:
    t0 = time.perf_counter()
    log.info("prompt %d: %r -> %s", job.index, job.prompt, job.out)
    video = pipe.generate(
        job.prompt, args.negative_prompt, height=args.height, width=args.width, num_frames=args.frames,
        num_steps=args.steps, guidance_scale=args.guidance_scale, guidance_scale_2=args.guidance_scale_2,
        seed=args.seed, scheduler=args.scheduler, flow_shift=args.flow_shift, output="rank0",
        checkpoint_dir=job.checkpoint_dir, checkpoint_every=args.checkpoint_every, stop=stop,
        progress=not args.no_progress, image=read_image(args.image) if args.image else None,
        sparse_attention=args.sparse_attention,
        memory_check=False,  # checked before loading (agreed_checks)
        cache=args.cache_policy,
    )
    if pipe.ctx.rank == 0:
        video.record["request"].update(job.request)  # the fields a resumed run compares (incl. the image file)
        video.save(job.out, fps=args.fps, overwrite=args.overwrite)
        log.info("prompt %d: saved %s (%d frames, %.1f s)", job.index, job.out, len(video.frames),
                 time.perf_counter() - t0)
