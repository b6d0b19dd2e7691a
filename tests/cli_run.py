"""Run the ``vidpar`` command in subprocesses (plain, under torchrun, or through the launch scripts) with deadlines."""

from __future__ import annotations

import contextlib
import os
import random
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TINY = ["--model", "tiny", "--prompt", "a red fox in snow", "--height", "32", "--width", "32", "--frames", "5",
        "--seed", "3", "--no-progress"]


def cli_env(**extra: str) -> dict[str, str]:
    """The environment for a vidpar subprocess: this repo importable, one thread per rank (2-core machines)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VIDPAR_DEBUG", "SLURM_"))}
    env.pop("RANK", None)
    env.pop("WORLD_SIZE", None)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["OMP_NUM_THREADS"] = "1"
    env["VIDPAR_PYTHON"] = sys.executable
    env.update(extra)
    return env


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_run(n: int) -> int:
    """The first of ``n`` consecutive free ports, below Linux's ephemeral range (32768-60999), so that no process's
    outgoing connection or torchrun's rendezvous takes one of them between this check and their use."""
    rng = random.Random()
    for _ in range(200):
        base = rng.randrange(20000, 32768 - n)
        try:
            with contextlib.ExitStack() as stack:
                for port in range(base, base + n):
                    stack.enter_context(socket.socket()).bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
    raise RuntimeError(f"no {n} consecutive free ports in 20000-32767")


def vidpar_cmd(args: list[str], nproc: int | None = None) -> list[str]:
    """``python -m vidpar ARGS``, or under ``torchrun --standalone --nproc-per-node NPROC``."""
    if nproc is None:
        return [sys.executable, "-m", "vidpar", *args]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
            "-m", "vidpar", *args]


def run_vidpar(args: list[str], cwd: Path, nproc: int | None = None, timeout: float = 120.0,
               **env: str) -> subprocess.CompletedProcess:
    """Run to completion (``subprocess.TimeoutExpired`` past ``timeout``); stdout and stderr merged."""
    return subprocess.run(vidpar_cmd(args, nproc), cwd=cwd, env=cli_env(**env), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True, timeout=timeout)
