"""Which launcher started this process, and the ``RANK``/``WORLD_SIZE``/... variables ``init_parallel`` reads.

torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR`` and ``MASTER_PORT`` itself. Slurm's
``srun`` without torchrun sets ``SLURM_PROCID``, ``SLURM_NTASKS``, ``SLURM_LOCALID`` and a compressed node list
(``node[01-03,7]``); they are mapped onto the torchrun names, with the first host of the node list as
``MASTER_ADDR``. ``MASTER_ADDR`` and ``MASTER_PORT`` already in the environment win (needed where node names do
not resolve, and to pick a free port). Nothing here touches ``torch.distributed``.
"""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field

DEFAULT_PORT = 29500
NODELIST_VARS = ("SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST")


@dataclass(frozen=True)
class LaunchEnv:
    """The launcher found in an environment and the variables this process should run with.

    ``variables`` holds only the torchrun-style names to add (empty under torchrun or on a single process).
    """

    launcher: str  # "torchrun", "slurm" or "single"
    rank: int
    world_size: int
    local_rank: int
    variables: dict[str, str] = field(default_factory=dict)

    def describe(self) -> str:
        return f"{self.launcher}: rank {self.rank} of {self.world_size} (local rank {self.local_rank})"


def _split_top_level(text: str) -> list[str]:
    """Split at commas that are not inside brackets: ``"a[1,2],b"`` -> ``["a[1,2]", "b"]``."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch == "[":
            depth += 1
        elif ch == "]":
            depth -= 1
            if depth < 0:
                raise ValueError(f"unbalanced ']' in Slurm node list {text!r}")
        elif ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    if depth:
        raise ValueError(f"unbalanced '[' in Slurm node list {text!r}")
    parts.append(text[start:])
    return [p for p in (s.strip() for s in parts) if p]


def _expand_range(spec: str, nodelist: str) -> list[str]:
    """``"01-03,7"`` -> ``["01", "02", "03", "7"]``; zero padding of the lower bound is kept."""
    out = []
    for item in spec.split(","):
        m = re.fullmatch(r"(\d+)(?:-(\d+))?", item.strip())
        if m is None:
            raise ValueError(f"bad range {item!r} in Slurm node list {nodelist!r}")
        lo, hi = m.group(1), m.group(2) or m.group(1)
        if int(hi) < int(lo):
            raise ValueError(f"descending range {item!r} in Slurm node list {nodelist!r}")
        out += [str(n).zfill(len(lo)) for n in range(int(lo), int(hi) + 1)]
    return out


def expand_nodelist(nodelist: str) -> list[str]:
    """Expand a Slurm host list as ``scontrol show hostnames`` does, without needing Slurm.

    ``"node[01-03,7],gpu-a"`` -> ``["node01", "node02", "node03", "node7", "gpu-a"]``; several bracket groups in one
    name expand as a product (``"r[1-2]n[1-2]"`` -> ``r1n1, r1n2, r2n1, r2n2``).
    """
    hosts = []
    for part in _split_top_level(nodelist):
        pieces = re.split(r"(\[[^\]]*\])", part)  # literal text and "[...]" groups, alternating
        choices = [_expand_range(p[1:-1], nodelist) if p.startswith("[") else [p] for p in pieces if p]
        hosts += ["".join(combo) for combo in itertools.product(*choices)]
    return hosts


def _int(environ: Mapping[str, str], name: str) -> int:
    try:
        return int(environ[name])
    except ValueError:
        raise ValueError(f"environment variable {name}={environ[name]!r} is not an integer") from None


def slurm_port(environ: Mapping[str, str]) -> int:
    """A port derived from the job id, so two jobs sharing a node are unlikely to collide."""
    job = environ.get("SLURM_JOB_ID", "")
    return DEFAULT_PORT + (int(job) % 10000 if job.isdigit() else 0)


def detect_launch_env(environ: Mapping[str, str]) -> LaunchEnv:
    """Decide the launcher from ``environ`` (pure: nothing is written).

    torchrun (``RANK`` and ``WORLD_SIZE`` set) wins over Slurm, so ``srun torchrun ...`` is treated as torchrun.
    """
    if "RANK" in environ and "WORLD_SIZE" in environ:
        local = _int(environ, "LOCAL_RANK") if "LOCAL_RANK" in environ else 0
        return LaunchEnv("torchrun", _int(environ, "RANK"), _int(environ, "WORLD_SIZE"), local)
    if "SLURM_PROCID" in environ and "SLURM_NTASKS" in environ:
        rank, world = _int(environ, "SLURM_PROCID"), _int(environ, "SLURM_NTASKS")
        local = _int(environ, "SLURM_LOCALID") if "SLURM_LOCALID" in environ else 0
        variables = {"RANK": str(rank), "WORLD_SIZE": str(world), "LOCAL_RANK": str(local)}
        if "SLURM_NTASKS_PER_NODE" in environ:  # e.g. "2" (may be absent when the layout is uneven)
            variables["LOCAL_WORLD_SIZE"] = environ["SLURM_NTASKS_PER_NODE"].split("(")[0].split(",")[0]
        if "MASTER_ADDR" not in environ:
            nodelist = next((environ[v] for v in NODELIST_VARS if environ.get(v)), None)
            if nodelist is None:
                raise ValueError("Slurm task without SLURM_JOB_NODELIST: set MASTER_ADDR to the first node's address")
            variables["MASTER_ADDR"] = expand_nodelist(nodelist)[0]
        if "MASTER_PORT" not in environ:
            variables["MASTER_PORT"] = str(slurm_port(environ))
        return LaunchEnv("slurm", rank, world, local, variables)
    return LaunchEnv("single", 0, 1, 0)


def apply_launch_env(environ: MutableMapping[str, str] | None = None) -> LaunchEnv:
    """Detect the launcher and write the mapped variables into ``environ`` (default ``os.environ``).

    Call before ``init_parallel``; existing variables are never overwritten.
    """
    environ = os.environ if environ is None else environ
    env = detect_launch_env(environ)
    for key, value in env.variables.items():
        environ.setdefault(key, value)
    return env


__all__ = ["LaunchEnv", "apply_launch_env", "detect_launch_env", "expand_nodelist", "slurm_port"]
