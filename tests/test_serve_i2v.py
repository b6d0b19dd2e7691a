"""Image-to-video through ``vidpar serve`` (torchrun, 2 processes): a tiny Wan 2.1 I2V diffusers folder; the image
arrives as base64 JSON or as a multipart upload (as the OpenAI client's ``input_reference``), is broadcast to every
rank with the job, and the video equals what ``vidpar generate --image`` makes of the same file (its
``Pipeline.generate`` with the image read the same way, in this process)."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from serve_run import Service, download_frames, wait_status
from test_pipeline_i2v import build_folder, make_image

pytest.importorskip("diffusers")
JOB = {"prompt": "a cat run on the green grass", "size": "48x32", "num_frames": 5, "steps": 2, "seed": 3,
       "format": "npy"}


def _reference(folder, image_path):
    """What ``vidpar generate --image`` makes (its ``Pipeline.generate`` on one process, float64)."""
    import torch

    from vidpar.cli.generate import read_image
    from vidpar.pipeline import Pipeline

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the ranks run; several threads on a busy 2-core machine are far slower
    try:
        pipe = Pipeline.from_pretrained(str(folder), dtype=torch.float64)
        return pipe.generate(JOB["prompt"], height=32, width=48, num_frames=5, num_steps=2, seed=3,
                             image=read_image(str(image_path))).frames
    finally:
        torch.set_num_threads(threads)


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
    expected = _reference(folder, image)
    assert np.array_equal(frames[0], expected) and np.array_equal(frames[1], expected)
