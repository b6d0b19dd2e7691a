"""``vidpar info``: versions, devices, attention backends and the launcher this process sees; with ``--model X``,
what that model is (family, geometry, defaults, sampler, limits, parameter counts) — read from its configs, no
weights loaded."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import platform
import sys

import torch

from vidpar.launch_env import detect_launch_env

PACKAGES = ("torch", "diffusers", "transformers", "safetensors", "av", "tqdm", "flash-attn", "xformers")
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
               "SLURM_JOB_ID", "SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_JOB_NODELIST",
               "CUDA_VISIBLE_DEVICES")


def add_info_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default=None, help="describe this model (built-in name or checkpoint folder)")
    parser.add_argument("--json", action="store_true", help="print a JSON object")


def model_info(name: str) -> dict:
    """The card of a model as plain values, plus its planner counts (``ValueError`` if it is not usable)."""
    from vidpar.models.registry import model_card

    card = model_card(name)
    info = card.to_dict()
    geo = card.geometry
    info["limits"] = {
        "frames": f"{geo.temporal_stride}k+1",
        "height/width": f"multiples of {geo.spatial_stride * geo.patch[1]} / {geo.spatial_stride * geo.patch[2]}",
        "prompt tokens": card.text_len,
    }
    if card.workload is not None:
        dit = card.workload.config
        info["denoiser"] = {"parameters": dit.params, "layers": dit.num_layers, "heads": dit.num_heads,
                            "dim": dit.dim, "experts": card.workload.experts}
    return info


def format_model_info(info: dict) -> str:
    d, s = info["defaults"], info["sampler"]
    lines = [f"model: {info['name']} (family {info['family']})",
             f"defaults: {d['width']}x{d['height']}, {d['num_frames']} frames, {d['num_steps']} steps, guidance "
             f"{d['guidance_scale']}" + (f" / {d['guidance_scale_2']}" if d["guidance_scale_2"] is not None else "")
             + f", {d['fps']} fps",
             f"sampler: {s['name']}, shift {s['shift']}; guidance: {info['guidance']}; image input: {info['image']}",
             "limits: " + ", ".join(f"{k} {v}" for k, v in info["limits"].items()),
             f"latent: {info['geometry']['channels']} channels, strides {info['geometry']['temporal_stride']}x"
             f"{info['geometry']['spatial_stride']}x{info['geometry']['spatial_stride']}, patch "
             f"{tuple(info['geometry']['patch'])}"]
    if "denoiser" in info:
        n = info["denoiser"]
        count = f"{n['parameters'] / 1e9:.2f} B" if n["parameters"] >= 1e8 else f"{n['parameters'] / 1e6:.2f} M"
        lines.append(f"denoiser: {count} parameters, {n['layers']} layers, {n['heads']} heads, "
                     f"dim {n['dim']}" + (f", {n['experts']} experts" if n["experts"] > 1 else ""))
    lines += [f"note: {note}" for note in info["notes"]]
    return "\n".join(lines)


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
    if args.model is not None:
        try:
            info = model_info(args.model)
        except (ValueError, OSError) as e:
            print(f"vidpar info: error: {e}", file=sys.stderr)
            return 2
        print(json.dumps(info, indent=1) if args.json else format_model_info(info))
        return 0
    info = collect_info()
    print(json.dumps(info, indent=1) if args.json else format_info(info))
    return 0
