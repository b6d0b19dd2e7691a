"""LoRAs through ``vidpar serve``: the registry (``--lora NAME=FILE`` and ``POST /v1/loras``, durable in the state
folder), jobs that name registered LoRAs, and switching between LoRA sets with the base weights restored exactly.

Units first (no service): flag checks, the registry file, a job's resolution and its file check. Then one service
(2 processes, gloo, ``tiny`` in float64) and one restart of it: a job with LoRAs equals ``vidpar generate --lora``
with the same arguments (exact npy frames), a job without LoRAs after one with them equals the base video bit for
bit, a queued job keeps the file it was accepted with, a file changed on disk fails only its own job, bad
registrations and unknown names are refused with one-line messages and create nothing, and the registry survives
the restart.
"""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from cli_run import TINY, run_vidpar
from lora_files import random_lora, write_original
from serve_run import TINY_JOB, Service, download_frames, submit, wait_status
from vidpar.lora import LoraSpec, file_sha256
from vidpar.serve.lora_registry import LoraConflict, LoraRegistry, RegisteredLora, parse_registration
from vidpar.serve.protocol import LoraRef, RequestError, VideoRequest, build_request


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Tiny random LoRA files for the ``tiny`` model, one that fits no module of it, and a file that is no LoRA."""
    from vidpar.models.wan.builtin import build_tiny

    folder = tmp_path_factory.mktemp("loras")
    model = build_tiny(load_text_encoder=False)[0]
    alien = random_lora(model, seed=5, blocks_only=True)
    alien.modules = {name.replace("blocks.0.", "blocks.7."): m for name, m in alien.modules.items()
                     if name.startswith("blocks.0.")}
    (folder / "junk.safetensors").write_bytes(b"not a safetensors file")
    return {
        "style": write_original(folder / "style.safetensors", random_lora(model, seed=3, std=0.2)),
        "motion": write_original(folder / "motion.safetensors", random_lora(model, seed=4, std=0.2)),
        "alien": write_original(folder / "alien.safetensors", alien),
        "junk": folder / "junk.safetensors",
        "folder": folder,
    }


# ---- units ----


@pytest.mark.parametrize("flag,message", [
    ("style", "expected NAME=FILE[:SCALE[:TARGET]]"),
    ("bad name={style}", "LoRA name 'bad name' is not valid"),
    ("style={folder}/nope.safetensors", "nope.safetensors does not exist"),
    ("style={junk}", "is not a readable safetensors file"),
    ("style={style}:nan", "is not a valid strength"),
])
def test_lora_flags_are_checked_before_loading(files, tmp_path, flag, message):
    from vidpar.cli import build_parser
    from vidpar.cli.common import UsageError
    from vidpar.serve.cli import check_serve_args

    argv = ["serve", "--model", "tiny", "--state-dir", str(tmp_path / "s"), "--lora", flag.format(**files)]
    with pytest.raises(UsageError) as e:
        check_serve_args(build_parser().parse_args(argv), 1)
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_a_flag_name_registered_with_another_file_is_refused_at_start(files, tmp_path):
    from vidpar.cli import build_parser
    from vidpar.cli.common import UsageError
    from vidpar.serve.cli import _open_rank0, check_serve_args

    state = tmp_path / "s"
    state.mkdir()
    LoraRegistry(state).add(RegisteredLora("style", str(files["motion"]), file_sha256(files["motion"])))
    argv = ["serve", "--model", "tiny", "--state-dir", str(state), "--port", "1", "--lora",
            f"style={files['style']}", "--lora", f"style={files['motion']}"]
    with pytest.raises(UsageError, match="the name 'style' is given twice"):
        check_serve_args(build_parser().parse_args(argv), 1)
    args = build_parser().parse_args(argv[:-2])
    _source, _config, location = check_serve_args(args, 1)
    assert args.lora_registrations[0][2] == file_sha256(files["style"])
    with pytest.raises(UsageError, match="'style' is already registered with .*motion.safetensors"):
        _open_rank0(args, location)


def test_registry_file_is_shared_durable_and_resolves_jobs(files, tmp_path):
    from vidpar.models.registry import model_card
    from vidpar.serve.worker import check_job_lora_files

    style, sha = str(files["style"]), file_sha256(files["style"])
    registry = LoraRegistry(tmp_path)
    entry, created = registry.add(RegisteredLora("style", style, sha, 0.7))
    assert created and entry.created_at > 0
    assert registry.add(RegisteredLora("style", style, sha, 0.7)) == (entry, False)  # the same again: a no-op
    with pytest.raises(LoraConflict, match="already registered"):
        registry.add(RegisteredLora("style", style, sha, 0.5))  # other defaults count as another registration
    other = LoraRegistry(tmp_path)  # another replica on the same folder, or a restart
    assert other.list() == [entry]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["loras.json", "loras.json.lock"]  # no temporary left
    assert json.loads((tmp_path / "loras.json").read_text())["loras"][0]["sha256"] == sha

    card = model_card("tiny")
    vr = build_request({"prompt": "p", "loras": [{"name": "style"}]}, card, ("tiny",))
    assert vr.loras == (LoraRef("style"),)
    resolved = other.resolve(vr)
    assert resolved.loras == (LoraRef("style", 0.7, style, sha, "both"),)  # the registered default scale
    assert VideoRequest.from_json(json.loads(json.dumps(resolved.to_json()))) == resolved
    check_job_lora_files(resolved)
    for loras, message in [([{"name": "nope"}], "loras[0]: no LoRA named 'nope' is registered (registered: 'style'"),
                           ([{"name": "style"}, {"name": "style", "scale": 1}], "loras[1]: 'style' is named twice")]:
        with pytest.raises(RequestError, match=message.replace("(", r"\(").replace("[", r"\[")) as e:
            other.resolve(build_request({"prompt": "p", "loras": loras}, card, ("tiny",)))
        assert e.value.status == 400
    assert registry.remove("style") and not registry.remove("style") and other.list() == []

    copy = tmp_path / "copy.safetensors"
    shutil.copy(files["style"], copy)
    job = VideoRequest(vr.request, loras=(LoraRef("style", 0.7, str(copy), sha),))
    check_job_lora_files(job)
    shutil.copy(files["motion"], copy)
    with pytest.raises(ValueError, match="LoRA 'style': .* changed since the job was accepted"):
        check_job_lora_files(job)
    copy.unlink()
    with pytest.raises(ValueError, match="does not exist"):
        check_job_lora_files(job)


def test_registration_bodies():
    assert parse_registration({"name": "a.b-c_1", "path": "/x.safetensors", "scale": 2}) == (
        "a.b-c_1", LoraSpec("/x.safetensors", 2.0))
    for body, status, message in [
        ([], 422, "must be a JSON object"), ({"name": "a"}, 422, "path is required"),
        ({"name": "a", "path": "/x", "rank": 4}, 422, "unknown field(s) ['rank']"),
        ({"name": "a", "path": "/x", "scale": "1"}, 422, "scale must be a finite number"),
        ({"name": "-a", "path": "/x"}, 400, "LoRA name '-a' is not valid"),
        ({"name": "a", "path": "x.safetensors"}, 400, "must be absolute"),
        ({"name": "a", "path": "/x", "target": "high low"}, 400, "target must be 'both' or a denoiser name"),
    ]:
        with pytest.raises(RequestError) as e:
            parse_registration(body)
        assert e.value.status == status and message in str(e.value), (body, str(e.value))


# ---- one service, then a restart of it ----


@pytest.fixture(scope="module")
def served(tmp_path_factory, files):
    """``{"service": the running service, "frames": results kept between tests}``; one start, plus the restart
    of the last test."""
    state = tmp_path_factory.mktemp("serve-lora") / "state"
    holder = {"service": Service(state, nproc=2, args=("--lora", f"style={files['style']}:0.7")), "frames": {}}
    try:
        holder["service"].wait_ready()
        yield holder
    finally:
        holder["service"].stop()


def _videos(client) -> int:
    return len(client.get("/v1/videos", params={"limit": 1000}).json()["data"])


def test_registry_from_the_flag_and_post_and_bad_registrations(served, files):
    svc = served["service"]
    with svc.client() as client:
        listed = client.get("/v1/loras").json()["data"]
        assert [(e["name"], e["path"], e["sha256"], e["scale"], e["target"]) for e in listed] == [
            ("style", str(files["style"]), file_sha256(files["style"]), 0.7, "both")]
        r = client.post("/v1/loras", json={"name": "motion", "path": str(files["motion"])})
        assert r.status_code == 200 and r.json()["sha256"] == file_sha256(files["motion"]), r.text
        again = client.post("/v1/loras", json={"name": "motion", "path": str(files["motion"])})
        assert again.status_code == 200 and again.json() == r.json()  # the same registration: a no-op
        assert client.get("/v1/loras/motion").json() == r.json()
        before = _videos(client)
        cases = [
            (409, {"name": "motion", "path": str(files["style"])}, "'motion' is already registered with"),
            (400, {"name": "bad/name", "path": str(files["style"])}, "LoRA name 'bad/name' is not valid"),
            (400, {"name": "x", "path": "style.safetensors"}, "must be absolute"),
            (400, {"name": "x", "path": str(files["folder"] / "nope.safetensors")}, "does not exist"),
            (400, {"name": "x", "path": str(files["junk"])}, "is not a readable safetensors file"),
            (400, {"name": "x", "path": str(files["alien"])}, "key 'diffusion_model.blocks.7."),
            (400, {"name": "x", "path": str(files["style"]), "target": "high"}, "target 'high' is not a denoiser"),
            (422, {"name": "x", "path": str(files["style"]), "rank": 4}, "unknown field(s) ['rank']"),
        ]
        for status, body, message in cases:
            r = client.post("/v1/loras", json=body)
            text = r.json()["error"]["message"]
            assert r.status_code == status and message in text and "\n" not in text, (body, r.text)
        assert [e["name"] for e in client.get("/v1/loras").json()["data"]] == ["motion", "style"]
        for loras, status, message in [
            ([{"name": "sty1e"}], 400, "loras[0]: no LoRA named 'sty1e' is registered (registered: 'motion', 'style'"),
            ([{"name": "style"}, {"name": "style"}], 400, "loras[1]: 'style' is named twice"),
            ([{"name": "style", "scale": "high"}], 422, "loras[0].scale must be a finite number"),
        ]:
            r = client.post("/v1/videos", json={**TINY_JOB, "loras": loras})
            assert r.status_code == status and message in r.json()["error"]["message"], (loras, r.text)
        assert client.get("/v1/loras/nope").status_code == 404 and client.delete("/v1/loras/nope").status_code == 404
        assert _videos(client) == before  # nothing above became a job


def test_jobs_apply_their_loras_and_switch_back_to_the_base_weights_exactly(served, files, tmp_path):
    svc = served["service"]
    with svc.client() as client:
        jobs = [submit(client), submit(client, loras=[{"name": "style"}, {"name": "motion", "scale": 0.5}]),
                submit(client, loras=[{"name": "style"}]), submit(client, loras=[{"name": "style", "scale": 0.7}]),
                submit(client)]
        assert jobs[1]["loras"] == [{"name": "style", "scale": 0.7, "sha256": file_sha256(files["style"])},
                                    {"name": "motion", "scale": 0.5, "sha256": file_sha256(files["motion"])}]
        for job in jobs:
            done = wait_status(client, job["id"])
            assert done["status"] == "completed", done
        base, both, style, style_again, base_after = (download_frames(client, j["id"], tmp_path) for j in jobs)
    ref = run_vidpar(["generate", *TINY, "--steps", "2", "--dtype", "float64", "--lora", f"{files['style']}:0.7",
                      "--lora", f"{files['motion']}:0.5", "--out", "ref.npy"], tmp_path)
    assert ref.returncode == 0, ref.stdout
    assert np.array_equal(both, np.load(tmp_path / "ref.npy"))  # the same video as vidpar generate --lora
    assert np.array_equal(base_after, base)  # the base weights are back bit for bit
    assert np.array_equal(style_again, style)
    assert not np.array_equal(style, base) and not np.array_equal(style, both)
    log = svc.log
    assert log.count("LoRAs style:0.7, motion:0.5 merged") == 1 and log.count("LoRAs style:0.7 merged") == 1, log
    served["frames"].update(base=base, style=style)


def test_a_queued_job_keeps_its_file_and_a_changed_file_fails_only_its_job(served, files, tmp_path):
    svc = served["service"]
    swap, broken = files["folder"] / "swap.safetensors", files["folder"] / "broken.safetensors"
    shutil.copy(files["style"], swap)
    shutil.copy(files["style"], broken)
    with svc.client() as client:
        # 'broken' at another scale than 'swap': its job must read its file again (an identical set already merged
        # is reused without reading: those weights are the bytes the job was accepted with)
        for name, path, scale in (("swap", swap, 0.7), ("broken", broken, 0.5)):
            r = client.post("/v1/loras", json={"name": name, "path": str(path), "scale": scale})
            assert r.status_code == 200, r.text
        long = submit(client, steps=2000)  # holds the queue until it is cancelled
        wait_status(client, long["id"], ("in_progress",), min_progress=1)
        kept = submit(client, loras=[{"name": "swap"}])
        failing = submit(client, loras=[{"name": "broken"}])
        after = submit(client)
        # re-register 'swap' with another file and change 'broken' on disk while both jobs are queued
        assert client.delete("/v1/loras/swap").json() == {"name": "swap", "object": "lora.deleted", "deleted": True}
        r = client.post("/v1/loras", json={"name": "swap", "path": str(files["motion"])})
        assert r.status_code == 200 and r.json()["sha256"] == file_sha256(files["motion"])
        shutil.copy(files["motion"], broken)
        assert client.delete(f"/v1/videos/{long['id']}").status_code == 200
        assert wait_status(client, kept["id"])["status"] == "completed"
        failed = wait_status(client, failing["id"])
        assert failed["status"] == "failed" and "LoRA 'broken'" in failed["error"]["message"], failed
        assert "changed since the job was accepted" in failed["error"]["message"], failed
        assert wait_status(client, after["id"])["status"] == "completed"  # the service went on
        assert np.array_equal(download_frames(client, kept["id"], tmp_path), served["frames"]["style"])
        assert np.array_equal(download_frames(client, after["id"], tmp_path), served["frames"]["base"])


def test_the_registry_survives_a_restart(served, files, tmp_path):
    old = served["service"]
    assert old.stop() != 0 and "drained" in old.log, old.log
    served["service"] = svc = Service(old.state_dir, nproc=2)  # no --lora flag this time
    svc.wait_ready()
    with svc.client() as client:
        listed = {e["name"]: e for e in client.get("/v1/loras").json()["data"]}
        assert sorted(listed) == ["broken", "motion", "style", "swap"]
        assert (listed["style"]["path"], listed["style"]["scale"]) == (str(files["style"]), 0.7)
        assert listed["swap"]["sha256"] == file_sha256(files["motion"])  # as re-registered
        job = submit(client, loras=[{"name": "style"}])
        assert wait_status(client, job["id"])["status"] == "completed"
        frames = download_frames(client, job["id"], tmp_path)
        assert np.array_equal(frames, served["frames"]["style"])
