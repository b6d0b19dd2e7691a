"""The HTTP API (FastAPI, on rank 0): the OpenAI videos API shape plus ``/health``, ``/metrics`` and ``/v1/loras``.

- ``POST /v1/videos``: JSON or multipart (the OpenAI client sends multipart); validated here, then queued;
- ``GET /v1/videos/{id}``: the OpenAI ``Video`` object (status, progress, error);
- ``GET /v1/videos/{id}/content``: the mp4 (or the npy frames, for ``format: "npy"``) once completed (409 before);
- ``DELETE /v1/videos/{id}``: cancel (queued: dropped; running: stopped at the next step on every rank) or, for a
  finished job, delete it and its file;
- ``GET /v1/videos``: list (``after``, ``limit``, ``order``);
- ``GET /v1/loras`` (the registry: name, path, sha256, default ``scale`` and ``target``), ``GET /v1/loras/{name}``,
  ``POST /v1/loras`` (JSON ``{"name", "path", "scale"?, "target"?}``: the file, at an absolute path every rank and
  replica can read, is checked against the loaded model without changing a weight; 400 with the one-line reason
  if it does not fit, 409 if the name holds another file; the same registration again is a no-op) and
  ``DELETE /v1/loras/{name}`` (jobs already accepted keep their file). A job's ``loras`` are resolved against the
  registry when it is accepted (an unknown name is a 400);
- ``GET /health`` (never needs the API key), ``GET /metrics`` (Prometheus text).

With an API key every route but ``/health`` needs ``Authorization: Bearer <key>``.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
import uuid
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, JSONResponse, PlainTextResponse
from starlette.concurrency import run_in_threadpool

from vidpar.outputs import record_path

from .jobs import FINISHED, QUEUED, RUNNING, JobRecord
from .lora_registry import LoraConflict, RegisteredLora, parse_registration
from .protocol import FORMATS, RequestError, build_request, error_body, parse_fields, video_object
from .state import ServiceState


def create_app(state: ServiceState):
    """The FastAPI application of one replica."""
    app = FastAPI(title="vidpar", version="1", docs_url=None, redoc_url=None)
    log = logging.getLogger("vidpar")

    def fail(message: str, status: int, param: str | None = None, code: str | None = None):
        return JSONResponse(error_body(message, status, param, code), status_code=status)

    @app.middleware("http")
    async def auth_and_count(request: Request, call_next):
        if state.api_key is not None and request.url.path != "/health":
            given = request.headers.get("authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {state.api_key}".encode()):
                response = fail("missing or wrong API key (send 'Authorization: Bearer <key>')", 401)
                state.metrics.http_request(request.method, "unauthorized", 401)
                return response
        response = await call_next(request)
        route = request.scope.get("route")
        state.metrics.http_request(request.method, getattr(route, "path", "unmatched"), response.status_code)
        return response

    def get_job(video_id: str) -> JobRecord | None:
        return state.store.get(video_id)

    async def read_body(request: Request) -> dict:
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "multipart/form-data" or kind == "application/x-www-form-urlencoded":
            form = await request.form()
            values, files = {}, {}
            for key, value in form.multi_items():
                if hasattr(value, "read"):
                    files[key] = await value.read()
                else:
                    values[key] = value
            return parse_fields(values, files, from_form=True)
        raw = await request.body()
        try:
            values = json.loads(raw or b"null")
        except ValueError:
            raise RequestError("the request body is not valid JSON", 422) from None
        return parse_fields(values)

    @app.post("/v1/videos")
    async def create_video(request: Request):
        if state.stop.is_set():
            return fail("the service is shutting down; submit to another replica or retry later", 503)
        try:
            fields = await read_body(request)
            vr = build_request(fields, state.card, state.served_names)
            vr = await run_in_threadpool(state.loras.resolve, vr)  # the files this job will use, fixed now
        except RequestError as e:
            return fail(str(e), e.status, e.param)
        try:
            await run_in_threadpool(state.validate, vr)
        except ValueError as e:  # the pipeline's own checks: the same messages as `vidpar generate`
            return fail(str(e), 400)
        job = JobRecord(id=f"video_{uuid.uuid4().hex}", status=QUEUED, request=vr.to_json(), model=state.card.name,
                        created_at=time.time())
        job = await run_in_threadpool(state.store.create, job)
        state.wake.set()
        log.debug("queued %s", job.id)
        return video_object(job, state.fps)

    @app.get("/v1/videos")
    def list_videos(after: str | None = None, limit: int = 20, order: str = "desc"):
        if not 1 <= limit <= 1000 or order not in ("asc", "desc"):
            return fail("limit must be in [1, 1000] and order 'asc' or 'desc'", 400)
        jobs = state.store.list(after=after, limit=limit + 1, order=order)
        data = [video_object(j, state.fps) for j in jobs[:limit]]
        return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                "last_id": data[-1]["id"] if data else None, "has_more": len(jobs) > limit}

    @app.get("/v1/videos/{video_id}")
    def retrieve_video(video_id: str):
        job = get_job(video_id)
        if job is None:
            return fail(f"no video {video_id!r}", 404, "video_id")
        return video_object(job, state.fps)

    @app.get("/v1/videos/{video_id}/content")
    def video_content(video_id: str, variant: str = "video"):
        job = get_job(video_id)
        if job is None:
            return fail(f"no video {video_id!r}", 404, "video_id")
        if variant != "video":
            return fail(f"variant {variant!r} is not available (only 'video')", 400, "variant")
        if job.status != "completed":
            return fail(f"video {video_id} is {job.status}, not completed", 409, "video_id")
        fmt = job.request.get("format", "mp4")
        path = state.output_path(video_id, fmt) if job.output is None else Path(job.output)
        if not path.is_file():
            return fail(f"video {video_id}: its file {path} is not on this replica (share --state-dir between "
                        "replicas)", 404, "video_id")
        return FileResponse(path, media_type=FORMATS[fmt], filename=f"{video_id}.{fmt}")

    @app.delete("/v1/videos/{video_id}")
    def delete_video(video_id: str):
        job = get_job(video_id)
        if job is None:
            return fail(f"no video {video_id!r}", 404, "video_id")
        if job.status in FINISHED:
            if job.output:
                Path(job.output).unlink(missing_ok=True)
                record_path(Path(job.output)).unlink(missing_ok=True)
            state.store.delete(video_id)
        else:
            job = state.store.cancel(video_id, time.time())
            if job is not None and job.status == RUNNING:
                state.cancel_local(video_id)
        return {"id": video_id, "object": "video.deleted", "deleted": True}

    @app.get("/v1/loras")
    def list_loras():
        return {"object": "list", "data": [entry.api_object() for entry in state.loras.list()]}

    @app.get("/v1/loras/{name}")
    def retrieve_lora(name: str):
        entry = state.loras.get(name)
        if entry is None:
            return fail(f"no LoRA named {name!r} is registered", 404, "name")
        return entry.api_object()

    @app.post("/v1/loras")
    async def register_lora(request: Request):
        try:
            body = json.loads(await request.body() or b"null")
        except ValueError:
            return fail("the request body is not valid JSON", 422)
        try:
            name, spec = parse_registration(body)
        except RequestError as e:
            return fail(str(e), e.status, e.param)
        try:  # reads and hashes the file and checks it against the denoisers: off the event loop
            sha256 = await run_in_threadpool(state.check_lora, spec)
        except ValueError as e:
            return fail(" ".join(str(e).split()), 400, "path")
        entry = RegisteredLora(name, str(spec.path), sha256, spec.strength, spec.target)
        try:
            entry, created = await run_in_threadpool(state.loras.add, entry)
        except LoraConflict as e:
            return fail(str(e), 409, "name")
        if created:
            log.info("registered LoRA %r: %s (sha256 %s)", name, entry.path, entry.sha256[:12])
        return entry.api_object()

    @app.delete("/v1/loras/{name}")
    def delete_lora(name: str):
        if not state.loras.remove(name):
            return fail(f"no LoRA named {name!r} is registered", 404, "name")
        log.info("unregistered LoRA %r", name)
        return {"name": name, "object": "lora.deleted", "deleted": True}

    @app.get("/health")
    def health():
        status = "draining" if state.stop.is_set() else "ok"
        return JSONResponse({"status": status, "model": state.card.name, "replica": state.replica_id,
                             "world_size": state.world_size, "running": state.running},
                            status_code=200 if status == "ok" else 503)

    @app.get("/metrics")
    def metrics():
        text = state.metrics.render(state.store.counts(), state.running)
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    return app


__all__ = ["create_app"]
