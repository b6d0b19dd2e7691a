"""``vidpar generate``: prompts in, videos out, on whatever mesh the launcher started.

Order of work, so that mistakes are cheap and no rank hangs:
1. every rank validates the arguments, the model source, the video size and the output paths (no weights, no
   collective) — bad input exits with code 2 and a one-line message;
2. the process group starts with a timeout (``--timeout``), so a dead peer turns into an error, not a hang;
3. the model loads (failures on any rank are agreed on by ``Pipeline``) and each prompt is generated;
4. SIGTERM/SIGUSR1 stop every rank after the current step; the snapshot is saved and the exit code is 3.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from vidpar.checkpoint import REQUEUE_EXIT_CODE, GenerationInterrupted, StopRequest
from vidpar.launch_env import apply_launch_env
from vidpar.video import check_output_path

from .common import (
    DTYPES, EXIT_FAILED, EXIT_OK, VAE_MODES, UsageError, add_model_arguments, check_model, finish_distributed,
    parallel_config, report_failure, setup_logging, timeout_of, usage_error,
)

# Test hooks (read once at start-up, off unless set): "RANK:N" makes that rank raise at its N-th DiT forward,
# "RANK:N:exit" makes it die (os._exit); a number of seconds slows every DiT forward (to interrupt runs on time).
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
                        help="output .mp4, .npy (raw uint8 frames) or a folder name (PNGs). With --prompts: "
                             "'{index}' in the name is replaced (e.g. out_{index:03d}.mp4), otherwise _000, _001, ... "
                             "is added before the suffix")
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
    parser.add_argument("--lora", action="append", default=[], type=lora_arg, metavar="FILE[:STRENGTH[:TARGET]]",
                        help="merge a LoRA (repeatable; strength default 1.0; TARGET 'both', or 'high'/'low' for one "
                             "expert of a two-expert model). Few-step LoRAs: see the README")
    parser.add_argument("--vae-mode", choices=VAE_MODES, default="auto", help="parallel VAE decode layout")
    parser.add_argument("--checkpoint-dir", default=None,
                        help="snapshot the denoising state here (shared by all nodes); rerunning the same command "
                             "resumes, and skips prompts whose output already exists")
    parser.add_argument("--checkpoint-every", type=int, default=1, metavar="K", help="snapshot every K steps")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    speed = parser.add_argument_group("per-GPU speed (off by default; results are the same either way)")
    speed.add_argument("--compile", action="store_true",
                       help="torch.compile every DiT block (regional; compiled once per video size at the first step)")
    speed.add_argument("--compile-backend", choices=("inductor", "aot_eager", "eager"), default="inductor",
                       help="torch.compile backend for --compile (aot_eager/eager: tracing only, for debugging)")
    speed.add_argument("--compile-vae", action="store_true",
                       help="with --compile, also compile the VAE decoder (one-process decodes only)")
    speed.add_argument("--ulysses-overlap", action="store_true",
                       help="overlap the Ulysses all-to-alls with the q/k/v and output projections")
    speed.add_argument("--fused-qkv", action="store_true", help="one GEMM for the q, k, v projections")


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


@dataclass(frozen=True)
class Job:
    """One prompt's generation: where its video goes and where its snapshot lives."""

    index: int
    prompt: str
    out: Path
    checkpoint_dir: Path | None


