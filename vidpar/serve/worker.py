"""The rank loop of ``vidpar serve``: every rank runs ``serve_forever`` on the loaded ``Pipeline``.

Rank 0 claims the next job from the store and announces it on the control channel (``control.ControlChannel``);
every rank runs it with ``Pipeline.generate`` (checkpointing every ``checkpoint_every`` steps into the job's own
folder, so an interrupted job resumes), and the ranks then agree on the outcome:

Before a job every rank puts the job's LoRA set into the weights: when the set differs from the one merged
(compared by content hash, strength and target), ``unload_loras`` restores the base weights bit for bit and
``load_loras`` merges the new set (checked and agreed on every rank before any weight changes). A LoRA file that
is missing or changed since the job was accepted, or does not load, fails that job with its message; the base
weights are back by then and the service goes on. The set's digest is part of the job's snapshot key
(``Pipeline.generate``), so a resumed job resumes with the same LoRAs.

- all ok: rank 0 has written the video (mp4, or npy frames; atomically); the job is ``completed``;
- interrupted by a cancellation (``DELETE``): ``cancelled``, its snapshot removed;
- interrupted by a signal (SIGTERM drain): the job goes back to the queue with its snapshot; every rank exits 3;
- a failure on any rank: ``failed`` with that rank's message. If the failure came from a collective (a timeout
  or a lost peer) the process group is not trusted any more and every rank exits 1 for its supervisor to restart
  the service; otherwise (a bad image, an error every rank agreed on, a failed save) the service goes on.

A rank that dies mid-job leaves the job ``in_progress``; the restarted service (or, with a shared store, any
replica once the lease runs out) requeues it and it resumes from its snapshot; after ``max_attempts`` claims it is
failed instead, so a job that kills the service cannot do so forever.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from vidpar.checkpoint import REQUEUE_EXIT_CODE, SNAPSHOT, GenerationInterrupted, StopRequest
from vidpar.lora import LoraSpec, file_sha256, lora_set_digest
from vidpar.outputs import record_path
from vidpar.parallel.agree import run_agreed

from .control import FAILED, IDLE, INTERRUPTED, JOB, OK, ControlChannel, Report, is_collective_failure
from .jobs import CANCELLED, COMPLETED, FAILED as JOB_FAILED, JobRecord
from .protocol import VideoRequest, decode_image
from .state import ServiceState

EXIT_FAILED = 1


@dataclass(frozen=True)
class WorkerOptions:
    """How the loop runs (identical on every rank)."""

    state_dir: Path
    checkpoint_every: int = 1
    heartbeat_s: float = 1.0
    lease_s: float = 120.0
    max_attempts: int = 3


@dataclass(frozen=True)
class Decision:
    """What every rank concluded from the reports of one job. ``status``: a final job status, or ``"requeue"``;
    ``exit_code``: None to go on with the next job."""

    status: str
    error: str | None = None
    exit_code: int | None = None


def decide(reports: list[Report]) -> Decision:
    """The outcome of a job from every rank's report (a pure function of identical inputs: the same everywhere)."""
    stopping = any(r.stop for r in reports)
    failed = [(rank, r) for rank, r in enumerate(reports) if r.kind == FAILED]
    if failed:
        # the rank that failed by itself is the one to name; the others timed out or lost it
        rank, culprit = next(((i, r) for i, r in failed if not r.collective), failed[0])
        sound = not any(r.collective for r in reports)
        exit_code = EXIT_FAILED if not sound else (REQUEUE_EXIT_CODE if stopping else None)
        return Decision(JOB_FAILED, f"rank {rank}: {culprit.message}", exit_code)
    if any(r.kind == INTERRUPTED for r in reports):
        return Decision("requeue", None, REQUEUE_EXIT_CODE) if stopping else Decision(CANCELLED)
    return Decision(COMPLETED, None, REQUEUE_EXIT_CODE if stopping else None)


def snapshot_step(folder: Path) -> int:
    """Denoising steps already done according to the job's snapshot (0 without one)."""
    path = Path(folder) / SNAPSHOT
    if not path.is_file():
        return 0
    return int(torch.load(path, map_location="cpu", weights_only=True).get("step", 0))


