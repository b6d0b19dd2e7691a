"""Image-to-video against diffusers' ``WanImageToVideoPipeline`` on tiny saved pipeline folders, and the same
frames on any mesh.

Three folders, built offline with randomly perturbed weights: Wan 2.1 I2V (36-channel DiT with a CLIP image
embedding, ``image_encoder/`` + ``image_processor/``), Wan 2.2 I2V A14B (two 36-channel experts, no CLIP, a
``boundary_ratio``) and Wan 2.2 TI2V-5B (a 2.2 VAE, ``expand_timesteps=True``).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from text_reference import build_tiny_text_encoder
from vae_reference import make_tiny_diffusers_vae
from wan_reference import make_tiny_diffusers_wan, max_rel_error
from vidpar.models.wan.components import load_components
from vidpar.models.wan.image_conditioning import preprocess_image
from vidpar.parallel import ParallelConfig, init_parallel
from vidpar.pipeline import GenerationRequest, Pipeline, initial_noise

diffusers = pytest.importorskip("diffusers")

CLIP_DIM = 16
SIZES = {"wan21_i2v": (32, 48), "wan22_i2v": (32, 48), "ti2v": (32, 64)}  # (height, width); 2.2 VAE: stride 16
PROMPT, NEGATIVE = "a cat run on the green grass", "dog"
STEPS, FRAMES, SEED, SHIFT = 3, 5, 11, 3.0
UNIPC = dict(  # Wan-AI/*-Diffusers scheduler_config.json
    num_train_timesteps=1000, prediction_type="flow_prediction", use_flow_sigmas=True, predict_x0=True,
    solver_order=2, solver_type="bh2", lower_order_final=True, final_sigmas_type="zero",
)


def make_image(size=(40, 28), seed=3):
    """A random RGB PIL image of another size than the video (so the resize is exercised)."""
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    return Image.fromarray(pixels, mode="RGB")


def _clip(seed: int):
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    config = CLIPVisionConfig(
        hidden_size=CLIP_DIM, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2,
        image_size=32, patch_size=8, projection_dim=CLIP_DIM,
    )
    torch.manual_seed(seed)
    model = CLIPVisionModel(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model, CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})


def build_folder(folder, variant: str) -> None:
    """Save a tiny diffusers ``WanImageToVideoPipeline`` of ``variant`` to ``folder``."""
    text_encoder, tokenizer = build_tiny_text_encoder(folder)
    kw = dict(text_dim=32, in_channels=36, out_channels=16)
    encoder = processor = transformer_2 = None
    boundary, expand = None, False
    if variant == "wan21_i2v":
        encoder, processor = _clip(5)
        transformer = make_tiny_diffusers_wan({**kw, "image_dim": CLIP_DIM}, seed=1)
        vae = make_tiny_diffusers_vae("2.1", seed=2)
    elif variant == "wan22_i2v":
        transformer = make_tiny_diffusers_wan(kw, seed=1)
        transformer_2 = make_tiny_diffusers_wan(kw, seed=4)
        vae, boundary = make_tiny_diffusers_vae("2.1", seed=2), 0.9
    else:
        transformer = make_tiny_diffusers_wan(dict(kw, in_channels=8, out_channels=8), seed=1)
        vae, expand = make_tiny_diffusers_vae("2.2", seed=2), True
    pipe = diffusers.WanImageToVideoPipeline(
        tokenizer=tokenizer, text_encoder=text_encoder, vae=vae,
        scheduler=diffusers.UniPCMultistepScheduler(flow_shift=SHIFT, **UNIPC),
        image_processor=processor, image_encoder=encoder, transformer=transformer, transformer_2=transformer_2,
        boundary_ratio=boundary, expand_timesteps=expand,
    )
    pipe.save_pretrained(folder, safe_serialization=True)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    out = {}
    for variant in SIZES:
        path = tmp_path_factory.mktemp(variant)
        build_folder(path, variant)
        out[variant] = str(path)
    return out


def vidpar_latents(folder: str, variant: str, image, dtype=torch.float32):
    """Final latents of vidpar's loop (single process) and the initial noise it used."""
    ctx = init_parallel(ParallelConfig())
    pipe = Pipeline(load_components(folder, dtype, ctx.device), ctx, dtype)
    height, width = SIZES[variant]
    req = GenerationRequest(PROMPT, NEGATIVE, height, width, FRAMES, STEPS, 5.0, None, SEED)
    shape = pipe.validate(req, image)
    noise = initial_noise(shape, SEED, ctx.device, pipe.latent_dtype)
    cond = pipe.encode_image(image, req, shape)
    return pipe.denoise(noise.clone(), pipe.encode_text(req), req, image=cond), noise


def t5_states(pipe, prompt: str) -> torch.Tensor:
    """``[1, 512, 32]`` as diffusers' ``_get_t5_prompt_embeds`` (whose ftfy cleaning is an identity on these plain
    prompts and is not installed here): UMT5 states, zero past the prompt's tokens."""
    tok = pipe.tokenizer([prompt], padding="max_length", max_length=512, truncation=True, return_tensors="pt")
    with torch.no_grad():
        states = pipe.text_encoder(tok.input_ids, tok.attention_mask).last_hidden_state
    return states * tok.attention_mask[..., None].to(states.dtype)


