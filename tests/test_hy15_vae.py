"""HunyuanVideo-1.5 VAE: parity with diffusers' AutoencoderKLHunyuanVideo15, latent scaling, loaders, errors.

The reference is diffusers' model with perturbed random weights, saved with ``save_pretrained`` and loaded through
vidpar's loaders. diffusers decodes the whole clip at once; vidpar decodes latent frame by latent frame (exact in
real arithmetic, see ``vae_blocks``), so fp32 results agree to rounding: max |diff| <= 1e-5 x max |ref|.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from hy15_vae_reference import make_tiny_diffusers_vae, official_conversion_rules, perturb, tiny_kwargs
from vidpar.models.hunyuanvideo15 import HunyuanVideo15VAE, HunyuanVideo15VAEConfig
from vidpar.models.hunyuanvideo15.vae_loader import diffusers_to_official, official_to_diffusers_key

diffusers = pytest.importorskip("diffusers")

TOL = 1e-5  # fp32 max abs error relative to max |ref|


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    assert got.shape == want.shape, (got.shape, want.shape)
    return ((got - want).abs().max() / want.abs().max()).item()


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """``pairs(kind)`` -> (diffusers reference, vidpar model loaded from the reference's save_pretrained folder)."""
    made: dict = {}

    def get(kind: str):
        if kind not in made:
            ref = make_tiny_diffusers_vae(kind, seed=3)
            root = tmp_path_factory.mktemp(f"hyvae_{kind}")
            ref.save_pretrained(root / "vae")  # pipeline layout: the loader must find the vae/ subfolder
            made[kind] = (ref, HunyuanVideo15VAE.from_pretrained(root))
        return made[kind]

    return get


def latents(cfg: HunyuanVideo15VAEConfig, t: int, h: int, w: int, b: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.randn(b, cfg.latent_channels, t, h, w, generator=torch.Generator().manual_seed(seed))


def video(cfg: HunyuanVideo15VAEConfig, f: int, h: int, w: int, seed: int = 0) -> torch.Tensor:
    s = cfg.spatial_factor
    g = torch.Generator().manual_seed(seed)
    return (0.7 * torch.randn(1, 3, f, h * s, w * s, generator=g)).clamp(-1, 1)


# (kind, latent (T, h, w)): one frame, several frames, odd sizes; every kind at least once.
DECODE_CASES = [("tiny", (3, 2, 3)), ("tiny", (4, 3, 5)), ("shortcuts", (2, 3, 2)), ("released", (2, 2, 3)),
                ("released", (1, 3, 2))]


@pytest.mark.parametrize("kind,shape", DECODE_CASES)
@torch.no_grad()
def test_decode_matches_diffusers(pairs, kind, shape):
    ref, model = pairs(kind)
    cfg = model.config
    z = latents(cfg, *shape, seed=sum(shape))
    want = ref.decode(z).sample
    got = model.decode(z)
    t, h, w = shape
    s = cfg.spatial_factor
    assert got.shape == (1, 3, 1 + cfg.temporal_factor * (t - 1), h * s, w * s)
    assert want.abs().max() > 0.5 and want.std() > 0.1  # a real signal, not a degenerate output
    assert rel_err(got, want) <= TOL


@torch.no_grad()
def test_decode_batch_matches_per_sample_reference(pairs):
    # diffusers' attention mask does not broadcast over a batch (B > 1 raises there), so compare per sample.
    ref, model = pairs("tiny")
    z = latents(model.config, 2, 2, 3, b=2, seed=9)
    want = torch.cat([ref.decode(z[i : i + 1]).sample for i in range(2)])
    assert rel_err(model.decode(z), want) <= TOL


@pytest.mark.parametrize("kind,frames", [("tiny", 1), ("tiny", 9), ("shortcuts", 5), ("released", 5)])
@torch.no_grad()
def test_encode_matches_diffusers(pairs, kind, frames):
    ref, model = pairs(kind)
    cfg = model.config
    x = video(cfg, frames, 2, 3, seed=frames)
    want = ref.encode(x).latent_dist.mode()
    got = model.encode(x)
    assert got.shape == (1, cfg.latent_channels, cfg.latent_frames(frames), 2, 3)
    assert rel_err(got, want) <= TOL


@torch.no_grad()
def test_decoder_stages_run_one_at_a_time_with_own_caches(pairs):
    """Stage i with its own cache (as on pipeline rank i) gives the full decode, bit for bit."""
    _, model = pairs("tiny")
    dec = model.decoder
    n = dec.num_stages
    assert n == len(dec.up_blocks) + 3
    owned = [{id(p) for mod in dec.stage_modules(i) for p in mod.parameters()} for i in range(n)]
    assert sum(len(o) for o in owned) == len({id(p) for p in dec.parameters()})  # a partition
    z = latents(model.config, 3, 2, 3, seed=4)
    caches = [{} for _ in range(n)]
    frames = []
    for t in range(z.shape[2]):
        h = z[:, :, t : t + 1]
        for i in range(n):
            h = dec.forward_stage(i, h, caches[i], first_chunk=(t == 0))
        frames.append(h)
    assert torch.equal(torch.cat(frames, dim=2), model.decode(z))
    assert all(len(c) > 0 for c in caches[:-1] + caches[-1:])  # every stage carries its own temporal context
    attn = dec.mid_block.attentions[0]
    assert caches[1][attn][0].shape[1] == 3 * 2 * 3  # the mid block kept the keys of every frame


def test_latent_scaling_matches_the_pipelines(pairs):
    ref, model = pairs("tiny")
    z = latents(model.config, 2, 2, 3, seed=5)
    sf = ref.config.scaling_factor
    assert torch.equal(model.denormalize_latents(z), z / sf)  # HunyuanVideo15Pipeline before vae.decode
    assert torch.equal(model.normalize_latents(z), z * sf)  # HunyuanVideo15ImageToVideoPipeline image latents
    shifted = HunyuanVideo15VAE(dataclasses.replace(model.config, shift_factor=0.25))
    assert torch.equal(shifted.denormalize_latents(z), z / sf + 0.25)  # the official pipeline with a shift
    assert torch.equal(shifted.normalize_latents(z), (z - 0.25) * sf)
    assert torch.allclose(shifted.normalize_latents(shifted.denormalize_latents(z)), z, atol=1e-6)


# ---- configs and the released architecture ---------------------------------------------------------------------

OFFICIAL_RELEASED_CONFIG = {  # tencent/HunyuanVideo-1.5 vae/config.json
    "_class_name": "AutoencoderKLConv3D", "_diffusers_version": "0.35.0",
    "block_out_channels": [128, 256, 512, 1024, 1024], "downsample_match_channel": True, "ffactor_spatial": 16,
    "ffactor_temporal": 4, "in_channels": 3, "latent_channels": 32, "layers_per_block": 2, "out_channels": 3,
    "sample_size": 256, "sample_tsize": 64, "scaling_factor": 1.03682, "shift_factor": None,
    "upsample_match_channel": True,
}  # fmt: skip


def test_preset_is_the_released_vae():
    from diffusers import AutoencoderKLHunyuanVideo15

    cfg = HunyuanVideo15VAEConfig.preset("hunyuanvideo-1.5")
    assert HunyuanVideo15VAEConfig.from_dict(OFFICIAL_RELEASED_CONFIG) == cfg
    with torch.device("meta"):
        theirs = AutoencoderKLHunyuanVideo15(**cfg.to_dict())
        ours = HunyuanVideo15VAE(cfg)
    shapes = {k: tuple(v.shape) for k, v in theirs.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in ours.state_dict().items()} == shapes
    with torch.device("meta"):
        assert HunyuanVideo15VAEConfig.from_dict(dict(AutoencoderKLHunyuanVideo15().config)) == cfg  # defaults
    assert (cfg.z_dim, cfg.temporal_factor, cfg.spatial_factor) == (32, 4, 16)
    assert cfg.num_frames(31) == 121 and cfg.latent_frames(121) == 31
    official = diffusers_to_official(ours.state_dict())
    assert sorted(official_conversion_rules(dict(official), cfg.block_out_channels, 2)) == sorted(shapes)


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"spatial_compression_ratio": 32}, "needs 6 blocks"),
        ({"temporal_compression_ratio": 3}, "power of two"),
        ({"latent_channels": 3}, "divisible by 2 \\* latent_channels"),
        ({"block_out_channels": [8, 8, 12, 16]}, "channel shuffle"),
        ({"scaling_factor": 0}, "scaling_factor"),
        ({"temporal_compression_ratio": 16}, "must not exceed"),
    ],
)
def test_bad_configs_raise(overrides, match):
    with pytest.raises(ValueError, match=match):
        HunyuanVideo15VAEConfig(**{**tiny_kwargs(), **overrides})
    with pytest.raises(ValueError, match="unknown HunyuanVideo-1.5 VAE config keys"):
        HunyuanVideo15VAEConfig.from_dict({**tiny_kwargs(), "z_dim": 4})


