"""Launching: the Slurm/torchrun environment mapping, two torchrun "nodes" meeting over a c10d rendezvous on
loopback, a rank that raises, dies or hangs (every process exits non-zero, in bounded time, and every survivor's
message names the rank and the collective), NaN latents (exit 1 naming the step), a real SIGUSR1 that stops and
saves a run which the same command then finishes with identical frames, and SIGTERM without a checkpoint dir
(exit 4, nothing saved)."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from cli_run import REPO, TINY, cli_env, free_port, run_vidpar
from vidpar.launch_env import apply_launch_env, detect_launch_env, expand_nodelist

STEPS = ["--steps", "6"]


@pytest.mark.parametrize(
    "nodelist,hosts",
    [
        ("node[01-03,7]", ["node01", "node02", "node03", "node7"]),
        ("n1", ["n1"]),
        ("gpu-a,gpu-b", ["gpu-a", "gpu-b"]),
        ("a[1-2],b[08-10]", ["a1", "a2", "b08", "b09", "b10"]),
        ("r[1-2]n[1-2]", ["r1n1", "r1n2", "r2n1", "r2n2"]),
        ("x[9-11]-ib", ["x9-ib", "x10-ib", "x11-ib"]),
    ],
)
def test_expand_nodelist(nodelist, hosts):
    assert expand_nodelist(nodelist) == hosts


@pytest.mark.parametrize("bad", ["node[1-", "node]1[", "node[a-b]", "node[3-1]"])
def test_expand_nodelist_rejects_garbage(bad):
    with pytest.raises(ValueError):
        expand_nodelist(bad)


def test_slurm_variables_map_to_torchrun_names():
    env = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_LOCALID": "1", "SLURM_JOB_ID": "1234",
           "SLURM_JOB_NODELIST": "gpu[07-10]", "SLURM_NTASKS_PER_NODE": "2(x4)"}
    applied = dict(env)
    launch = apply_launch_env(applied)
    assert (launch.launcher, launch.rank, launch.world_size, launch.local_rank) == ("slurm", 5, 8, 1)
    assert {k: applied[k] for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR")} == {
        "RANK": "5", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "gpu07"}
    assert applied["MASTER_PORT"] == str(29500 + 1234)
    # MASTER_ADDR/MASTER_PORT set by the user win (fake or unresolvable node names)
    overridden = detect_launch_env({**env, "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "4000"})
    assert "MASTER_ADDR" not in overridden.variables and "MASTER_PORT" not in overridden.variables


def test_torchrun_wins_over_slurm_and_single_needs_nothing():
    torchrun = detect_launch_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "SLURM_PROCID": "0",
                                  "SLURM_NTASKS": "2"})
    assert (torchrun.launcher, torchrun.rank, torchrun.variables) == ("torchrun", 3, {})
    assert detect_launch_env({}).launcher == "single" and detect_launch_env({}).world_size == 1


# ---- real processes ----

@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Frames of one uninterrupted process (float64: every layout must give exactly these)."""
    folder = tmp_path_factory.mktemp("launch_ref")
    res = run_vidpar(["generate", *TINY, *STEPS, "--dtype", "float64", "--out", "ref.npy"], folder, timeout=120)
    assert res.returncode == 0, res.stdout
    return np.load(folder / "ref.npy")


def test_two_torchrun_nodes_over_c10d_rendezvous(tmp_path, reference):
    port = free_port()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", "1",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "vidpar-test",
           "-m", "vidpar", "generate", *TINY, *STEPS, "--dtype", "float64", "--out", "two_nodes.npy", "--ring", "2"]
    nodes = [subprocess.Popen(cmd, cwd=tmp_path, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True) for _ in range(2)]
    try:
        outs = [p.communicate(timeout=150)[0] for p in nodes]
    finally:
        for p in nodes:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=10)
    assert [p.returncode for p in nodes] == [0, 0], outs
    assert np.array_equal(np.load(tmp_path / "two_nodes.npy"), reference)


