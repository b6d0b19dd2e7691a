"""The service's parts without a service: the job store (claims, leases, fencing), the outcome decision, request
parsing, and the throughput planner's queue simulation against the M/D/1 formula."""

from __future__ import annotations

import json
import math
import statistics
import time

import pytest

from vidpar.serve.control import FAILED, IDLE, INTERRUPTED, JOB, OK, ControlChannel, Report, is_collective_failure
from vidpar.serve.jobs import JobRecord, parse_store_location
from vidpar.serve.protocol import RequestError, build_request, frames_for_seconds, parse_fields
from vidpar.serve.sqlite_store import SqliteJobStore
from vidpar.serve.worker import decide


def _job(i: int) -> JobRecord:
    return JobRecord(id=f"video_{i}", status="queued", request={"generation": {"prompt": str(i)}}, model="tiny",
                     created_at=1000.0 + i)


def test_sqlite_store_claims_in_order_fences_and_recovers(tmp_path):
    store = SqliteJobStore(tmp_path / "jobs.sqlite")
    for i in range(4):
        store.create(_job(i))
    a = store.claim("A", 60.0, now=0.0)
    b = store.claim("B", 60.0, now=0.0)
    assert (a.id, a.attempts, a.owner, b.id) == ("video_0", 1, "A", "video_1")
    assert store.renew(a.id, "A", 60.0, now=10.0, progress=40, step=2).owned
    # A's lease runs out: a claim after it takes A's job over; A can no longer finish it
    c = store.claim("B", 60.0, now=100.0)
    assert (c.id, c.attempts, c.owner) == ("video_0", 2, "B")
    assert not store.renew(a.id, "A", 60.0, now=100.0).owned
    assert not store.finish(a.id, "A", "completed", now=101.0)
    assert store.finish(a.id, "B", "completed", now=101.0, output="/x.mp4")
    assert store.get(a.id).status == "completed" and store.get(a.id).progress == 100
    # cancel: a queued job is dropped, a running one is flagged for its replica
    assert store.cancel("video_2", now=5.0).status == "cancelled"
    assert store.cancel("video_1", now=5.0).cancel_requested
    assert store.renew("video_1", "B", 60.0, now=102.0).cancel_requested
    # a restart requeues the running jobs it left (here: every one, as for a single replica)
    assert store.release(None) == ["video_1"] and store.get("video_1").status == "queued"
    assert store.counts() == {"queued": 2, "in_progress": 0, "completed": 1, "failed": 0, "cancelled": 1}
    page = store.list(limit=2, order="asc")
    assert [j.id for j in page] == ["video_0", "video_1"]
    assert [j.id for j in store.list(after="video_1", limit=5, order="asc")] == ["video_2", "video_3"]
    assert store.delete("video_0") and not store.delete("video_3")  # only finished jobs are deleted
    store.close()


def test_store_locations():
    assert parse_store_location(None, "/s").target == "/s/jobs.sqlite"
    assert parse_store_location("sqlite:////abs/q.db", "/s").target == "/abs/q.db"
    assert parse_store_location("postgresql://u@h:5/db", "/s").kind == "postgresql"
    assert "postgresql h:5/db" == parse_store_location("postgresql://u:pw@h:5/db", "/s").describe()
    with pytest.raises(ValueError, match="--job-store"):
        parse_store_location("redis://x", "/s")


def test_outcome_decision():
    ok, stop = Report(OK), Report(OK, stop=True)
    assert decide([ok, ok]).status == "completed" and decide([ok, ok]).exit_code is None
    assert decide([ok, stop]).exit_code == 3  # finished, then drained
    assert decide([Report(INTERRUPTED), Report(INTERRUPTED)]).status == "cancelled"
    assert decide([Report(INTERRUPTED, stop=True), Report(INTERRUPTED)]).status == "requeue"
    # one rank raised alone; the other timed out waiting: name the first, distrust the group
    d = decide([Report(FAILED, "RuntimeError: gloo timed out", collective=True), Report(FAILED, "ValueError: bad")])
    assert (d.status, d.error, d.exit_code) == ("failed", "rank 1: ValueError: bad", 1)
    # every rank agreed on a failure (as Pipeline's ctx_agree makes them): the group is sound, go on
    d = decide([Report(FAILED, "ValueError: image"), Report(FAILED, "RuntimeError: rank(s) [0] failed")])
    assert (d.error, d.exit_code) == ("rank 0: ValueError: image", None)
    assert decide([Report(FAILED, "OSError: disk full"), ok]).exit_code is None  # rank 0's save failed
    assert is_collective_failure(RuntimeError("[gloo/transport/tcp/pair.cc:553] Connection closed by peer"))
    assert not is_collective_failure(RuntimeError("rank(s) [1] failed (see their error messages)"))
    assert not is_collective_failure(ValueError("Timed out"))


