"""``benchmarks/gpu_suite.py --smoke`` runs every part of the GPU suite on CPU with tiny shapes (so a GPU run cannot
fail on a typo), and its numbers agree where they must; ``vidpar.planner.calibrate`` turns a suite JSON into the
planner's efficiency constants."""

from __future__ import annotations

import importlib.util
import json
import sys

import pytest

from cli_run import REPO
from vidpar.planner.calibrate import calibration_lines, main as calibrate_main, measured_efficiencies

TOL = 1e-5  # fp32 on CPU


def test_gpu_suite_smoke_runs_every_part(tmp_path, capsys):
    """In this process (torch is imported already); the suite's own pytest run of the GPU tests is a subprocess."""
    spec = importlib.util.spec_from_file_location("gpu_suite", REPO / "benchmarks" / "gpu_suite.py")
    suite = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("gpu_suite", suite)  # its dataclasses look their module up
    spec.loader.exec_module(suite)
    out = tmp_path / "smoke.json"
    assert suite.main(["--smoke", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    r = json.loads(out.read_text())
    assert r["smoke"] and r["tests"]["returncode"] == 0, r["tests"]  # collected, skipped without CUDA
    assert {row["backend"] for row in r["attention"]} >= {"sdpa", "sdpa_cpu"}
    for row in r["attention"]:
        assert row["tflops"] > 0 and row["err_vs_sdpa"] <= TOL, row
    assert r["gemm"][0]["tflops"] > 0 and r["bandwidth"]["gbs"] > 0
    dit = r["dit"]["rows"]
    assert {(row["impl"], row["mode"]) for row in dit} == {(i, m) for i in ("vidpar", "diffusers")
                                                             for m in ("eager", "compiled")}
    for row in dit:  # same weights, same math: diffusers and the compiled models agree with vidpar eager
        assert row["median_ms"] > 0 and row["err_vs_vidpar_eager"] <= TOL, row
    vae = r["vae"]["rows"]
    assert [row["mode"] for row in vae] == ["eager", "compiled"] and vae[1]["err_vs_first_mode"] <= TOL, vae
    assert "Wan DiT forward" in printed and "| tiny |" in printed


def suite_json(**changes) -> dict:
    """A results dict shaped like the suite's (made-up numbers: this tests the arithmetic only)."""
    results = {
        "smoke": False,
        "env": {"gpu_kind": "h100", "device_name": "NVIDIA H100 80GB HBM3", "torch": "x", "date": "d"},
        "attention": [{"shape": "a", "backend": "sdpa", "heads": 40, "head_dim": 128, "tokens": 75600,
                       "tflops": 494.5},
                      {"shape": "b", "backend": "sdpa_cudnn", "heads": 40, "head_dim": 128, "tokens": 32760,
                       "tflops": 900.0}],
        "gemm": [{"m": 1, "k": 2, "n": 3, "tflops": 741.75}],
        "bandwidth": {"gbs": 2680.0},
        "vae": {"pixels": 1e6, "decode_flops_per_pixel": 1e7,
                "rows": [{"mode": "eager", "dtype": "bfloat16", "median_ms": 100.0, "frames": 9, "width": 1,
                          "height": 1}]},
    }
    results.update(changes)
    return results


def test_calibration_from_a_suite_json(tmp_path, capsys):
    gpu, measured = measured_efficiencies(suite_json())
    values = {m.name: m.value for m in measured}
    assert gpu.name == "h100"
    assert values["ATTENTION_EFFICIENCY"] == pytest.approx(494.5 / 989, abs=1e-3)  # the largest token count
    assert values["GEMM_EFFICIENCY"] == pytest.approx(0.75, abs=1e-3)
    assert values["MEMORY_EFFICIENCY"] == pytest.approx(0.8, abs=1e-3)
    assert values["VAE_EFFICIENCY"] == pytest.approx(1e13 / 0.1 / 989e12, abs=1e-4)
    assert "ATTENTION_EFFICIENCY = 0.5" in calibration_lines(suite_json())
    with pytest.raises(ValueError, match="smoke"):
        measured_efficiencies(suite_json(smoke=True))
    with pytest.raises(ValueError, match="not in vidpar.planner.hardware"):
        measured_efficiencies(suite_json(env={"gpu_kind": None, "device_name": "Some GPU"}))
    path = tmp_path / "r.json"
    path.write_text(json.dumps(suite_json()))
    assert calibrate_main([str(path)]) == 0 and "GEMM_EFFICIENCY = 0.75" in capsys.readouterr().out