# ---- the official layout ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["released", "shortcuts"])
@torch.no_grad()
def test_official_layout_loads_and_matches(kind, tmp_path):
    """An official folder (AutoencoderKLConv3D config + official names) and single files in the official naming;
    the names are checked against diffusers' conversion script (restated in ``hy15_vae_reference``)."""
    from safetensors.torch import save_file

    ref = make_tiny_diffusers_vae(kind, seed=5)
    cfg = HunyuanVideo15VAEConfig.from_dict(dict(ref.config))
    sd = {k: v.clone().contiguous() for k, v in ref.state_dict().items()}
    official = diffusers_to_official(sd)
    assert "decoder.mid.attn_1.q.weight" in official and "encoder.down.0.block.0.conv1.conv.weight" in official
    if kind == "shortcuts":
        assert any(".nin_shortcut." in k for k in official)
    back = official_conversion_rules(dict(official), cfg.block_out_channels, cfg.layers_per_block)
    assert sorted(back) == sorted(sd) and all(back[k] is sd[k] for k in sd)
    assert all(official_to_diffusers_key(k) in sd for k in official)
    # The official folder: AutoencoderKLConv3D config (ffactor_* names, shift, tiling sizes) + official weights.
    folder = tmp_path / "ckpts" / "vae"
    folder.mkdir(parents=True)
    conf = {"_class_name": "AutoencoderKLConv3D", "in_channels": 3, "out_channels": 3, "sample_size": 256,
            "sample_tsize": 64, "shift_factor": None, "ffactor_spatial": cfg.spatial_compression_ratio,
            "ffactor_temporal": cfg.temporal_compression_ratio,
            **{k: v for k, v in ref.config.items() if not k.startswith("_") and "compression" not in k}}
    (folder / "config.json").write_text(json.dumps(conf))
    save_file(official, str(folder / "diffusion_pytorch_model.safetensors"))
    torch.save(official, tmp_path / "vae.pt")
    z = latents(cfg, 2, 2, 2, seed=2)
    want = ref.decode(z).sample
    for model in (HunyuanVideo15VAE.from_pretrained(tmp_path / "ckpts"),
                  HunyuanVideo15VAE.from_pretrained(folder / "diffusion_pytorch_model.safetensors", config=cfg),
                  HunyuanVideo15VAE.from_pretrained(tmp_path / "vae.pt", config=dataclasses.asdict(cfg))):
        assert model.config == cfg
        assert rel_err(model.decode(z), want) <= TOL
    x = video(cfg, 5, 1, 2, seed=3)
    assert rel_err(model.encode(x), ref.encode(x).latent_dist.mode()) <= TOL