class JobStop(StopRequest):
    """The stop flag one job's denoising loop polls: the process's signal flag, or (rank 0) a cancellation.

    ``Pipeline.denoise`` calls ``is_set`` once after every finished step on every rank; rank 0 uses that call to
    count steps (progress, seconds per step) through ``on_step``, which returns whether the job was cancelled.
    """

    def __init__(self, process: StopRequest, on_step=None) -> None:
        super().__init__()
        self.process = process
        self.on_step = on_step

    def is_set(self) -> bool:
        cancelled = self.on_step() if self.on_step is not None else False
        return self.process.is_set() or cancelled


class JobMonitor:
    """Rank 0's view of the running job: renews its lease in a thread (cancel requests arrive with the renewal),
    counts steps, and hands the tokenizer back to the HTTP validator once denoising has started."""

    def __init__(self, state: ServiceState, job: JobRecord, owner: str, options: WorkerOptions, start_step: int,
                 num_steps: int) -> None:
        self.state, self.job, self.owner, self.options = state, job, owner, options
        self.step, self.num_steps = start_step, num_steps
        self.cancelled = False
        self.lost = False
        self._last = None
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._renew_loop, name=f"lease-{job.id}", daemon=True)
        self.locked = False

    def start(self) -> None:
        """Before the job: take the tokenizer (the job encodes its prompts first) and start renewing."""
        self.state.tokenizer_lock.acquire()
        self.locked = True
        self._thread.start()

    def close(self) -> None:
        """After the job (whatever happened): give the tokenizer back, stop renewing (the claim stays)."""
        self.release_tokenizer()
        self._done.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def release_tokenizer(self) -> None:
        if self.locked:
            self.locked = False
            self.state.tokenizer_lock.release()

    @property
    def progress(self) -> int:
        return min(99, int(100 * self.step / max(1, self.num_steps)))

    def on_step(self) -> bool:
        """Called after every denoising step (main thread): returns whether to stop (cancelled or claim lost)."""
        self.release_tokenizer()  # prompts are encoded: the HTTP validator may use the tokenizer again
        now = time.perf_counter()
        if self._last is not None:
            self.state.metrics.step_done(now - self._last)
        self._last = now
        self.step += 1
        return self.cancelled or self.lost or self.state.cancel_requested_locally()

    def _renew_loop(self) -> None:
        period = min(1.0, self.options.lease_s / 4)
        log = logging.getLogger("vidpar")
        while not self._done.wait(period):
            try:
                lease = self.state.store.renew(self.job.id, self.owner, self.options.lease_s, time.time(),
                                               self.progress, self.step)
            except Exception as e:  # noqa: BLE001 - a store hiccup: try again next period
                log.warning("job %s: lease renewal failed: %s", self.job.id, e)
                continue
            self.cancelled = self.cancelled or lease.cancel_requested
            if not lease.owned and not self.lost:
                self.lost = True
                log.warning("job %s: this replica no longer holds it (lease taken over); stopping it", self.job.id)


def _peak_memory() -> float:
    return float(torch.cuda.max_memory_allocated()) if torch.cuda.is_available() else 0.0