@pytest.mark.parametrize("variant", list(SIZES))
def test_latents_match_diffusers(folders, variant):
    image = make_image()
    ours, noise = vidpar_latents(folders[variant], variant, image)
    ref_pipe = diffusers.WanImageToVideoPipeline.from_pretrained(folders[variant])
    ref_pipe.set_progress_bar_config(disable=True)
    height, width = SIZES[variant]
    with torch.no_grad():
        ref = ref_pipe(
            image=image, prompt_embeds=t5_states(ref_pipe, PROMPT),
            negative_prompt_embeds=t5_states(ref_pipe, NEGATIVE),
            height=height, width=width, num_frames=FRAMES,
            num_inference_steps=STEPS, guidance_scale=5.0, latents=noise, output_type="latent",
            max_sequence_length=512,
        ).frames
    err = max_rel_error(ours, ref)
    print(f"{variant}: max rel error {err:.2e}")
    assert err <= 1e-5, err
    if variant == "ti2v":  # the first latent frame is the image's latent
        assert not torch.equal(ours[:, :, 0], noise[:, :, 0])


def test_image_preprocessing_matches_diffusers():
    from diffusers.video_processor import VideoProcessor

    image = make_image((50, 21))
    ref = VideoProcessor(vae_scale_factor=8).preprocess(image, height=32, width=48)
    assert torch.equal(preprocess_image(image, 32, 48), ref)
    assert torch.equal(preprocess_image(np.asarray(image), 32, 48), ref)  # uint8 array == the PIL image
    t = torch.rand(3, 32, 48)
    assert torch.equal(preprocess_image(t, 32, 48), 2 * t[None] - 1)


def test_tensor_image_gives_the_clip_states_of_the_same_uint8_image():
    from vidpar.models.wan.image_conditioning import WanImageEncoder

    encoder = WanImageEncoder(*_clip(5))
    u8 = np.asarray(make_image((48, 32)))
    as_tensor = torch.from_numpy(u8.copy()).permute(2, 0, 1).float() / 255  # [3, H, W] in [0, 1]
    states = encoder.encode(u8)
    assert states.shape == (1, 17, CLIP_DIM)
    assert torch.equal(encoder.encode(as_tensor), states)


# ---------------------------------------------------------------- distributed: identical frames on any mesh


def generate_task(env, degrees, folder, variant, image, dtype_name="float64"):
    ctx = env.context(ParallelConfig(*degrees)) if env is not None else init_parallel(ParallelConfig())
    dtype = getattr(torch, dtype_name)
    comps = load_components(folder, dtype, ctx.device, load_text_encoder=ctx.rank == 0)
    height, width = SIZES[variant]
    video = Pipeline(comps, ctx, dtype).generate(
        PROMPT, NEGATIVE, height=height, width=width, num_frames=FRAMES, num_steps=STEPS, seed=SEED, image=image
    )
    return video.frames


MESHES = [("wan21_i2v", 2, (1, 1, 2)), ("wan21_i2v", 4, (1, 2, 2)), ("wan22_i2v", 4, (2, 1, 2)),
          ("ti2v", 2, (2, 1, 1)), ("ti2v", 4, (2, 2, 1))]


@pytest.mark.parametrize("variant,world,degrees", MESHES, ids=[f"{m[0]}-{m[2]}" for m in MESHES])
def test_same_frames_on_any_mesh(pools, folders, variant, world, degrees):
    image = make_image()
    ref = generate_task(None, None, folders[variant], variant, image)
    assert ref.shape == (FRAMES, *SIZES[variant], 3) and ref.std() > 1
    frames = pools(world).run(generate_task, degrees, folders[variant], variant, image)
    assert np.array_equal(frames[0], ref)


# ---------------------------------------------------------------- bad inputs: ValueError on every rank, no collective


def bad_image_task(env, folder, variant, image):
    ctx = env.context(ParallelConfig(ulysses=2))
    comps = load_components(folder, torch.float32, ctx.device, load_text_encoder=ctx.rank == 0)
    pipe = Pipeline(comps, ctx, torch.float32)
    ctx.reset_comm_stats()
    height, width = SIZES[variant]
    try:
        pipe.generate(PROMPT, height=height, width=width, num_frames=FRAMES, num_steps=1, image=image)
    except ValueError as e:
        return str(e), ctx.comm_stats()
    return None, ctx.comm_stats()


@pytest.mark.parametrize(
    "variant,image,message",
    [
        ("wan21_i2v", None, "image-to-video model"),
        ("wan22_i2v", np.zeros((8, 8, 4), np.uint8), "uint8 \\[H, W, 3\\]"),
        ("wan21_i2v", np.zeros((8, 8, 3), np.float32), "uint8"),
        ("wan21_i2v", torch.rand(3, 16, 16), "already be 32x48"),
        ("ti2v", torch.full((3, 32, 64), 2.0), "\\[0, 1\\]"),
        ("ti2v", "cat.png", "PIL image"),
    ],
    ids=["missing", "rgba-array", "float-array", "tensor-size", "tensor-range", "path"],
)
def test_bad_images_fail_on_every_rank_before_any_collective(pools, folders, variant, image, message):
    import re

    for error, stats in pools(2).run(bad_image_task, folders[variant], variant, image):
        assert error is not None and re.search(message, error), error
        assert stats == {}


def test_text_to_video_model_refuses_an_image():
    ctx = init_parallel(ParallelConfig())
    pipe = Pipeline(load_components("tiny", torch.float32, ctx.device), ctx, torch.float32)
    with pytest.raises(ValueError, match="takes no image"):
        pipe.generate("a fox", height=32, width=48, num_frames=5, num_steps=1, image=make_image())
