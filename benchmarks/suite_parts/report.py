"""The suite's results as markdown tables (printed as they are, for BENCHMARKS.md)."""

from __future__ import annotations


def _cell(row: dict | None, key: str, fmt: str = "{:.1f}") -> str:
    if row is None:
        return "-"
    if "skipped" in row:
        return "skipped"
    if "error" in row:
        return "error"
    value = row.get(key)
    return "-" if value is None else fmt.format(value)


def markdown(results: dict) -> str:
    env = results["env"]
    lines = [f"GPU suite ({'smoke, ' if results['smoke'] else ''}{env['device_name']}, torch {env['torch']}, "
             f"CUDA {env['cuda']}, {env['date']}); times are medians of {results['repeats']} after one warm-up.", ""]
    att = results.get("attention", [])
    if att:
        backends = list(dict.fromkeys(r["backend"] for r in att))
        lines += ["Attention, non-causal, TFLOP/s (4 S^2 H D per call):", "",
                  "| shape | H x D | tokens | " + " | ".join(backends) + " |",
                  "|---|---|---|" + "---|" * len(backends)]
        for shape in dict.fromkeys(r["shape"] for r in att):
            by = {r["backend"]: r for r in att if r["shape"] == shape}
            r0 = next(iter(by.values()))
            lines.append(f"| {shape} | {r0['heads']} x {r0['head_dim']} | {r0['tokens']} | "
                         + " | ".join(_cell(by.get(b), "tflops", "{:.4g}") for b in backends) + " |")
        errors = [f"{r['shape']}/{r['backend']}: {r['error']}" for r in att if "error" in r]
        lines += [""] + [f"- {e}" for e in errors] + ([""] if errors else [])
    gemm = results.get("gemm", [])
    if gemm:
        lines += ["GEMM: " + ", ".join(f"{r['m']}x{r['k']}x{r['n']} {_cell(r, 'tflops', '{:.4g}')} TFLOP/s" for r in gemm)]
    if results.get("bandwidth"):
        lines += [f"Copy bandwidth: {_cell(results['bandwidth'], 'gbs')} GB/s", ""]
    dit = results.get("dit")
    if dit:
        c = dit["config"]
        lines += [f"Wan DiT forward, {c['layers']} layers of dim {c['dim']} / {c['heads']} heads / ffn {c['ffn']}, "
                  f"{c['text_tokens']} text tokens, ms (compile s){'; ' + dit['note'] if dit['note'] else ''}:", "",
                  "| grid | tokens | vidpar eager | vidpar compiled | diffusers eager | diffusers compiled | "
                  "vidpar/diffusers (compiled) | max rel err vs vidpar eager |", "|---|---|---|---|---|---|---|---|"]
        for grid in dict.fromkeys(r["grid"] for r in dit["rows"]):
            by = {(r["impl"], r["mode"]): r for r in dit["rows"] if r["grid"] == grid}
            tokens = next(iter(by.values()))["tokens"]
            cells = []
            for key in (("vidpar", "eager"), ("vidpar", "compiled"), ("diffusers", "eager"), ("diffusers", "compiled")):
                r = by.get(key)
                cell = _cell(r, "median_ms")
                if r is not None and "compile_s" in r:
                    cell += f" ({r['compile_s']:.0f} s)"
                cells.append(cell)
            vc, dc = by.get(("vidpar", "compiled"), {}), by.get(("diffusers", "compiled"), {})
            ratio = f"{vc['median_ms'] / dc['median_ms']:.3f}" if "median_ms" in vc and "median_ms" in dc else "-"
            errs = [r.get("err_vs_vidpar_eager") for r in by.values() if r.get("err_vs_vidpar_eager") is not None]
            lines.append(f"| {grid} | {tokens} | " + " | ".join(cells) + f" | {ratio} | "
                         + (f"{max(errs):.1e}" if errs else "-") + " |")
        lines.append("")
    vae = results.get("vae")
    if vae:
        r0 = vae["rows"][0]
        lines += [f"Wan 2.1 VAE decode, {r0['frames']} frames {r0['width']}x{r0['height']} (latent "
                  f"{vae['latent_shape']}), one process:", "", "| mode | dtype | ms | first call s | peak GiB | "
                  "max rel err vs first row |", "|---|---|---|---|---|---|"]
        for r in vae["rows"]:
            lines.append(f"| {r['mode']} | {r['dtype']} | {_cell(r, 'median_ms')} | {_cell(r, 'first_s')} | "
                         f"{_cell(r, 'peak_gib', '{:.2f}')} | {_cell(r, 'err_vs_first_mode', '{:.1e}')} |")
        lines.append("")
    tests = results.get("tests")
    if tests:
        lines += [f"GPU tests ({' '.join(tests['files'])}): exit {tests['returncode']}, {tests['summary']}"]
    return "\n".join(lines)
