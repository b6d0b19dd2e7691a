"""vidpar's HunyuanVideo-1.5 DiT against diffusers' HunyuanVideo15Transformer3DModel, loaded from the same random
weights (diffusers' save_pretrained folder, and the same weights written in the official layout).

Inputs are right-padded like the pipeline's (text 7-20 valid of 24 tokens, glyph 0-4 of 10) with random values in
the padding, so a padded token that leaked into the computation would show.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch.utils.flop_counter import FlopCounterMode

from vidpar.kernels import LocalAttention
from vidpar.models.hunyuanvideo15 import (
    HY15_TRANSFORMER_PRESETS,
    HunyuanVideo15Transformer3D,
    HunyuanVideo15TransformerConfig,
)
from vidpar.models.hunyuanvideo15.transformer_keys import (
    diffusers_to_official_state_dict,
    official_to_diffusers_state_dict,
)
from vidpar.models.hunyuanvideo15.transformer_loader import native_state_dict_to_official
from vidpar.models.hunyuanvideo15.workload import FLOP_FIELDS, hy15_dit_params, hy15_forward_flops
from vidpar.planner.workload import ForwardFlops

from hy15_reference import (
    diffusers_hy15_forward,
    make_inputs,
    make_tiny_diffusers_hy15,
    max_rel_error,
    official_config,
    save_diffusers,
    write_official,
)

TOL_FP32 = 1e-5
TOL_BF16 = 2e-2


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(diffusers reference, its saved transformer/ folder, vidpar's model loaded from that folder)."""
    ref = make_tiny_diffusers_hy15()
    folder = save_diffusers(ref, tmp_path_factory.mktemp("hy15") / "transformer")
    return ref, folder, HunyuanVideo15Transformer3D.from_pretrained(folder)


def _forward(model, inputs):
    with torch.no_grad():
        return model(**inputs)


# name -> make_inputs kwargs
CASES = {
    "i2v_batch2_mixed_lengths": dict(batch=2, text_valid=(13, 7), glyph_valid=(4, 0), image_tokens=5),
    "t2v_zero_image": dict(batch=1, text_valid=(20,), glyph_valid=(3,), image_tokens=None),
    "t2v_all_zero_glyph_mask": dict(batch=2, text_valid=(9, 16), glyph_valid=(0,), image_tokens=None),
    "i2v_equal_lengths_batched": dict(batch=2, text_valid=(11,), glyph_valid=(2,), image_tokens=5),
}


@pytest.mark.parametrize("name", list(CASES))
def test_matches_diffusers_fp32(tiny, name: str) -> None:
    ref, _, model = tiny
    inputs = make_inputs(model.config, **CASES[name])
    expected = diffusers_hy15_forward(ref, inputs)
    out = _forward(model, inputs)
    assert out.shape == expected.shape == inputs["latents"][:, :4].shape
    err = max_rel_error(out, expected)
    print(f"{name}: max rel err {err:.3e}")
    assert err <= TOL_FP32, f"{name}: max rel error {err:.3e}"


@pytest.mark.parametrize("overrides, grid", [
    (dict(num_attention_heads=5, attention_head_dim=8, rope_axes_dim=(2, 2, 4), patch_size=2), (3, 4, 5)),
    (dict(use_meanflow=True, patch_size_t=2, in_channels=7, out_channels=3), (2, 6, 7)),
], ids=["5heads_patch122", "meanflow_patch211"])
def test_matches_diffusers_other_configs(tmp_path: Path, overrides: dict, grid: tuple) -> None:
    ref = make_tiny_diffusers_hy15(overrides, seed=4)
    model = HunyuanVideo15Transformer3D.from_pretrained(save_diffusers(ref, tmp_path / "transformer"))
    inputs = make_inputs(model.config, batch=2, grid=grid, text_valid=(7, 12), glyph_valid=(1, 3))
    timestep_r = torch.tensor([500.0, 0.0]) if model.config.use_meanflow else None
    expected = diffusers_hy15_forward(ref, inputs, timestep_r=timestep_r)
    out = _forward(model, dict(inputs, timestep_r=timestep_r))
    err = max_rel_error(out, expected)
    print(f"{overrides}: max rel err {err:.3e}")
    assert out.shape == expected.shape and err <= TOL_FP32, err


