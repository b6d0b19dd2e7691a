"""``vidpar serve``: load the model once on every rank, serve the OpenAI videos API from rank 0, run jobs on all.

    torchrun --nproc-per-node 8 -m vidpar serve --model /ckpt/Wan2.1-T2V-14B-Diffusers --state-dir /data/vidpar

Order of work, as for ``vidpar generate``: every rank validates the arguments (no weights, no collective; exit 2;
each ``--lora NAME=FILE`` too: the name, the file, its layout); rank 0 opens the job store, locks a SQLite state
folder against a second service, checks the port and that no ``--lora`` name is registered with another file; the
model loads; every rank checks the ``--lora`` files against it (exit 2 if one does not fit) and rank 0 registers
them; the control channel starts; rank 0 requeues the jobs a crash left running, starts the HTTP server and leads
the rank loop (``vidpar.serve.worker``). Exit codes: 3 after a drain (SIGTERM/SIGUSR1/SIGINT: stop accepting,
snapshot the running job, requeue it), 1 when a failure left the process group untrusted or a rank died (the
supervisor restarts the service; the queue and the running job's snapshot survive), 2 for bad arguments.
A problem only rank 0 can see (the store unreachable, the port taken, the state folder locked) ends rank 0 with
code 2 before the process group forms; torchrun then stops the other ranks.

torchrun's own ``--max-restarts`` does not work here on torch 2.13 (a restarted gloo worker group hangs creating
process groups after ``init_device_mesh``), so restart the whole command from outside (systemd, a shell loop,
``launch/slurm/replicas.sbatch``).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import signal
import socket
import time
from datetime import timedelta
from pathlib import Path

from vidpar.checkpoint import REQUEUE_EXIT_CODE, StopRequest
from vidpar.cli.common import (
    DTYPES, EXIT_FAILED, VAE_MODES, UsageError, add_model_arguments, check_model, finish_distributed,
    parallel_config, report_failure, setup_logging, timeout_of, usage_error,
)
from vidpar.launch_env import apply_launch_env
from vidpar.lora import LoraSpec

from .jobs import StoreLocation, open_store, parse_store_location
from .lora_registry import LoraRegistry, RegisteredLora, parse_lora_flag, read_checked_lora

API_KEY_ENV = "VIDPAR_API_KEY"
# Test hook (off unless set): "RANK:N[:exit]" makes that rank raise (or die) at its N-th DiT forward, only in the
# first start of a torchrun worker group (not after a restart); VIDPAR_DEBUG_SLOW as for vidpar generate.
DEBUG_FAIL_ENV = "VIDPAR_DEBUG_SERVE_FAIL"


def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    add_model_arguments(parser)
    net = parser.add_argument_group("service")
    net.add_argument("--host", default="127.0.0.1",
                     help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 for every interface)")
    net.add_argument("--port", type=int, default=8000, help="HTTP port (default 8000)")
    net.add_argument("--state-dir", required=True,
                     help="folder for the job store (SQLite), the videos and the jobs' denoising snapshots; shared "
                          "by every rank (and by every replica when they share a PostgreSQL store)")
    net.add_argument("--job-store", default=None, metavar="URL",
                     help="postgresql://user@host:port/db to share one queue between replicas (default: SQLite "
                          "in --state-dir, one replica)")
    net.add_argument("--api-key", default=None,
                     help=f"require 'Authorization: Bearer KEY' (or set {API_KEY_ENV}); /health stays open")
    net.add_argument("--replica-id", default=None, help="this replica's name in the store (default host:port)")
    run = parser.add_argument_group("jobs")
    run.add_argument("--vae-mode", choices=VAE_MODES, default="auto", help="parallel VAE decode layout")
    run.add_argument("--checkpoint-every", type=int, default=1, metavar="K",
                     help="snapshot the running job every K steps (a restart resumes from there; default 1)")
    run.add_argument("--heartbeat", type=float, default=1.0, metavar="SECONDS",
                     help="idle ranks hear from rank 0 at least this often (default 1; below --timeout / 2)")
    run.add_argument("--lease", type=float, default=120.0, metavar="SECONDS",
                     help="a running job's claim, renewed every second; if a replica dies, another takes its "
                          "job after this long (default 120)")
    run.add_argument("--max-attempts", type=int, default=3,
                     help="a job whose run the service did not survive this many times is failed (default 3)")
    run.add_argument("--lora", action="append", default=[], metavar="NAME=FILE[:SCALE[:TARGET]]",
                     help="register a LoRA under NAME for requests to name (repeatable; SCALE: its default strength, "
                          "1.0; TARGET: 'both' or one expert). The registry lives in --state-dir and keeps what "
                          "POST /v1/loras added; the file must be readable by every rank at this path")


def check_serve_args(args: argparse.Namespace, world_size: int):
    """Everything checkable without weights or collectives (every rank); returns (source, config, location)."""
    for name in ("checkpoint_every", "max_attempts"):
        if getattr(args, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if not 0 < args.port < 65536:
        raise UsageError(f"--port must be in 1..65535, got {args.port}")
    timeout = timeout_of(args).total_seconds()
    if not 0 < args.heartbeat <= timeout / 2:
        raise UsageError(f"--heartbeat must be in (0, --timeout / 2 = {timeout / 2:g}] seconds, got {args.heartbeat}")
    if not args.lease >= 4 * args.heartbeat:
        raise UsageError(f"--lease must be at least 4 x --heartbeat ({4 * args.heartbeat:g} s), got {args.lease}")
    for module, extra in (("fastapi", "fastapi"), ("uvicorn", "uvicorn"), ("multipart", "python-multipart")):
        if importlib.util.find_spec(module) is None:
            raise UsageError(f"vidpar serve needs {extra}: pip install 'vidpar[serve]'")
    args.api_key = args.api_key if args.api_key is not None else os.environ.get(API_KEY_ENV)
    if args.api_key is not None and not args.api_key.strip():
        raise UsageError(f"--api-key / {API_KEY_ENV} is empty")
    state_dir = Path(args.state_dir)
    if state_dir.exists() and not state_dir.is_dir():
        raise UsageError(f"--state-dir {state_dir} exists and is not a folder")
    parent = state_dir if state_dir.exists() else state_dir.resolve().parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise UsageError(f"--state-dir {state_dir}: {parent} is not a writable folder")
    try:
        location = parse_store_location(args.job_store, state_dir)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if location.kind == "postgresql" and importlib.util.find_spec("psycopg") is None:
        raise UsageError("--job-store postgresql://... needs psycopg: pip install 'vidpar[serve]'")
    args.lora_registrations = check_lora_flags(args.lora)
    _family, source, card = check_model(args.model)
    d = card.defaults
    config = parallel_config(args, world_size, source, (d.height, d.width, d.num_frames))
    args.replica_id = args.replica_id or f"{socket.gethostname()}:{args.port}"
    return source, config, location


def check_lora_flags(flags: list[str]) -> list[tuple[str, LoraSpec, str]]:
    """Every rank, before the model loads: each ``--lora NAME=FILE[:SCALE[:TARGET]]``'s name, file and layout;
    returns ``[(name, spec with an absolute path, file sha256)]``."""
    out, seen = [], set()
    for text in flags:
        try:
            name, spec = parse_lora_flag(text)
            if name in seen:
                raise ValueError(f"--lora {text!r}: the name {name!r} is given twice")
            out.append((name, spec, read_checked_lora(spec).sha256))
        except ValueError as e:
            raise UsageError(str(e) if str(e).startswith("--lora") else f"--lora {text!r}: {e}") from None
        seen.add(name)
    return out


def lock_state_dir(state_dir: Path):
    """Hold ``serve.lock`` in a SQLite state folder for this process's life (one service per SQLite queue)."""
    import fcntl

    f = open(state_dir / "serve.lock", "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        f.seek(0)
        raise UsageError(f"--state-dir {state_dir} is in use by another vidpar serve ({f.read().strip() or '?'}); "
                         "replicas share a PostgreSQL --job-store instead") from None
    f.truncate(0)
    f.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
    f.flush()
    return f


def check_port(host: str, port: int) -> None:
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as e:
            raise UsageError(f"--host {host} --port {port}: cannot listen there ({e.strerror})") from None


def install_debug_hooks(pipe, rank: int) -> None:
    """The ``VIDPAR_DEBUG_*`` test hooks of this rank on the denoisers (usually none); the injected failure only in
    the first start of a torchrun worker group (a restarted service must not fail again)."""
    from vidpar.cli.generate import install_debug_hooks as install

    first_start = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
    install(pipe.comps.denoisers(), rank, os.environ.get(DEBUG_FAIL_ENV) if first_start else None)


def run_serve(args: argparse.Namespace) -> int:
    """Entry of ``vidpar serve``; returns the exit code (3 drained, 1 failed, 2 bad arguments)."""
    launch = apply_launch_env()
    rank = launch.rank
    log = setup_logging(rank, args.verbose)
    stop = StopRequest().install((signal.SIGTERM, signal.SIGUSR1, signal.SIGINT))
    try:
        source, config, location = check_serve_args(args, launch.world_size)
        # ``lock`` is held (kept referenced) until this function returns
        store, lock = (_open_rank0(args, location) if rank == 0 else (None, None))  # noqa: F841
    except UsageError as e:
        return usage_error(rank, "vidpar serve", e, args.verbose)
    try:
        code = _serve(args, launch, source, config, location, store, stop, log)
    except UsageError as e:  # a --lora file that does not fit the model: found by every rank alike
        code = usage_error(rank, "vidpar serve", e, args.verbose)
        logging.shutdown()
        os._exit(code)  # no teardown collective: nothing was started that needs one
    except Exception as e:  # noqa: BLE001 - any failure: name the rank, exit non-zero, never hang
        report_failure(rank, e, args.verbose)
        logging.shutdown()
        os._exit(EXIT_FAILED)  # peers may be gone: skip teardown that could block on them
    if code == EXIT_FAILED:
        logging.shutdown()
        os._exit(EXIT_FAILED)  # the process group is not trusted: no teardown collective
    if rank == 0:
        log.warning("drained: stopped accepting, the running job (if any) is requeued with its snapshot (exit %d)",
                    REQUEUE_EXIT_CODE)
    finish_distributed(barrier=True)
    logging.shutdown()
    os._exit(code)  # everything is saved; the interpreter's teardown of torch alone takes seconds


def _open_rank0(args, location: StoreLocation):
    state_dir = Path(args.state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    lock = lock_state_dir(state_dir) if location.kind == "sqlite" else None
    check_port(args.host, args.port)
    registry = LoraRegistry(state_dir)
    for entry in _flag_entries(args):
        try:
            why = registry.conflict(entry)
        except ValueError as e:  # an unreadable registry file
            raise UsageError(str(e)) from None
        if why is not None:
            raise UsageError(f"--lora {entry.name}={entry.path}: {why}")
    try:
        return open_store(location), lock
    except ValueError as e:
        raise UsageError(str(e)) from None


def _flag_entries(args) -> list[RegisteredLora]:
    return [RegisteredLora(name, str(spec.path), sha, spec.strength, spec.target)
            for name, spec, sha in args.lora_registrations]


def _check_lora_flags_fit(args, pipe) -> None:
    """Every rank, after loading: the ``--lora`` files fit the denoisers (the same files and model on every rank,
    so every rank decides alike); ``UsageError`` (exit 2) naming the first that does not."""
    for name, spec, _sha in args.lora_registrations:
        if pipe.comps.lora_keys is None:
            raise UsageError(f"--lora {name}: {pipe.card.name} ({pipe.card.family}) does not take LoRAs")
        try:
            read_checked_lora(spec, pipe.comps.lora_targets(), pipe.comps.lora_keys)
        except ValueError as e:
            raise UsageError(f"--lora {name}={spec.path}: {e}") from None


def _serve(args, launch, source, config, location, store, stop: StopRequest, log: logging.Logger):
    from vidpar.pipeline import Pipeline

    from .app import create_app
    from .control import ControlChannel
    from .metrics import Metrics
    from .protocol import decode_image
    from .server import HttpServer
    from .state import ServiceState
    from .worker import Worker, WorkerOptions

    t0 = time.perf_counter()
    timeout = timeout_of(args)
    log.info("%s; mesh ulysses=%d ring=%d cfg=%d", launch.describe(), config.ulysses, config.ring, config.cfg)
    pipe = Pipeline.from_pretrained(source, parallel=config, dtype=DTYPES[args.dtype],
                                    attention_backend=args.attention_backend, vae_mode=args.vae_mode,
                                    backend=args.backend, timeout=timeout)
    install_debug_hooks(pipe, launch.rank)
    _check_lora_flags_fit(args, pipe)
    channel = ControlChannel(launch.rank, launch.world_size, 2 * timeout + timedelta(seconds=60))
    state_dir = Path(args.state_dir)
    options = WorkerOptions(state_dir, args.checkpoint_every, args.heartbeat, args.lease, args.max_attempts)
    state, server = None, None
    if launch.rank == 0:
        for folder in ("videos", "checkpoints"):
            (state_dir / folder).mkdir(parents=True, exist_ok=True)
        released = store.release(args.replica_id if store.shared else None)
        if released:
            log.warning("requeued %d job(s) a previous run left running: %s", len(released), ", ".join(released))
        registry = LoraRegistry(state_dir)
        for entry in _flag_entries(args):
            registry.add(entry)
        if names := [e.name for e in registry.list()]:
            log.info("LoRAs registered: %s", ", ".join(names))

        def validate(vr) -> None:
            image = decode_image(vr.image)
            with state.tokenizer_lock:
                pipe.validate(vr.request, image)

        def check_lora(spec) -> str:
            # reads names and shapes only; the rank loop never changes the modules' structure, only weight values
            if pipe.comps.lora_keys is None:
                raise ValueError(f"{pipe.card.name} ({pipe.card.family}) does not take LoRAs")
            return read_checked_lora(spec, pipe.comps.lora_targets(), pipe.comps.lora_keys).sha256

        state = ServiceState(
            store=store, card=pipe.card, served_names=(pipe.card.name, args.model), validate=validate, stop=stop,
            metrics=Metrics(pipe.card.name, args.replica_id, launch.world_size), state_dir=state_dir,
            replica_id=args.replica_id, world_size=launch.world_size, loras=registry, check_lora=check_lora,
            api_key=args.api_key)
        server = HttpServer(create_app(state), args.host, args.port, args.verbose)
        server.start()
        log.info("serving %s on http://%s:%d (replica %s, %d rank(s), %s, loaded in %.1f s)%s", pipe.card.name,
                 args.host, args.port, args.replica_id, launch.world_size, location.describe(),
                 time.perf_counter() - t0, "" if args.api_key else "; no API key: anyone who can reach it may use it")
    try:
        code = Worker(pipe, channel, stop, options, state, log).serve_forever()
    finally:
        if server is not None:
            server.stop()
        if store is not None:
            store.close()
    return code


__all__ = ["add_serve_arguments", "check_serve_args", "run_serve"]