# ---- errors -----------------------------------------------------------------------------------------------------


def test_bad_checkpoints_name_the_keys_and_the_file(tmp_path):
    ref = make_tiny_diffusers_vae("tiny", seed=0)
    cfg = HunyuanVideo15VAEConfig.from_dict(dict(ref.config))
    sd = dict(ref.state_dict())
    sd.pop("decoder.conv_in.conv.bias")
    sd["decoder.extra.weight"] = torch.zeros(1)
    sd["decoder.conv_out.conv.weight"] = torch.zeros(3, 8, 3, 3, 2)
    torch.save(sd, tmp_path / "bad.pt")
    with pytest.raises(ValueError) as e:
        HunyuanVideo15VAE.from_pretrained(tmp_path / "bad.pt", config=cfg)
    msg = str(e.value)
    for name in ("bad.pt", "decoder.conv_in.conv.bias", "decoder.extra.weight", "decoder.conv_out.conv.weight"):
        assert name in msg
    # A folder whose config disagrees with its weights: the file is named.
    ref.save_pretrained(tmp_path / "folder")
    conf = json.loads((tmp_path / "folder" / "config.json").read_text())
    (tmp_path / "folder" / "config.json").write_text(json.dumps({**conf, "latent_channels": 2}))
    with pytest.raises(ValueError, match="diffusion_pytorch_model.safetensors.*decoder.conv_in.conv.weight"):
        HunyuanVideo15VAE.from_pretrained(tmp_path / "folder")
    (tmp_path / "folder" / "config.json").write_text(json.dumps({**conf, "_class_name": "AutoencoderKLWan"}))
    with pytest.raises(ValueError, match="AutoencoderKLWan, not a HunyuanVideo-1.5 VAE"):
        HunyuanVideo15VAE.from_pretrained(tmp_path / "folder")
    (tmp_path / "folder" / "config.json").write_text(json.dumps({**conf, "base_dim": 96}))
    with pytest.raises(ValueError, match="config.json.*unknown HunyuanVideo-1.5 VAE config keys.*base_dim"):
        HunyuanVideo15VAE.from_pretrained(tmp_path / "folder")
    with pytest.raises(ValueError, match="not found"):
        HunyuanVideo15VAE.from_pretrained(tmp_path / "missing")
    torch.save([torch.zeros(1)], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="not a plain dict of tensors"):
        HunyuanVideo15VAE.from_pretrained(tmp_path / "list.pt", config=cfg)
    # Released-size weights against the default preset: wrong shapes named (single file, no config given).
    small = perturb(HunyuanVideo15VAE(cfg), 1).state_dict()
    torch.save(small, tmp_path / "small.pt")
    with pytest.raises(ValueError, match="small.pt.*wrong shape"):
        HunyuanVideo15VAE.from_pretrained(tmp_path / "small.pt")