def test_request_parsing():
    from vidpar.models.registry import model_card

    card = model_card("tiny")
    form = parse_fields({"prompt": "p", "seed": "7", "guidance_scale": "4.5", "loras": "[]"}, from_form=True)
    assert form == {"prompt": "p", "seed": 7, "guidance_scale": 4.5, "loras": []}
    assert frames_for_seconds(4, card) == 65 and frames_for_seconds(0.1, card) == 5
    with pytest.raises(RequestError, match="format must be one of"):
        build_request({"prompt": "p", "format": "gif"}, card, ("tiny",))
    vr = build_request({"prompt": "p", "size": "64x32", "seconds": "0.5"}, card, ("tiny",))
    assert vr.format == "mp4" and type(vr).from_json(vr.to_json()) == vr
    r = vr.request
    assert (r.width, r.height, r.num_frames, r.num_steps, r.guidance_scale) == (64, 32, 9, 4, 5.0)
    assert build_request(parse_fields({"prompt": "p"}), card, ("tiny",)).request.num_frames == 5  # the default
    for bad, status in [({"prompt": 3}, 422), ({"prompt": "p", "steps": 2.0}, 422), ({"prompt": "p", "x": 1}, 422)]:
        with pytest.raises(RequestError) as e:
            parse_fields(bad)
        assert e.value.status == status


def test_cache_field():
    from vidpar.cache import FBCache, TeaCache
    from vidpar.cache.guard import CacheGuard
    from vidpar.models.registry import model_card

    card = model_card("tiny")
    plain = build_request({"prompt": "p"}, card, ("tiny",))
    assert plain.cache is None and plain.cache_policy() is None
    named = build_request(parse_fields({"prompt": "p", "cache": "teacache"}), card, ("tiny",))
    assert named.cache_policy() == TeaCache()
    form = parse_fields({"prompt": "p", "cache": '{"policy": "fbcache", "threshold": 0.3, "warmup_steps": 0}'},
                        from_form=True)
    vr = build_request(form, card, ("tiny",))
    assert vr.cache_policy() == FBCache(0.3, guard=CacheGuard(0, None, 1))
    assert type(vr).from_json(json.loads(json.dumps(vr.to_json()))) == vr  # as stored with the job
    for cache, status, message in [
        ({"threshold": 0.1}, 422, "cache must be a policy name or"),
        (["fbcache"], 422, "cache must be a policy name or"),
        ({"policy": "fbcache", "colour": 1}, 422, "cache: unknown option(s) ['colour']"),
        ({"policy": "lazy"}, 400, "cache lazy: unknown cache policy 'lazy'"),
        ({"policy": "teacache", "interval": 3}, 400, "cache teacache: teacache takes no interval"),
        ({"policy": "fbcache", "threshold": -1}, 400, "cache fbcache: threshold must be a finite number >= 0"),
    ]:
        with pytest.raises(RequestError) as e:
            build_request(parse_fields({"prompt": "p", "cache": cache}), card, ("tiny",))
        assert e.value.status == status and message in str(e.value), (cache, str(e.value))


def test_replica_throughput_plan_and_queue_simulation():
    from vidpar.planner.throughput import plan_throughput, simulate_latencies

    # M/D/1: mean wait = rho * S / (2 (1 - rho)); the simulation must agree
    s, rho = 10.0, 0.6
    lat = simulate_latencies(1, s, rho / s, requests=40000, seed=1)
    expected = s + rho * s / (2 * (1 - rho))
    assert math.isclose(statistics.fmean(lat), expected, rel_tol=0.05)
    assert min(lat) == pytest.approx(s)
    layouts, rate = plan_throughput("wan2.1-t2v-1.3b", 480, 832, 81, 8, 8, steps=50)
    assert sorted((lay.replicas, lay.gpus_per_replica) for lay in layouts) == [(1, 8), (2, 4), (4, 2), (8, 1)]
    whole = next(lay for lay in layouts if lay.replicas == 1)
    assert rate == pytest.approx(0.7 * whole.videos_per_hour)
    for lay in layouts:
        assert lay.videos_per_hour == pytest.approx(lay.replicas * 3600 / lay.seconds_per_video)
        assert lay.p50_latency_s >= lay.seconds_per_video and lay.p99_latency_s >= lay.p50_latency_s
    assert layouts[0].videos_per_hour == max(lay.videos_per_hour for lay in layouts)
    # a stream above every layout's capacity: overloaded, no latency
    over, _ = plan_throughput("wan2.1-t2v-1.3b", 480, 832, 81, 2, 2, rate_per_hour=1e6, steps=50)
    assert all(lay.p50_latency_s is None and lay.utilization > 1 for lay in over)
    partial, _ = plan_throughput("wan2.1-t2v-1.3b", 480, 832, 81, 12, 8, steps=50)
    assert any("part of a node" in " ".join(lay.rejected) for lay in partial if lay.gpus_per_replica == 12)


