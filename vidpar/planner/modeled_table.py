"""Modeled scaling table: Wan2.1-T2V-14B, 1280x720, 81 frames, 50 steps with guidance, on 1-16 H100 SXM
(NVLink within nodes of 8, InfiniBand NDR between), next to the official Wan repository's published totals.

Run ``python -m vidpar.planner.modeled_table``. The official figures (1837.9 / 945.1 / 497.0 / 287.9 s on 1/2/4/8
GPUs, whole generation) are quoted as given to us; they were measured by the Wan authors with their own code
(FSDP + xDiT USP), not by vidpar.
"""

from __future__ import annotations

from .search import make_request, plan_layouts

OFFICIAL_TOTAL_S = {1: 1837.9, 2: 945.1, 4: 497.0, 8: 287.9}
OFFICIAL_SETTING = ("wan2.1-t2v-14b", 720, 1280, 81, 50)  # what the official totals were measured for
GPU_COUNTS = (1, 2, 4, 8, 16)


def modeled_rows(model: str = "wan2.1-t2v-14b", height: int = 720, width: int = 1280, frames: int = 81,
                 steps: int = 50, gpu: str = "h100") -> list[dict]:
    """One dict per GPU count: the best feasible layout and its predictions (seconds, GB, fractions)."""
    rows = []
    for n in GPU_COUNTS:
        ok, _ = plan_layouts(make_request(model, height, width, frames, n, 8, gpu=gpu, steps=steps))
        best = ok[0]
        rows.append(dict(
            gpus=n, layout=f"u{best.ulysses} r{best.ring} c{best.cfg}" + (" fsdp" if best.fsdp else ""),
            vae_mode=best.vae_mode, step_s=best.step_time_s, denoise_s=best.denoise_time_s,
            vae_s=best.vae_time_s, total_s=best.total_time_s, comm_share=best.comm_share,
            comm_gb_per_step=best.comm_bytes_per_gpu_per_step / 1e9, efficiency=best.scaling_efficiency,
            peak_gb=best.peak_memory_gb,
            official_s=OFFICIAL_TOTAL_S.get(n) if (model, height, width, frames, steps) == OFFICIAL_SETTING else None,
        ))
    return rows


def format_table(rows: list[dict]) -> str:
    """Markdown table of ``modeled_rows`` plus the official totals and the implied official efficiency."""
    head = ("| GPUs | best layout | VAE | step (s) | denoise (s) | VAE (s) | total (s) | exposed comm | "
            "comm/GPU/step (GB) | peak (GB) | denoise eff. | official total (s) | official eff. |")
    lines = [head, "|" + "---|" * 13]
    one = rows[0]["official_s"]
    for r in rows:
        off = r["official_s"]
        off_eff = f"{one / (r['gpus'] * off):.3f}" if off else "-"
        lines.append(
            f"| {r['gpus']} | {r['layout']} | {r['vae_mode']} | {r['step_s']:.3f} | {r['denoise_s']:.1f} | "
            f"{r['vae_s']:.1f} | {r['total_s']:.1f} | {100 * r['comm_share']:.1f}% | {r['comm_gb_per_step']:.2f} | "
            f"{r['peak_gb']:.1f} | {r['efficiency']:.3f} | {off if off else '-'} | {off_eff} |"
        )
    if one:
        ratio = one / rows[0]["total_s"]
        lines.append("")
        lines.append(f"Official 1-GPU total / predicted 1-GPU total = {ratio:.2f} (>1: the official run was slower "
                     f"than this model's efficiency factors assume).")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    import argparse

    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--model", default=OFFICIAL_SETTING[0])
    p.add_argument("--height", type=int, default=720)
    p.add_argument("--width", type=int, default=1280)
    p.add_argument("--frames", type=int, default=81)
    p.add_argument("--steps", type=int, default=50)
    a = p.parse_args(argv)
    print(format_table(modeled_rows(a.model, a.height, a.width, a.frames, a.steps)))


if __name__ == "__main__":
    main()