def read_prompts(args: argparse.Namespace) -> list[str]:
    if args.prompt is not None:
        prompts = [args.prompt]
    else:
        path = Path(args.prompts)
        if not path.is_file():
            raise UsageError(f"--prompts {path}: no such file")
        prompts = [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not prompts:
            raise UsageError(f"--prompts {path}: no prompts (one per line)")
    return prompts


def output_path(template: str, index: int, many: bool) -> Path:
    """``--out`` for prompt ``index``: ``{index}`` substituted, or ``_000`` added before the suffix."""
    if "{" in template:
        try:
            return Path(template.format(index=index))
        except (KeyError, IndexError, ValueError) as e:
            raise UsageError(f"--out {template!r}: only '{{index}}' may be substituted ({e})") from None
    if not many:
        return Path(template)
    path = Path(template)
    return path.with_name(f"{path.stem}_{index:03d}{path.suffix}")


def resolve_request(args: argparse.Namespace, card):
    """The request ``args`` describe, every unset sampling flag filled from the model's card; ``UsageError`` for
    values the model cannot use (checked without weights)."""
    from vidpar.pipeline import GenerationRequest, check_request_values

    req = GenerationRequest(
        "", args.negative_prompt, args.height, args.width, args.frames, args.steps, args.guidance_scale,
        args.guidance_scale_2, args.seed, args.scheduler, args.flow_shift,
    ).resolved(card)
    try:
        check_request_values(req)
        card.geometry.latent_shape(req.height, req.width, req.num_frames)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.guidance_scale_2 is not None and card.experts < 2:
        raise UsageError(f"--guidance-scale-2 is for two-expert models; {card.name} has one denoiser")
    if card.image == "required" and args.image is None:
        raise UsageError(f"{card.name} is an image-to-video model: give --image FILE")
    if card.image == "none" and args.image is not None:
        raise UsageError(f"{card.name} is a text-to-video model: it takes no --image")
    return req


def plan_jobs(args: argparse.Namespace, world_size: int):
    """Validate everything that can be checked without weights or collectives; returns (source, config, jobs).

    Sampling flags left out take the model's own defaults (its card); ``args`` is updated with them, so every
    later step (and the log) sees the values that run."""
    for name in ("height", "width", "frames", "steps", "checkpoint_every", "fps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.image is not None and not os.path.isfile(args.image):
        raise UsageError(f"--image {args.image}: no such file")
    _family, source, card = check_model(args.model)
    req = resolve_request(args, card)
    args.height, args.width, args.frames, args.steps = req.height, req.width, req.num_frames, req.num_steps
    args.guidance_scale, args.guidance_scale_2 = req.guidance_scale, req.guidance_scale_2
    args.scheduler, args.flow_shift, args.negative_prompt = req.scheduler, req.flow_shift, req.negative_prompt
    args.fps = args.fps or card.defaults.fps
    config = parallel_config(args, world_size, source, (args.height, args.width, args.frames))
    timeout_of(args)
    compile_options(args)
    prompts = read_prompts(args)
    many = len(prompts) > 1
    jobs = []
    for i, prompt in enumerate(prompts):
        out = output_path(args.out, i, many)
        try:
            check_output_path(out)
        except ValueError as e:
            raise UsageError(str(e)) from None
        if out.suffix in (".mp4", "") and not (importlib.util.find_spec("av") or importlib.util.find_spec("imageio")):
            raise UsageError(f"output {out}: writing {out.suffix or 'PNG'} needs PyAV ('pip install av'); or use .npy")
        ckpt = None
        if args.checkpoint_dir is not None:
            ckpt = Path(args.checkpoint_dir) / (f"prompt_{i:03d}" if many else "")
        jobs.append(Job(i, prompt, out, ckpt))
    if len({j.out.resolve() for j in jobs}) < len(jobs):
        raise UsageError(f"--out {args.out!r} gives the same file to several prompts")
    if args.checkpoint_dir is not None:
        check_checkpoint_dir(Path(args.checkpoint_dir))
    return source, config, jobs


def check_checkpoint_dir(folder: Path) -> None:
    """The snapshot folder exists and is writable, or can be created (its parent exists and is writable)."""
    target = folder if folder.exists() else folder.resolve().parent
    if folder.exists() and not folder.is_dir():
        raise UsageError(f"--checkpoint-dir {folder} exists and is not a folder")
    if not target.is_dir():
        raise UsageError(f"--checkpoint-dir {folder}: folder {target} does not exist")
    if not os.access(target, os.W_OK):
        raise UsageError(f"--checkpoint-dir {folder}: {target} is not writable")


def debug_hooks(rank: int) -> list:
    """The ``VIDPAR_DEBUG_*`` test hooks that apply to this rank, as DiT forward pre-hooks (usually none)."""
    hooks = []
    if seconds := float(os.environ.get(DEBUG_SLOW_ENV) or 0):
        hooks.append(lambda _module, _inputs: time.sleep(seconds))
    spec = os.environ.get(DEBUG_FAIL_ENV)
    if spec and int(spec.split(":")[0]) == rank:
        hooks.append(failure_hook(spec))
    return hooks


def failure_hook(spec: str):
    """A forward pre-hook that fails at the N-th call of ``"RANK:N[:exit]"``."""
    parts = spec.split(":")
    at, hard = int(parts[1]), len(parts) > 2 and parts[2] == "exit"
    calls = [0]

    def hook(_module, _inputs):
        calls[0] += 1
        if calls[0] == at:
            if hard:
                os._exit(17)  # simulate a crashed process: no exception handler, no goodbye
            raise RuntimeError(f"{DEBUG_FAIL_ENV}: injected failure at DiT forward {at}")

    return hook


def pending_jobs(jobs: list[Job], ctx, resume: bool) -> list[Job]:
    """Jobs still to run. When resuming, rank 0 decides which outputs already exist and tells every rank, so all
    ranks run the same generations (a shared file system may show a new file to some nodes later)."""
    if not resume:
        return jobs
    done = torch.tensor([1.0 if ctx.rank == 0 and j.out.exists() else 0.0 for j in jobs], device=ctx.device)
    done = ctx.comm.broadcast(done, 0, "world")
    return [j for j, d in zip(jobs, done.tolist()) if d == 0.0]


def run_generate(args: argparse.Namespace) -> int:
    """Entry of ``vidpar generate``; returns the exit code (0 ok, 1 failed, 2 bad input, 3 interrupted)."""
    launch = apply_launch_env()
    rank = launch.rank
    log = setup_logging(rank, args.verbose)
    stop = StopRequest().install()  # first, so that a signal during loading is a clean stop, not a kill
    try:
        source, config, jobs = plan_jobs(args, launch.world_size)
    except UsageError as e:
        return usage_error(rank, "vidpar generate", e, args.verbose)
    try:
        from vidpar.pipeline import Pipeline

        t0 = time.perf_counter()
        log.info("%s; mesh ulysses=%d ring=%d cfg=%d", launch.describe(), config.ulysses, config.ring, config.cfg)
        pipe = Pipeline.from_pretrained(source, parallel=config, dtype=DTYPES[args.dtype],
                                        attention_backend=args.attention_backend, vae_mode=args.vae_mode,
                                        backend=args.backend, timeout=timeout_of(args), loras=args.lora,
                                        compile=compile_options(args), ulysses_overlap=args.ulysses_overlap,
                                        fused_qkv=args.fused_qkv)
        for hook in debug_hooks(rank):
            pipe.comps.transformer.register_forward_pre_hook(hook)
        log.info("loaded %s (%s) in %.1f s; %dx%d, %d frames, %d steps, guidance %g, %s shift %g", args.model,
                 pipe.dtype, time.perf_counter() - t0, args.width, args.height, args.frames, args.steps,
                 args.guidance_scale, args.scheduler, args.flow_shift)
        todo = pending_jobs(jobs, pipe.ctx, args.checkpoint_dir is not None)
        for job in jobs:
            if job not in todo:
                log.info("prompt %d: %s exists, skipped", job.index, job.out)
        for job in todo:
            run_job(pipe, job, args, stop, log)
    except GenerationInterrupted as e:
        if rank == 0:
            log.warning("stopped by %s after step %d; state saved to %s. Run the same command to resume (exit %d).",
                        stop.signal_name, e.step, e.path, REQUEUE_EXIT_CODE)
        # No rank leaves before rank 0 has written the snapshot: a launcher that kills the remaining ranks once
        # one exits (srun --kill-on-bad-exit) must not cut the save short.
        finish_distributed(barrier=True)
        return REQUEUE_EXIT_CODE
    except Exception as e:  # noqa: BLE001 - any failure: name the rank, exit non-zero, never hang
        report_failure(rank, e, args.verbose)
        logging.shutdown()
        os._exit(EXIT_FAILED)  # peers may be gone: skip teardown that could block on them
    finish_distributed()
    return EXIT_OK


def compile_options(args: argparse.Namespace):
    """``--compile`` and its options as a ``CompileOptions``, or False."""
    if not args.compile:
        if args.compile_vae:
            raise UsageError("--compile-vae needs --compile")
        return False
    from vidpar.compile import CompileOptions

    return CompileOptions(backend=args.compile_backend, vae=args.compile_vae)


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
    )
    if pipe.ctx.rank == 0:
        video.save(job.out, fps=args.fps)
        log.info("prompt %d: saved %s (%d frames, %.1f s)", job.index, job.out, len(video.frames),
                 time.perf_counter() - t0)