@pytest.mark.parametrize("mode", ["raise", "exit", "hang"])
def test_failed_rank_stops_every_rank_in_bounded_time(tmp_path, mode):
    """Rank 1 raises, dies (os._exit) or hangs (sleeps, heartbeat alive) at its 3rd DiT forward (mid-denoise,
    inside Ulysses' all-to-all): the survivor's one line names rank 1, what happened to it and the collective."""
    spec = {"raise": "1:3", "exit": "1:3:exit", "hang": "1:3:hang=20"}[mode]
    timeout = "10" if mode == "hang" else "30"  # a dead or failed peer is named at once, a stuck one after this
    t0 = time.monotonic()
    res = run_vidpar(["generate", *TINY, *STEPS, "--out", "never.npy", "--timeout", timeout], tmp_path, nproc=2,
                     timeout=120, VIDPAR_DEBUG_FAIL=spec)
    elapsed = time.monotonic() - t0
    assert res.returncode != 0 and not (tmp_path / "never.npy").exists()
    assert elapsed < 90, f"took {elapsed:.0f} s"
    if mode != "hang":
        assert elapsed < 60, f"took {elapsed:.0f} s: a dead or failing peer must be named well within --timeout"
    survivor = next((line for line in res.stdout.splitlines() if line.startswith("vidpar: rank 0 failed")), "")
    assert "PeerFailure" in survivor and "rank 0 was in all_to_all on axis 'ulysses'" in survivor, res.stdout
    if mode == "raise":
        assert "rank 1 failed: RuntimeError: VIDPAR_DEBUG_FAIL" in res.stdout, res.stdout
        assert "rank 1 failed (RuntimeError: VIDPAR_DEBUG_FAIL: injected failure at DiT forward 3)" in survivor
    elif mode == "exit":  # a dead process says nothing itself: its silence on the heartbeat channel names it
        assert "rank      : 1" in res.stdout and "exitcode  : 17" in res.stdout, res.stdout
        assert "rank 1 (" in survivor and "stopped answering" in survivor, survivor
    else:  # alive but stuck outside the collective: named after --timeout
        assert "rank 1 (" in survivor and "is alive but never joined this collective" in survivor, survivor
        assert "Timed out" in survivor, survivor


def test_non_finite_latents_end_the_run_naming_the_step(tmp_path):
    """Rank 1's DiT output overflows to NaN at its 2nd forward (step 1, both CFG branches): every rank stops at
    the same step with exit 1 and no video is written."""
    t0 = time.monotonic()
    res = run_vidpar(["generate", *TINY, *STEPS, "--out", "never.npy"], tmp_path, nproc=2, timeout=120,
                     VIDPAR_DEBUG_FAIL="1:2:nan")
    assert res.returncode != 0 and not (tmp_path / "never.npy").exists(), res.stdout
    for rank in (0, 1):
        assert f"vidpar: rank {rank} failed: NonFiniteLatents: the latents became NaN/Inf at step 1 of 6" \
            in res.stdout, res.stdout
    assert "exitcode  : 1" in res.stdout and time.monotonic() - t0 < 90


def test_sigterm_without_checkpoint_dir_exits_4_saying_nothing_was_saved(tmp_path):
    exit_file = tmp_path / "exit-code"
    proc = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                             "-m", "vidpar", "generate", *TINY, *STEPS, "--out", "never.npy"], cwd=tmp_path,
                            env=cli_env(VIDPAR_DEBUG_SLOW="0.4", VIDPAR_EXIT_FILE=str(exit_file)),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out = ""
        deadline = time.monotonic() + 120
        for line in proc.stdout:  # wait until the denoising loop runs
            out += line
            if "prompt 0:" in line or time.monotonic() > deadline:
                break
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        out += proc.communicate(timeout=90)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode != 0 and "stopped by SIGTERM after step" in out, out
    assert "nothing was saved (no --checkpoint-dir); a rerun starts over (exit 4)" in out, out
    assert exit_file.read_text().strip() == "4", out  # rank 0's own code (torchrun itself only reports a signal)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exit-code"]


def test_sigusr1_stops_saves_and_the_same_command_resumes_identically(tmp_path, reference):
    ckpt = tmp_path / "ckpt"
    args = ["generate", *TINY, *STEPS, "--dtype", "float64", "--out", "resumed.npy", "--checkpoint-dir", str(ckpt),
            "--checkpoint-every", "1", "--ulysses", "2"]
    # launch/torchrun.sh execs torchrun, which forwards SIGUSR1 to both ranks; every DiT forward is slowed so the
    # signal arrives mid-run
    proc = subprocess.Popen(["bash", str(REPO / "launch" / "torchrun.sh"), *args], cwd=tmp_path,
                            env=cli_env(NPROC="2", VIDPAR_DEBUG_SLOW="0.4"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (ckpt / "denoise_state.pt").exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert proc.poll() is None, "the run ended before it could be interrupted"
        proc.send_signal(signal.SIGUSR1)
        out = proc.communicate(timeout=90)[0]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert proc.returncode != 0 and "stopped by SIGUSR1 after step" in out, out
    assert "Run the same command to resume (exit 3)" in out, out  # stopped with a snapshot
    step = int(out.split("stopped by SIGUSR1 after step ")[1].split(";")[0])
    assert 1 <= step < 6 and (ckpt / "denoise_state.pt").is_file() and not (tmp_path / "resumed.npy").exists()
    assert not (ckpt / "vidpar.lock").exists(), "the stopped run released the folder"
    res = run_vidpar(args, tmp_path, nproc=2, timeout=120)  # the same command, no signal: resumes and finishes
    assert res.returncode == 0, res.stdout
    assert f"resuming from step {step}" in res.stdout, res.stdout
    assert np.array_equal(np.load(tmp_path / "resumed.npy"), reference)
    assert not (ckpt / "denoise_state.pt").exists(), "the snapshot is removed after success"
