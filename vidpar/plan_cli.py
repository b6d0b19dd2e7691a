"""``vidpar plan``: rank the parallel layouts of a generation on a given cluster (glue for ``vidpar/cli.py``)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys

import os
from pathlib import Path

from vidpar.parallel.config import ParallelConfig
from vidpar.planner.hardware import GPUS, LINKS, gpu_kind_from_name
from vidpar.planner.search import LayoutPlan, auto_parallel_config, make_request, plan_layouts

__all__ = ["add_plan_arguments", "auto_parallel_config", "auto_parallel_config_for", "format_plan", "run_plan",
           "run_throughput"]


def add_plan_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the ``vidpar plan`` options to ``parser``."""
    parser.add_argument("--model", required=True,
                        help="a released configuration (wan2.1-t2v-14b, wan2.1-t2v-1.3b, wan2.2-t2v-a14b, "
                             "wan2.2-ti2v-5b, ...), a built-in model, or a checkpoint folder (its config files suffice)")
    parser.add_argument("--height", type=int, default=720, help="video height in pixels (default 720)")
    parser.add_argument("--width", type=int, default=1280, help="video width in pixels (default 1280)")
    parser.add_argument("--frames", type=int, default=81, help="video frames, 4k+1 (default 81)")
    parser.add_argument("--steps", type=int, default=50, help="denoising steps (default 50)")
    parser.add_argument("--gpus", type=int, required=True, help="total GPU count")
    parser.add_argument("--gpus-per-node", type=int, default=None, help="GPUs per node (default: all on one)")
    parser.add_argument("--gpu", default="h100", choices=sorted(GPUS), help="GPU kind (default h100)")
    parser.add_argument("--gpu-memory", type=float, default=None, metavar="GB",
                        help="usable memory per GPU in GB (default: the GPU's datasheet size)")
    parser.add_argument("--intra-link", default="nvlink", choices=sorted(LINKS), help="link inside a node")
    parser.add_argument("--inter-link", default="ib-ndr", choices=sorted(LINKS), help="link between nodes")
    parser.add_argument("--no-guidance", action="store_true", help="no classifier-free guidance (one branch)")
    parser.add_argument("--text-encoder-cpu", action="store_true", help="umT5 runs on the CPU (no GPU memory)")
    parser.add_argument("--sparse-attention", default=None, metavar="PATTERN[:key=value,...]",
                        help="plan with structured sparse attention (window, radial, svg; as 'vidpar generate'); "
                             "the report compares the best layout with dense attention")
    parser.add_argument("--cache-skip-ratio", type=float, default=0.0, metavar="R",
                        help="share of the DiT's block forwards a step-cache policy skips, in [0, 1) (a run's "
                             "blocks_skipped / blocks_total; default 0)")
    parser.add_argument("--top", type=int, default=10, help="feasible layouts shown in the table (default 10)")
    parser.add_argument("--json", action="store_true", help="print a JSON list of feasible layouts, best first")
    parser.add_argument("--include-rejected", action="store_true",
                        help="with --json: append the rejected layouts (their 'rejected' field says why)")
    parser.add_argument("--throughput", action="store_true",
                        help="compare R replicas x G GPUs (R x G = --gpus) serving a stream of requests: videos per "
                             "hour and p50/p99 latency (see vidpar serve)")
    parser.add_argument("--rate", type=float, default=None, metavar="VIDEOS_PER_HOUR",
                        help="with --throughput: the request stream (default: 70%% of what one group of all GPUs "
                             "can make)")


def run_plan(args: argparse.Namespace) -> int:
    """Run ``vidpar plan``; returns the exit code (0: a feasible layout exists, 1: none, 2: bad arguments)."""
    if args.throughput:
        return run_throughput(args)
    try:
        req = make_request(
            args.model, args.height, args.width, args.frames, args.gpus,
            args.gpus_per_node or args.gpus, gpu=args.gpu, gpu_memory_gb=args.gpu_memory,
            intra_link=args.intra_link, inter_link=args.inter_link, steps=args.steps,
            guidance=not args.no_guidance, text_encoder_on_gpu=not args.text_encoder_cpu,
            sparse=args.sparse_attention, skip_ratio=args.cache_skip_ratio,
        )
        ok, bad = plan_layouts(req)
        dense = None
        if req.sparse is not None:
            dense = plan_layouts(dataclasses.replace(req, sparse=None))[0]
    except ValueError as exc:
        print(f"vidpar plan: {exc}", file=sys.stderr)
        return 2
    if args.json:
        entries = ok + (bad if args.include_rejected else [])
        print(json.dumps([p.to_dict() for p in entries], indent=1))
    else:
        print(format_plan(req, ok, bad, args.top, dense))
    return 0 if ok else 1


