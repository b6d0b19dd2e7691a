"""HunyuanVideo-1.5 image conditioning against diffusers' pipelines on tiny saved folders: size buckets, the image
resize/crop, SigLIP states, the conditioning latents and mask, and exactly what the DiT receives (t2v and i2v)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
diffusers = pytest.importorskip("diffusers")

import hy15_pipeline_reference as ref  # noqa: E402

from vidpar.models.hunyuanvideo15 import HunyuanImageEncoder, HunyuanPromptEncoder  # noqa: E402
from vidpar.models.hunyuanvideo15.conditioning import (  # noqa: E402
    conditioning_shapes,
    encode_image_latent,
    i2v_conditioning,
    t2v_conditioning,
)
from vidpar.models.hunyuanvideo15.image_encoder import VISION_TOKENS, image_encoder_spec  # noqa: E402
from vidpar.models.hunyuanvideo15.image_processing import (  # noqa: E402
    closest_size,
    crop_size_buckets,
    prepare_i2v_image,
    resize_and_crop,
    t2v_default_size,
    vae_pixels,
)

CPU = torch.device("cpu")
PROMPT, NEGATIVE = 'a cat walks on the grass, a sign that says "OPEN"', "dog"


class DiffusersVAE:
    """diffusers' ``AutoencoderKLHunyuanVideo15`` behind vidpar's VAE interface (posterior mode, scaling factor)."""

    def __init__(self, vae) -> None:
        self.vae = vae

    def parameters(self):
        return self.vae.parameters()

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(video).latent_dist.mode()

    def normalize_latents(self, z: torch.Tensor) -> torch.Tensor:
        return z * self.vae.config.scaling_factor


@pytest.fixture(scope="module")
def i2v(tmp_path_factory):
    folder = tmp_path_factory.mktemp("hy15_i2v")
    ref.save_pipeline_folder(folder, "i2v", seed=1)
    return folder, diffusers.HunyuanVideo15ImageToVideoPipeline.from_pretrained(folder)


def test_size_buckets_match_diffusers() -> None:
    from diffusers.pipelines.hunyuan_video1_5.image_processor import (
        HunyuanVideo15ImageProcessor,
        generate_crop_size_list,
    )

    processor = HunyuanVideo15ImageProcessor(vae_scale_factor=16)
    for target in (32, 64, 640, 960):
        assert crop_size_buckets(target, 16) == generate_crop_size_list(target, 16)
        exact = [(h, w) for h, w in crop_size_buckets(target, 16)][::7]  # bucket ratios themselves (ties)
        for h, w in exact + [(h, w) for h in range(1, 400, 37) for w in range(1, 400, 41)]:
            assert closest_size(h, w, target) == tuple(processor.calculate_default_height_width(h, w, target))
    assert t2v_default_size(640) == (480, 848) and t2v_default_size(960) == (720, 1280)
    with pytest.raises(ValueError):
        closest_size(0, 10, 640)


@pytest.mark.parametrize("size, mode", [((40, 28), "RGB"), ((20, 50), "RGBA"), ((33, 33), "L"), ((70, 30), "RGB")])
def test_resize_crop_and_pixels_match_diffusers(i2v, size, mode) -> None:
    _, pipe = i2v
    image = ref.make_image(size).convert(mode)
    cropped, height, width = prepare_i2v_image(image, pipe.target_size)
    expected_hw = pipe.video_processor.calculate_default_height_width(image.size[1], image.size[0], pipe.target_size)
    assert (height, width) == tuple(expected_hw)
    theirs = pipe.video_processor.resize(image, height=height, width=width, resize_mode="crop")
    assert cropped.size == (width, height) and np.array_equal(np.asarray(cropped), np.asarray(theirs))
    assert torch.equal(vae_pixels(cropped), pipe.video_processor.preprocess(theirs, height=height, width=width))
    assert torch.equal(vae_pixels(resize_and_crop(image, 48, 16)),
                       pipe.video_processor.preprocess(pipe.video_processor.resize(image, 48, 16, "crop"), 48, 16))


def test_image_states_match_diffusers(i2v) -> None:
    folder, pipe = i2v
    cropped, _, _ = prepare_i2v_image(ref.make_image(), pipe.target_size)
    encoder = HunyuanImageEncoder.from_pretrained(folder)
    with torch.no_grad():
        theirs = pipe._get_image_embeds(pipe.image_encoder, pipe.feature_extractor, cropped, CPU)
    ours = encoder.encode(cropped)
    assert ours.shape == (1, VISION_TOKENS, ref.VISION_DIM) and torch.equal(ours, theirs)
    assert image_encoder_spec(folder) == (encoder.num_tokens, encoder.dim) == (VISION_TOKENS, ref.VISION_DIM)
    with pytest.raises(ValueError, match="PIL image"):
        encoder.encode(np.zeros((32, 32, 3), dtype=np.uint8))


def test_i2v_condition_matches_diffusers(i2v) -> None:
    _, pipe = i2v
    cropped, height, width = prepare_i2v_image(ref.make_image(), pipe.target_size)
    g = torch.Generator().manual_seed(0)
    latents = torch.randn(2, ref.LATENT_CHANNELS, 3, height // 16, width // 16, generator=g)
    with torch.no_grad():
        cond, mask = pipe.prepare_cond_latents_and_mask(latents, cropped, 2, height, width, torch.float32, CPU)
        latent = encode_image_latent(DiffusersVAE(pipe.vae), vae_pixels(cropped))
    ours = i2v_conditioning(latent, torch.ones(1, VISION_TOKENS, ref.VISION_DIM), tuple(latents.shape))
    assert torch.equal(ours.model_input(latents), torch.cat([latents, cond, mask], dim=1))
    assert ours.is_i2v and latent.abs().sum() > 0 and ours.cond[:, :, 1:].eq(0).all()
    shapes = conditioning_shapes(latents.shape, VISION_TOKENS, ref.VISION_DIM)
    assert [tuple(t.shape) for t in ours.tensors()] == list(shapes)
    with pytest.raises(ValueError, match="does not fit"):
        i2v_conditioning(latent, ours.image_states, (2, ref.LATENT_CHANNELS, 3, 4, 4))


def _transformer_inputs(pipe, **call) -> list[dict]:
    """Every keyword the pipeline passes to its transformer, one dict per forward (1-step generation)."""
    seen: list[dict] = []

    def hook(module, args, kwargs):
        seen.append({k: v.clone() if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()})

    handle = pipe.transformer.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        pipe(prompt=PROMPT, negative_prompt=NEGATIVE, num_frames=9, num_inference_steps=1, output_type="latent",
             generator=torch.Generator().manual_seed(0), **call)
    finally:
        handle.remove()
    return seen


def _check_dit_inputs(seen: list[dict], conditioning, prompt_encoder) -> None:
    """Both CFG branches: the conditioning channels, the image embeds and the text states diffusers fed the DiT."""
    assert len(seen) == 2  # guidance 6.0: conditional, then unconditional
    c = ref.LATENT_CHANNELS
    for kwargs, prompt in zip(seen, (PROMPT, NEGATIVE)):
        hidden = kwargs["hidden_states"]
        assert torch.equal(conditioning.model_input(hidden[:, :c]), hidden)
        assert torch.equal(conditioning.image_embeds(hidden.shape[0]), kwargs["image_embeds"])
        states = prompt_encoder.encode([prompt])
        assert torch.equal(states.states, kwargs["encoder_hidden_states"])
        assert torch.equal(states.mask.float(), kwargs["encoder_attention_mask"])
        assert torch.equal(states.glyph_states, kwargs["encoder_hidden_states_2"])
        assert torch.equal(states.glyph_mask.float(), kwargs["encoder_attention_mask_2"])


def test_dit_inputs_i2v(i2v) -> None:
    folder, pipe = i2v
    image = ref.make_image((40, 28))
    seen = _transformer_inputs(pipe, image=image)
    cropped, height, width = prepare_i2v_image(image, pipe.target_size)
    shape = (1, ref.LATENT_CHANNELS, 3, height // 16, width // 16)
    latent = encode_image_latent(DiffusersVAE(pipe.vae), vae_pixels(cropped))
    conditioning = i2v_conditioning(latent, HunyuanImageEncoder.from_pretrained(folder).encode(cropped), shape)
    _check_dit_inputs(seen, conditioning, HunyuanPromptEncoder.from_pretrained(folder, dtype=torch.float32))


def test_dit_inputs_t2v(tmp_path) -> None:
    """Text-to-video: zeros for the condition channels and for the 729 image states."""
    ref.save_pipeline_folder(tmp_path, "t2v", seed=2)
    pipe = diffusers.HunyuanVideo15Pipeline.from_pretrained(tmp_path)
    seen = _transformer_inputs(pipe, height=32, width=48)
    shape = (1, ref.LATENT_CHANNELS, 3, 2, 3)
    conditioning = t2v_conditioning(shape, VISION_TOKENS, pipe.transformer.config.image_embed_dim)
    assert not conditioning.is_i2v and seen[0]["image_embeds"].shape == (1, VISION_TOKENS, ref.VISION_DIM)
    _check_dit_inputs(seen, conditioning, HunyuanPromptEncoder.from_pretrained(tmp_path, dtype=torch.float32))