def test_bad_inputs_raise():
    model = HunyuanVideo15VAE(HunyuanVideo15VAEConfig(**tiny_kwargs())).eval()
    with pytest.raises(ValueError, match="channels"):
        model.decode(torch.zeros(1, 16, 2, 4, 6))
    with pytest.raises(ValueError, match="empty"):
        model.decode(torch.zeros(1, 4, 0, 4, 6))
    with pytest.raises(ValueError, match="5-D"):
        model.decode(torch.zeros(4, 2, 4, 6))
    with pytest.raises(ValueError, match="frame count must be 1 \\+ 4k"):
        model.encode(torch.zeros(1, 3, 4, 16, 16))
    with pytest.raises(ValueError, match="divisible by the spatial factor 8"):
        model.encode(torch.zeros(1, 3, 5, 16, 20))
    with pytest.raises(ValueError, match="channels"):
        model.encode(torch.zeros(1, 4, 5, 16, 16))


# ---- planner figures from the config -----------------------------------------------------------------------------


@torch.no_grad()
def test_planner_workload_counts_match_the_modules():
    """Parameters and conv FLOPs from the config equal the module's (FLOPs by torch's counter on a steady chunk)."""
    from torch.utils.flop_counter import FlopCounterMode

    from vidpar.models.hunyuanvideo15.vae_comm_model import predict_vae_comm_bytes
    from vidpar.models.hunyuanvideo15.vae_memory import param_count

    for kind in ("tiny", "shortcuts", "released"):
        cfg = HunyuanVideo15VAEConfig(**tiny_kwargs(kind))
        model = HunyuanVideo15VAE(cfg).eval()
        work = cfg.planner_workload()
        assert work.params == param_count(cfg) == sum(p.numel() for p in model.parameters())
        assert param_count(cfg, "decoder") == sum(p.numel() for p in model.decoder.parameters())
        assert (work.temporal, work.spatial, work.z_dim, work.num_stages()) == (4, cfg.spatial_factor, 4,
                                                                                model.decoder.num_stages)
        assert len(work.stage_costs(3, 4, frames=5)) == work.num_stages()
        z = latents(cfg, 2, 2, 3, seed=1)
        cache: dict = {}
        model.decoder(z[:, :, :1], cache, first_chunk=True)
        with FlopCounterMode(display=False) as counter:
            model.decoder(z[:, :, 1:], cache, first_chunk=False)  # a steady chunk: 4 output frames
        counts = counter.get_flop_counts()["Global"]
        conv = sum(v for op, v in counts.items() if "convolution" in str(op))
        assert conv == work.decode_flops_per_pixel * 4 * 2 * 3 * cfg.spatial_factor**2
        want = predict_vae_comm_bytes(cfg, (3, 5, 4), 4, "patch")
        assert work.decode_comm_bytes((3, 5, 4), 4, "patch", "all") == want
        assert work.decode_bytes_per_chunk_pixel > 0


def test_memory_estimate_scales_with_bands():
    from vidpar.models.hunyuanvideo15.vae_memory import memory_table, vae_decode_peak_bytes

    cfg = HunyuanVideo15VAEConfig()
    shape = (1, 32, 31, 45, 80)  # 1280x720, 121 frames
    peaks = [vae_decode_peak_bytes(cfg, shape, (1, p), 2, "none") for p in (1, 2, 4, 8)]
    assert peaks == sorted(peaks, reverse=True)
    weights = cfg.planner_workload().params * 2
    assert peaks[2] - weights < (peaks[0] - weights) / 3  # the working set and caches split over the bands
    assert vae_decode_peak_bytes(cfg, shape, (1, 4), 2, "all") >= peaks[2]
    assert vae_decode_peak_bytes(cfg, shape, (2, 2), 2, "none") > peaks[2]  # the full-resolution stage on 2 ranks
    assert {r["video"] for r in memory_table((1, 2))} == {"848x480", "1280x720"}