def run_throughput(args: argparse.Namespace) -> int:
    """``vidpar plan --throughput``: replicas x GPUs compared for a request stream (see ``planner.throughput``)."""
    from vidpar.planner.throughput import format_throughput, plan_throughput

    try:
        layouts, rate = plan_throughput(
            args.model, args.height, args.width, args.frames, args.gpus, args.gpus_per_node or args.gpus,
            rate_per_hour=args.rate, gpu=args.gpu, gpu_memory_gb=args.gpu_memory, intra_link=args.intra_link,
            inter_link=args.inter_link, steps=args.steps, guidance=not args.no_guidance,
            text_encoder_on_gpu=not args.text_encoder_cpu)
    except ValueError as exc:
        print(f"vidpar plan: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps({"rate_per_hour": rate, "layouts": [lay.to_dict() for lay in layouts]}, indent=1))
    else:
        title = (f"{args.model}: {args.width}x{args.height}, {args.frames} frames, {args.steps} steps on {args.gpus} x "
                 f"{args.gpu}, {args.gpus_per_node or args.gpus} per node")
        print(format_throughput(layouts, rate, title))
    return 0 if any(lay.plan is not None for lay in layouts) else 1


def format_plan(req, ok: list[LayoutPlan], bad: list[LayoutPlan], top: int = 10,
                dense: list[LayoutPlan] | None = None) -> str:
    """The human-readable report: feasible layouts best first, then the rejected ones with their reasons
    (``dense``: the same request's feasible layouts without sparse attention, for the comparison line)."""
    c = req.cluster
    lines = [
        f"{req.model.name}: {req.width}x{req.height}, {req.frames} frames, {req.steps} steps"
        f"{'' if req.guidance else ', no guidance'} on {c.gpus} x {c.gpu.name} ({req.gpu_memory_gb:.0f} GB), "
        f"{c.gpus_per_node} per node, {c.intra_link} / {c.inter_link}"
        + (f"; step cache skipping {req.cache.skip_ratio:.0%} of block forwards" if req.cache.skip_ratio else ""),
    ]
    if req.sparse is not None:
        lines.append(f"sparse attention {req.sparse_costs().describe()}")
        if ok and dense:
            lines.append(f"best total {ok[0].total_time_s:.1f} s sparse vs {dense[0].total_time_s:.1f} s dense "
                         f"({dense[0].total_time_s / ok[0].total_time_s:.2f}x)")
    lines += [
        "",
        f"{'#':>3} {'ulysses':>7} {'ring':>4} {'cfg':>3} {'fsdp':>4} {'vae':>6} {'step s':>8} {'total s':>8} "
        f"{'comm GB/step':>12} {'exp.comm':>8} {'peak GB':>7} {'eff.':>5}",
    ]
    for i, p in enumerate(ok[:top], 1):
        lines.append(
            f"{i:>3} {p.ulysses:>7} {p.ring:>4} {p.cfg:>3} {'on' if p.fsdp else 'off':>4} {p.vae_mode:>6} "
            f"{p.step_time_s:>8.3f} {p.total_time_s:>8.1f} {p.comm_bytes_per_gpu_per_step / 1e9:>12.2f} "
            f"{100 * p.comm_share:>7.1f}% {p.peak_memory_gb:>7.1f} {p.scaling_efficiency:>5.2f}"
        )
        for note in p.notes:
            lines.append(f"      note: {note}")
    if not ok:
        lines.append("    (no feasible layout)")
    elif len(ok) > top:
        lines.append(f"    ... {len(ok) - top} more feasible layouts (--top)")
    lines += ["", f"rejected ({len(bad)} layouts):"]
    groups: dict[tuple, list[str]] = {}  # same mesh and same reasons: one line, listing the fsdp/vae variants
    for p in bad:
        key = (p.ulysses, p.ring, p.cfg, tuple(p.rejected))
        groups.setdefault(key, []).append(f"fsdp {'on' if p.fsdp else 'off'}/vae {p.vae_mode}")
    per_mesh: dict[tuple, int] = {}
    for p in ok + bad:
        per_mesh[(p.ulysses, p.ring, p.cfg)] = per_mesh.get((p.ulysses, p.ring, p.cfg), 0) + 1
    for (u, r, cfg, reasons), variants in groups.items():
        whole = len(variants) == per_mesh[(u, r, cfg)] and len(variants) > 1
        which = "all fsdp/vae variants" if whole else ", ".join(variants)
        lines.append(f"  ulysses={u} ring={r} cfg={cfg} ({which}): " + "; ".join(reasons))
    lines += ["", "eff. = T(1 GPU) / (GPUs x T), step times from the cost model (T(1 GPU) is predicted even where "
              "one GPU would not hold the model); VAE times and memory are uncalibrated estimates."]
    return "\n".join(lines)


def auto_parallel_config_for(
    source: "str | Path",
    world_size: int,
    *,
    height: int = 480,
    width: int = 832,
    frames: int = 81,
    gpus_per_node: int | None = None,
    gpu: str | None = None,
    **options,
) -> ParallelConfig:
    """``parallel="auto"`` for a model source (built-in name or checkpoint folder) on ``world_size`` ranks.

    ``gpus_per_node`` defaults to torchrun's ``LOCAL_WORLD_SIZE``; ``gpu`` to the CUDA device's kind (h100 figures
    when there is no CUDA device or it is not in the table); the video size to the pipeline's defaults.
    ``options`` go to ``auto_parallel_config``. The result's ``world_size`` equals ``world_size``.
    """
    if gpus_per_node is None:
        gpus_per_node = int(os.environ.get("LOCAL_WORLD_SIZE", world_size))
    if gpu is None:
        gpu = _local_gpu_kind() or "h100"
    return auto_parallel_config(str(source), height, width, frames, world_size, gpus_per_node, gpu=gpu, **options)


def _local_gpu_kind() -> str | None:
    import torch

    return gpu_kind_from_name(torch.cuda.get_device_name()) if torch.cuda.is_available() else None


def main(argv: list[str] | None = None) -> int:
    """Stand-alone entry (``python -m vidpar.plan_cli``) until ``vidpar/cli.py`` dispatches ``vidpar plan``."""
    parser = argparse.ArgumentParser(prog="vidpar plan", description=__doc__)
    add_plan_arguments(parser)
    return run_plan(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
