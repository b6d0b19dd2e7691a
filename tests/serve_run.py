"""Run ``vidpar serve`` in a subprocess (under torchrun or alone) and talk to it with a real HTTP client."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from cli_run import cli_env, free_port

# npy: the exact frames (H.264 is lossy and x264's output varies slightly from one encode to the next)
TINY_JOB = {"prompt": "a red fox in snow", "size": "32x32", "num_frames": 5, "steps": 2, "seed": 3, "format": "npy"}


class Service:
    """One ``vidpar serve`` process tree (its own session, so cleanup can kill every rank)."""

    def __init__(self, state_dir: Path, *, nproc: int | None = 2, args: tuple[str, ...] = (), max_restarts: int = 0,
                 api_key: str | None = None, port: int | None = None, log: Path | None = None, model: str = "tiny",
                 **env: str) -> None:
        self.state_dir = Path(state_dir)
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.api_key = api_key
        self.log_path = log or Path(state_dir).with_name(Path(state_dir).name + f"-{self.port}.log")
        serve = ["-m", "vidpar", "serve", "--model", model, "--state-dir", str(state_dir), "--port", str(self.port),
                 "--dtype", "float64", *args]
        if api_key:
            serve += ["--api-key", api_key]
        if nproc is None:
            cmd = [sys.executable, *serve]
        else:
            cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc),
                   "--max-restarts", str(max_restarts), *serve]
        self._log = open(self.log_path, "w")
        self.proc = subprocess.Popen(cmd, env=cli_env(**env), stdout=self._log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    @property
    def log(self) -> str:
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text()

    def client(self, **kwargs) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=30.0, **kwargs)

    def wait_ready(self, timeout: float = 150.0, after: float | None = None) -> None:
        """Until ``/health`` answers ok (``after``: a time.time() the service must have been started since)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(f"the service exited with {self.proc.returncode}:\n{self.log}")
            try:
                r = httpx.get(self.url + "/health", timeout=2.0)
                if r.status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise AssertionError(f"the service did not become ready in {timeout:.0f} s:\n{self.log}")

    def rank_pid(self, rank: int) -> int:
        """The pid of the worker process of ``rank`` (a child of torchrun)."""
        for child in Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split():
            try:
                environ = Path(f"/proc/{child}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            if f"RANK={rank}".encode() in environ:
                return int(child)
        raise AssertionError(f"no worker with RANK={rank} under pid {self.proc.pid}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Send ``sig`` to the launcher (torchrun forwards it to every rank) and wait for the exit code."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        finally:
            self.kill()

    def _descendants(self, pid: int) -> list[int]:
        try:
            children = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
        except OSError:
            return []
        return children + [d for c in children for d in self._descendants(c)]

    def kill(self) -> None:
        """Kill whatever is left of the process tree: torchrun starts every rank in a session of its own, so the
        ranks are killed one by one, then the launcher's group."""
        for pid in self._descendants(self.proc.pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        self._log.close()


def wait_status(client: httpx.Client, video_id: str, statuses=("completed", "failed", "cancelled"),
                timeout: float = 120.0, min_progress: int | None = None) -> dict:
    """Poll ``GET /v1/videos/{id}`` until its status is one of ``statuses`` (and progress >= ``min_progress``),
    riding out restarts (connection refused)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            r = client.get(f"/v1/videos/{video_id}")
        except httpx.TransportError:  # the service is restarting
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
            continue
        assert r.status_code == 200, r.text
        video = r.json()
        if video["status"] in statuses and (min_progress is None or video["progress"] >= min_progress):
            return video
        if video["status"] in ("completed", "failed", "cancelled") and video["status"] not in statuses:
            raise AssertionError(f"{video_id} ended {video['status']}: {video}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{video_id} still {video['status']} ({video['progress']}%) after {timeout:.0f} s")
        time.sleep(0.1)


def submit(client: httpx.Client, **fields) -> dict:
    r = client.post("/v1/videos", json={**TINY_JOB, **fields})
    assert r.status_code == 200, r.text
    return r.json()


def download_frames(client: httpx.Client, video_id: str, folder: Path):
    """The video of a completed job as uint8 frames ``[T, H, W, 3]`` (npy as sent, or the mp4 decoded)."""
    from vidpar.video import read_video

    r = client.get(f"/v1/videos/{video_id}/content")
    assert r.status_code == 200, r.text[:200]
    kind = {"video/mp4": "mp4", "application/x-npy": "npy"}[r.headers["content-type"]]
    path = Path(folder) / f"{video_id}.{kind}"
    path.write_bytes(r.content)
    return read_video(path)
