"""LoRAs through the pipeline and the CLI: merged weights equal an independent float64 merge, unloading restores the
video bit for bit, the same video on 1 and 2 processes, the LoRA set is part of the snapshot key, and a few-step
guidance-1.0 run makes one forward per step (refusing a cfg=2 mesh that would compute it twice)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cli_run import run_vidpar
from lora_files import expected_official, official_weights, random_lora, write_original
from vidpar.checkpoint import GenerationInterrupted, StopRequest
from vidpar.lora import LoraSpec
from vidpar.models.wan.builtin import build_tiny
from vidpar.parallel import ParallelConfig
from vidpar.pipeline import Pipeline
from vidpar.video import read_video

REQUEST = dict(height=32, width=32, num_frames=5, num_steps=3, seed=4)


@pytest.fixture(scope="module")
def lora_file(tmp_path_factory):
    model = build_tiny(load_text_encoder=False)[0]
    content = random_lora(model, seed=3, std=0.2)
    path = write_original(tmp_path_factory.mktemp("lora") / "style.safetensors", content)
    return path, content


def tiny_pipeline(ctx=None, **kw) -> Pipeline:
    return Pipeline.from_pretrained("tiny", parallel=(ctx.config if ctx else None), dtype=torch.float64, **kw)


def test_merged_weights_and_unload(lora_file):
    path, content = lora_file
    pipe = tiny_pipeline()
    base_weights = official_weights(pipe.comps.transformer)
    base = pipe.generate("a fox", **REQUEST).frames
    pipe.load_lora(path, 0.7)
    merged = official_weights(pipe.comps.transformer)
    want = expected_official(base_weights, [(content, 0.7)])
    assert all(torch.allclose(merged[k], want[k], rtol=1e-12, atol=1e-12) for k in want)
    styled = pipe.generate("a fox", **REQUEST).frames
    assert np.abs(styled.astype(int) - base.astype(int)).max() > 0 and pipe.loras[0].strength == 0.7
    pipe.unload_loras()
    assert all(torch.equal(official_weights(pipe.comps.transformer)[k], base_weights[k]) for k in base_weights)
    assert np.array_equal(pipe.generate("a fox", **REQUEST).frames, base)


def generate_with_lora_task(env, path, degrees):
    ctx = env.context(ParallelConfig(*degrees))
    return tiny_pipeline(ctx, loras=[(path, 0.7)]).generate("a fox", **REQUEST).frames


def test_same_video_on_two_processes_and_from_the_cli(pools, lora_file, tmp_path):
    path, _ = lora_file
    one = tiny_pipeline(loras=[(path, 0.7)]).generate("a fox", **REQUEST).frames
    for degrees in ((2, 1, 1), (1, 1, 2)):
        assert np.array_equal(pools(2).run(generate_with_lora_task, str(path), degrees)[0], one), degrees
    res = run_vidpar(["generate", "--model", "tiny", "--prompt", "a fox", "--dtype", "float64", "--height", "32",
                      "--width", "32", "--frames", "5", "--steps", "3", "--seed", "4", "--lora", f"{path}:0.7",
                      "--out", "v.npy", "--no-progress"], tmp_path, nproc=2, timeout=180)
    assert res.returncode == 0, res.stdout
    assert np.array_equal(read_video(tmp_path / "v.npy"), one)
    res = run_vidpar(["generate", "--model", "tiny", "--prompt", "x", "--lora", f"{path}:nan", "--out", "w.npy"],
                     tmp_path, timeout=120)
    assert res.returncode == 2 and "strength" in res.stdout, res.stdout


def test_a_resume_with_other_loras_is_refused(lora_file, tmp_path):
    path, _ = lora_file
    pipe = tiny_pipeline(loras=[(path, 0.7)])
    stop = StopRequest()
    stop.request()
    with pytest.raises(GenerationInterrupted):
        pipe.generate("a fox", checkpoint_dir=tmp_path, stop=stop, **REQUEST)
    pipe.unload_loras()
    pipe.load_lora(path, 0.5)
    with pytest.raises(ValueError, match="different generation"):
        pipe.generate("a fox", checkpoint_dir=tmp_path, **REQUEST)
    pipe.unload_loras()
    pipe.load_lora(path, 0.7)  # the same set resumes
    assert pipe.generate("a fox", checkpoint_dir=tmp_path, **REQUEST).frames.shape == (5, 32, 32, 3)


def test_few_step_guidance_one_runs_one_forward_per_step():
    pipe = tiny_pipeline()
    calls = []
    pipe.comps.transformer.register_forward_pre_hook(lambda *_: calls.append(1))
    pipe.generate("a fox", **{**REQUEST, "num_steps": 4}, guidance_scale=1.0, scheduler="euler", flow_shift=5.0)
    assert len(calls) == 4
    calls.clear()
    pipe.generate("a fox", **{**REQUEST, "num_steps": 4}, guidance_scale=5.0)
    assert len(calls) == 8


def cfg2_guidance_one_task(env):
    ctx = env.context(ParallelConfig(1, 1, 2))
    try:
        tiny_pipeline(ctx).generate("a fox", **REQUEST, guidance_scale=1.0)
    except ValueError as e:
        return str(e)
    return None


def test_cfg2_with_one_branch_is_refused(pools):
    assert all("cfg=2 would compute it twice" in (m or "") for m in pools(2).run(cfg2_guidance_one_task))


def test_lora_spec_parsing_and_a_target_the_model_lacks(lora_file):
    assert LoraSpec.parse("a.safetensors:0.5:high") == LoraSpec("a.safetensors", 0.5, "high")
    with pytest.raises(ValueError):
        LoraSpec.parse("a.safetensors:nan")
    pipe = tiny_pipeline()
    with pytest.raises(ValueError, match="does not exist"):
        pipe.load_lora("/no/such.safetensors")
    with pytest.raises(ValueError, match="low"):  # a one-expert model has no low-noise expert
        pipe.load_lora(lora_file[0], 1.0, "low")
    assert pipe.loras == ()
