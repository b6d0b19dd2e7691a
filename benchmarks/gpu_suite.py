"""The GPU suite in one command: GPU tests, attention backends, DiT forward vs diffusers, VAE decode.

    python benchmarks/gpu_suite.py --out results.json          # one H100/H200, under 8 minutes
    python benchmarks/gpu_suite.py --smoke --out smoke.json    # the same code paths on CPU, tiny shapes (CI)

What it measures (everything goes to ``--out`` as JSON; the markdown tables are printed for BENCHMARKS.md):

1. ``tests/test_gpu_backends.py`` and ``tests/test_gpu_fast_paths.py`` (pytest, exit code and summary);
2. attention TFLOP/s per installed backend at Wan2.1-14B shapes (40 x 128 heads; 32760 and 75600 tokens: 480p and
   720p, 81 frames) and HunyuanVideo-1.5 shapes (16 x 128; 49290 and 111600 tokens), bf16; bf16 GEMM TFLOP/s at
   the DiT's projection shapes and the copy bandwidth (the planner's efficiency inputs, see
   ``vidpar.planner.calibrate``);
3. one forward of a few layers of the Wan2.1-14B DiT at real width (dim 5120, 40 heads, ffn 13824) at 480p and
   720p token counts: vidpar vs diffusers' ``WanTransformer3DModel`` with the same random weights, each eager and
   with its blocks compiled the same way (inductor, ``vidpar.compile``); diffusers is pure Python: if it is not
   installed the comparison is skipped and the results say so;
4. the Wan 2.1 VAE decode of a short 720p clip: time and peak memory in fp32 and bf16 eager and bf16 with the
   decoder compiled.

A time budget (``--budget``, default 450 s) skips what would not fit and records why. ``--smoke`` runs every part
with tiny shapes on CPU (compiling with dynamo only, the ``eager`` backend: inductor's C++ compile takes minutes on
small CPUs; tests/test_compile.py covers inductor and AOT tracing), so a GPU run cannot fail on a typo.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "benchmarks")]  # this checkout's vidpar (installed or not), suite_parts

import torch  # noqa: E402

from suite_parts.attention import attention_tflops, copy_bandwidth, gemm_tflops  # noqa: E402
from suite_parts.common import Budget  # noqa: E402
from suite_parts.dit import dit_forward  # noqa: E402
from suite_parts.report import markdown  # noqa: E402
from suite_parts.vae import vae_decode  # noqa: E402
from vidpar.models.wan import WanTransformerConfig  # noqa: E402
from vidpar.models.wan.vae_config import WanVAEConfig  # noqa: E402

GPU_TESTS = ("tests/test_gpu_backends.py", "tests/test_gpu_fast_paths.py")


@dataclass(frozen=True)
class SuiteShapes:
    """What one run measures (the full GPU sizes, or tiny ones for ``--smoke``)."""

    dtype: torch.dtype
    attention: tuple[tuple[str, int, int, int], ...]
    gemm: tuple[tuple[int, int, int], ...]
    copy_bytes: int
    dit: WanTransformerConfig
    dit_grids: dict[str, tuple[int, int, int]] = field(default_factory=dict)
    text_tokens: int = 512
    vae: WanVAEConfig = field(default_factory=WanVAEConfig.wan21)
    vae_latent: tuple[int, int, int, int, int] = (1, 16, 3, 90, 160)
    vae_modes: tuple[tuple[str, torch.dtype], ...] = ()
    compile_backend: str = "inductor"
    vae_compile_backend: str = "inductor"


def full_shapes(layers: int) -> SuiteShapes:
    return SuiteShapes(
        dtype=torch.bfloat16,
        attention=(("wan14b-480p", 40, 128, 32760), ("wan14b-720p", 40, 128, 75600),
                   ("hy15-480p", 16, 128, 49290), ("hy15-720p", 16, 128, 111600)),
        gemm=((75600, 5120, 5120), (75600, 5120, 13824), (75600, 13824, 5120)),
        copy_bytes=2 * 2**30,
        dit=WanTransformerConfig.preset("wan2.1-t2v-14b").replace(num_layers=layers),
        # latent (F, H, W) of 81 frames at 832x480 and 1280x720: 21 x 30 x 52 = 32760, 21 x 45 x 80 = 75600 tokens
        dit_grids={"480p": (21, 60, 104), "720p": (21, 90, 160)},
        vae_latent=(1, 16, 3, 90, 160),  # 9 frames of 1280x720
        vae_modes=(("eager", torch.float32), ("eager", torch.bfloat16), ("compiled", torch.bfloat16)),
    )


def smoke_shapes() -> SuiteShapes:
    return SuiteShapes(
        dtype=torch.float32,
        attention=(("tiny", 2, 16, 64),),
        gemm=((64, 32, 32),),
        copy_bytes=2**20,
        dit=WanTransformerConfig(dim=32, num_heads=2, num_layers=2, ffn_dim=64, text_dim=16, freq_dim=32),
        dit_grids={"tiny": (1, 4, 6)},
        text_tokens=8,
        vae=WanVAEConfig.from_dict(dict(base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                                        temperal_downsample=[False, True, True])),
        vae_latent=(1, 16, 1, 4, 4),
        vae_modes=(("eager", torch.float32), ("compiled", torch.float32)),
        compile_backend="eager",
        vae_compile_backend="eager",
    )


def environment(device: torch.device) -> dict:
    from vidpar.kernels import available_backends
    from vidpar.planner import gpu_kind_from_name

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    return {
        "date": datetime.date.today().isoformat(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if device.type == "cuda" else None, "device_name": name,
        "gpu_kind": gpu_kind_from_name(name) if device.type == "cuda" else None,
        "backends": available_backends(device.type),
        "diffusers": importlib.util.find_spec("diffusers") is not None,
        "flash_attn": importlib.util.find_spec("flash_attn") is not None,
        "flash_attn3": importlib.util.find_spec("flash_attn_interface") is not None,
    }


def run_tests(timeout: float) -> dict:
    """The GPU tests in a subprocess (they skip themselves without CUDA)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *GPU_TESTS]
    t0 = time.perf_counter()
    try:
        res = subprocess.run(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                             timeout=timeout)
        lines = [line for line in res.stdout.splitlines() if line.strip()]
        return {"files": list(GPU_TESTS), "returncode": res.returncode, "summary": lines[-1] if lines else "",
                "seconds": round(time.perf_counter() - t0, 1),
                "failures": [line for line in lines if line.startswith(("FAILED", "ERROR"))][:20]}
    except subprocess.TimeoutExpired:
        return {"files": list(GPU_TESTS), "returncode": None, "summary": f"timed out after {timeout:.0f} s"}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="results JSON")
    p.add_argument("--smoke", action="store_true", help="tiny shapes on CPU (CI)")
    p.add_argument("--budget", type=float, default=450.0, help="seconds for the whole suite (parts beyond skip)")
    p.add_argument("--repeats", type=int, default=None, help="timed runs per item (default 5; smoke 1)")
    p.add_argument("--dit-layers", type=int, default=2, help="Wan2.1-14B blocks in the DiT forward")
    p.add_argument("--no-diffusers", action="store_true", help="skip the diffusers comparison")
    p.add_argument("--skip", action="append", default=[], choices=("tests", "attention", "dit", "vae"))
    args = p.parse_args(argv)

    budget = Budget(args.budget)
    if args.smoke:
        device, shapes, repeats = torch.device("cpu"), smoke_shapes(), args.repeats or 1
    else:
        if not torch.cuda.is_available():
            print("gpu_suite: no CUDA device; use --smoke for the CPU run", file=sys.stderr)
            return 2
        device, shapes, repeats = torch.device("cuda"), full_shapes(args.dit_layers), args.repeats or 5
    results: dict = {"smoke": args.smoke, "repeats": repeats, "env": environment(device)}
    out = Path(args.out)

    def save() -> None:
        out.write_text(json.dumps(results, indent=1, default=str))

    def part(name: str, fn) -> None:
        if name in args.skip:
            return
        t0 = time.perf_counter()
        print(f"gpu_suite: {name} ... ({budget.left():.0f} s of the budget left)", file=sys.stderr, flush=True)
        results[name] = fn()
        results.setdefault("seconds", {})[name] = round(time.perf_counter() - t0, 1)
        print(f"gpu_suite: {name} took {results['seconds'][name]} s", file=sys.stderr, flush=True)
        save()  # a later failure leaves what was measured

    part("tests", lambda: run_tests(timeout=min(240.0, max(30.0, budget.left() / 3))))
    part("attention", lambda: attention_tflops(list(shapes.attention), shapes.dtype, device, repeats, budget))
    if "attention" not in args.skip:
        results["gemm"] = gemm_tflops(list(shapes.gemm), shapes.dtype, device, repeats, budget)
        results["bandwidth"] = copy_bandwidth(shapes.copy_bytes, device, repeats)
    part("dit", lambda: dit_forward(shapes.dit, shapes.dit_grids, shapes.text_tokens, shapes.dtype, device,
                                    shapes.compile_backend, max(1, min(repeats, 3)), budget,
                                    with_diffusers=not args.no_diffusers))
    part("vae", lambda: vae_decode(shapes.vae, shapes.vae_latent, list(shapes.vae_modes), device,
                                   shapes.vae_compile_backend, max(1, min(repeats, 3)), budget))
    results["total_seconds"] = round(budget.seconds - budget.left(), 1)
    save()
    print(markdown(results))
    print(f"\ngpu_suite: wrote {out} in {results['total_seconds']} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
