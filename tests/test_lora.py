"""LoRA merging on one process: every file layout, against diffusers + PEFT where diffusers reads the layout and
against a float64 merge written in the test where it does not; exact unload; errors before any change.

The LoRAs are large on purpose (they change the output by tens of percent), so a wrong key, scale or sign fails.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

import lora_files as lf
from lora_files import TINY, diffusers_readable_files, diffusers_with_loras, inputs
from vidpar.lora import LoraHandle, LoraSpec, apply_loras, lora_set_digest, read_lora_file
from vidpar.models.wan import WanTransformer3D, WanTransformerConfig
from vidpar.models.wan.lora_keys import WAN_LORA_KEYS
from wan_reference import diffusers_wan_forward, make_tiny_diffusers_wan, max_rel_error

TOL_FP32 = 1e-5


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny diffusers Wan DiT saved to disk: (folder, diffusers model)."""
    folder = tmp_path_factory.mktemp("lora_base") / "transformer"
    ref = make_tiny_diffusers_wan(TINY, seed=11)
    ref.save_pretrained(folder)
    return folder, ref


LAYOUT_NAMES = {"peft_metadata": "diffusers/PEFT", "peft_plain": "diffusers/PEFT", "original_down_up": "official/ComfyUI",
                "original_A_B": "official/ComfyUI", "kohya": "kohya", "peft_rslora": "diffusers/PEFT"}


@pytest.mark.parametrize("layout", list(LAYOUT_NAMES))
def test_merged_output_matches_diffusers_peft(base, tmp_path, layout):
    folder, _ = base
    model = WanTransformer3D.from_pretrained(folder)
    path, _ = diffusers_readable_files(model, tmp_path)[layout]
    assert read_lora_file(path).layout == LAYOUT_NAMES[layout]
    x = inputs()
    with torch.no_grad():
        plain = model(*x)
    strength = 0.8 if layout != "kohya" else -0.6
    ref = diffusers_with_loras(folder, [(path, strength)])
    expected = diffusers_wan_forward(ref, *x)
    apply_loras({"main": model}, [LoraSpec(path, strength)], WAN_LORA_KEYS)
    with torch.no_grad():
        out = model(*x)
    effect, err = max_rel_error(plain, expected), max_rel_error(out, expected)
    print(f"{layout}: LoRA changes the output by {effect:.2f}, vidpar vs diffusers {err:.2e}")
    assert effect > 0.05, "the LoRA must matter for the comparison to mean anything"
    assert err <= TOL_FP32, err


def test_several_loras_of_every_layout_add_up_like_diffusers(base, tmp_path):
    folder, _ = base
    model = WanTransformer3D.from_pretrained(folder)
    files = diffusers_readable_files(model, tmp_path)
    strengths = [0.7, -0.4, 1.1, 0.5, 0.9, -0.3]
    chosen = [(path, s) for (path, _), s in zip(files.values(), strengths)]
    expected = diffusers_wan_forward(diffusers_with_loras(folder, chosen), *inputs())
    handle = apply_loras({"main": model}, [f"{p}:{s}" for p, s in chosen], WAN_LORA_KEYS)
    with torch.no_grad():
        err = max_rel_error(model(*inputs()), expected)
    print(f"six LoRAs of every layout diffusers reads: vidpar vs diffusers {err:.2e}")
    assert err <= TOL_FP32, err
    assert [s.strength for s in handle.specs] == strengths


def test_layouts_diffusers_cannot_read_match_an_independent_float64_merge(base, tmp_path):
    """Norm, modulation and linear ``diff`` deltas, norm ``diff_b``, a Conv3d LoRA: diffusers drops or cannot
    read these, so the reference is the float64 formula in ``lora_files.expected_official``."""
    folder, _ = base
    model = WanTransformer3D.from_pretrained(folder)
    original = lf.official_weights(model)
    a = lf.random_lora(model, 21, alpha=6.0, bias_diffs=True, extras=True)
    b = lf.random_lora(model, 22, rank=2, alpha=None, extras=True)
    fa = lf.write_original(tmp_path / "a.safetensors", a, alpha_dtype=torch.bfloat16)
    fb = lf.write_kohya(tmp_path / "b.safetensors", b)
    assert any(k.endswith("norm3.diff") for k in lf.dump_keys(fb)) and any("patch_embedding" in k for k in lf.dump_keys(fa))
    apply_loras({"main": model}, [(fa, 0.6), (fb, -1.5)], WAN_LORA_KEYS)
    expected = lf.expected_official(original, [(a, 0.6), (b, -1.5)])
    merged = lf.official_weights(model)
    changed = [k for k in expected if not torch.equal(expected[k], original[k])]
    assert any("norm_q" in k for k in changed) and "head.modulation" in changed and "patch_embedding.weight" in changed
    for k in expected:
        err = max_rel_error(merged[k], expected[k])
        assert err <= 1e-6, f"{k}: {err:.2e}"  # fp32 rounding of one cast