class Worker:
    """One rank's side of the service (rank 0 also holds ``state``: the store and the HTTP side)."""

    def __init__(self, pipe, channel: ControlChannel, stop: StopRequest, options: WorkerOptions,
                 state: ServiceState | None, log: logging.Logger) -> None:
        self.pipe, self.channel, self.stop, self.options = pipe, channel, stop, options
        self.state, self.log = state, log
        self.rank = channel.rank
        self.lora_set: str | None = None  # digest of the LoRA set merged now (None: the base weights)

    # ---- rank 0: the queue

    def _next_job(self) -> JobRecord | None:
        store, owner = self.state.store, self.state.replica_id
        while True:
            job = store.claim(owner, self.options.lease_s, time.time())
            if job is None:
                return None
            if job.cancel_requested:
                store.finish(job.id, owner, CANCELLED, time.time(), error=_cancel_error())
            elif job.attempts > self.options.max_attempts:
                store.finish(job.id, owner, JOB_FAILED, time.time(), error={
                    "code": "service_crashed",
                    "message": f"the service stopped {job.attempts - 1} times while running this job; giving up"})
                self._remove(self.state.checkpoint_dir(job.id))
                self.log.warning("job %s: failed after %d attempts", job.id, job.attempts - 1)
            else:
                return job

    def _wait_for_job(self) -> JobRecord | None:
        if self.stop.is_set():
            return None
        job = self._next_job()
        if job is None:
            self.state.wake.wait(self.options.heartbeat_s)
            self.state.wake.clear()
            if not self.stop.is_set():
                job = self._next_job()
        return job

    # ---- every rank

    def serve_forever(self) -> int:
        """Run jobs until a drain (returns 3) or an untrusted process group (returns 1)."""
        while True:
            job = self._wait_for_job() if self.rank == 0 else None
            payload = {"id": job.id, "request": job.request} if job is not None else None
            try:
                command, payload, stopping = self.channel.tick(JOB if job else IDLE, payload, self.stop.is_set())
            except Exception:
                if job is not None:  # claimed but not started: back to the queue
                    self.state.store.requeue(job.id, self.state.replica_id)
                raise
            if stopping:
                if job is not None:
                    self.state.store.requeue(job.id, self.state.replica_id)
                return REQUEUE_EXIT_CODE
            if command == IDLE:
                continue
            decision = self._run(payload["id"], VideoRequest.from_json(payload["request"]), job)
            if decision.exit_code is not None:
                return decision.exit_code

    def _run(self, job_id: str, vr: VideoRequest, job: JobRecord | None) -> Decision:
        ckpt = self.options.state_dir / "checkpoints" / job_id
        monitor = None
        if self.rank == 0:
            start = snapshot_step(ckpt)
            monitor = JobMonitor(self.state, job, self.state.replica_id, self.options, start, vr.request.num_steps)
            self.state.start_job(job_id)
            self.log.info("job %s: %s (attempt %d%s)", job_id, _describe(vr), job.attempts,
                          f", resuming from step {start}" if start else "")
        if torch.cuda.is_available():
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        stop = JobStop(self.stop, monitor.on_step if monitor is not None else None)
        try:
            if monitor is not None:
                monitor.start()
            self._switch_loras(job_id, vr)
            r = vr.request
            video = self.pipe.generate(
                r.prompt, r.negative_prompt, height=r.height, width=r.width, num_frames=r.num_frames,
                num_steps=r.num_steps, guidance_scale=r.guidance_scale, guidance_scale_2=r.guidance_scale_2,
                seed=r.seed, scheduler=r.scheduler, flow_shift=r.flow_shift, output="rank0", checkpoint_dir=ckpt,
                checkpoint_every=self.options.checkpoint_every, stop=stop, image=decode_image(vr.image),
                cache=vr.cache_policy())
            if self.rank == 0:
                monitor.release_tokenizer()
                video.save(self.state.output_path(job_id, vr.format), fps=self.state.fps)
            report = Report(OK, stop=self.stop.is_set())
        except GenerationInterrupted:
            report = Report(INTERRUPTED, stop=self.stop.is_set())
        except Exception as e:  # noqa: BLE001 - reported to every rank, decided together
            report = Report(FAILED, f"{type(e).__name__}: {e}", is_collective_failure(e), self.stop.is_set())
            if self.rank != 0 or self.log.isEnabledFor(logging.DEBUG):
                self.log.warning("job %s failed on rank %d: %s: %s", job_id, self.rank, type(e).__name__, e)
        finally:
            if monitor is not None:
                monitor.close()
        report = Report(report.kind, report.message, report.collective, report.stop, _peak_memory())
        reports = self.channel.agree(report)  # raises if a peer is gone: the job stays claimed for the restart
        decision = decide(reports)
        if self.rank == 0:
            self._record(job, decision, reports, time.perf_counter() - t0, monitor)
        return decision

    def _switch_loras(self, job_id: str, vr: VideoRequest) -> None:
        """Every rank: merge the job's LoRA set, unless it is the one merged now (the same on every rank: every
        rank ran the same jobs). On any failure the base weights are restored before the error propagates."""
        wanted = lora_set_digest((lora.sha256, lora.scale, lora.target) for lora in vr.loras) if vr.loras else None
        if wanted == self.lora_set:
            return
        t0 = time.perf_counter()
        self.pipe.unload_loras()  # no collective; the base weights, bit for bit
        self.lora_set = None
        if not vr.loras:
            return
        try:
            run_agreed(self.pipe.ctx, lambda: check_job_lora_files(vr), what="checking the job's LoRA files")
            self.pipe.load_loras([LoraSpec(Path(lora.path), lora.scale, lora.target) for lora in vr.loras])
        except Exception:
            self.pipe.unload_loras()  # load_loras changes nothing when it fails; drop its empty handle too
            raise
        self.lora_set = wanted
        if self.rank == 0:
            self.log.info("job %s: LoRAs %s merged in %.2f s", job_id,
                          ", ".join(f"{lora.name}:{lora.scale:g}" for lora in vr.loras), time.perf_counter() - t0)

    def _record(self, job: JobRecord, decision: Decision, reports: list[Report], seconds: float,
                monitor: JobMonitor) -> None:
        state, owner, now = self.state, self.state.replica_id, time.time()
        store = state.store
        ckpt = state.checkpoint_dir(job.id)
        out = state.output_path(job.id, job.request.get("format", "mp4"))
        state.metrics.set_peak_memory([r.memory for r in reports])
        state.end_job()
        if decision.status == "requeue":
            store.renew(job.id, owner, 0.0, now, monitor.progress, monitor.step)  # what the snapshot holds
            store.requeue(job.id, owner)
            self.log.info("job %s: stopped after step %d for the drain; requeued, its snapshot resumes it",
                          job.id, monitor.step)
            return
        if decision.status == COMPLETED:
            ok = store.finish(job.id, owner, COMPLETED, now, output=str(out))
        elif decision.status == CANCELLED:
            ok = store.finish(job.id, owner, CANCELLED, now, error=_cancel_error())
        else:
            ok = store.finish(job.id, owner, JOB_FAILED, now,
                              error={"code": "generation_failed", "message": decision.error})
            self._remove(out)  # this job's own file (state_dir/videos/<job id>.<format>) and its record
            self._remove(record_path(out))
        self._remove(ckpt)
        state.metrics.job_finished(decision.status, seconds)
        if not ok:
            self.log.warning("job %s: another replica took it over; this replica's result is not recorded", job.id)
        elif decision.status == JOB_FAILED:
            self.log.warning("job %s: failed: %s", job.id, decision.error)
        else:
            self.log.info("job %s: %s in %.1f s", job.id, decision.status, seconds)

    @staticmethod
    def _remove(path: Path) -> None:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        elif path.exists():
            os.remove(path)


