"""Bounded load test of ``vidpar serve`` on loopback: N small jobs from C concurrent clients.

Starts one service (torchrun, ``--nproc`` ranks, gloo on CPU, the ``tiny`` model; 32x32, 5 frames, 2 steps by
default) in a temporary state folder, then C client threads each submit a job, poll it until it is done, download
its mp4, and go on with the next, until N jobs were made. Reports throughput, latency percentiles (submission to
completion, as the polling client sees it) and whether every job completed exactly once (one claim each, one
file each, every download a valid mp4). Only 127.0.0.1 is contacted; everything stops by itself.

    python benchmarks/serve_load.py --jobs 200 --clients 20 --nproc 2
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_service(state: Path, port: int, nproc: int, dtype: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
           "-m", "vidpar", "serve", "--model", "tiny", "--state-dir", str(state), "--port", str(port),
           "--dtype", dtype]
    log = open(state.with_suffix(".log"), "w")
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def wait_ready(url: str, proc: subprocess.Popen, timeout: float) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise SystemExit(f"the service exited with {proc.returncode}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return time.monotonic() - t0
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the service was not ready after {timeout:.0f} s")


def client_loop(url: str, todo: list[int], lock: threading.Lock, results: list, job: dict, poll_s: float,
                deadline: float) -> None:
    with httpx.Client(base_url=url, timeout=60) as c:
        while time.monotonic() < deadline:
            with lock:
                if not todo:
                    return
                index = todo.pop()
            t0 = time.monotonic()
            r = c.post("/v1/videos", json={**job, "seed": index})
            r.raise_for_status()
            video_id = r.json()["id"]
            while time.monotonic() < deadline:
                v = c.get(f"/v1/videos/{video_id}").json()
                if v["status"] in ("completed", "failed", "cancelled"):
                    break
                time.sleep(poll_s)
            latency = time.monotonic() - t0
            content = c.get(f"/v1/videos/{video_id}/content") if v["status"] == "completed" else None
            ok_file = content is not None and content.status_code == 200 and content.content[4:8] == b"ftyp"
            with lock:
                results.append({"index": index, "id": video_id, "status": v["status"], "attempts": v["attempts"],
                                "latency_s": latency, "mp4": ok_file})


def quantile(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--jobs", type=int, default=200)
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--nproc", type=int, default=2, help="ranks of the service (torchrun)")
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--dtype", default="float32")
    p.add_argument("--poll", type=float, default=0.1, help="seconds between a client's status polls")
    p.add_argument("--time-limit", type=float, default=900.0, help="give up after this many seconds")
    args = p.parse_args(argv)

    job = {"prompt": "a red fox in snow", "size": "32x32", "num_frames": 5, "steps": args.steps}
    with tempfile.TemporaryDirectory(prefix="vidpar-load-") as tmp:
        state = Path(tmp) / "state"
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = start_service(state, port, args.nproc, args.dtype)
        try:
            startup = wait_ready(url, proc, 300)
            todo, lock, results = list(range(args.jobs))[::-1], threading.Lock(), []
            deadline = time.monotonic() + args.time_limit
            t0 = time.monotonic()
            threads = [threading.Thread(target=client_loop, args=(url, todo, lock, results, job, args.poll, deadline))
                       for _ in range(args.clients)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.monotonic() - t0
            metrics = httpx.get(url + "/metrics", timeout=10).text
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:  # torchrun puts every rank in a session of its own
                for child in Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split():
                    os.kill(int(child), signal.SIGKILL)
                os.killpg(proc.pid, signal.SIGKILL)
        with sqlite3.connect(state / "jobs.sqlite") as db:
            rows = db.execute("SELECT status, attempts, COUNT(*) FROM jobs GROUP BY status, attempts").fetchall()
        files = len(list((state / "videos").glob("*.mp4")))
    samples = dict(line.split() for line in metrics.splitlines() if line.startswith("vidpar_step_seconds_"))
    step_sum, step_count = float(samples["vidpar_step_seconds_sum"]), float(samples["vidpar_step_seconds_count"])
    lat = [r["latency_s"] for r in results]
    done = [r for r in results if r["status"] == "completed"]
    summary = {
        "jobs": args.jobs, "clients": args.clients, "ranks": args.nproc, "video": "32x32, 5 frames",
        "steps": args.steps, "dtype": args.dtype, "startup_s": round(startup, 1), "wall_s": round(wall, 2),
        "jobs_per_s": round(len(done) / wall, 2), "latency_p50_s": round(quantile(lat, 0.5), 3),
        "latency_p99_s": round(quantile(lat, 0.99), 3), "latency_mean_s": round(statistics.fmean(lat), 3),
        "seconds_per_step": round(step_sum / step_count, 4) if step_count else None,
        "completed": len(done), "distinct_ids": len({r["id"] for r in results}),
        "all_claimed_once": all(r["attempts"] == 1 for r in done), "mp4_ok": sum(r["mp4"] for r in done),
        "files": files, "store": [list(r) for r in rows],
    }
    exactly_once = (len(done) == args.jobs == summary["distinct_ids"] == files == summary["mp4_ok"]
                    and summary["all_claimed_once"] and rows == [("completed", 1, args.jobs)])
    summary["exactly_once"] = exactly_once
    print(json.dumps(summary, indent=1))
    print(f"| {args.jobs} jobs, {args.clients} clients, {args.nproc} ranks (gloo, CPU), tiny {job['size']} x 5 "
          f"frames x {args.steps} steps | {summary['jobs_per_s']} jobs/s | p50 {summary['latency_p50_s']} s | "
          f"p99 {summary['latency_p99_s']} s | exactly once: {'yes' if exactly_once else 'NO'} |")
    return 0 if exactly_once else 1


if __name__ == "__main__":
    sys.exit(main())
