"""``vidpar info``: versions, devices, attention backends and the launcher this process sees."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform

import torch

from vidpar.launch_env import detect_launch_env

PACKAGES = ("torch", "diffusers", "transformers", "safetensors", "av", "tqdm", "flash-attn", "xformers")
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
               "SLURM_JOB_ID", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_JOB_NODELIST",
               "CUDA_VISIBLE_DEVICES")


def add_info_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print a JSON object")


def collect_info() -> dict:
    """Everything ``vidpar info`` prints, as a dict (no side effects: the environment is only read)."""
    import vidpar
    from vidpar.kernels import available_backends

    versions = {"vidpar": vidpar.__version__, "python": platform.python_version()}
    for name in PACKAGES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    cuda = torch.cuda.is_available()
    devices = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())] if cuda else []
    dist = torch.distributed
    launch = detect_launch_env(os.environ)
    return {
        "versions": versions,
        "cuda": {"available": cuda, "version": torch.version.cuda, "devices": devices},
        "cpu": {"threads": torch.get_num_threads(), "machine": platform.machine()},
        "distributed_backends": {b: getattr(dist, f"is_{b}_available", lambda: False)() for b in ("gloo", "nccl", "mpi")},
        "attention_backends": {"cpu": available_backends("cpu"), "cuda": available_backends("cuda") if cuda else []},
        "launcher": {"kind": launch.launcher, "rank": launch.rank, "world_size": launch.world_size,
                     "local_rank": launch.local_rank, "derived": launch.variables,
                     "environment": {k: os.environ[k] for k in LAUNCH_VARS if k in os.environ}},
    }


def format_info(info: dict) -> str:
    v = info["versions"]
    lines = ["versions: " + ", ".join(f"{k} {val}" for k, val in v.items() if val is not None),
             "not installed: " + (", ".join(k for k, val in v.items() if val is None) or "-")]
    c = info["cuda"]
    lines.append(f"devices: {len(c['devices'])} CUDA ({', '.join(c['devices'])}), CUDA {c['version']}" if c["available"]
                 else f"devices: CPU only ({info['cpu']['threads']} threads, {info['cpu']['machine']})")
    lines.append("distributed backends: " + ", ".join(b for b, ok in info["distributed_backends"].items() if ok))
    a = info["attention_backends"]
    lines.append(f"attention backends: cpu: {', '.join(a['cpu'])}" + (f"; cuda: {', '.join(a['cuda'])}" if a["cuda"] else ""))
    la = info["launcher"]
    lines.append(f"launcher: {la['kind']} (rank {la['rank']} of {la['world_size']}, local rank {la['local_rank']})")
    for k, val in {**la["environment"], **{f"{k} (derived)": x for k, x in la["derived"].items()}}.items():
        lines.append(f"  {k}={val}")
    return "\n".join(lines)


def run_info(args: argparse.Namespace) -> int:
    info = collect_info()
    print(json.dumps(info, indent=1) if args.json else format_info(info))
    return 0
