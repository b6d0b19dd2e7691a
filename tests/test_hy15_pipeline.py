"""HunyuanVideo-1.5 through the family seam: its card, a whole generation from a saved tiny diffusers folder equal to
diffusers' own ``HunyuanVideo15Pipeline`` / ``HunyuanVideo15ImageToVideoPipeline`` on 1, 2 and 4 processes, the
same float64 frames on every mesh, the CLI and planner, and bad input refused before any collective."""

from __future__ import annotations

import json
import re
import shutil

import numpy as np
import pytest
import torch

import hy15_pipeline_reference as ref
from cli_run import run_vidpar
from vidpar.models.registry import find_family, model_card
from vidpar.parallel import ParallelConfig, init_parallel
from vidpar.pipeline import Pipeline

diffusers = pytest.importorskip("diffusers")

PROMPT, NEGATIVE = 'a cat walks on the grass, a sign that says "OPEN"', "dog"
SAMPLING = dict(height=32, width=32, num_frames=9, num_steps=2, seed=5)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    out = {}
    for task in ("t2v", "i2v"):
        path = tmp_path_factory.mktemp(f"hy15_{task}")
        ref.save_pipeline_folder(path, task)
        out[task] = str(path)
    return out


def _uint8(video: np.ndarray) -> np.ndarray:
    return np.round(np.clip(video, 0, 1) * 255).astype(np.uint8)


def diffusers_frames(folder: str, task: str, image=None) -> np.ndarray:
    cls = diffusers.HunyuanVideo15Pipeline if task == "t2v" else diffusers.HunyuanVideo15ImageToVideoPipeline
    pipe = cls.from_pretrained(folder, dtype=torch.float32)
    kw = dict(num_frames=SAMPLING["num_frames"], num_inference_steps=SAMPLING["num_steps"],
              generator=torch.Generator().manual_seed(SAMPLING["seed"]), output_type="np")
    if task == "t2v":
        kw.update(height=SAMPLING["height"], width=SAMPLING["width"])
    else:
        kw["image"] = image
    return _uint8(pipe(prompt=PROMPT, negative_prompt=NEGATIVE, **kw).frames[0])


def generate_task(env, folder, degrees, dtype_name="float32", image_seed=None, size=None, sparse=None):
    ctx = env.context(ParallelConfig(*degrees)) if env is not None else init_parallel(ParallelConfig())
    pipe = Pipeline.from_pretrained(folder, parallel=ctx.config, dtype=getattr(torch, dtype_name))
    kw = dict(SAMPLING)
    if size is not None:
        kw["height"], kw["width"] = size
    image = ref.make_image((40, 28), seed=image_seed) if image_seed is not None else None
    return pipe.generate(PROMPT, NEGATIVE, image=image, sparse_attention=sparse, **kw).frames