def test_bf16_matches_diffusers(tiny) -> None:
    ref, folder, model = tiny
    inputs = make_inputs(model.config, batch=2, text_valid=(13, 7), glyph_valid=(4, 0), image_tokens=5)
    inputs["timestep"] = torch.tensor([936.0, 420.0])  # exact in bf16, which diffusers' embedding runs in
    expected32 = diffusers_hy15_forward(ref, inputs)
    expected16 = diffusers_hy15_forward(make_tiny_diffusers_hy15().to(torch.bfloat16), inputs).float()
    bf16 = HunyuanVideo15Transformer3D.from_pretrained(folder, dtype=torch.bfloat16)
    assert all(p.dtype == torch.bfloat16 for p in bf16.parameters())
    out = _forward(bf16, inputs).float()
    err16, err32 = max_rel_error(out, expected16), max_rel_error(out, expected32)
    print(f"bf16 vs diffusers bf16 {err16:.3e}, vs diffusers fp32 {err32:.3e}, "
          f"diffusers bf16 vs fp32 {max_rel_error(expected16, expected32):.3e}")
    assert err16 <= TOL_BF16 and err32 <= TOL_BF16, (err16, err32)


def test_padded_tokens_never_change_the_result(tiny) -> None:
    _, _, model = tiny
    inputs = make_inputs(model.config, batch=2, text_valid=(13, 7), glyph_valid=(4, 0), image_tokens=5)
    out = _forward(model, inputs)
    poisoned = dict(inputs)
    for states, mask in (("text_states", "text_mask"), ("glyph_states", "glyph_mask")):
        pad = ~inputs[mask].bool()
        poisoned[states] = inputs[states].masked_fill(pad[..., None], float("nan"))
    poisoned["text_mask"] = inputs["text_mask"].bool()  # bool and 0/1 masks are the same
    assert torch.equal(_forward(model, poisoned), out)
    # More padding of the same valid tokens changes nothing either.
    longer = dict(inputs)
    for states, mask in (("text_states", "text_mask"), ("glyph_states", "glyph_mask")):
        longer[states] = torch.cat([inputs[states], torch.randn_like(inputs[states])], dim=1)
        longer[mask] = torch.cat([inputs[mask], torch.zeros_like(inputs[mask])], dim=1)
    assert torch.equal(_forward(model, longer), out)
    # All-zero image states are text-to-video, as in diffusers (and the official code): no image tokens.
    zero_image = dict(inputs, image_states=torch.zeros_like(inputs["image_states"]))
    assert torch.equal(_forward(model, zero_image), _forward(model, dict(inputs, image_states=None)))
    # No glyph input at all is the same as an all-zero glyph mask.
    no_glyph = dict(inputs, glyph_states=None, glyph_mask=None)
    zero_glyph = dict(inputs, glyph_mask=torch.zeros_like(inputs["glyph_mask"]))
    assert torch.equal(_forward(model, no_glyph), _forward(model, zero_glyph))


def test_batch_with_different_lengths_equals_each_sample_alone(tiny) -> None:
    _, _, model = tiny
    inputs = make_inputs(model.config, batch=2, text_valid=(13, 7), glyph_valid=(4, 0), image_tokens=5)
    out = _forward(model, inputs)
    for i in range(2):
        alone = {k: (v[i : i + 1] if v is not None else None) for k, v in inputs.items()}
        # Equal up to GEMM blocking (the batch size changes the kernels' summation order).
        assert max_rel_error(_forward(model, alone), out[i : i + 1]) <= 1e-6


