"""What the ``generate`` and ``check`` subcommands share: model/mesh/dtype options, their validation before any
weight or collective, logging from rank 0, and turning an exception on one rank into a clear exit."""

from __future__ import annotations

import argparse
import logging
import math
import os
import sys
import traceback
from datetime import timedelta

import torch

from vidpar.parallel import ParallelConfig

DTYPES = {"auto": None, "float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16,
          "float16": torch.float16}
VAE_MODES = ("auto", "patch", "pipeline", "combined")
# 3: stopped by a signal with a snapshot to resume from (requeue); 4: stopped by a signal, nothing saved
# (vidpar.checkpoint.REQUEUE_EXIT_CODE / STOPPED_UNSAVED_EXIT_CODE).
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
EXIT_FILE_ENV = "VIDPAR_EXIT_FILE"  # rank 0 writes its exit code there (launch scripts read it; torchrun hides it)


class OneLineParser(argparse.ArgumentParser):
    """argparse whose errors are one line (``vidpar generate: error: ...``, exit 2) on every rank, not a usage
    block: under torchrun every rank prints it, and the reason must not drown."""

    def error(self, message: str):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


class UsageError(ValueError):
    """Bad command-line input, found before any weight is loaded or any collective runs (exit code 2)."""


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """``--model``, the mesh degrees, dtype, attention backend and the distributed options."""
    parser.add_argument("--model", required=True,
                        help="built-in name (tiny, tiny-shapes) or a checkpoint folder of a supported family "
                             "(official or diffusers layout; 'vidpar info --model X' shows what it is)")
    mesh = parser.add_argument_group("mesh (degrees multiply to the number of processes)")
    mesh.add_argument("--ulysses", type=int, default=None, help="Ulysses (all-to-all over heads) degree")
    mesh.add_argument("--ring", type=int, default=None, help="ring-attention degree")
    mesh.add_argument("--cfg", type=int, default=None, choices=(1, 2), help="guidance branches on 2 rank groups")
    mesh.add_argument("--parallel", choices=("auto",), default=None,
                      help="'auto': the planner picks the degrees (default without degrees: Ulysses over all ranks)")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="auto",
                        help="weights/compute dtype (auto: bfloat16 on CUDA, float32 on CPU; float64 for exact "
                             "comparisons)")
    parser.add_argument("--attention-backend", default="auto",
                        help="attention kernel (see 'vidpar info'; default auto)")
    parser.add_argument("--backend", default=None, help="torch.distributed backend (default nccl with CUDA, else gloo)")
    parser.add_argument("--timeout", type=float, default=300.0, metavar="SECONDS",
                        help="distributed timeout: a rank waiting longer on a dead peer fails (default 300)")
    parser.add_argument("--verbose", "-v", action="store_true", help="log from every rank, print tracebacks")


def parallel_config(args: argparse.Namespace, world_size: int, source, video: tuple[int, int, int]) -> ParallelConfig:
    """The mesh for ``args`` on ``world_size`` ranks; raises ``UsageError`` (no collective, no weights).

    ``video`` is ``(height, width, frames)`` for ``--parallel auto``. Degrees left out are filled in: ring and cfg
    default to 1, ulysses to whatever the world size leaves.
    """
    given = {k: getattr(args, k) for k in ("ulysses", "ring", "cfg") if getattr(args, k) is not None}
    for name, value in given.items():
        if value < 1:
            raise UsageError(f"--{name} must be >= 1, got {value}")
    if args.parallel == "auto":
        if given:
            raise UsageError(f"--parallel auto chooses the degrees itself; drop {', '.join('--' + k for k in given)}")
        from vidpar.plan_cli import auto_parallel_config_for

        height, width, frames = video
        config = auto_parallel_config_for(source, world_size, height=height, width=width, frames=frames)
    else:
        ring, cfg = given.get("ring", 1), given.get("cfg", 1)
        ulysses = given.get("ulysses")
        if ulysses is None:
            if world_size % (ring * cfg):
                raise UsageError(f"--ring {ring} x --cfg {cfg} does not divide the world size {world_size}")
            ulysses = world_size // (ring * cfg)
        try:
            config = ParallelConfig(ulysses=ulysses, ring=ring, cfg=cfg)
        except ValueError as e:
            raise UsageError(str(e)) from None
    try:
        config.check_world_size(world_size)
    except ValueError as e:
        raise UsageError(f"{e}; launch {config.world_size} processes or change the degrees") from None
    if config.cfg > 2:
        raise UsageError(f"cfg degree must be 1 or 2, got {config.cfg}")
    return config


def check_model(name: str):
    """``(family, source, card)`` of ``--model`` (built-in name or folder), validated without weights."""
    from vidpar.models.registry import check_source

    try:
        family, source = check_source(name)
        return family, source, family.card(source)
    except (ValueError, OSError) as e:
        raise UsageError(str(e)) from None


def setup_logging(rank: int, verbose: bool) -> logging.Logger:
    """The ``vidpar`` logger: INFO from rank 0 (every rank with ``verbose``), warnings from every rank."""
    logger = logging.getLogger("vidpar")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"[vidpar rank {rank}] %(message)s"))
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO if (rank == 0 or verbose) else logging.WARNING)
    logger.propagate = False
    return logger


def timeout_of(args: argparse.Namespace) -> timedelta:
    if not (math.isfinite(args.timeout) and args.timeout > 0):
        raise UsageError(f"--timeout must be a positive number of seconds, got {args.timeout}")
    return timedelta(seconds=args.timeout)


def report_failure(rank: int, error: BaseException, verbose: bool, ctx=None) -> None:
    """Name this rank and the error on stderr (every rank: the failing one is what the user needs to see), and tell
    the peers through the heartbeat channel (``ctx.monitor``), so that their own errors can name this rank."""
    if verbose:
        traceback.print_exception(type(error), error, error.__traceback__, file=sys.stderr)
    line = f"{type(error).__name__}: {error}"
    print(f"vidpar: rank {rank} failed: {line}", file=sys.stderr, flush=True)
    monitor = getattr(ctx, "monitor", None)
    if monitor is not None:
        monitor.report_failed(line)


def usage_error(rank: int, prog: str, error: Exception, verbose: bool) -> int:
    """Bad input: every rank says it (the same line; under torchrun the first rank to exit may get the others
    killed before they print); exit code 2."""
    print(f"{prog}: error: {error}", file=sys.stderr, flush=True)
    return EXIT_USAGE


def record_exit(rank: int, code: int) -> int:
    """Rank 0 writes ``code`` to ``$VIDPAR_EXIT_FILE`` (if set): torchrun reports every non-zero rank exit as 1, so
    the Slurm templates read the real code (3: requeue) there. Returns ``code``."""
    path = os.environ.get(EXIT_FILE_ENV)
    if path and rank == 0:
        try:
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "w", encoding="ascii") as fh:
                fh.write(f"{code}\n")
            os.replace(tmp, path)
        except OSError as e:
            print(f"vidpar: could not write the exit code to {path}: {e}", file=sys.stderr, flush=True)
    return code


def finish_distributed(barrier: bool = True) -> None:
    """Tear the default process group down after a clean run (not after a failure: peers may be gone).

    The barrier first: a rank that tears its gloo connections down while a peer is still finishing its last
    collective can make that peer's transport thread abort ("terminate called without an active exception").
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if barrier:
            dist.barrier()
        dist.destroy_process_group()
