"""Image-to-video through ``vidpar serve`` (torchrun, 2 processes): a tiny Wan 2.1 I2V diffusers folder; the image
arrives as base64 JSON or as a multipart upload (as the OpenAI client's ``input_reference``), is broadcast to every
rank with the job, and the video equals ``vidpar generate --image`` with the same file."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from cli_run import run_vidpar
from serve_run import Service, download_frames, wait_status
from test_pipeline_i2v import build_folder, make_image

pytest.importorskip("diffusers")
JOB = {"prompt": "a cat run on the green grass", "size": "48x32", "num_frames": 5, "steps": 2, "seed": 3,
       "format": "npy"}


def test_image_to_video_as_base64_and_as_upload(tmp_path):
    folder = tmp_path / "wan21_i2v"
    folder.mkdir()
    build_folder(folder, "wan21_i2v")
    image = tmp_path / "first.png"
    make_image().save(image)
    png = image.read_bytes()
    svc = Service(tmp_path / "state", nproc=2, model=str(folder))
    try:
        svc.wait_ready()
        with svc.client() as c:
            r = c.post("/v1/videos", json=JOB)  # an I2V model needs its image
            assert r.status_code == 400 and "this is an image-to-video model" in r.json()["error"]["message"]
            r = c.post("/v1/videos", json={**JOB, "image": base64.b64encode(b"not a png").decode()})
            assert r.status_code == 400 and "image is not a readable image file" in r.json()["error"]["message"]
            as_json = c.post("/v1/videos", json={**JOB, "image": base64.b64encode(png).decode()}).json()
            form = {k: str(v) for k, v in JOB.items()}
            as_file = c.post("/v1/videos", data=form, files={"input_reference": ("first.png", png, "image/png")})
            assert as_file.status_code == 200, as_file.text
            frames = []
            for video in (as_json, as_file.json()):
                assert wait_status(c, video["id"])["status"] == "completed"
                frames.append(download_frames(c, video["id"], tmp_path))
    finally:
        svc.stop()
    ref = run_vidpar(["generate", "--model", str(folder), "--prompt", JOB["prompt"], "--image", str(image),
                      "--height", "32", "--width", "48", "--frames", "5", "--steps", "2", "--seed", "3",
                      "--dtype", "float64", "--no-progress", "--out", "ref.npy"], tmp_path, timeout=180)
    assert ref.returncode == 0, ref.stdout
    expected = np.load(tmp_path / "ref.npy")
    assert np.array_equal(frames[0], expected) and np.array_equal(frames[1], expected)