def test_same_lora_in_every_layout_gives_bit_identical_weights(base, tmp_path):
    folder, _ = base
    model = WanTransformer3D.from_pretrained(folder)
    c = lf.random_lora(model, 31, alpha=8.0, rank_of={"blocks.1.ffn.2": 2}, alpha_of={"blocks.0.cross_attn.k": 3.0})
    for m in c.modules.values():
        m.alpha = float(m.alpha)
    paths = {
        "peft": lf.write_peft(tmp_path / "peft", c, lf.peft_metadata(c, 4, 8.0)),
        "original": lf.write_original(tmp_path / "o.safetensors", c),
        "original_ab": lf.write_original(tmp_path / "oab.safetensors", c, style="lora_A"),
        "bare": lf.write_original(tmp_path / "bare.safetensors", c, prefix=""),
        "kohya": lf.write_kohya(tmp_path / "k.safetensors", c),
    }
    results = {}
    for name, path in paths.items():
        m = WanTransformer3D.from_pretrained(folder)
        apply_loras({"main": m}, [(path, 0.75)], WAN_LORA_KEYS)
        results[name] = lf.official_weights(m)
    ref = results.pop("original")
    for name, sd in results.items():
        assert all(torch.equal(sd[k], ref[k]) for k in ref), name


def test_unload_restores_bits_and_the_set_not_the_order_decides(base, tmp_path):
    folder, _ = base
    model = WanTransformer3D.from_pretrained(folder, dtype=torch.bfloat16)
    original = lf.official_weights(model)
    fa = lf.write_original(tmp_path / "a.safetensors", lf.random_lora(model, 41, bias_diffs=True, extras=True))
    fb = lf.write_kohya(tmp_path / "b.safetensors", lf.random_lora(model, 42, alpha=1.0))
    handle = apply_loras({"main": model}, [(fa, 0.5)], WAN_LORA_KEYS)
    handle.add([LoraSpec(fb, 2.0)])
    one_by_one = lf.official_weights(model)
    assert sum(not torch.equal(one_by_one[k], original[k]) for k in original) > 20
    digest = handle.digest
    handle.remove()
    assert all(torch.equal(v, original[k]) for k, v in lf.official_weights(model).items())
    assert handle.specs == () and handle.kept_bytes() == 0
    together = apply_loras({"main": model}, [(fb, 2.0), (fa, 0.5)], WAN_LORA_KEYS)
    assert together.digest == digest
    assert all(torch.equal(v, one_by_one[k]) for k, v in lf.official_weights(model).items())
    together.remove()
    assert all(torch.equal(v, original[k]) for k, v in lf.official_weights(model).items())


def test_bf16_weights_are_summed_in_fp32_and_cast_once(base, tmp_path):
    folder, _ = base
    model = WanTransformer3D.from_pretrained(folder, dtype=torch.bfloat16)
    original = lf.official_weights(model)
    loras = [(lf.random_lora(model, 51, std=0.05), 0.9), (lf.random_lora(model, 52, std=0.05), 0.7)]
    paths = [lf.write_original(tmp_path / f"{i}.safetensors", c) for i, (c, _) in enumerate(loras)]
    apply_loras({"main": model}, [(p, s) for p, (_, s) in zip(paths, loras)], WAN_LORA_KEYS)
    exact = lf.expected_official({k: v.double() for k, v in original.items()}, loras)
    merged = lf.official_weights(model)
    key = "blocks.0.ffn.0.weight"
    assert merged[key].dtype == torch.bfloat16
    rounded_once = exact[key].to(torch.bfloat16)
    same = (merged[key] == rounded_once).float().mean().item()
    ulp = (merged[key].double() - rounded_once.double()).abs().max() / rounded_once.double().abs().max()
    print(f"bf16 merge: {same:.5f} of elements equal the float64 sum rounded once")
    # casting each LoRA's delta (or the running sum) to bf16 would leave ~10-40% of elements off by an ulp
    assert same >= 0.999 and ulp <= 2 ** -7, (same, ulp)