@pytest.mark.parametrize("flags,message", [
    (["--heartbeat", "200"], "--heartbeat must be in (0, --timeout / 2 = 150] seconds"),
    (["--lease", "2"], "--lease must be at least 4 x --heartbeat"),
    (["--port", "70000"], "--port must be in 1..65535"),
    (["--job-store", "mysql://x"], "--job-store 'mysql://x': use postgresql://"),
    (["--max-attempts", "0"], "--max-attempts must be >= 1"),
    (["--ulysses", "3"], "needs 3 ranks"),
])
def test_serve_arguments_are_checked_before_loading(tmp_path, flags, message):
    from vidpar.cli import build_parser
    from vidpar.cli.common import UsageError
    from vidpar.serve.cli import check_serve_args

    args = build_parser().parse_args(["serve", "--model", "tiny", "--state-dir", str(tmp_path / "s"), *flags])
    with pytest.raises(UsageError) as e:
        check_serve_args(args, 1)
    assert message in str(e.value)


def test_plan_throughput_subcommand(capsys):
    import json

    from vidpar.cli import main

    assert main(["plan", "--model", "wan2.1-t2v-1.3b", "--gpus", "4", "--height", "480", "--width", "832",
                 "--throughput", "--rate", "100", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["rate_per_hour"] == 100 and [(x["replicas"], x["gpus_per_replica"]) for x in out["layouts"]]
    assert main(["plan", "--model", "wan2.1-t2v-1.3b", "--gpus", "4", "--throughput"]) == 0
    table = capsys.readouterr().out
    assert "R x G" in table and "4 x 1" in table and "1 x 4" in table and "p50 latency" in table
    assert main(["plan", "--model", "wan2.1-t2v-1.3b", "--gpus", "4", "--throughput", "--rate", "-1"]) == 2


def heartbeat_task(env, timeout_s: float, idle_s: float, first_delay_s: float):
    """Rank 0 ticks every 0.3 s for ``idle_s`` (after ``first_delay_s``); the others just wait in ``tick``."""
    from datetime import timedelta

    import torch.distributed as dist

    dist.barrier()  # arrive together: the group's short timeout also bounds connecting its ranks
    channel = ControlChannel(env.rank, env.world_size, timedelta(seconds=timeout_s))
    t0 = time.monotonic()
    try:
        if env.rank == 0:
            time.sleep(first_delay_s)
        while time.monotonic() - t0 < idle_s:
            if env.rank == 0:
                time.sleep(0.3)
            assert channel.tick(IDLE, None, False) == (IDLE, None, False)
        cmd, payload, stopping = channel.tick(JOB, {"id": "video_x", "text": "\u00e9"} if env.rank == 0 else None,
                                              env.rank == 1)
        reports = channel.agree(Report(OK if env.rank == 0 else FAILED, f"rank {env.rank} \u00e9", True,
                                       memory=float(env.rank)))
        return "ok", cmd, payload, stopping, [(r.kind, r.message, r.collective, r.memory) for r in reports]
    except RuntimeError as e:
        return "error", round(time.monotonic() - t0, 1), str(e)[:120]


def test_control_channel_heartbeat_keeps_idle_ranks_alive_and_its_absence_times_out(pools):
    # idle for 2.5x the group's timeout: the heartbeat keeps every rank alive; then a job and an agreement
    for result in pools(2).run(heartbeat_task, 2.0, 5.0, 0.0):
        assert result == ("ok", JOB, {"id": "video_x", "text": "\u00e9"}, True,
                          [(OK, "rank 0 \u00e9", True, 0.0), (FAILED, "rank 1 \u00e9", True, 1.0)]), result
    # without a heartbeat for longer than the timeout, the waiting rank fails (does not hang)
    waited = pools(2).run(heartbeat_task, 2.0, 0.0, 4.5)[1]
    assert waited[0] == "error" and waited[1] < 4.5, waited
