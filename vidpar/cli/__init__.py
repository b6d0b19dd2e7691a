"""The ``vidpar`` command (``python -m vidpar``): ``generate``, ``check``, ``serve``, ``info`` and ``plan``.

Run ``generate``, ``check`` and ``serve`` under ``torchrun`` or Slurm's ``srun`` (one process per GPU); ``info``
and ``plan`` need no launcher. Exit codes: 0 ok, 1 failed (a rank raised, died or stopped answering; every rank's
message names the rank), 2 bad input (found before any weight is loaded), 3 stopped by SIGTERM/SIGUSR1 with a
snapshot in --checkpoint-dir (rerun the same command to resume; the Slurm templates requeue; ``serve``: drained,
the running job requeued with its snapshot), 4 stopped by a signal with nothing saved (no --checkpoint-dir).
"""

from __future__ import annotations

import argparse
import sys


def build_parser() -> argparse.ArgumentParser:
    from vidpar.plan_cli import add_plan_arguments
    from vidpar.serve.cli import add_serve_arguments

    from .check import add_check_arguments
    from .common import OneLineParser
    from .generate import add_generate_arguments
    from .info import add_info_arguments

    parser = OneLineParser(prog="vidpar", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="{generate,check,serve,info,plan}",
                                parser_class=OneLineParser)
    add_generate_arguments(sub.add_parser("generate", help="generate videos from prompts"))
    add_check_arguments(sub.add_parser("check", help="parity of the parallel DiT against one rank"))
    add_serve_arguments(sub.add_parser("serve", help="a video service (OpenAI videos API) on the loaded model"))
    add_info_arguments(sub.add_parser("info", help="versions, devices, attention backends, launcher"))
    add_plan_arguments(sub.add_parser("plan", help="rank parallel layouts for a cluster"))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``) and run the subcommand; returns the exit code."""
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    if args.command == "generate":
        from .generate import run_generate

        return run_generate(args)
    if args.command == "check":
        from .check import run_check

        return run_check(args)
    if args.command == "serve":
        from vidpar.serve.cli import run_serve

        return run_serve(args)
    if args.command == "info":
        from .info import run_info

        return run_info(args)
    from vidpar.plan_cli import run_plan

    return run_plan(args)


__all__ = ["build_parser", "main"]
