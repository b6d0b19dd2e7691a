"""The Slurm templates submitted for real to a single-machine Slurm (2 fake nodes with 2 fake GPUs each): a
2-node job, preemption with a snapshot requeued and resumed (srun without torchrun, and torchrun, which hides the
ranks' exit code 3), and a stop without a snapshot that exits 4 and is not requeued.

The cluster is started by ``tests/slurm/local-slurm.sh`` when Slurm is installed (``.ci/install-slurm.sh``) and
none is running; it is left running for later sessions. Fake node names do not resolve, so jobs get
``MASTER_ADDR=127.0.0.1``; the fake GPUs are not CUDA devices, so the ranks run on CPU with gloo.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from cli_run import REPO, TINY, cli_env, free_port

STATE_DIR = "/tmp/vidpar-slurm"
NODES, GPUS = 2, 2


def _cluster_ready() -> bool:
    """At least NODES idle nodes with gres gpu:GPUS answer ``sinfo``."""
    try:
        res = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T %G"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    nodes = [line.split() for line in res.stdout.splitlines() if line.strip()]
    usable = {n[0] for n in nodes if len(n) == 3 and n[1] in ("idle", "mixed") and f"gpu:{GPUS}" in n[2]}
    return res.returncode == 0 and len(usable) >= NODES


@pytest.fixture(scope="module")
def slurm():
    """A running local Slurm, started here if needed; skips only where Slurm is not installed or cannot start."""
    missing = [b for b in ("sbatch", "sinfo", "slurmctld", "slurmd") if shutil.which(b) is None
               and not Path("/usr/sbin", b).exists()]
    if missing:
        pytest.skip(f"Slurm is not installed (missing {', '.join(missing)}); run .ci/install-slurm.sh as root")
    if not _cluster_ready():
        if os.geteuid() != 0:
            pytest.skip("no local Slurm cluster running and starting one (tests/slurm/local-slurm.sh) needs root")
        res = subprocess.run(["bash", str(REPO / "tests" / "slurm" / "local-slurm.sh"), str(NODES), STATE_DIR],
                             env={**os.environ, "FAKE_GPUS": str(GPUS)}, capture_output=True, text=True, timeout=180)
        assert res.returncode == 0, f"local-slurm.sh failed:\n{res.stdout}\n{res.stderr}"
        for _ in range(30):
            if _cluster_ready():
                break
            time.sleep(1)
        assert _cluster_ready(), subprocess.run(["sinfo"], capture_output=True, text=True, timeout=20).stdout
    return True


def _sbatch(template: str, options: list[str], args: list[str], cwd: Path, timeout: float = 240.0,
            on_start=None, **env: str):
    """Submit ``template`` for real and wait for the job; returns (final job state, exit code, job log).

    ``on_start(job_id)`` runs right after submission (e.g. to preempt the job). Polls ``scontrol`` twice a second
    instead of using ``sbatch --wait``, whose back-off adds ~15 s per job.
    """
    log = cwd / "job.out"
    cmd = ["sbatch", "--parsable", f"--output={log}", f"--chdir={cwd}", "--time=10", "--cpus-per-task=1",
           *options, str(REPO / "launch" / "slurm" / template), *args]
    env = cli_env(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(free_port()), **env)
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, f"sbatch failed: {res.stdout}{res.stderr}"
    job = res.stdout.strip().split(";")[0]
    if on_start is not None:
        on_start(job)
    deadline = time.monotonic() + timeout
    state, code, expedited, requeued_at = "PENDING", "", False, None
    while time.monotonic() < deadline:
        info = subprocess.run(["scontrol", "show", "job", "-o", job], capture_output=True, text=True,
                              timeout=20).stdout
        fields = dict(f.split("=", 1) for f in info.split() if "=" in f)
        state, code = fields.get("JobState", "UNKNOWN"), fields.get("ExitCode", "")
        if state == "PENDING" and fields.get("Restarts", "0") != "0" and not expedited:
            # Slurm holds a requeued job ~2 minutes before it may start again; the test need not wait that long,
            # but a relaunch in the same second as the kill gets a credential slurmd still counts as revoked
            # ("Job credential revoked"): wait a few seconds first.
            requeued_at = requeued_at or time.monotonic()
            if time.monotonic() - requeued_at >= 3.0:
                subprocess.run(["scontrol", "update", f"JobId={job}", "StartTime=now"], timeout=20, check=True)
                expedited = True
        if state not in ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "SUSPENDED"):
            break
        time.sleep(0.5)
    else:
        subprocess.run(["scancel", job], timeout=20)  # our job: do not leave it running
        raise AssertionError(f"job {job} still {state} after {timeout:.0f} s")
    return state, code, log.read_text() if log.exists() else ""


@pytest.fixture(scope="module")
def reference():
    """One process, in this interpreter (no distributed run): the frames every layout must reproduce."""
    import torch

    from vidpar.pipeline import Pipeline

    pipe = Pipeline.from_pretrained("tiny", dtype=torch.float64)
    return pipe.generate("a red fox in snow", height=32, width=32, num_frames=5, num_steps=3, seed=3).frames


def test_multi_node_template_two_nodes_two_ranks_each(slurm, tmp_path, reference):
    args = ["--steps", "3", "--dtype", "float64", "--out", "fox.npy", "--ulysses", "2", "--ring", "2",
            "--timeout", "120", *TINY]
    state, code, log = _sbatch("multi-node.sbatch",
                               [f"--nodes={NODES}", f"--gpus-per-node={GPUS}", "--ntasks-per-node=1"], args, tmp_path)
    assert (state, code) == ("COMPLETED", "0:0"), log
    assert f"on {NODES} nodes x {GPUS} ranks" in log and "torchrun: rank 0 of 4" in log, log
    assert np.array_equal(np.load(tmp_path / "fox.npy"), reference), log


def test_single_node_template_srun_preempted_requeued_and_resumed(slurm, tmp_path, reference):
    """srun starts the ranks itself (vidpar maps SLURM_PROCID/SLURM_NTASKS/SLURM_LOCALID). The batch script gets
    the preemption signal mid-run (as ``--signal=B:USR1@...`` delivers it): the ranks save and exit 3, the script
    requeues the job, and the requeued job resumes to the frames of an uninterrupted run."""
    ckpt = tmp_path / "ckpt"
    args = ["--steps", "3", "--dtype", "float64", "--out", "fox.npy", "--ring", "2", "--timeout", "120",
            "--checkpoint-dir", str(ckpt), *TINY]

    def preempt(job: str) -> None:
        deadline = time.monotonic() + 120
        while not (ckpt / "denoise_state.pt").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        subprocess.run(["scancel", "--signal=USR1", "--batch", job], timeout=20, check=True)

    state, code, log = _sbatch("single-node.sbatch",
                               ["--nodes=1", f"--gpus-per-node={GPUS}", f"--ntasks-per-node={GPUS}"], args, tmp_path,
                               on_start=preempt, VIDPAR_DEBUG_SLOW="0.4")
    assert (state, code) == ("COMPLETED", "0:0"), log
    assert "slurm: rank 0 of 2" in log and "stopped by SIGUSR1 after step" in log, log
    assert "requeueing job" in log and "(restart 1)" in log and "resuming from step" in log, log
    assert np.array_equal(np.load(tmp_path / "fox.npy"), reference), log
    assert not (ckpt / "denoise_state.pt").exists()


def test_multi_node_template_requeues_on_the_ranks_exit_3_through_torchrun(slurm, tmp_path, reference):
    """torchrun reports its ranks' exit 3 as 1: the template reads rank 0's own code from VIDPAR_EXIT_FILE, so a
    preempted run with a snapshot is requeued and resumes to the frames of an uninterrupted run."""
    ckpt = tmp_path / "ckpt"
    args = ["--steps", "3", "--dtype", "float64", "--out", "fox.npy", "--ring", "2", "--timeout", "120",
            "--checkpoint-dir", str(ckpt), *TINY]

    def preempt(job: str) -> None:
        deadline = time.monotonic() + 120
        while not (ckpt / "denoise_state.pt").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        subprocess.run(["scancel", "--signal=USR1", "--batch", job], timeout=20, check=True)

    state, code, log = _sbatch("multi-node.sbatch", [f"--nodes={NODES}", "--gpus-per-node=1", "--ntasks-per-node=1"],
                               args, tmp_path, on_start=preempt, VIDPAR_DEBUG_SLOW="0.4")
    assert (state, code) == ("COMPLETED", "0:0"), log
    assert "stopped by SIGUSR1 after step" in log and "(exit 3)" in log, log  # torchrun itself exits 1
    assert "requeueing job" in log and "(restart 1)" in log and "resuming from step" in log, log
    assert np.array_equal(np.load(tmp_path / "fox.npy"), reference), log
    assert not list(tmp_path.glob(".vidpar-exit.*")), "the exit file is consumed"


def test_a_stop_without_checkpoint_dir_exits_4_and_is_not_requeued(slurm, tmp_path):
    log_file = tmp_path / "job.out"

    def preempt(job: str) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and "prompt 0:" not in (log_file.read_text() if log_file.exists() else ""):
            time.sleep(0.2)
        time.sleep(0.5)
        subprocess.run(["scancel", "--signal=USR1", "--batch", job], timeout=20, check=True)

    args = ["--steps", "6", "--out", "fox.npy", "--timeout", "120", *TINY]
    state, code, log = _sbatch("single-node.sbatch", ["--nodes=1", f"--gpus-per-node={GPUS}",
                                                      f"--ntasks-per-node={GPUS}"], args, tmp_path,
                               on_start=preempt, VIDPAR_DEBUG_SLOW="0.4")
    assert (state, code) == ("FAILED", "4:0"), log
    assert "nothing was saved (no --checkpoint-dir)" in log and "not requeueing" in log, log
    assert "requeueing job" not in log and "(restart 1)" not in log and not (tmp_path / "fox.npy").exists(), log
