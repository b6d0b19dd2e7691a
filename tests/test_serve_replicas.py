"""Replicas sharing one PostgreSQL job store, against a real server started here (initdb + pg_ctl in a temporary
folder; as the ``postgres`` user when run as root; Debian's ``postgresql``, installed by ``.ci/install-postgres.sh``):

- two services (one process each) take jobs from one queue: every job completes exactly once (one claim), both
  replicas run some, any replica answers for any job (and serves its file from the shared state folder), and a
  DELETE sent to one replica stops the job the other runs;
- the Slurm template ``launch/slurm/replicas.sbatch`` starts R=2 replicas as a job array on the local Slurm
  (``tests/test_slurm.py``'s cluster) and they share the queue the same way.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import httpx
import pytest

from cli_run import REPO, cli_env, free_port, free_port_run
from serve_run import Service, submit, wait_status
from test_slurm import slurm  # noqa: F401 - the local Slurm cluster (started there if needed)


def _pg_bin(name: str) -> str | None:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return found[-1] if found else shutil.which(name)


@pytest.fixture(scope="module")
def postgres():
    """``postgresql://...`` of a throwaway server (stopped and removed afterwards)."""
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("PostgreSQL is not installed (run .ci/install-postgres.sh as root)")
    folder = Path(tempfile.mkdtemp(prefix="vidpar-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # the server refuses to run as root
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no 'postgres' user to run the server")
        os.chown(folder, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    port = free_port()
    data = folder / "data"
    run = lambda *cmd: subprocess.run([*as_user, *cmd], capture_output=True, text=True, timeout=120)  # noqa: E731
    res = run(initdb, "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync")
    assert res.returncode == 0, res.stdout + res.stderr
    opts = f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200"
    res = run(pg_ctl, "-D", str(data), "-o", opts, "-l", str(folder / "server.log"), "-w", "start")
    assert res.returncode == 0, res.stdout + res.stderr + (folder / "server.log").read_text()
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        run(pg_ctl, "-D", str(data), "-m", "immediate", "stop")
        shutil.rmtree(folder, ignore_errors=True)


def _jobs(url: str) -> dict[str, tuple]:
    import psycopg

    with psycopg.connect(url) as conn:
        return {r[0]: r[1:] for r in conn.execute("SELECT id, status, attempts, owner FROM jobs")}


def _reset(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS jobs")


def test_two_replicas_share_one_queue_and_run_each_job_once(postgres, tmp_path):
    _reset(postgres)
    state = tmp_path / "state"  # shared by both replicas: videos and snapshots
    replicas = [Service(state, nproc=None, args=("--job-store", postgres, "--replica-id", name),
                        log=tmp_path / f"{name}.log", VIDPAR_DEBUG_SLOW="0.01") for name in ("A", "B")]
    try:
        for r in replicas:
            r.wait_ready()
        clients = [r.client() for r in replicas]
        ids = [submit(clients[i % 2], seed=100 + i, steps=6)["id"] for i in range(8)]
        for i, video_id in enumerate(ids):  # asked through the other replica: one store
            assert wait_status(clients[(i + 1) % 2], video_id)["status"] == "completed"
        rows = _jobs(postgres)
        assert all(rows[i][:2] == ("completed", 1) for i in ids), rows  # one claim each: run exactly once
        owners = {rows[i][2] for i in ids}
        assert owners == {"A", "B"}, owners
        r = clients[1].get(f"/v1/videos/{ids[0]}/content")  # submitted to A, file from the shared folder
        assert r.status_code == 200 and r.content[:6] == b"\x93NUMPY"  # format npy (serve_run.TINY_JOB)

        # a DELETE sent to one replica stops the job the other one runs
        long = submit(clients[0], steps=3000)
        wait_status(clients[0], long["id"], ("in_progress",), min_progress=1)
        runner = _jobs(postgres)[long["id"]][2]
        other = clients[1] if runner == "A" else clients[0]
        assert other.delete(f"/v1/videos/{long['id']}").status_code == 200
        assert wait_status(other, long["id"], ("cancelled",), timeout=30)["status"] == "cancelled"
        for c in clients:
            c.close()
    finally:
        for r in replicas:
            r.stop()


def _squeue(job: str) -> list[str]:
    res = subprocess.run(["squeue", "-h", "-j", job, "-o", "%i %T"], capture_output=True, text=True, timeout=20)
    return [line for line in res.stdout.splitlines() if line.strip()]


def test_slurm_replicas_template_job_array(slurm, postgres, tmp_path):  # noqa: F811
    _reset(postgres)
    base = free_port_run(2)
    ports = [base, base + 1]  # replica i listens on VIDPAR_PORT + i
    state = tmp_path / "state"
    cmd = ["sbatch", "--parsable", "--array=0-1", "--nodes=1", "--gpus-per-node=1", "--cpus-per-task=1",
           "--time=10", f"--output={tmp_path}/replica-%a.out", f"--chdir={tmp_path}",
           str(REPO / "launch" / "slurm" / "replicas.sbatch"),
           "--model", "tiny", "--dtype", "float64", "--state-dir", str(state), "--job-store", postgres]
    env = cli_env(VIDPAR_PORT=str(base), VIDPAR_HOST="127.0.0.1")
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30)
    assert res.returncode == 0, res.stdout + res.stderr
    job = res.stdout.strip().split(";")[0]
    logs = lambda: "\n".join(p.read_text() for p in sorted(tmp_path.glob("replica-*.out")))  # noqa: E731
    try:
        deadline = time.monotonic() + 180
        ready = set()
        while len(ready) < 2 and time.monotonic() < deadline:
            for p in ports:
                try:
                    if httpx.get(f"http://127.0.0.1:{p}/health", timeout=2).status_code == 200:
                        ready.add(p)
                except httpx.HTTPError:
                    pass
            time.sleep(0.5)
        assert len(ready) == 2, f"replicas not ready: {_squeue(job)}\n{logs()}"
        clients = [httpx.Client(base_url=f"http://127.0.0.1:{p}", timeout=30) for p in ports]
        ids = [submit(clients[i % 2], seed=200 + i, steps=6)["id"] for i in range(6)]
        for video_id in ids:
            assert wait_status(clients[0], video_id)["status"] == "completed"
        rows = _jobs(postgres)
        assert all(rows[i][:2] == ("completed", 1) for i in ids), rows
        assert len({rows[i][2] for i in ids}) == 2  # both array tasks served jobs
        for c in clients:
            c.close()
    finally:
        subprocess.run(["scancel", "--signal=TERM", "--full", job], timeout=20)
        deadline = time.monotonic() + 60
        while _squeue(job) and time.monotonic() < deadline:
            time.sleep(0.5)
        if _squeue(job):
            subprocess.run(["scancel", job], timeout=20)
    out = logs()
    assert out.count("drained and stopped") == 2, out
    assert f"{job}_0@" in out and f"{job}_1@" in out, out
