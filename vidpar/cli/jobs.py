"""``vidpar generate``'s plan: every check that needs no weight and no collective, run on every rank first.

``plan_jobs`` turns the arguments into jobs (one per prompt) or a ``UsageError`` (exit 2, one line): the sampling
values (the model's defaults filled in), the mesh degrees, the attention backend, the model's files, every prompt
against the tokenizer (a bad line of a ``--prompts`` file is named before the first generation), and every output
path (``vidpar.outputs``: what may be written, and whether a resumed run may skip it).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import importlib.util
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from vidpar.outputs import OutputError, output_kind, plan_output

from .cache_args import cache_policy
from .compile_args import compile_options
from .common import DTYPES, UsageError, check_model, parallel_config, timeout_of


@dataclass(frozen=True)
class Job:
    """One prompt's generation: where its video goes, where its snapshot lives, and what its record must say."""

    index: int
    prompt: str
    out: Path
    checkpoint_dir: Path | None
    request: dict[str, Any] | None = None  # the fields of its output record (``vidpar.outputs``)
    skip: bool = False  # resuming and the output already holds exactly this request
    line: int | None = None  # its line in the --prompts file


def read_prompts(args: argparse.Namespace) -> list[tuple[str, int | None]]:
    """``(prompt, line number or None)`` of ``--prompt`` or each non-empty line of ``--prompts``."""
    if args.prompt is not None:
        return [(args.prompt, None)]
    path = Path(args.prompts)
    if not path.is_file():
        raise UsageError(f"--prompts {path}: no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise UsageError(f"--prompts {path}: not readable as UTF-8 text ({e})") from None
    prompts = [(line.strip(), n) for n, line in enumerate(text.splitlines(), 1) if line.strip()]
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


def planned_dtype(args: argparse.Namespace, world_size: int):
    """The compute dtype the run will use (``--dtype auto``: bf16 on CUDA, fp32 on CPU)."""
    from vidpar.memory_check import default_dtype, expected_device

    return DTYPES[args.dtype] or default_dtype(expected_device(world_size, args.backend))


def check_attention_backend(args: argparse.Namespace, card, config, world_size: int) -> None:
    """``--attention-backend`` exists, is installed and serves this device, dtype and mesh (ring attention and
    joint-token models need a log-sum-exp)."""
    import torch

    from vidpar.kernels.backends import resolve_backend
    from vidpar.memory_check import expected_device

    need_lse = config.ring > 1 or bool(card.workload is not None and card.workload.config.joint_tokens)
    device = torch.device(expected_device(world_size, args.backend))
    try:
        resolve_backend(args.attention_backend, device, planned_dtype(args, world_size), need_lse)
    except ValueError as e:
        raise UsageError(f"--attention-backend: {e}") from None


def check_prompts(family, source, prompts: list[tuple[str, int | None]], negative: str, args) -> None:
    """Every prompt (and the negative prompt) through the model's tokenizer, naming the line of a bad one."""
    from vidpar.models.family import PromptError

    texts = [p for p, _ in prompts] + [negative]
    try:
        family.check_prompts(source, texts)
    except PromptError as e:
        if e.index == len(prompts):
            raise UsageError(f"--negative-prompt: {e.reason}") from None
        line = prompts[e.index][1]
        where = f"--prompts {args.prompts} line {line}" if line is not None else "--prompt"
        raise UsageError(f"{where}: {e.reason}") from None
    except ValueError as e:
        raise UsageError(str(e)) from None


def job_request(card, req, prompt: str, dtype, fps: int, image_sha256: str | None,
                extras: dict[str, Any] | None = None) -> dict[str, Any]:
    """The record fields of one job's output (what a resumed run compares before skipping it); ``extras``: what
    else makes the video (sparse pattern, LoRA set), named as ``Pipeline.generate`` records them."""
    from vidpar.outputs import request_fields

    fields = request_fields(card.name, req, dtype, prompt=prompt)
    fields["fps"] = fps
    if image_sha256 is not None:
        fields["image_file"] = image_sha256
    fields.update(extras or {})
    return fields


def generation_extras(args: argparse.Namespace) -> dict[str, Any]:
    """The sparse-attention pattern, LoRA set and step-cache policy of ``args`` as the output record holds them;
    ``UsageError`` for a bad sparse spec."""
    extras: dict[str, Any] = {}
    if args.sparse_attention is not None:
        from vidpar.parallel.sparse import SparseAttention

        try:
            extras["sparse_attention"] = SparseAttention.from_cli(args.sparse_attention).describe()
        except ValueError as e:
            raise UsageError(str(e)) from None
    if args.lora:
        from vidpar.lora import file_sha256, lora_set_digest

        extras["loras"] = lora_set_digest((file_sha256(s.path), s.strength, s.target) for s in args.lora)
    if args.cache_policy is not None:  # a cached video differs from an uncached one: a rerun must not mix them
        policy = {"policy": args.cache_policy.name, **dataclasses.asdict(args.cache_policy)}
        extras["cache"] = json.loads(json.dumps(policy))  # as the record file will hold it (lists, not tuples)
    return extras


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def plan_jobs(args: argparse.Namespace, world_size: int):
    """Validate everything that can be checked without weights or collectives; returns (source, config, jobs).

    Sampling flags left out take the model's own defaults (its card); ``args`` is updated with them (and
    ``args.model_card``), so every later step (and the log) sees the values that run."""
    for name in ("height", "width", "frames", "steps", "checkpoint_every", "fps"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
    if args.image is not None and not os.path.isfile(args.image):
        raise UsageError(f"--image {args.image}: no such file")
    family, source, card = check_model(args.model)
    req = resolve_request(args, card)
    args.cache_policy = cache_policy(args)
    extras = generation_extras(args)
    args.height, args.width, args.frames, args.steps = req.height, req.width, req.num_frames, req.num_steps
    args.guidance_scale, args.guidance_scale_2 = req.guidance_scale, req.guidance_scale_2
    args.scheduler, args.flow_shift, args.negative_prompt = req.scheduler, req.flow_shift, req.negative_prompt
    args.fps = args.fps or card.defaults.fps
    args.model_card = card
    config = parallel_config(args, world_size, source, (args.height, args.width, args.frames))
    timeout_of(args)
    if compile_options(args) and args.sparse_attention is not None:
        raise UsageError("--sparse-attention does not run inside compiled blocks: leave out --compile")
    check_attention_backend(args, card, config, world_size)
    prompts = read_prompts(args)
    check_prompts(family, source, prompts, req.negative_prompt, args)
    many = len(prompts) > 1
    resume = args.checkpoint_dir is not None
    dtype = planned_dtype(args, world_size)
    image_sha = _sha256_file(args.image) if args.image is not None else None
    try:
        output_kind(args.out)  # the raw text: "x.mp4/" names a folder, which Path() would hide
    except OutputError as e:
        raise UsageError(str(e)) from None
    jobs = []
    for i, (prompt, line) in enumerate(prompts):
        out = output_path(args.out, i, many)
        request = job_request(card, req, prompt, dtype, args.fps, image_sha, extras)
        try:
            action = plan_output(out, request, overwrite=args.overwrite, resume=resume)
        except OutputError as e:
            raise UsageError(str(e)) from None
        if out.suffix in (".mp4", "") and not (importlib.util.find_spec("av") or importlib.util.find_spec("imageio")):
            raise UsageError(f"output {out}: writing {out.suffix or 'PNG'} needs PyAV ('pip install av'); or use .npy")
        ckpt = Path(args.checkpoint_dir) / (f"prompt_{i:03d}" if many else "") if resume else None
        jobs.append(Job(i, prompt, out, ckpt, request, action == "skip", line))
    if len({j.out.resolve() for j in jobs}) < len(jobs):
        raise UsageError(f"--out {args.out!r} gives the same file to several prompts")
    if resume:
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


__all__ = ["Job", "check_checkpoint_dir", "output_path", "plan_jobs", "read_prompts", "resolve_request"]