# Official parameter names of a 1-layer model with 1 refiner layer and the MeanFlow embedding, typed from the
# official modules (hyvideo/models/transformers/hunyuanvideo_1_5_transformer.py, modules/token_refiner.py,
# embed_layers.py, mlp_layers.py, modulate_layers.py; hyvideo/models/text_encoders/byT5/__init__.py ByT5Mapper).
_WB = ("weight", "bias")
OFFICIAL_NAMES_1LAYER = {
    *(f"{m}.{p}" for m in ("img_in.proj", "time_in.mlp.0", "time_in.mlp.2", "time_r_in.mlp.0", "time_r_in.mlp.2",
                           "txt_in.input_embedder", "txt_in.t_embedder.mlp.0", "txt_in.t_embedder.mlp.2",
                           "txt_in.c_embedder.linear_1", "txt_in.c_embedder.linear_2", "byt5_in.layernorm",
                           "byt5_in.fc1", "byt5_in.fc2", "byt5_in.fc3", "vision_in.proj.0", "vision_in.proj.1",
                           "vision_in.proj.3", "vision_in.proj.4", "final_layer.adaLN_modulation.1",
                           "final_layer.linear") for p in _WB),
    "cond_type_embedding.weight",
    *(f"txt_in.individual_token_refiner.blocks.0.{m}.{p}"
      for m in ("norm1", "self_attn_qkv", "self_attn_proj", "norm2", "mlp.fc1", "mlp.fc2", "adaLN_modulation.1")
      for p in _WB),
    *(f"double_blocks.0.{s}_{m}.{p}" for s in ("img", "txt")
      for m in ("mod.linear", "attn_q", "attn_k", "attn_v", "attn_proj", "mlp.fc1", "mlp.fc2") for p in _WB),
    *(f"double_blocks.0.{s}_attn_{q}_norm.weight" for s in ("img", "txt") for q in ("q", "k")),
}


def test_official_key_names_and_both_conversions() -> None:
    ref = make_tiny_diffusers_hy15(dict(num_layers=1, num_refiner_layers=1, use_meanflow=True), seed=2)
    official = diffusers_to_official_state_dict(ref.state_dict())
    assert set(official) == OFFICIAL_NAMES_1LAYER
    d = ref.config.num_attention_heads * ref.config.attention_head_dim
    qkv = official["txt_in.individual_token_refiner.blocks.0.self_attn_qkv.weight"]
    assert qkv.shape == (3 * d, d)
    to_k = ref.state_dict()["context_embedder.token_refiner.refiner_blocks.0.attn.to_k.weight"]
    assert torch.equal(qkv[d : 2 * d], to_k)
    shift = official["final_layer.adaLN_modulation.1.bias"][:d]  # official (shift, scale); diffusers (scale, shift)
    assert torch.equal(shift, ref.state_dict()["norm_out.linear.bias"][d:])
    back = official_to_diffusers_state_dict(official)
    assert sorted(back) == sorted(ref.state_dict())
    assert all(torch.equal(back[k], v) for k, v in ref.state_dict().items())


def test_official_layout_round_trip(tiny, tmp_path: Path) -> None:
    ref, _, native = tiny
    folder = write_official(tmp_path / "ckpts" / "transformer" / "480p_i2v", native, official_config(native), shards=3)
    (tmp_path / "ckpts" / "config.json").write_text(json.dumps({"_class_name": "HunyuanVideo_1_5_Pipeline"}))
    for path in (folder, folder / "diffusion_pytorch_model.safetensors.index.json", tmp_path / "ckpts"):
        model = HunyuanVideo15Transformer3D.from_pretrained(path)
        assert model.config == native.config
    inputs = make_inputs(model.config, batch=2, text_valid=(13, 7), glyph_valid=(4, 0), image_tokens=5)
    err = max_rel_error(_forward(model, inputs), diffusers_hy15_forward(ref, inputs))
    print(f"official layout, 3 shards: max rel err {err:.3e}")
    assert err <= TOL_FP32, err
    assert native_state_dict_to_official(model).keys() == native_state_dict_to_official(native).keys()


def test_sharded_diffusers_folder_and_pipeline_root(tiny, tmp_path: Path) -> None:
    ref, _, native = tiny
    save_diffusers(ref, tmp_path / "transformer", shard="2MB")
    assert (tmp_path / "transformer" / "diffusion_pytorch_model.safetensors.index.json").is_file()
    model = HunyuanVideo15Transformer3D.from_pretrained(tmp_path)  # a pipeline root
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), native.state_dict().values()))


