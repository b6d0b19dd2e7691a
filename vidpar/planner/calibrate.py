"""Calibrate the planner's efficiency assumptions (``hardware.py``) from a GPU suite run.

    python benchmarks/gpu_suite.py --out results.json        # on the GPU
    python -m vidpar.planner.calibrate results.json          # anywhere: the measured fractions and the lines

``hardware.py`` keeps its figures as reviewed constants with their sources, so this prints the replacement lines
(with the measurement they come from) instead of editing the file; paste them over the assumptions they replace.
Only what one GPU can measure is calibrated: attention, GEMM and memory efficiency, and the VAE decode's
(``cost.VAE_EFFICIENCY``); the link efficiencies need several GPUs and keep their assumed values.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .hardware import GpuSpec, gpu_spec


@dataclass(frozen=True)
class Measured:
    """One calibrated fraction of peak and where it comes from."""

    name: str  # the constant in hardware.py / cost.py
    value: float
    source: str


def _best(rows: list[dict], key: str, **match: Any) -> dict | None:
    ok = [r for r in rows if key in r and all(r.get(k) == v for k, v in match.items())]
    return max(ok, key=lambda r: r[key]) if ok else None


def measured_efficiencies(results: dict) -> tuple[GpuSpec, list[Measured]]:
    """The fractions of the GPU's datasheet peaks that the suite measured (``results``: its JSON).

    Attention: the fastest backend at the largest token count measured, over the dense bf16 peak. GEMM: the
    fastest projection-shaped GEMM. Memory: the copy bandwidth over the HBM figure. VAE: the bf16 eager decode,
    at the workload's ``decode_flops_per_pixel`` (the planner's own estimate, so calibrated time = measured time).

    Raises ``ValueError`` for a smoke run, an unknown GPU or a run that measured nothing usable.
    """
    if results.get("smoke"):
        raise ValueError("this is a --smoke run (CPU, tiny shapes): nothing to calibrate a GPU from")
    env = results.get("env", {})
    kind = env.get("gpu_kind")
    if not kind:
        raise ValueError(f"GPU {env.get('device_name')!r} is not in vidpar.planner.hardware.GPUS; add it first")
    gpu = gpu_spec(kind)
    peak = gpu.bf16_tflops
    where = f"{env.get('device_name')}, torch {env.get('torch')}, {env.get('date')}"
    out: list[Measured] = []
    att = [r for r in results.get("attention", []) if "tflops" in r]
    if att:
        tokens = max(r["tokens"] for r in att)
        best = _best(att, "tflops", tokens=tokens)
        out.append(Measured("ATTENTION_EFFICIENCY", round(best["tflops"] / peak, 3),
                            f"{best['backend']} {best['tflops']} TFLOP/s at {best['heads']}x{best['head_dim']} "
                            f"heads, {tokens} tokens ({where})"))
    best = _best(results.get("gemm", []), "tflops")
    if best is not None:
        out.append(Measured("GEMM_EFFICIENCY", round(best["tflops"] / peak, 3),
                            f"bf16 GEMM {best['m']}x{best['k']}x{best['n']} {best['tflops']} TFLOP/s ({where})"))
    bw = results.get("bandwidth") or {}
    if "gbs" in bw:
        out.append(Measured("MEMORY_EFFICIENCY", round(bw["gbs"] / gpu.mem_bandwidth_gbs, 3),
                            f"copy {bw['gbs']} GB/s of {gpu.mem_bandwidth_gbs:.0f} ({where})"))
    vae = results.get("vae") or {}
    row = next((r for r in vae.get("rows", []) if r.get("mode") == "eager" and r.get("dtype") == "bfloat16"
                and "median_ms" in r), None)
    if row is not None:
        flops = vae["pixels"] * vae["decode_flops_per_pixel"]
        out.append(Measured("VAE_EFFICIENCY", round(flops / (row["median_ms"] * 1e-3) / (peak * 1e12), 4),
                            f"bf16 decode of {row['frames']}x{row['width']}x{row['height']} in "
                            f"{row['median_ms']:.0f} ms at {vae['decode_flops_per_pixel']:.2g} FLOP/pixel ({where})"))
    if not out:
        raise ValueError("the results hold no attention, GEMM, bandwidth or VAE measurement")
    return gpu, out


def calibration_lines(results: dict) -> str:
    """The constants as lines to paste into ``hardware.py`` (``VAE_EFFICIENCY``: ``cost.py``), each with its source."""
    _, measured = measured_efficiencies(results)
    return "\n".join(f"# measured: {m.source}\n{m.name} = {m.value}" for m in measured)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m vidpar.planner.calibrate", description=__doc__.splitlines()[0])
    p.add_argument("results", type=Path, help="the JSON of benchmarks/gpu_suite.py --out")
    args = p.parse_args(argv)
    try:
        results = json.loads(args.results.read_text(encoding="utf-8"))
        print(calibration_lines(results))
    except (OSError, ValueError) as e:
        print(f"calibrate: {args.results}: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
