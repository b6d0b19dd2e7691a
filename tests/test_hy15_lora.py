"""LoRAs on the HunyuanVideo-1.5 DiT: the same LoRA in the official and diffusers/PEFT namings merges to the same
weights as an independent float64 merge, and the merged model equals diffusers' transformer with the PEFT adapter."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file

from hy15_reference import diffusers_hy15_forward, make_inputs, make_tiny_diffusers_hy15, max_rel_error
from vidpar.lora import LoraSpec, apply_loras
from vidpar.models.hunyuanvideo15 import HunyuanVideo15Transformer3D
from vidpar.models.hunyuanvideo15.lora_keys import HUNYUAN_LORA_KEYS
from vidpar.models.hunyuanvideo15.transformer_keys import native_to_diffusers, native_to_official_key

pytest.importorskip("peft")

RANK, ALPHA, STRENGTH = 4, 8.0, 0.8
TARGETS = ("img_attn_q", "img_attn_proj", "txt_attn_v", "img_mlp.fc1", "txt_mlp.fc2", "img_mod.linear")


def lora_content(model, seed: int = 3) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """native module path -> (down [r, in], up [out, r])."""
    g = torch.Generator().manual_seed(seed)
    mods = dict(model.named_modules())
    out = {}
    for i in range(model.config.num_layers):
        for t in TARGETS:
            w = mods[f"blocks.{i}.{t}"].weight
            out[f"blocks.{i}.{t}"] = (torch.randn(RANK, w.shape[1], generator=g) * 0.2,
                                      torch.randn(w.shape[0], RANK, generator=g) * 0.2)
    return out


def write_official(path, content) -> None:
    sd = {}
    for native, (down, up) in content.items():
        key = "diffusion_model." + native_to_official_key(native)
        sd[f"{key}.lora_down.weight"], sd[f"{key}.lora_up.weight"] = down, up
        sd[f"{key}.alpha"] = torch.tensor(ALPHA)
    save_file(sd, str(path))


def peft_state(content) -> dict[str, torch.Tensor]:
    sd = {}
    for native, (down, up) in content.items():
        key = "transformer." + native_to_diffusers(native + ".weight")[0][0][: -len(".weight")]
        sd[f"{key}.lora_A.weight"], sd[f"{key}.lora_B.weight"] = down, up
    return sd


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    ref = make_tiny_diffusers_hy15(seed=1)
    folder = tmp_path_factory.mktemp("hy15_dit")
    ref.save_pretrained(folder, safe_serialization=True)
    return ref, folder


def test_both_namings_merge_exactly(models, tmp_path):
    _, folder = models
    model = HunyuanVideo15Transformer3D.from_pretrained(folder)
    base = {k: v.clone() for k, v in model.state_dict().items()}
    content = lora_content(model)
    write_official(tmp_path / "official.safetensors", content)
    # diffusers' save_lora_weights stores the LoraConfig as JSON under "lora_adapter_metadata"
    meta = json.dumps({"transformer.r": RANK, "transformer.lora_alpha": ALPHA})
    save_file(peft_state(content), str(tmp_path / "diffusers.safetensors"), metadata={"lora_adapter_metadata": meta})
    merged = {}
    for name in ("official", "diffusers"):
        handle = apply_loras({"main": model}, [LoraSpec(tmp_path / f"{name}.safetensors", STRENGTH)],
                             HUNYUAN_LORA_KEYS)
        merged[name] = {k: v.clone() for k, v in model.state_dict().items()}
        handle.remove()
        assert all(torch.equal(model.state_dict()[k], base[k]) for k in base)
    for native, (down, up) in content.items():
        want = (base[f"{native}.weight"].double() + STRENGTH * ALPHA / RANK * (up.double() @ down.double())).float()
        assert torch.allclose(merged["official"][f"{native}.weight"], want, rtol=1e-6, atol=1e-7), native
    assert all(torch.equal(merged["official"][k], merged["diffusers"][k]) for k in base)


def test_merged_model_equals_diffusers_with_the_peft_adapter(models, tmp_path):
    ref, folder = models
    model = HunyuanVideo15Transformer3D.from_pretrained(folder)
    content = lora_content(model)
    write_official(tmp_path / "official.safetensors", content)
    apply_loras({"main": model}, [LoraSpec(tmp_path / "official.safetensors", STRENGTH)], HUNYUAN_LORA_KEYS)
    from peft import LoraConfig

    modules = sorted({k[len("transformer."):-len(".lora_A.weight")] for k in peft_state(content) if "lora_A" in k})
    ref.add_adapter(LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=modules), adapter_name="a")
    state = {k[len("transformer."):].replace(".lora_A.weight", ".lora_A.a.weight")
             .replace(".lora_B.weight", ".lora_B.a.weight"): v for k, v in peft_state(content).items()}
    missing = ref.load_state_dict(state, strict=False)
    assert not missing.unexpected_keys
    ref.set_adapters(["a"], [STRENGTH])
    inputs = make_inputs(model.config, grid=(2, 4, 4))
    with torch.no_grad():
        assert max_rel_error(model(**inputs), diffusers_hy15_forward(ref, inputs)) <= 1e-5