def test_structural_contract(tiny) -> None:
    """The submodules the sharding plan hooks have the agreed inputs and outputs (token dim 1)."""
    _, _, model = tiny
    seen: dict[str, tuple] = {}

    def record(name):
        def hook(_mod, *args_kwargs_out):
            seen[name] = args_kwargs_out  # (args, out) or (args, kwargs, out)
        return hook

    handles = [model.get_submodule(n).register_forward_hook(record(n)) for n in ("img_in", "rope", "final_layer")]
    handles.append(model.get_submodule("blocks.1.attn_op").register_forward_hook(record("attn"), with_kwargs=True))
    inputs = make_inputs(model.config, batch=1, text_valid=(13,), glyph_valid=(4,), image_tokens=5)
    _forward(model, inputs)
    for h in handles:
        h.remove()
    s, t = 3 * 8 * 10, 5 + 4 + 13
    assert seen["img_in"][1].shape == (1, s, 48)
    assert all(x.shape == (1, s, 1, 8) for x in seen["rope"][1])
    assert seen["final_layer"][1].shape == (1, s, 4)
    (q, k, v), kwargs, (out, joint_out) = seen["attn"]
    assert q.shape == k.shape == v.shape == out.shape == (1, s, 3, 16)
    assert kwargs["joint_q"].shape == joint_out.shape == (1, t, 3, 16)
    assert isinstance(model.blocks[0].attn_op, LocalAttention)
    assert isinstance(model.txt_in.individual_token_refiner.blocks[0].attn_op, LocalAttention)
    assert set(model.parallel_plan()) == {"img_in", "rope", "blocks.*.attn_op", "final_layer"}


# ---------------------------------------------------------------------- configs, presets, workload

DIFFUSERS_480P_T2V = {  # diffusers' scripts/convert_hunyuan_video1_5_to_diffusers.py, TRANSFORMER_CONFIGS["480p_t2v"]
    "_class_name": "HunyuanVideo15Transformer3DModel", "in_channels": 65, "out_channels": 32,
    "num_attention_heads": 16, "attention_head_dim": 128, "num_layers": 54, "num_refiner_layers": 2,
    "mlp_ratio": 4.0, "patch_size": 1, "patch_size_t": 1, "qk_norm": "rms_norm", "text_embed_dim": 3584,
    "text_embed_2_dim": 1472, "image_embed_dim": 1152, "rope_theta": 256.0, "rope_axes_dim": [16, 56, 56],
    "use_meanflow": False, "target_size": 640, "task_type": "t2v",
}
OFFICIAL_720P_I2V = {  # the fields of tencent/HunyuanVideo-1.5 transformer/<variant>/config.json
    "_class_name": "HunyuanVideo_1_5_DiffusionTransformer", "attn_mode": "flash", "concat_condition": True,
    "glyph_byT5_v2": True, "guidance_embed": False, "heads_num": 16, "hidden_size": 2048, "ideal_resolution": "720p",
    "ideal_task": "i2v", "in_channels": 32, "is_reshape_temporal_channels": False, "mlp_act_type": "gelu_tanh",
    "mlp_width_ratio": 4, "mm_double_blocks_depth": 54, "mm_single_blocks_depth": 0, "out_channels": 32,
    "patch_size": [1, 1, 1], "qk_norm": True, "qk_norm_type": "rms", "qkv_bias": True, "rope_dim_list": [16, 56, 56],
    "rope_theta": 256, "text_pool_type": None, "text_projection": "single_refiner", "text_states_dim": 3584,
    "text_states_dim_2": None, "use_attention_mask": True, "use_cond_type_embedding": True, "use_meanflow": False,
    "vision_projection": "linear", "vision_states_dim": 1152,
}


def test_presets_config_parsing_and_parameter_counts() -> None:
    p = HY15_TRANSFORMER_PRESETS
    assert HunyuanVideo15TransformerConfig.from_diffusers_config(DIFFUSERS_480P_T2V) == p["hunyuanvideo-1.5-480p-t2v"]
    assert HunyuanVideo15TransformerConfig.from_official_config(OFFICIAL_720P_I2V) == p["hunyuanvideo-1.5-720p-i2v"]
    assert hy15_dit_params(p["hunyuanvideo-1.5-720p-t2v"]) == 8_326_608_160  # the "8.3B" of the release
    assert hy15_dit_params(p["hunyuanvideo-1.5-480p-i2v-step-distilled"]) == 8_331_330_848
    with torch.device("meta"):
        for name in ("hunyuanvideo-1.5-480p-t2v", "hunyuanvideo-1.5-480p-i2v-step-distilled"):
            model = HunyuanVideo15Transformer3D.from_config(name)
            assert sum(t.numel() for t in model.parameters()) == hy15_dit_params(model.config)
    small = dict(hidden_size=48, num_heads=3, num_layers=2, text_dim=20, glyph_dim=12, image_dim=8,
                 rope_axes_dim=(4, 6, 6), in_channels=7, out_channels=3, patch_size=(2, 1, 2), mlp_ratio=2.5)
    for extra in ({}, {"use_meanflow": True, "num_refiner_layers": 1}):
        cfg = HunyuanVideo15TransformerConfig(**small, **extra)
        assert hy15_dit_params(cfg) == sum(t.numel() for t in HunyuanVideo15Transformer3D(cfg).parameters())