def test_a_lora_goes_to_the_expert_it_targets(base, tmp_path):
    folder, _ = base
    high, low = WanTransformer3D.from_pretrained(folder), WanTransformer3D.from_pretrained(folder)
    with torch.no_grad():
        for p in low.parameters():
            p.mul_(0.9)  # a different second expert, as in Wan 2.2 A14B
    hi0, lo0 = lf.official_weights(high), lf.official_weights(low)
    fh = lf.write_original(tmp_path / "high.safetensors", lf.random_lora(high, 61))
    fl = lf.write_original(tmp_path / "low.safetensors", lf.random_lora(high, 62))
    denoisers = {"high": high, "low": low}
    handle = apply_loras(denoisers, [LoraSpec.parse(f"{fh}:1.0:high"), LoraSpec.parse(f"{fl}:0.5:low")], WAN_LORA_KEYS)
    solo_high, solo_low = WanTransformer3D.from_pretrained(folder), WanTransformer3D.from_pretrained(folder)
    with torch.no_grad():
        for p in solo_low.parameters():
            p.mul_(0.9)
    apply_loras({"x": solo_high}, [(fh, 1.0)], WAN_LORA_KEYS)
    apply_loras({"x": solo_low}, [(fl, 0.5)], WAN_LORA_KEYS)
    for merged, solo in ((high, solo_high), (low, solo_low)):
        a, b = lf.official_weights(merged), lf.official_weights(solo)
        assert all(torch.equal(a[k], b[k]) for k in a)
    handle.remove()
    both = apply_loras(denoisers, [(fh, 1.0)], WAN_LORA_KEYS)  # target "both" by default
    assert not torch.equal(lf.official_weights(high)["head.head.weight"], hi0["head.head.weight"])
    assert not torch.equal(lf.official_weights(low)["head.head.weight"], lo0["head.head.weight"])
    both.remove()
    with pytest.raises(ValueError, match="target 'low' is not a denoiser of this model"):
        apply_loras({"main": solo_high}, [LoraSpec(fh, 1.0, "low")], WAN_LORA_KEYS)


# ---------------------------------------------------------------- errors


def _bigger_model() -> WanTransformer3D:
    cfg = WanTransformerConfig(dim=32, num_heads=4, num_layers=2, ffn_dim=32, text_dim=32, freq_dim=256,
                               in_channels=16, out_channels=16)
    return WanTransformer3D(cfg)


