"""``vidpar generate --compile ...``: the per-GPU speed options (results are the same with or without them)."""

from __future__ import annotations

import argparse

from .common import UsageError


def add_compile_arguments(parser: argparse.ArgumentParser) -> None:
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


def compile_options(args: argparse.Namespace):
    """``--compile`` and its options as a ``CompileOptions``, or False."""
    if not args.compile:
        if args.compile_vae:
            raise UsageError("--compile-vae needs --compile")
        return False
    from vidpar.compile import CompileOptions

    return CompileOptions(backend=args.compile_backend, vae=args.compile_vae)


__all__ = ["add_compile_arguments", "compile_options"]