def test_forward_flops_match_a_flop_counter() -> None:
    cfg = HunyuanVideo15TransformerConfig(hidden_size=48, num_heads=3, num_layers=2, text_dim=20, glyph_dim=12,
                                          image_dim=8, rope_axes_dim=(4, 6, 6), in_channels=9, out_channels=4,
                                          mlp_ratio=2.0, patch_size=(1, 2, 1), use_meanflow=True)
    torch.manual_seed(0)
    model = HunyuanVideo15Transformer3D(cfg, attention_backend="math")  # einsum attention: counted as bmm
    assert [f.name for f in dataclasses.fields(ForwardFlops)] == list(FLOP_FIELDS)
    for grid, text, glyph, image in (((3, 4, 10), 13, 4, 5), ((2, 3, 5), 7, 0, 0)):
        inputs = make_inputs(cfg, batch=1, grid=grid, text_valid=(text,), glyph_valid=(glyph,),
                             image_tokens=image or None)
        with FlopCounterMode(display=False) as counter, torch.no_grad():
            model(**inputs, timestep_r=torch.tensor([2.0]))
        flops = ForwardFlops(**hy15_forward_flops(cfg, grid[0] * grid[1] * grid[2], text, glyph, image))
        assert flops.total == counter.get_total_flops(), (grid, flops, counter.get_total_flops())
    with pytest.raises(ValueError, match="tokens"):
        hy15_forward_flops(cfg, -1, 3)