def _bad_files(model, tmp: Path) -> dict[str, tuple[Path, str]]:
    """name -> (file, what the message must name)."""
    good = lf.random_lora(model, 71, blocks_only=True)
    out = {}
    sd = {f"diffusion_model.{n}.lora_down.weight": m.down for n, m in good.modules.items()}
    sd |= {f"diffusion_model.{n}.lora_up.weight": m.up for n, m in good.modules.items()}
    save_file({**sd, "diffusion_model.blocks.0.self_attn.q.lora_mid.weight": torch.zeros(1)}, str(tmp / "mid.safetensors"))
    out["unsupported key"] = (tmp / "mid.safetensors", "diffusion_model.blocks.0.self_attn.q.lora_mid.weight")
    save_file({**sd, "diffusion_model.blocks.0.self_attn.q.weird": torch.zeros(1)}, str(tmp / "unknown.safetensors"))
    out["unknown key"] = (tmp / "unknown.safetensors", "unknown key 'diffusion_model.blocks.0.self_attn.q.weird'")
    save_file({**sd, "diffusion_model.blocks.7.ffn.0.lora_down.weight": torch.zeros(4, 24),
               "diffusion_model.blocks.7.ffn.0.lora_up.weight": torch.zeros(32, 4)}, str(tmp / "nomodule.safetensors"))
    out["no such module"] = (tmp / "nomodule.safetensors", "'diffusion_model.blocks.7.ffn.0.lora_down.weight' matches no module")
    other = lf.random_lora(_bigger_model(), 72, blocks_only=True)  # the same architecture at another size
    out["another model size"] = (lf.write_kohya(tmp / "big.safetensors", other), "lora_unet_blocks_0_cross_attn_k.lora_up.weight")
    save_file({k: v for k, v in sd.items() if "lora_up" not in k or "blocks.1.ffn.2" not in k}, str(tmp / "half.safetensors"))
    out["down without up"] = (tmp / "half.safetensors", "diffusion_model.blocks.1.ffn.2.lora_down.weight")
    mixed = {**sd, "transformer.blocks.0.attn1.to_q.lora_A.weight": torch.zeros(4, 24)}
    save_file(mixed, str(tmp / "mixed.safetensors"))
    out["mixed layouts"] = (tmp / "mixed.safetensors", "transformer.blocks.0.attn1.to_q.lora_A.weight")
    save_file({**sd, "diffusion_model.blocks.0.ffn.0.diff_b": torch.zeros(5)}, str(tmp / "diffb.safetensors"))
    out["bias shape"] = (tmp / "diffb.safetensors", "diffusion_model.blocks.0.ffn.0.diff_b")
    save_file({**sd, "diffusion_model.blocks.0.norm1.diff": torch.zeros(24)}, str(tmp / "norm1.safetensors"))
    out["module without weight"] = (tmp / "norm1.safetensors", "diffusion_model.blocks.0.norm1.diff")
    torch.save(sd, tmp / "pickle.pt")
    out["pickle"] = (tmp / "pickle.pt", "safetensors only")
    out["missing file"] = (tmp / "absent.safetensors", "does not exist")
    meta = dict(lf.peft_metadata(good, 4, 8.0), r=8)  # says rank 8, the tensors have rank 4
    out["metadata rank"] = (lf.write_peft(tmp / "badmeta", good, meta), "has rank 4 but the metadata says 8")
    return out


def test_bad_files_raise_naming_file_and_key_and_change_nothing(base, tmp_path):
    folder, _ = base
    model = WanTransformer3D.from_pretrained(folder)
    original = lf.official_weights(model)
    good = lf.write_original(tmp_path / "good.safetensors", lf.random_lora(model, 70))
    handle = LoraHandle({"main": model}, WAN_LORA_KEYS)
    for name, (path, needle) in _bad_files(model, tmp_path).items():
        with pytest.raises(ValueError) as info:
            handle.add([LoraSpec(good, 1.0), LoraSpec(path, 0.5)])  # a good one first: still nothing applied
        message = str(info.value)
        assert str(path) in message and needle in message, f"{name}: {message}"
        assert all(torch.equal(v, original[k]) for k, v in lf.official_weights(model).items()), name
        assert handle.specs == ()


def test_spec_parsing_and_digest(tmp_path):
    assert LoraSpec.parse("a.safetensors") == LoraSpec(Path("a.safetensors"), 1.0, "both")
    assert LoraSpec.parse("dir/a.safetensors:0.8") == LoraSpec(Path("dir/a.safetensors"), 0.8)
    assert LoraSpec.parse("a.safetensors:-1.5:low") == LoraSpec(Path("a.safetensors"), -1.5, "low")
    assert LoraSpec.parse("odd:name.safetensors:2") == LoraSpec(Path("odd:name.safetensors"), 2.0)
    assert LoraSpec.coerce(("a.safetensors", 0.5)) == LoraSpec(Path("a.safetensors"), 0.5)
    for bad in ("", "a.safetensors:1e", "a.safetensors:nan"):
        with pytest.raises(ValueError):
            LoraSpec.parse(bad)
    with pytest.raises(ValueError, match="strength must be finite"):
        LoraSpec("a.safetensors", float("inf"))
    d = lora_set_digest([("aa", 1.0, "both"), ("bb", 0.5, "high")])
    assert d == lora_set_digest([("bb", 0.5, "high"), ("aa", 1.0, "both")])
    assert d != lora_set_digest([("aa", 1.0, "both"), ("bb", 0.6, "high")])
    assert d != lora_set_digest([("aa", 1.0, "both"), ("bb", 0.5, "low")])
