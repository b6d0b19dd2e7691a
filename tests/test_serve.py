"""``vidpar serve`` for real: one service under torchrun (2 processes, gloo, the ``tiny`` model in float64) with an
API key, driven over HTTP by httpx and by the OpenAI client.

The video of a job equals ``vidpar generate``'s with the same settings (its exact frames, ``format: "npy"``;
the default mp4 decodes to the same clip up to H.264's loss);
concurrent submissions each get their own video; queued and running jobs are cancelled; bad requests get the
CLI's messages and never become jobs; metrics and listing reflect the jobs.
"""

from __future__ import annotations

import base64
import io
import threading
import warnings

import numpy as np
import pytest

from cli_run import TINY, run_vidpar
from serve_run import TINY_JOB, Service, download_frames, submit, wait_status

KEY = "test-key"


@pytest.fixture(scope="module")
def service(tmp_path_factory):
    svc = Service(tmp_path_factory.mktemp("serve") / "state", nproc=2, api_key=KEY)
    try:
        svc.wait_ready()
        yield svc
    finally:
        code = svc.stop()
        assert code != 0 and "drained" in svc.log, svc.log  # SIGTERM: a drain (ranks exit 3)


@pytest.fixture(scope="module")
def client(service):
    with service.client() as c:
        yield c


def test_a_video_equals_vidpar_generate_with_the_same_arguments(service, client, tmp_path):
    video = submit(client)
    assert video["object"] == "video" and video["status"] == "queued" and video["id"].startswith("video_")
    assert (video["size"], video["num_frames"], video["steps"], video["seed"]) == ("32x32", 5, 2, 3)
    mp4 = submit(client, format="mp4")
    done = wait_status(client, video["id"])
    assert done["status"] == "completed" and done["progress"] == 100 and done["attempts"] == 1, done
    frames = download_frames(client, video["id"], tmp_path)
    ref = run_vidpar(["generate", *TINY, "--steps", "2", "--dtype", "float64", "--out", "ref.npy"], tmp_path)
    assert ref.returncode == 0, ref.stdout
    expected = np.load(tmp_path / "ref.npy")
    assert frames.shape == (5, 32, 32, 3) and np.array_equal(frames, expected)
    assert wait_status(client, mp4["id"])["format"] == "mp4"
    decoded = download_frames(client, mp4["id"], tmp_path).astype(float)
    # the same clip through H.264 (4:2:0, lossy): correlation ~0.9 here, ~0.5 against another seed's clip
    assert decoded.shape == frames.shape and np.corrcoef(decoded.ravel(), frames.ravel())[0, 1] > 0.8


def test_a_cached_job_equals_vidpar_generate_with_the_same_cache(client, tmp_path):
    cache = {"policy": "fbcache", "threshold": 0.5, "warmup_steps": 1}
    job = submit(client, steps=6, cache=cache)
    assert job["cache"] == {"name": "fbcache", "threshold": 0.5, "warmup_steps": 1}
    assert wait_status(client, job["id"])["status"] == "completed"
    frames = download_frames(client, job["id"], tmp_path)
    ref = run_vidpar(["generate", *TINY, "--steps", "6", "--dtype", "float64", "--cache", "fbcache",
                      "--cache-threshold", "0.5", "--cache-warmup", "1", "--out", "ref.npy"], tmp_path)
    assert ref.returncode == 0, ref.stdout
    assert "step cache fbcache: " in ref.stdout and " 0 skipped" not in ref.stdout, ref.stdout  # it did skip
    assert np.array_equal(frames, np.load(tmp_path / "ref.npy"))