@pytest.mark.parametrize("kwargs, pattern", [
    (dict(hidden_size=50, num_heads=3), "not divisible"),
    (dict(rope_axes_dim=(16, 56, 54)), "rope_axes_dim"),
    (dict(rope_axes_dim=(15, 57, 56)), "even"),
    (dict(task="sr"), "task"),
    (dict(num_heads=0), "positive"),
    (dict(patch_size=(1, 2)), "patch_size"),
])
def test_bad_configs(kwargs: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        HunyuanVideo15TransformerConfig(**kwargs)


@pytest.mark.parametrize("change, pattern", [
    ({"mm_single_blocks_depth": 20}, "single-stream"),
    ({"guidance_embed": True}, "guidance"),
    ({"ideal_task": "sr"}, "super-resolution"),
    ({"text_projection": "linear"}, "text_projection"),
    ({"mlp_act_type": "gelu"}, "activation"),
    ({"ideal_resolution": "1080p"}, "ideal_resolution"),
    ({"mm_double_blocks_depth": 54.5}, "must be an int"),
])
def test_bad_official_configs(change: dict, pattern: str) -> None:
    with pytest.raises(ValueError, match=pattern):
        HunyuanVideo15TransformerConfig.from_official_config({**OFFICIAL_720P_I2V, **change})


def test_bad_diffusers_configs_and_presets() -> None:
    with pytest.raises(ValueError, match="HunyuanVideo15Transformer3DModel"):
        HunyuanVideo15TransformerConfig.from_diffusers_config({"_class_name": "WanTransformer3DModel"})
    with pytest.raises(ValueError, match="qk_norm"):
        HunyuanVideo15TransformerConfig.from_diffusers_config({**DIFFUSERS_480P_T2V, "qk_norm": "layer_norm"})
    with pytest.raises(ValueError, match="unknown HunyuanVideo-1.5 preset"):
        HunyuanVideo15TransformerConfig.preset("hunyuanvideo-2")


def _corrupt(folder: Path, edit) -> None:
    path = folder / "diffusion_pytorch_model.safetensors"
    sd = load_file(str(path))
    edit(sd)
    save_file(sd, str(path))


@pytest.mark.parametrize("edit, pattern", [
    (lambda sd: sd.pop("transformer_blocks.1.attn.add_q_proj.weight"),
     r"diffusers layout.*missing 1 key\(s\): transformer_blocks\.1\.attn\.add_q_proj\.weight"),
    (lambda sd: sd.update({"transformer_blocks.0.extra.weight": torch.zeros(2)}),
     r"unexpected 1 key\(s\): transformer_blocks\.0\.extra\.weight \(in diffusion_pytorch_model\.safetensors\)"),
    (lambda sd: sd.update({"proj_out.weight": torch.zeros(3, 48)}), r"proj_out\.weight .* has shape \[3, 48\]"),
], ids=["missing", "unexpected", "wrong_shape"])
def test_bad_diffusers_checkpoints(tiny, tmp_path: Path, edit, pattern: str) -> None:
    ref, _, _ = tiny
    folder = save_diffusers(ref, tmp_path / "transformer")
    _corrupt(folder, edit)
    with pytest.raises(ValueError, match=pattern):
        HunyuanVideo15Transformer3D.from_pretrained(folder)


def test_bad_official_checkpoints_named_in_official_naming(tiny, tmp_path: Path) -> None:
    _, _, native = tiny
    folder = write_official(tmp_path / "transformer" / "480p_i2v", native, official_config(native))
    _corrupt(folder, lambda sd: sd.pop("double_blocks.0.txt_attn_k_norm.weight"))
    with pytest.raises(ValueError, match=r"official layout.*missing 1 key\(s\): double_blocks\.0\.txt_attn_k_norm"):
        HunyuanVideo15Transformer3D.from_pretrained(folder)
    write_official(tmp_path / "transformer" / "720p_i2v", native, official_config(native))
    with pytest.raises(ValueError, match=r"several transformer variants \['480p_i2v', '720p_i2v'\]"):
        HunyuanVideo15Transformer3D.from_pretrained(tmp_path)
    (folder / "config.json").write_text(json.dumps(official_config(native, mm_single_blocks_depth=40)))
    with pytest.raises(ValueError, match=r"config\.json: official config mm_single_blocks_depth=40"):
        HunyuanVideo15Transformer3D.from_pretrained(folder)
    (folder / "config.json").write_text(json.dumps({"dim": 3}))
    with pytest.raises(ValueError, match="neither a diffusers"):
        HunyuanVideo15Transformer3D.from_pretrained(folder)


def test_missing_files(tiny, tmp_path: Path) -> None:
    ref, _, _ = tiny
    with pytest.raises(FileNotFoundError, match="does not exist"):
        HunyuanVideo15Transformer3D.from_pretrained(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="config.json"):
        HunyuanVideo15Transformer3D.from_pretrained(empty)
    (empty / "config.json").write_text(json.dumps(DIFFUSERS_480P_T2V))
    with pytest.raises(FileNotFoundError, match="no .safetensors"):
        HunyuanVideo15Transformer3D.from_pretrained(empty)
    (empty / "diffusion_pytorch_model.bin").write_bytes(b"never read")
    with pytest.raises(ValueError, match="safetensors only"):
        HunyuanVideo15Transformer3D.from_pretrained(empty)
    folder = save_diffusers(ref, tmp_path / "sharded", shard="2MB")
    next(folder.glob("diffusion_pytorch_model-00001-of-*.safetensors")).unlink()
    with pytest.raises(FileNotFoundError, match="missing"):
        HunyuanVideo15Transformer3D.from_pretrained(folder)


def test_bad_inputs(tiny) -> None:
    _, _, model = tiny
    good = make_inputs(model.config, batch=2, text_valid=(13, 7), glyph_valid=(4, 0), image_tokens=5)
    bad = {
        "latents must be": dict(latents=good["latents"][:, :5]),
        "timestep must be": dict(timestep=torch.tensor([1.0])),
        "at least one valid text token": dict(text_mask=torch.zeros_like(good["text_mask"])),
        "text_mask must be": dict(text_mask=good["text_mask"][:, :5]),
        "0/1": dict(text_mask=good["text_mask"] * 2),
        "text_states must be": dict(text_states=good["text_states"][..., :5]),
        "glyph_mask is given without": dict(glyph_states=None),
        "image_states must be": dict(image_states=good["image_states"][..., :3]),
        "use_meanflow=False": dict(timestep_r=torch.tensor([1.0, 2.0])),
    }
    for pattern, change in bad.items():
        with pytest.raises(ValueError, match=pattern):
            model(**{**good, **change})
    patched = HunyuanVideo15Transformer3D(model.config.replace(patch_size=(1, 2, 2)))
    with pytest.raises(ValueError, match="not divisible by patch"):
        patched(**{**good, "latents": torch.randn(2, 9, 3, 7, 10)})
