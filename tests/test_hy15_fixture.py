"""The tiny HunyuanVideo-1.5 folders of ``hy15_pipeline_reference``: saved offline, loaded by diffusers' own
pipelines, and a 2-step generation runs on them (the reference the family's whole-generation tests compare with)."""

from __future__ import annotations

import json

import pytest
import torch

diffusers = pytest.importorskip("diffusers")

import hy15_pipeline_reference as ref  # noqa: E402

PROMPT = 'a cat walks on the grass, a sign that says "OPEN"'


def _generate(pipe, **kwargs) -> torch.Tensor:
    return pipe(prompt=PROMPT, negative_prompt="dog", output_type="pt", generator=torch.Generator().manual_seed(0),
                **kwargs).frames


@pytest.mark.parametrize("task", ["t2v", "i2v"])
def test_saved_folder_runs_in_diffusers(tmp_path, task: str) -> None:
    built = ref.save_pipeline_folder(tmp_path, task)
    index = json.loads((tmp_path / "model_index.json").read_text())
    expected = {"transformer", "vae", "text_encoder", "tokenizer", "text_encoder_2", "tokenizer_2", "scheduler"}
    expected.add("guider")
    if task == "i2v":
        expected |= {"image_encoder", "feature_extractor"}
    assert expected <= set(index) and all((tmp_path / name).is_dir() for name in expected)
    assert json.loads((tmp_path / "scheduler" / "scheduler_config.json").read_text())["shift"] == 5.0
    assert json.loads((tmp_path / "guider" / "guider_config.json").read_text())["guidance_scale"] == 6.0

    cls = diffusers.HunyuanVideo15Pipeline if task == "t2v" else diffusers.HunyuanVideo15ImageToVideoPipeline
    pipe = cls.from_pretrained(tmp_path)
    for name in ("transformer", "vae", "text_encoder", "text_encoder_2"):  # loaded, and every weight perturbed
        loaded, original = getattr(pipe, name).state_dict(), getattr(built, name).state_dict()
        assert loaded.keys() == original.keys() and all(torch.equal(loaded[k], original[k]) for k in loaded)
        assert all(p.numel() == 1 or p.std() > 0 for p in getattr(pipe, name).parameters()), name
    if task == "t2v":
        video = _generate(pipe, **ref.GENERATION)
    else:
        call = {k: v for k, v in ref.GENERATION.items() if k not in ("height", "width")}  # size comes from the image
        video = _generate(pipe, image=ref.make_image((40, 28)), **call)
    assert video.shape == (1, 9, 3, 32, 32) and torch.isfinite(video).all()
    assert video.std() > 0.05 and 0.2 < video.mean() < 0.8  # not saturated


def test_build_is_deterministic() -> None:
    a, b = ref.build_pipeline("t2v", seed=3), ref.build_pipeline("t2v", seed=3)
    for name in ("transformer", "text_encoder"):
        sa, sb = getattr(a, name).state_dict(), getattr(b, name).state_dict()
        assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(a.transformer.proj_out.weight, ref.build_pipeline("t2v", seed=4).transformer.proj_out.weight)