def test_concurrent_submissions_each_get_their_own_video(client, tmp_path):
    seeds = [11, 12, 11, 13, 14, 12]
    ids: list[str | None] = [None] * len(seeds)

    def post(i: int) -> None:
        ids[i] = submit(client, seed=seeds[i])["id"]

    threads = [threading.Thread(target=post, args=(i,)) for i in range(len(seeds))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert len(set(ids)) == len(seeds) and None not in ids
    for video_id in ids:
        done = wait_status(client, video_id)
        assert done["status"] == "completed" and done["attempts"] == 1, done
    frames = [download_frames(client, i, tmp_path) for i in ids]
    for i, j in [(0, 2), (1, 5)]:  # the same seed: the same video
        assert np.array_equal(frames[i], frames[j])
    assert not np.array_equal(frames[0], frames[1]) and not np.array_equal(frames[3], frames[4])
    listed = client.get("/v1/videos", params={"limit": 100}).json()["data"]
    assert set(ids) <= {v["id"] for v in listed}


def test_cancel_a_queued_and_a_running_job(service, client):
    long = submit(client, steps=2000)  # runs for many seconds unless stopped
    queued = submit(client)
    wait_status(client, long["id"], ("in_progress",), min_progress=1)
    r = client.delete(f"/v1/videos/{queued['id']}")
    assert r.status_code == 200 and r.json() == {"id": queued["id"], "object": "video.deleted", "deleted": True}
    dropped = client.get(f"/v1/videos/{queued['id']}").json()
    assert dropped["status"] == "cancelled" and dropped["attempts"] == 0  # it never ran
    assert client.delete(f"/v1/videos/{long['id']}").status_code == 200
    stopped = wait_status(client, long["id"], ("cancelled",), timeout=30)
    assert 0 < stopped["progress"] < 100 and stopped["error"]["code"] == "cancelled", stopped
    assert client.get(f"/v1/videos/{long['id']}/content").status_code == 409
    state = service.state_dir
    assert not (state / "checkpoints" / long["id"]).exists()  # its snapshot is gone with it
    after = wait_status(client, submit(client)["id"])  # every rank stopped together: the service goes on
    assert after["status"] == "completed"
    files = [state / "videos" / f"{after['id']}.npy", state / "videos" / f"{after['id']}.npy.vidpar.json"]
    assert all(f.is_file() for f in files)  # the video and its output record
    assert client.delete(f"/v1/videos/{after['id']}").status_code == 200  # a finished job: deleted with its file
    assert client.get(f"/v1/videos/{after['id']}").status_code == 404
    assert not any(f.exists() for f in files)


def _cli_message(flags: list[str]) -> str:
    """The one-line error ``vidpar generate`` prints for ``flags`` (its own validation, run in this process)."""
    from vidpar.cli import build_parser
    from vidpar.cli.common import UsageError
    from vidpar.cli.generate import plan_jobs

    args = build_parser().parse_args(["generate", "--model", "tiny", "--prompt", "p", "--out", "x.npy", *flags])
    with pytest.raises(UsageError) as e:
        plan_jobs(args, 1)
    return str(e.value)


def _png(size=(8, 8)) -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, (200, 10, 10)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def test_bad_requests_get_the_cli_messages_and_never_become_jobs(service, client):
    before = len(client.get("/v1/videos", params={"limit": 1000}).json()["data"])
    same_as_cli = [
        ({"size": "30x32"}, ["--width", "30", "--height", "32"]),
        ({"num_frames": 6}, ["--frames", "6"]),
        ({"seed": -1}, ["--seed", "-1"]),
        ({"flow_shift": -1.0}, ["--flow-shift", "-1"]),
    ]
    for fields, flags in same_as_cli:
        r = client.post("/v1/videos", json={**TINY_JOB, **fields})
        assert r.status_code == 400 and r.json()["error"]["message"] == _cli_message(flags), (fields, r.text)
    cases = [
        (400, {"prompt": "x" * 200}, "prompt 0: 201 tokens incl. EOS, too long for the text encoder (max 128)"),
        (400, {"image": _png()}, "this is a text-to-video model: it takes no image"),
        (400, {"model": "sora-2"}, "model 'sora-2' is not served here; this service runs 'tiny'"),
        (400, {"size": "big"}, "size must be 'WIDTHxHEIGHT'"),
        (400, {"seconds": 4}, "give seconds or num_frames, not both"),
        (400, {"loras": [{"name": "style", "scale": 0.8}]}, "loras[0]: no LoRA named 'style' is registered"),
        (422, {"seed": "3"}, "seed must be an integer, got '3'"),
        (422, {"colour": "red"}, "unknown field(s) ['colour']"),
        (422, {"image": "%%%"}, "image must be base64"),
        (422, {"loras": [{"scale": 1}]}, "loras[0] must be"),
    ]
    for status, fields, message in cases:
        r = client.post("/v1/videos", json={**TINY_JOB, **fields})
        assert r.status_code == status and message in r.json()["error"]["message"], (fields, r.text)
    r = client.post("/v1/videos", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and "not valid JSON" in r.text
    r = client.post("/v1/videos", json={"size": "32x32"})
    assert r.status_code == 422 and "prompt is required" in r.text
    r = client.post("/v1/videos", data={"prompt": "p", "steps": "two"})  # a form, as the OpenAI client sends
    assert r.status_code == 422 and "steps must be an integer, got 'two'" in r.text
    with service.client() as anonymous:
        anonymous.headers.pop("Authorization")
        assert anonymous.post("/v1/videos", json=TINY_JOB).status_code == 401
        assert anonymous.get("/v1/videos").status_code == 401
        assert anonymous.get("/health").status_code == 200  # health needs no key
    after = len(client.get("/v1/videos", params={"limit": 1000}).json()["data"])
    assert after == before  # none of them became a job
    assert client.get("/v1/videos/video_nope").status_code == 404


def test_metrics_and_listing(client):
    ids = [submit(client, seed=s)["id"] for s in (21, 22, 23)]
    for i in ids:
        wait_status(client, i)
    text = client.get("/metrics").text
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            samples[name] = float(value)
    assert samples['vidpar_jobs{state="completed"}'] >= 3 and samples["vidpar_queue_depth"] == 0
    assert samples["vidpar_step_seconds_count"] >= 3 and samples["vidpar_step_seconds_sum"] > 0
    assert samples['vidpar_jobs_finished_total{state="completed"}'] >= 3
    assert samples['vidpar_http_requests_total{code="200",method="POST",route="/v1/videos"}'] >= 3
    assert 'vidpar_gpu_memory_peak_bytes{rank="1"}' in samples
    page = client.get("/v1/videos", params={"limit": 2, "order": "desc"}).json()
    assert [v["id"] for v in page["data"]] == ids[::-1][:2] and page["has_more"]
    rest = client.get("/v1/videos", params={"limit": 1, "after": page["last_id"]}).json()
    assert rest["data"][0]["id"] == ids[0]


def test_openai_client_creates_retrieves_and_downloads(service, tmp_path):
    openai = pytest.importorskip("openai")
    api = openai.OpenAI(base_url=service.url + "/v1", api_key=KEY)
    if not hasattr(api, "videos"):
        pytest.skip(f"openai {openai.__version__} has no videos API")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the client marks the videos API deprecated
        video = api.videos.create(prompt=TINY_JOB["prompt"], size="32x32",
                                  extra_body={"num_frames": 5, "steps": 2, "seed": 3, "format": "npy"})
        assert video.status == "queued" and video.size == "32x32"
        import time

        deadline = time.monotonic() + 120
        while video.status not in ("completed", "failed") and time.monotonic() < deadline:
            time.sleep(0.1)
            video = api.videos.retrieve(video.id)
        assert video.status == "completed" and video.progress == 100, video
        content = api.videos.download_content(video.id)
        (tmp_path / "openai.npy").write_bytes(content.read())
    with service.client() as c:
        same = submit(c)  # the same settings through httpx
        wait_status(c, same["id"])
        assert np.array_equal(np.load(tmp_path / "openai.npy"), download_frames(c, same["id"], tmp_path))


def test_a_second_service_on_the_same_state_folder_is_refused(service, tmp_path):
    res = run_vidpar(["serve", "--model", "tiny", "--state-dir", str(service.state_dir), "--port", "1"], tmp_path,
                     timeout=60)
    assert res.returncode == 2 and "is in use by another vidpar serve" in res.stdout, res.stdout
