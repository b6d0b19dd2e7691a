"""The model-family seam: the registry, model cards (defaults and sampler from the model itself), and a whole
generation from a saved diffusers Wan folder equal to diffusers' own ``WanPipeline`` with the folder's scheduler."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import torch

from cli_run import run_vidpar
from text_reference import build_tiny_text_encoder
from vae_reference import make_tiny_diffusers_vae
from wan_reference import make_tiny_diffusers_wan
from vidpar.cli import build_parser
from vidpar.cli.generate import plan_jobs
from vidpar.models.family import SamplerSpec
from vidpar.models.registry import find_family, model_card
from vidpar.pipeline import Pipeline
from vidpar.video import read_video

diffusers = pytest.importorskip("diffusers")

PROMPT = "a cat run on the green grass"
SAMPLING = dict(height=32, width=32, num_frames=5, num_steps=3, guidance_scale=5.0, seed=3)


def build_wan_folder(folder, scheduler) -> None:
    """A tiny diffusers ``WanPipeline`` folder (random perturbed weights) with ``scheduler``."""
    text_encoder, tokenizer = build_tiny_text_encoder(folder)
    pipe = diffusers.WanPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=make_tiny_diffusers_vae("2.1", seed=2),
        transformer=make_tiny_diffusers_wan({"text_dim": 32}, seed=1), scheduler=scheduler,
    )
    pipe.save_pretrained(folder, safe_serialization=True)


@pytest.fixture(scope="module")
def euler_folder(tmp_path_factory):
    """Saved with ``FlowMatchEulerDiscreteScheduler(shift=3.0)``: no ``flow_shift`` key, not UniPC."""
    folder = tmp_path_factory.mktemp("wan_euler")
    build_wan_folder(folder, diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0))
    return folder


def test_registry_finds_the_family(tmp_path, euler_folder):
    for source in ("tiny", "tiny-shapes", euler_folder):
        assert find_family(source).name == "wan"
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        find_family("nope")
    with pytest.raises(ValueError, match="not a checkpoint folder"):
        find_family(tmp_path)


def test_card_follows_the_folders_scheduler(euler_folder, tmp_path):
    card = model_card(euler_folder)
    assert card.sampler == SamplerSpec("euler", 3.0)
    assert (card.defaults.height, card.defaults.width, card.defaults.num_frames) == (480, 832, 81)  # diffusers'
    # A vidpar_card.json beside the checkpoint declares its own defaults.
    (euler_folder / "vidpar_card.json").write_text(json.dumps({"defaults": {"height": 32, "width": 48,
                                                                             "num_steps": 3}}))
    try:
        d = model_card(euler_folder).defaults
        assert (d.height, d.width, d.num_frames, d.num_steps) == (32, 48, 81, 3)
    finally:
        (euler_folder / "vidpar_card.json").unlink()


@pytest.mark.parametrize("config,message", [
    ({"_class_name": "DPMSolverMultistepScheduler"}, "'DPMSolverMultistepScheduler' is not implemented"),
    ({"_class_name": "UniPCMultistepScheduler", "prediction_type": "flow_prediction", "use_flow_sigmas": True,
      "solver_order": 3}, "solver_order=3"),
    ({"_class_name": "UniPCMultistepScheduler"}, "prediction_type='epsilon'"),
    ({"_class_name": "FlowMatchEulerDiscreteScheduler", "use_dynamic_shifting": True}, "use_dynamic_shifting"),
    ({"_class_name": "FlowMatchEulerDiscreteScheduler", "shift": -1}, "shift must be a positive number"),
])
def test_a_sampler_vidpar_does_not_implement_is_refused(euler_folder, config, message):
    path = euler_folder / "scheduler" / "scheduler_config.json"
    saved = path.read_text()
    path.write_text(json.dumps(config))
    try:
        with pytest.raises(ValueError, match=message):
            model_card(euler_folder)
    finally:
        path.write_text(saved)


def _diffusers_frames(folder, **kw) -> np.ndarray:
    pipe = diffusers.WanPipeline.from_pretrained(folder, dtype=torch.float32)
    out = pipe(PROMPT, negative_prompt="", height=kw["height"], width=kw["width"], num_frames=kw["num_frames"],
               num_inference_steps=kw["num_steps"], guidance_scale=kw["guidance_scale"],
               generator=torch.Generator().manual_seed(kw["seed"]), output_type="np").frames[0]
    return np.round(np.clip(out, 0, 1) * 255).astype(np.uint8)


def test_generation_equals_diffusers_with_the_folders_scheduler(euler_folder):
    """vidpar follows the folder's Euler scheduler and shift, so it makes diffusers' video (the float64 sinusoidal
    timestep embedding of vidpar can move a pixel by one level); UniPC on the same folder does not."""
    ref = _diffusers_frames(euler_folder, **SAMPLING)
    pipe = Pipeline.from_pretrained(euler_folder)
    ours = pipe.generate(PROMPT, **SAMPLING).frames
    diff = np.abs(ours.astype(int) - ref.astype(int))
    assert ours.shape == ref.shape == (5, 32, 32, 3)
    assert diff.max() <= 1 and (diff == 0).mean() >= 0.999, (diff.max(), (diff == 0).mean())
    other = pipe.generate(PROMPT, scheduler="unipc", flow_shift=5.0, **SAMPLING).frames
    assert np.abs(other.astype(int) - ref.astype(int)).max() > 8  # the sampler matters: following it is the point


def _planned(args: list[str]):
    ns = build_parser().parse_args(["generate", *args])
    plan_jobs(ns, 1)
    return ns.height, ns.width, ns.frames, ns.steps, ns.guidance_scale, ns.scheduler, ns.flow_shift


def test_unset_flags_take_the_models_defaults(tmp_path, euler_folder):
    out = ["--prompt", "x", "--out", str(tmp_path / "v.npy")]
    assert _planned(["--model", "tiny-shapes", *out]) == (64, 64, 9, 20, 5.0, "unipc", 2.0)
    assert _planned(["--model", "tiny", *out]) == (32, 32, 5, 4, 5.0, "unipc", 3.0)
    assert _planned(["--model", str(euler_folder), *out]) == (480, 832, 81, 50, 5.0, "euler", 3.0)
    given = ["--height", "48", "--steps", "7", "--scheduler", "unipc", "--flow-shift", "4"]
    assert _planned(["--model", "tiny-shapes", *out, *given]) == (48, 64, 9, 7, 5.0, "unipc", 4.0)


def test_generate_with_only_model_and_prompt_makes_the_models_clip_in_seconds(tmp_path):
    t0 = time.monotonic()
    res = run_vidpar(["generate", "--model", "tiny-shapes", "--prompt", "a red circle moving right", "--out",
                      "v.npy", "--no-progress"], tmp_path, timeout=120)
    assert res.returncode == 0, res.stdout
    assert read_video(tmp_path / "v.npy").shape == (9, 64, 64, 3)
    assert time.monotonic() - t0 < 60, "the model's own 64x64 x 9 frames x 20 steps clip, not 832x480 x 81 x 50"
    assert "64x64, 9 frames, 20 steps" in res.stdout


def test_info_describes_the_model(capsys):
    from vidpar.cli import main

    assert main(["info", "--model", "tiny-shapes"]) == 0
    text = capsys.readouterr().out
    assert "defaults: 64x64, 9 frames, 20 steps, guidance 5.0" in text and "sampler: unipc, shift 2.0" in text
    assert main(["info", "--model", "tiny", "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["family"] == "wan" and info["defaults"]["num_steps"] == 4 and info["limits"]["frames"] == "4k+1"
    assert main(["info", "--model", "/no/such/model"]) == 2