def assert_close_frames(ours: np.ndarray, theirs: np.ndarray) -> None:
    """vidpar against diffusers in fp32: at most one uint8 level apart, nearly all pixels identical."""
    assert ours.shape == theirs.shape
    diff = np.abs(ours.astype(int) - theirs.astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() >= 0.999, (diff.max(), (diff == 0).mean())


def test_card(folders):
    card = model_card(folders["t2v"])
    assert find_family(folders["t2v"]).name == card.family == "hunyuanvideo-1.5"
    assert card.sampler.name == "euler-linear" and card.sampler.shift == 5.0
    d = card.defaults
    from vidpar.models.hunyuanvideo15.image_processing import t2v_default_size

    assert (d.num_frames, d.num_steps, d.guidance_scale) == (121, 50, 6.0)  # diffusers' pipeline defaults
    assert (d.height, d.width) == t2v_default_size(32)  # the 16:9 bucket of the tiny transformer's target_size
    assert card.geometry.spatial_stride == 16 and card.geometry.temporal_stride == 4 and card.image == "none"
    assert model_card(folders["i2v"]).image == "required"


def test_t2v_equals_diffusers_on_1_2_and_4_processes(pools, folders):
    theirs = diffusers_frames(folders["t2v"], "t2v")
    assert_close_frames(generate_task(None, folders["t2v"], None), theirs)
    for world, degrees in ((2, (2, 1, 1)), (2, (1, 1, 2)), (4, (2, 2, 1)), (4, (1, 2, 2))):
        frames = pools(world).run(generate_task, folders["t2v"], degrees)
        assert_close_frames(frames[0], theirs)
        assert all(f is None for f in frames[1:])


def test_float64_frames_identical_on_every_mesh(pools, folders):
    one = generate_task(None, folders["t2v"], None, "float64")
    for world, degrees in ((2, (1, 2, 1)), (4, (4, 1, 1)), (4, (2, 1, 2))):
        assert np.array_equal(pools(world).run(generate_task, folders["t2v"], degrees, "float64")[0], one), degrees


def test_sparse_attention_with_joint_text_same_frames_on_a_ring(pools, folders):
    spec = "window:tile=1x1x1,window=1x1x3"
    one = generate_task(None, folders["t2v"], None, "float64", sparse=spec)
    assert not np.array_equal(one, generate_task(None, folders["t2v"], None, "float64"))
    assert np.array_equal(pools(2).run(generate_task, folders["t2v"], (1, 2, 1), "float64", None, None, spec)[0], one)


def test_i2v_equals_diffusers(pools, folders):
    image = ref.make_image((40, 28), seed=7)
    from vidpar.models.hunyuanvideo15.image_processing import i2v_size

    size = i2v_size(image, 32)  # (the tiny transformer's target_size) diffusers sizes I2V videos by the image's aspect bucket; vidpar is told the size
    theirs = diffusers_frames(folders["i2v"], "i2v", image)
    assert_close_frames(generate_task(None, folders["i2v"], None, image_seed=7, size=size), theirs)
    frames = pools(2).run(generate_task, folders["i2v"], (2, 1, 1), "float32", 7, size)
    assert_close_frames(frames[0], theirs)


def bad_request_task(env, folder, prompt, request):
    """Every rank must raise ValueError before any collective of the generation."""
    ctx = env.context(ParallelConfig(env.world_size))
    pipe = Pipeline.from_pretrained(folder, parallel=ctx.config)
    if request.pop("image", None) == "IMAGE":
        request["image"] = ref.make_image((40, 28))
    ctx.reset_comm_stats()
    try:
        pipe.generate(prompt, **request)
    except ValueError as e:
        return str(e), ctx.comm_stats()
    return None, ctx.comm_stats()


@pytest.mark.parametrize("request_,message", [
    (dict(num_frames=10), r"4k\+1"),
    (dict(height=40), "multiple of 16"),
    (dict(prompt=" ".join(["cat"] * 1100)), "1000"),
    (dict(image="IMAGE"), "takes no image"),
])
def test_bad_requests_fail_on_every_rank_before_any_collective(pools, folders, request_, message):
    request = {**SAMPLING, **request_}
    prompt = request.pop("prompt", PROMPT)
    for msg, stats in pools(2).run(bad_request_task, folders["t2v"], prompt, request):
        assert msg is not None and re.search(message, msg), msg
        assert stats == {}, stats


def test_i2v_needs_an_image_and_a_broken_checkpoint_is_named(folders, tmp_path):
    pipe = Pipeline.from_pretrained(folders["i2v"])
    with pytest.raises(ValueError, match="image-to-video model"):
        pipe.generate(PROMPT, **SAMPLING)
    broken = tmp_path / "broken"
    shutil.copytree(folders["t2v"], broken)
    weights = broken / "transformer" / "diffusion_pytorch_model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(Exception, match="diffusion_pytorch_model.safetensors"):
        Pipeline.from_pretrained(broken)
    (broken / "tokenizer_2").rename(broken / "tokenizer_2.bak")
    with pytest.raises(ValueError, match="missing: tokenizer_2"):
        model_card(broken)


def test_cli_bad_input_and_info(folders, tmp_path):
    res = run_vidpar(["generate", "--model", folders["t2v"], "--prompt", "x", "--frames", "10", "--out", "v.npy"],
                     tmp_path, timeout=120)
    assert res.returncode == 2 and "4k+1" in res.stdout, res.stdout
    res = run_vidpar(["info", "--model", folders["t2v"], "--json"], tmp_path, timeout=120)
    info = json.loads(res.stdout[res.stdout.index("{"):])
    assert info["family"] == "hunyuanvideo-1.5" and info["defaults"]["num_frames"] == 121


def test_cli_generate_under_torchrun(folders, tmp_path):
    """The CLI and launcher path on 2 processes: the same video as the Python API on one process."""
    from vidpar.video import read_video

    args = ["generate", "--model", folders["t2v"], "--prompt", PROMPT, "--negative-prompt", NEGATIVE, "--out",
            "v.npy", "--no-progress", "--height", "32", "--width", "32", "--frames", "9", "--steps", "2",
            "--seed", "5", "--ring", "2"]
    res = run_vidpar(args, tmp_path, nproc=2, timeout=240)
    assert res.returncode == 0, res.stdout
    assert_close_frames(read_video(tmp_path / "v.npy"), generate_task(None, folders["t2v"], None))


def test_planner_ranks_hunyuanvideo_layouts(capsys):
    import argparse

    from vidpar.plan_cli import add_plan_arguments, run_plan

    parser = argparse.ArgumentParser()
    add_plan_arguments(parser)
    assert run_plan(parser.parse_args(["--model", "hunyuanvideo-1.5-720p", "--gpus", "8", "--json"])) == 0
    plans = json.loads(capsys.readouterr().out)
    assert plans and {"ulysses", "ring", "cfg", "fsdp", "vae_mode", "step_time_s", "peak_memory_gb",
                      "comm_bytes_per_gpu_per_step", "scaling_efficiency"} <= set(plans[0])
    assert all(p["ulysses"] * p["ring"] * p["cfg"] == 8 for p in plans)


def test_official_layout_makes_the_same_video(folders, tmp_path):
    """An official ``ckpts/`` folder (transformer/<variant> in official names, vae/, text_encoder/{llm, byt5-small,
    Glyph-SDXL-v2}) with the same weights gives the diffusers folder's video (weights and prompt states are equal bit
    for bit; the DiT's tensors are laid out differently in memory after the official fused-qkv split, which moves
    its output in the last bits, so frames are compared by the one-level rule)."""
    from hy15_reference import official_config, write_official
    from vidpar.models.hunyuanvideo15 import HunyuanVideo15Transformer3D

    ckpts = tmp_path / "ckpts"
    dit = HunyuanVideo15Transformer3D.from_pretrained(folders["t2v"])
    write_official(ckpts / "transformer" / "480p_t2v", dit, official_config(dit))
    shutil.copytree(f"{folders['t2v']}/vae", ckpts / "vae")
    ref.write_official_encoders(ckpts, diffusers.HunyuanVideo15Pipeline.from_pretrained(folders["t2v"]))
    for source in (ckpts, ckpts / "transformer" / "480p_t2v"):
        card = model_card(source)
        assert card.family == "hunyuanvideo-1.5" and card.sampler.name == "euler-linear"
        assert card.sampler.shift == 5.0 and card.defaults.guidance_scale == 6.0  # the release table, 480p
    ours = Pipeline.from_pretrained(ckpts).generate(PROMPT, NEGATIVE, **SAMPLING).frames
    assert_close_frames(ours, generate_task(None, folders["t2v"], None))
