"""Bad input and unsafe outputs, as a new user meets them (issue 12): every probe exits 2 with one line before
anything loads (or is agreed on by every rank), never touches a file outside the output, never changes an existing
output; resumed runs skip only outputs whose record matches; the memory model refuses what cannot fit.

Most probes call the checks directly (``plan_jobs``, ``vidpar.outputs``); the CLI probes run under torchrun with 2
processes, many per launch (``probe_runner.py``); the Python API probes run on the 2-rank worker pool.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from cli_run import REPO, cli_env
from vidpar.cli import build_parser
from vidpar.cli.common import UsageError
from vidpar.cli.generate import plan_jobs
from vidpar.models.wan.components import PACKAGED_MODELS
from vidpar.outputs import MANIFEST, OutputError, record_path
from vidpar.video import Video, read_video

BASE = ["--model", "tiny", "--prompt", "a fox", "--steps", "2"]


def plan(argv: list[str], world: int = 1):
    return plan_jobs(build_parser().parse_args(["generate", *argv]), world)


def tree(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` -> sha256 (to prove nothing was touched)."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            out[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif path.is_dir():
            out[str(path.relative_to(folder)) + "/"] = ""
    return out


def frames(n: int = 3, value: int = 0) -> np.ndarray:
    return np.full((n, 8, 8, 3), value, dtype=np.uint8)


# ---- values and degrees, checked before anything loads ----

@pytest.mark.parametrize("argv,world,message", [
    (["--ring", "0"], 2, "--ring must be >= 1, got 0"),
    (["--ulysses", "0"], 2, "--ulysses must be >= 1, got 0"),
    (["--ring", "-2"], 2, "--ring must be >= 1"),
    (["--guidance-scale", "nan"], 1, "guidance_scale must be a finite number, got nan"),
    (["--flow-shift", "inf"], 1, "flow_shift must be a finite number, got inf"),
    (["--flow-shift", "0"], 1, "flow_shift must be > 0"),
    (["--guidance-scale", "-2"], 1, "guidance_scale must be >= 0"),
    (["--seed", str(2**70)], 1, "seed must be an int in [0, 2**64 - 1]"),
    (["--seed", "-1"], 1, "seed must be an int in [0, 2**64 - 1]"),
    (["--timeout", "inf"], 1, "--timeout must be a positive number of seconds, got inf"),
    (["--attention-backend", "nope"], 1, "--attention-backend: unknown attention backend 'nope'"),
    (["--attention-backend", "sdpa", "--ring", "2"], 2, "cannot return a log-sum-exp"),
    (["--attention-backend", "flash_attn"], 1, "flash_attn"),
])
def test_values_degrees_and_backends_are_usage_errors(tmp_path, argv, world, message):
    with pytest.raises(UsageError) as info:
        plan(["--model", "tiny", "--prompt", "a fox", "--out", str(tmp_path / "v.npy"), *argv], world)
    assert message in str(info.value) and "\n" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_argparse_errors_are_one_line(capsys):
    for bad in (["--steps", "2.5"], ["--seed", "x"]):
        with pytest.raises(SystemExit) as info:
            build_parser().parse_args(["generate", "--model", "tiny", "--prompt", "x", "--out", "v.npy", *bad])
        assert info.value.code == 2
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1 and "invalid" in err, err


# ---- outputs: only what vidpar owns ----

@pytest.mark.parametrize("out,setup,overwrite,message", [
    (".", None, False, "is the current folder or one of its parents"),
    ("..", None, True, "is the current folder or one of its parents"),
    ("/", None, True, "is the file system root"),
    ("~home", None, True, "is the home folder"),
    ("clip.mp4/", None, False, "ends with '/' (a folder) but is named like a .mp4 file"),
    ("taken.mp4", "dir", True, "is an existing folder, not a .mp4 file"),
    ("notes", "file", True, "is an existing file, but a folder of PNG frames was asked"),
    ("notes.txt", "file", True, "unknown suffix '.txt'"),
    ("v.avi", None, False, "unknown suffix '.avi'"),
    ("mine.npy", "file", False, "exists; pass --overwrite"),
    ("mine.npy", "file", True, "has no vidpar record (mine.npy.vidpar.json): vidpar did not write it"),
    ("frames", "dir", False, "output folder frames exists; pass --overwrite"),
    ("frames", "frame", True, "00000.png was not written by vidpar"),
    ("sub/none/v.npy", None, False, "does not exist"),
])
def test_output_paths_vidpar_does_not_own_are_refused(tmp_path, monkeypatch, out, setup, overwrite, message):
    monkeypatch.chdir(tmp_path)
    if out == "~home":
        out = str(Path.home())
    if setup == "dir":
        (tmp_path / out).mkdir()
        (tmp_path / out / "keep.txt").write_text("user data")
    elif setup == "file":
        (tmp_path / out).write_text("user data")
    elif setup == "frame":
        (tmp_path / out).mkdir()
        (tmp_path / out / "00000.png").write_text("not a vidpar frame")
    before = tree(tmp_path)
    with pytest.raises(UsageError, match=re.escape(message)):
        plan([*BASE, "--out", out, *(["--overwrite"] if overwrite else [])])
    assert tree(tmp_path) == before


def test_planted_files_in_the_target_folder_survive_an_overwrite(tmp_path):
    """``Video.save(..., overwrite=True)`` into a folder vidpar wrote replaces only the frames its manifest lists;
    files planted there (even a PNG) are untouched, and a frame-named file vidpar did not write is refused."""
    folder = tmp_path / "frames"
    Video(frames(4, 10), record={"request": {"prompt": "first"}}).save(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["00000.png", "00001.png", "00002.png", "00003.png", MANIFEST]
    planted = {"notes.txt": b"user notes", "cover.png": b"user image", "sub/deep.bin": b"\x00\x01"}
    for name, data in planted.items():
        (folder / name).parent.mkdir(exist_ok=True)
        (folder / name).write_bytes(data)
    with pytest.raises(OutputError, match="exists; pass --overwrite"):
        Video(frames(2, 200)).save(folder)
    Video(frames(2, 200), record={"request": {"prompt": "second"}}).save(folder, overwrite=True)
    for name, data in planted.items():
        assert (folder / name).read_bytes() == data, name
    assert not (folder / "00002.png").exists() and not (folder / "00003.png").exists()  # vidpar's stale frames
    assert np.array_equal(read_video(folder), frames(2, 200))  # the manifest's frames, not cover.png
    assert json.loads((folder / MANIFEST).read_text())["request"]["prompt"] == "second"
    # A frame-named file vidpar did not write is never replaced, even with overwrite.
    (folder / "00005.png").write_bytes(b"user frame")
    before = tree(folder)
    with pytest.raises(OutputError, match="00005.png was not written by vidpar"):
        Video(frames(6, 1)).save(folder, overwrite=True)
    assert tree(folder) == before


def test_files_vidpar_wrote_are_replaced_only_with_overwrite_and_only_unchanged(tmp_path):
    out = tmp_path / "v.npy"
    Video(frames(2, 1)).save(out)
    assert record_path(out).is_file()
    with pytest.raises(OutputError, match="exists"):
        Video(frames(2, 2)).save(out)
    Video(frames(2, 3)).save(out, overwrite=True)
    assert np.array_equal(np.load(out), frames(2, 3))
    out.write_bytes(out.read_bytes()[:-1] + b"\x07")  # changed by someone else since
    with pytest.raises(OutputError, match="was changed since vidpar wrote it"):
        Video(frames(2, 4)).save(out, overwrite=True)
    for bad in (".", str(tmp_path / "x.mp4") + "/", str(tmp_path / "y.gif")):
        with pytest.raises(OutputError):
            Video(frames()).save(bad)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["v.npy", "v.npy.vidpar.json"]


def test_resume_skips_only_an_output_whose_record_matches(tmp_path):
    out, ckpt = tmp_path / "v.npy", tmp_path / "ck"
    argv = [*BASE, "--out", str(out), "--checkpoint-dir", str(ckpt)]
    [job] = plan(argv)[2]
    assert not job.skip
    Video(frames(5), fps=16, record={"request": job.request}).save(out)
    before = tree(tmp_path)
    assert plan(argv)[2][0].skip  # same request: skipped
    with pytest.raises(UsageError, match=r"made by another request \(prompt: recorded 'a fox', requested 'a cat'\)"):
        plan([*argv, "--prompt", "a cat"])
    with pytest.raises(UsageError, match=r"\(seed: recorded 0, requested 5\)"):
        plan([*argv, "--seed", "5"])
    with pytest.raises(UsageError, match=r"\(num_steps: recorded 2, requested 3\)"):
        plan([*argv, "--steps", "3"])
    assert not plan([*argv, "--prompt", "a cat", "--overwrite"])[2][0].skip  # regenerated, then replaced
    with pytest.raises(UsageError, match="exists; pass --overwrite"):  # not resuming: never silently reused
        plan([*BASE, "--out", str(out)])
    assert tree(tmp_path) == before


# ---- prompts: every line checked by the tokenizer before anything loads ----

def test_every_prompt_of_a_batch_is_checked_naming_its_line(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a fox\n\n" + "x" * 200 + "\na cat\n")
    with pytest.raises(UsageError, match=rf"--prompts {prompts} line 3: 201 tokens incl\. EOS, too long for the "
                                         r"text encoder \(max 128\)"):
        plan(["--model", "tiny", "--prompts", str(prompts), "--out", str(tmp_path / "v.npy")])
    with pytest.raises(UsageError, match=r"^--prompt: 201 tokens"):
        plan(["--model", "tiny", "--prompt", "x" * 200, "--out", str(tmp_path / "v.npy")])
    with pytest.raises(UsageError, match=r"^--negative-prompt: 301 tokens"):
        plan([*BASE, "--negative-prompt", "y" * 300, "--out", str(tmp_path / "v.npy")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prompts.txt"]


# ---- model files: typed configs, complete weights ----

@pytest.fixture
def shapes_folder(tmp_path):
    """A private copy of the packaged ``tiny-shapes`` checkpoint (a diffusers folder, 5 MB) to break."""
    folder = tmp_path / "tiny-shapes"
    shutil.copytree(PACKAGED_MODELS["tiny-shapes"], folder)
    return folder


@pytest.mark.parametrize("file,field,value,message", [
    ("transformer/config.json", "num_heads", 4.7, "num_heads must be an int >= 1, got 4.7"),
    ("transformer/config.json", "patch_size", 2, "patch_size must be a list of 3 ints >= 1, got 2"),
    ("transformer/config.json", "text_len", "abc", "text_len must be an int >= 1, got 'abc'"),
    ("transformer/config.json", "dim", None, "dim must be an int >= 1, got None"),
    ("transformer/config.json", "eps", -1, "eps must be a finite number > 0, got -1"),
    ("transformer/config.json", "model_type", "vace", "model_type must be a string (one of"),
    ("vae/config.json", "z_dim", "12", "z_dim must be an int >= 1, got '12'"),
    ("vae/config.json", "dim_mult", [1, 2.5, 2, 2], "dim_mult must be a list of ints >= 1"),
    ("vae/config.json", "latents_std", [0.2] * 11 + [-1], "latents_std must be a list of 12 finite numbers > 0"),
])
def test_config_fields_are_typed_and_ranged_naming_file_and_field(shapes_folder, file, field, value, message):
    path = shapes_folder / file
    config = json.loads(path.read_text())
    config[field] = value
    path.write_text(json.dumps(config))
    with pytest.raises(UsageError) as info:
        plan(["--model", str(shapes_folder), "--prompt", "a red circle", "--out", str(shapes_folder / "v.npy")])
    assert str(path) in str(info.value) and message in str(info.value), str(info.value)


@pytest.mark.parametrize("file", ["transformer/diffusion_pytorch_model.safetensors",
                                  "vae/diffusion_pytorch_model.safetensors", "text_encoder/model.safetensors"])
def test_truncated_weights_are_named_before_loading_and_while_loading(shapes_folder, file):
    from vidpar.models.wan.components import load_components

    path = shapes_folder / file
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 100])  # a partial download: the header is intact
    argv = ["--model", str(shapes_folder), "--prompt", "a red circle", "--out", str(shapes_folder / "v.npy")]
    with pytest.raises(UsageError, match=rf"{path}: .*(truncated|not a complete safetensors file)"):
        plan(argv)
    with pytest.raises(ValueError, match=rf"{path}: "):  # the loader names it too (a file cut after the check)
        load_components(shapes_folder, torch.float32)
    path.write_bytes(data[:20])  # the header itself cut
    with pytest.raises(UsageError, match=rf"{path}: .*truncated"):
        plan(argv)


def test_the_card_counts_the_checkpoints_own_text_encoder():
    from transformers import UMT5EncoderModel

    from vidpar.models.registry import model_card
    from vidpar.models.wan.builtin import build_tiny

    te = UMT5EncoderModel.from_pretrained(str(PACKAGED_MODELS["tiny-shapes"] / "text_encoder"))
    assert model_card("tiny-shapes").workload.text_encoder_params == sum(p.numel() for p in te.parameters())
    tiny_te = build_tiny()[2].model
    assert model_card("tiny").workload.text_encoder_params == sum(p.numel() for p in tiny_te.parameters())


def test_from_pretrained_checks_configs_weights_and_backend_before_loading(shapes_folder):
    from vidpar.pipeline import Pipeline

    with pytest.raises(ValueError, match="attention_backend: unknown attention backend 'nope'"):
        Pipeline.from_pretrained("tiny", attention_backend="nope")
    path = shapes_folder / "transformer" / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), "num_heads": 4.7}))
    with pytest.raises(ValueError, match=re.escape(f"{path}: num_heads must be an int >= 1, got 4.7")):
        Pipeline.from_pretrained(shapes_folder)


# ---- memory: the planner's model against this machine ----

def test_memory_model_refuses_what_cannot_fit_and_names_the_largest_that_does():
    from vidpar.memory_check import MemoryRequest, largest_fitting, memory_problem, predict
    from vidpar.models.registry import model_card
    from vidpar.parallel import ParallelConfig

    card = model_card("tiny")
    mesh = ParallelConfig(ulysses=2)
    capacity = 4e9
    huge = MemoryRequest(100000, 100000, 9, mesh, torch.float32, "cpu")
    problem = memory_problem(card, huge, capacity, "each rank")
    assert problem is not None and "100000x100000, 9 frames is predicted to need" in problem
    h, w = largest_fitting(card, huge, capacity)
    assert h == w and h % 16 == 0 and f"is {w}x{h}" in problem
    assert predict(card, MemoryRequest(h, w, 9, mesh, torch.float32, "cpu")).peak <= capacity
    assert predict(card, MemoryRequest(h + 16, w + 16, 9, mesh, torch.float32, "cpu")).peak > capacity
    # Tiny CPU runs are never refused: the CPU overhead, not the planner's 3 GB CUDA runtime, and fp32 bytes.
    small = MemoryRequest(32, 32, 5, ParallelConfig(), torch.float32, "cpu")
    assert predict(card, small).peak < 0.6e9 and memory_problem(card, small, 1e9, "each rank") is None
    # The GPU assumptions are unchanged for the planner: bf16 and its CUDA overhead.
    assert predict(card, MemoryRequest(32, 32, 5, ParallelConfig(), torch.bfloat16, "cuda")).overhead == 3e9


# ---- the checkpoint folder's lock ----

def test_checkpoint_lock_refuses_a_live_owner_and_takes_over_stale_ones(tmp_path, monkeypatch):
    from vidpar.checkpoint_lock import CheckpointLock, LockedError

    first = CheckpointLock(tmp_path / "ck", heartbeat=0.1).acquire()
    beat = first.read_owner()["heartbeat"]
    time.sleep(0.35)
    assert first.read_owner()["heartbeat"] > beat, "the heartbeat is refreshed"
    with pytest.raises(LockedError, match=rf"in use by another run \(host {socket.gethostname()}, pid {os.getpid()}"):
        CheckpointLock(tmp_path / "ck").acquire()
    first.release()
    assert not (tmp_path / "ck" / "vidpar.lock").exists()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    lock_file = tmp_path / "ck" / "vidpar.lock"
    for owner in ({"host": socket.gethostname(), "pid": gone.pid, "heartbeat": time.time()},  # dead, same host
                  {"host": "elsewhere", "pid": 1, "heartbeat": time.time() - 120}):  # silent for 2 minutes
        lock_file.write_text(json.dumps(owner))
        taken = CheckpointLock(tmp_path / "ck").acquire()
        assert taken.read_owner()["pid"] == os.getpid()
        taken.release()
    lock_file.write_text(json.dumps({"host": "elsewhere", "pid": 1, "heartbeat": time.time()}))
    with pytest.raises(LockedError, match="host elsewhere, pid 1"):
        CheckpointLock(tmp_path / "ck").acquire()
    # A crashed earlier attempt of this same run (requeued by Slurm, or restarted by torchrun) on another node.
    monkeypatch.setenv("SLURM_JOB_ID", "77")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "1")
    lock_file.write_text(json.dumps({"host": "elsewhere", "pid": 1, "heartbeat": time.time(), "job": "77",
                                     "attempt": [0, 0]}))
    taken = CheckpointLock(tmp_path / "ck").acquire()
    assert taken.read_owner()["attempt"] == [1, 0]
    taken.release()


# ---- the Python API on 2 ranks ----

def api_task(env, change: dict, lock_owner: int | None = None, folder: str | None = None):
    from test_pipeline import REQUEST, make_pipeline
    from vidpar.parallel import ParallelConfig

    ctx = env.context(ParallelConfig(ulysses=2))
    pipe = make_pipeline(ctx, torch.float32)
    if change.pop("nan_on_rank", None) == ctx.rank:  # the model's output overflows on one rank only
        pipe.comps.denoisers()[0].register_forward_hook(lambda _m, _i, out: out * float("nan"))
    if lock_owner is not None and ctx.rank == 0:
        Path(folder).mkdir(exist_ok=True)
        (Path(folder) / "vidpar.lock").write_text(json.dumps({"host": socket.gethostname(), "pid": lock_owner,
                                                             "heartbeat": time.time()}))
    ctx.reset_comm_stats()
    try:
        pipe.generate(**{**REQUEST, **change})
    except Exception as e:  # noqa: BLE001 - returned to the test
        return type(e).__name__, str(e), ctx.comm_stats()
    return None, None, ctx.comm_stats()


@pytest.mark.parametrize("change,message", [
    ({"guidance_scale": float("nan")}, "guidance_scale must be a finite number, got nan"),
    ({"flow_shift": float("inf")}, "flow_shift must be a finite number, got inf"),
    ({"num_steps": 2.5}, "num_steps must be an int >= 1, got 2.5"),
    ({"seed": 2**70}, "seed must be an int in [0, 2**64 - 1]"),
])
def test_api_bad_values_fail_on_every_rank_before_any_collective(pools, change, message):
    for kind, error, stats in pools(2).run(api_task, change):
        assert kind == "ValueError" and message in error, error
        assert stats == {}


def test_api_memory_refusal_is_agreed_on_every_rank(pools):
    results = pools(2).run(api_task, {"height": 100000, "width": 100000, "num_frames": 9})
    for kind, error, stats in results:
        assert kind == "ValueError" and "is predicted to need" in error and "memory_check=False" in error
        assert set(stats) == {"control"}, stats  # one small all-gather of the capacities, nothing else
    assert results[0][1] == results[1][1]


def test_api_non_finite_latents_stop_every_rank_at_the_same_step(pools):
    for kind, error, _stats in pools(2).run(api_task, {"nan_on_rank": 1}):
        assert kind == "NonFiniteLatents" and "NaN/Inf at step 1 of 3" in error, error


def test_api_checkpoint_dir_in_use_is_refused_on_every_rank(pools, tmp_path):
    folder = tmp_path / "ck"
    for kind, error, _stats in pools(2).run(api_task, {"checkpoint_dir": str(folder)}, os.getpid(), str(folder)):
        assert kind == "LockedError" and f"pid {os.getpid()}" in error, error
    assert sorted(p.name for p in folder.iterdir()) == ["vidpar.lock"]


# ---- the CLI under torchrun, 2 processes: many probes per launch ----

def test_cli_probes_exit_2_with_one_line_on_every_rank(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    (work / "existing.npy").write_bytes(b"user file")
    (work / "taken.mp4").mkdir()
    (work / "frames").mkdir()
    (work / "frames" / "keep.txt").write_text("planted")
    prompts = work / "prompts.txt"
    prompts.write_text("a fox\n" + "x" * 200 + "\n")
    model = work / "model"
    shutil.copytree(PACKAGED_MODELS["tiny-shapes"], model)
    config = json.loads((model / "transformer" / "config.json").read_text())
    (model / "transformer" / "config.json").write_text(json.dumps({**config, "num_heads": 4.7}))
    [job] = plan([*BASE, "--out", str(work / "done.npy"), "--checkpoint-dir", str(work / "ck")])[2]
    Video(frames(5), record={"request": job.request}).save(work / "done.npy")
    args = ["generate", *BASE, "--no-progress"]
    probes = [
        ("ring 0", [*args, "--out", "v.npy", "--ring", "0"], "--ring must be >= 1, got 0"),
        ("check ring 0", ["check", "--model", "tiny", "--ring", "0"], "vidpar check: error: --ring must be >= 1"),
        ("check backend", ["check", "--model", "tiny", "--attention-backend", "nope"], "unknown attention backend"),
        ("guidance nan", [*args, "--out", "v.npy", "--guidance-scale", "nan"], "guidance_scale must be a finite"),
        ("shift inf", [*args, "--out", "v.npy", "--flow-shift", "inf"], "flow_shift must be a finite number"),
        ("steps 2.5", [*args, "--out", "v.npy", "--steps", "2.5"], "argument --steps: invalid int value: '2.5'"),
        ("seed 2**70", [*args, "--out", "v.npy", "--seed", str(2**70)], "seed must be an int in [0, 2**64 - 1]"),
        ("backend", [*args, "--out", "v.npy", "--attention-backend", "nope"], "unknown attention backend 'nope'"),
        ("out .", [*args, "--out", "."], "is the current folder"),
        ("out x.mp4/", [*args, "--out", "x.mp4/"], "ends with '/'"),
        ("folder named like a file", [*args, "--out", "taken.mp4"], "is an existing folder, not a .mp4 file"),
        ("unknown suffix", [*args, "--out", "prompts.txt"], "unknown suffix '.txt'"),
        ("existing file", [*args, "--out", "existing.npy", "--overwrite"], "vidpar did not write it"),
        ("existing folder", [*args, "--out", "frames"], "output folder frames exists"),
        ("stale output", [*args, "--out", "done.npy", "--checkpoint-dir", "ck", "--prompt", "a cat"],
         "made by another request (prompt: recorded 'a fox', requested 'a cat')"),
        ("prompt line 2", ["generate", "--model", "tiny", "--prompts", "prompts.txt", "--out", "v.npy"],
         "--prompts prompts.txt line 2: 201 tokens incl. EOS, too long"),
        ("config field", ["generate", "--model", str(model), "--prompt", "x", "--out", "v.npy"],
         f"{model / 'transformer' / 'config.json'}: num_heads must be an int >= 1, got 4.7"),
        # After the rendezvous, agreed on by both ranks (so it comes last: one process group per launch).
        ("memory", [*args, "--out", "v.npy", "--height", "100000", "--width", "100000", "--frames", "9"],
         "100000x100000, 9 frames is predicted to need"),
    ]
    spec = tmp_path / "probes.json"
    spec.write_text(json.dumps([{"name": n, "argv": a} for n, a, _ in probes]))
    before = tree(work)
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          str(REPO / "tests" / "probe_runner.py"), str(spec), str(tmp_path)], cwd=work,
                         env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=180)
    elapsed = time.monotonic() - t0
    assert res.returncode == 0, res.stdout
    for rank in (0, 1):
        results = json.loads((tmp_path / f"rank{rank}.json").read_text())
        for (name, _argv, message), got in zip(probes, results):
            errors = [line for line in got["stderr"].splitlines() if "error:" in line]
            assert got["code"] == 2, (rank, name, got)
            assert len(errors) == 1 and message in errors[0], (rank, name, got["stderr"])
            if name != "memory":  # before the rendezvous: nothing else is printed
                assert len(got["stderr"].strip().splitlines()) == 1, (rank, name, got["stderr"])
            assert got["seconds"] < 20, (rank, name, got["seconds"])
    assert tree(work) == before, "a refused run touched a file"
    assert elapsed < 120, elapsed


def test_two_runs_sharing_a_checkpoint_dir(tmp_path):
    """While one run (2 processes) uses --checkpoint-dir, a second one is refused naming it; the first finishes."""
    from cli_run import TINY, run_vidpar, vidpar_cmd

    ckpt = tmp_path / "ck"
    args = ["generate", *TINY, "--steps", "4", "--out", "first.npy", "--checkpoint-dir", str(ckpt)]
    first = subprocess.Popen(vidpar_cmd(args, nproc=2), cwd=tmp_path, env=cli_env(VIDPAR_DEBUG_SLOW="0.5"),
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (ckpt / "vidpar.lock").exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        owner = json.loads((ckpt / "vidpar.lock").read_text())
        t0 = time.monotonic()
        second = run_vidpar(["generate", *TINY, "--steps", "4", "--out", "second.npy", "--checkpoint-dir",
                             str(ckpt)], tmp_path, timeout=60)
        assert second.returncode == 2 and time.monotonic() - t0 < 30, second.stdout
        assert f"is in use by another run (host {owner['host']}, pid {owner['pid']}" in second.stdout
        assert first.poll() is None, "the first run must still be running when the second is refused"
        out = first.communicate(timeout=120)[0]
    finally:
        if first.poll() is None:
            first.kill()
            first.wait(timeout=10)
    assert first.returncode == 0, out
    assert (tmp_path / "first.npy").is_file() and not (tmp_path / "second.npy").exists()
    assert not (ckpt / "vidpar.lock").exists() and not (ckpt / "denoise_state.pt").exists()