def check_job_lora_files(vr: VideoRequest) -> None:
    """Each of the job's LoRA files still exists and holds the bytes it was accepted with (its SHA-256);
    ``ValueError`` naming the LoRA otherwise."""
    for lora in vr.loras:
        path = Path(lora.path)
        if not path.is_file():
            raise ValueError(f"LoRA {lora.name!r}: {path} does not exist (any more) on this rank")
        sha = file_sha256(path)
        if sha != lora.sha256:
            raise ValueError(f"LoRA {lora.name!r}: {path} changed since the job was accepted (sha256 {sha[:12]}..., "
                             f"registered {lora.sha256[:12]}...); register the new file and submit again")


def _cancel_error() -> dict[str, str]:
    return {"code": "cancelled", "message": "cancelled by a DELETE request"}


def _describe(vr: VideoRequest) -> str:
    r = vr.request
    return (f"{r.prompt!r}, {r.width}x{r.height}, {r.num_frames} frames, {r.num_steps} steps, seed {r.seed}"
            + (", with an image" if vr.image is not None else "")
            + (f", LoRAs {', '.join(lora.name for lora in vr.loras)}" if vr.loras else ""))


__all__ = ["Decision", "JobMonitor", "JobStop", "Worker", "WorkerOptions", "check_job_lora_files", "decide",
           "snapshot_step"]
