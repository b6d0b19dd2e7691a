"""LoRA merging on gloo meshes: the merged, sequence-parallel forward equals diffusers + PEFT on 2 and 4 ranks (3
heads: uneven over 2 and 4); FSDP merges (before sharding, after sharding, after a forward) give the unsharded
merge's weights bit for bit; a bad or differing file on one rank makes every rank raise, with nothing changed."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import lora_files as lf
import vidpar
from vidpar.lora import LoraSpec, apply_loras
from vidpar.models.wan import WanTransformer3D
from vidpar.models.wan.lora_keys import WAN_LORA_KEYS
from vidpar.parallel import ParallelConfig
from vidpar.parallel.fsdp import full_state_dict, shard_weights
from lora_files import TINY, diffusers_readable_files, diffusers_with_loras, inputs, max_rel_error

TOL_FP32 = 1e-5
MESHES = [(2, (2, 1, 1)), (2, (1, 2, 1)), (4, (4, 1, 1)), (4, (2, 2, 1))]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(base folder, [(file, strength)] in three layouts, diffusers' output with them loaded)."""
    from wan_reference import diffusers_wan_forward, make_tiny_diffusers_wan  # diffusers: not in the workers

    tmp = tmp_path_factory.mktemp("lora_parallel")
    folder = tmp / "transformer"
    make_tiny_diffusers_wan(TINY, seed=12).save_pretrained(folder)
    files = diffusers_readable_files(WanTransformer3D.from_pretrained(folder), tmp)
    chosen = [(files["peft_metadata"][0], 0.7), (files["original_down_up"][0], -0.5), (files["kohya"][0], 1.2)]
    expected = diffusers_wan_forward(diffusers_with_loras(folder, chosen), *inputs())
    return folder, chosen, expected


@torch.no_grad()
def merged_forward_task(env, degrees, folder, chosen):
    ctx = env.context(ParallelConfig(*degrees))
    model = WanTransformer3D.from_pretrained(folder)
    vidpar.parallelize(model, ctx)
    apply_loras({"main": model}, [LoraSpec(p, s) for p, s in chosen], WAN_LORA_KEYS, ctx)
    return model(*inputs())


@pytest.mark.parametrize("world,degrees", MESHES, ids=[str(m[1]) for m in MESHES])
def test_merged_parallel_forward_matches_diffusers(pools, setup, world, degrees):
    folder, chosen, expected = setup
    for rank, out in enumerate(pools(world).run(merged_forward_task, degrees, folder, chosen)):
        err = max_rel_error(out, expected)
        assert err <= TOL_FP32, f"{degrees} rank {rank}: {err:.2e}"


def _equal_state(a: dict, b: dict) -> list[str]:
    """Keys whose tensors differ (bitwise)."""
    return [k for k in b if not torch.equal(a[k], b[k])]


@torch.no_grad()
def fsdp_task(env, degrees, folder, chosen):
    ctx = env.context(ParallelConfig(*degrees))
    x = inputs()
    first, rest = [LoraSpec(*chosen[0])], [LoraSpec(p, s) for p, s in chosen[1:]]

    plain = WanTransformer3D.from_pretrained(folder)
    original = {k: v.clone() for k, v in plain.state_dict().items()}
    vidpar.parallelize(plain, ctx)
    base_out = plain(*x)
    unmerged = WanTransformer3D.from_pretrained(folder)
    vidpar.parallelize(unmerged, ctx)
    shard_weights(unmerged, list(unmerged.blocks), ctx)
    fsdp_itself = max_rel_error(unmerged(*x), base_out)  # FSDP's own rounding, without any LoRA
    apply_loras({"main": plain}, first + rest, WAN_LORA_KEYS, ctx)
    want, want_out = plain.state_dict(), plain(*x)

    # merged on the full weights, then sharded
    before = WanTransformer3D.from_pretrained(folder)
    vidpar.parallelize(before, ctx)
    h_before = apply_loras({"main": before}, first + rest, WAN_LORA_KEYS, ctx)
    shard_weights(before, list(before.blocks), ctx)
    out_before = before(*x)
    report = {"before_weights": _equal_state(full_state_dict(before), want),
              "before_out": max_rel_error(out_before, want_out), "fsdp_itself": fsdp_itself}

    # sharded first, one forward, then merged in two steps (shard-local)
    after = WanTransformer3D.from_pretrained(folder)
    vidpar.parallelize(after, ctx)
    shard_weights(after, list(after.blocks), ctx)
    after(*x)
    h_after = apply_loras({"main": after}, first, WAN_LORA_KEYS, ctx)
    h_after.add(rest)
    report["after_sharded"] = {type(p).__name__ for p in after.parameters()} == {"DTensor"}
    out_after = after(*x)
    report["after_weights"] = _equal_state(full_state_dict(after), want)
    report["after_out"] = max_rel_error(out_after, want_out)
    report["kept_fraction"] = h_after.kept_bytes() / h_before.kept_bytes()

    h_after.remove()
    h_before.remove()  # originals saved unsharded, restored into shards
    report["after_restored"] = _equal_state(full_state_dict(after), original)
    report["before_restored"] = _equal_state(full_state_dict(before), original)
    return report


@pytest.mark.parametrize("degrees", [(2, 1, 1), (1, 2, 1)])
def test_fsdp_merge_equals_unsharded_merge(pools, setup, degrees):
    folder, chosen, _ = setup
    for rank, r in enumerate(pools(2).run(fsdp_task, degrees, folder, chosen)):
        assert r["after_sharded"], rank
        assert r["before_weights"] == [] and r["after_weights"] == [], (rank, r)
        # FSDP's forward on gathered weights rounds a few fp32 ulps differently from the plain one even without
        # LoRAs (``fsdp_itself``); with bit-identical weights the merged outputs differ by no more than that
        print(f"rank {rank}: FSDP vs plain forward, no LoRA {r['fsdp_itself']:.1e}, merged before sharding "
              f"{r['before_out']:.1e}, after {r['after_out']:.1e}")
        assert max(r["before_out"], r["after_out"]) <= max(4 * r["fsdp_itself"], 1e-6), (rank, r)
        assert r["after_restored"] == [] and r["before_restored"] == [], (rank, r)
        # shard-local originals: about half of the unsharded ones on 2 ranks
        assert 0.4 < r["kept_fraction"] < 0.6, r["kept_fraction"]


class _IdentityKeys:
    """A LoraKeyMap for a plain torch module whose file names are its own module paths."""

    namings = ("original",)

    def to_native(self, name: str, naming: str) -> str:
        return name

    def from_native(self, native: str, naming: str) -> str:
        return native


def _toy_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Sequential(torch.nn.Linear(5, 3)), torch.nn.Linear(3, 2))


@torch.no_grad()
def toy_fsdp_task(env, file):
    """Not Wan: any module. Trainable weights make FSDP keep the root's weights gathered after a forward; the
    merge must write the shards (which the next forward gathers), not those gathered copies."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import DeviceMesh
    from torch.distributed.fsdp import fully_shard

    ctx = env.context(ParallelConfig(2, 1, 1))
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    plain = _toy_model()
    apply_loras({"main": plain}, [LoraSpec(file, 0.5)], _IdentityKeys(), ctx)
    model = _toy_model()
    mesh = DeviceMesh.from_group(dist.group.WORLD, "cpu")
    fully_shard(model[1], mesh=mesh)
    fully_shard(model, mesh=mesh)
    model(x)
    gathered = type(model[0].weight).__name__ != "DTensor"
    handle = apply_loras({"main": model}, [LoraSpec(file, 0.5)], _IdentityKeys(), ctx)
    out, want = model(x), plain(x)
    weights = _equal_state(full_state_dict(model), plain.state_dict())
    handle.remove()
    restored = _equal_state(full_state_dict(model), _toy_model().state_dict())
    return gathered, weights, max_rel_error(out, want), restored


def test_fsdp_merge_writes_the_shards_of_any_module(pools, tmp_path):
    g = torch.Generator().manual_seed(3)
    sd = {}
    for name, (out_f, in_f) in {"0": (5, 4), "1.0": (3, 5), "2": (2, 3)}.items():
        sd[f"diffusion_model.{name}.lora_down.weight"] = torch.randn(2, in_f, generator=g)
        sd[f"diffusion_model.{name}.lora_up.weight"] = torch.randn(out_f, 2, generator=g)
        sd[f"diffusion_model.{name}.diff_b"] = torch.randn(out_f, generator=g)
    from safetensors.torch import save_file

    save_file(sd, str(tmp_path / "toy.safetensors"))
    for gathered, weights, err, restored in pools(2).run(toy_fsdp_task, tmp_path / "toy.safetensors"):
        assert gathered, "premise: FSDP kept the root's weights gathered after the forward"
        assert weights == [] and restored == [], (weights, restored)
        assert err <= 1e-6, err


def one_rank_differs_task(env, folder, per_rank_files):
    ctx = env.context(ParallelConfig(2, 1, 1))
    model = WanTransformer3D.from_pretrained(folder)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        apply_loras({"main": model}, [LoraSpec(per_rank_files[ctx.rank], 1.0)], WAN_LORA_KEYS, ctx)
        outcome = None
    except Exception as e:  # noqa: BLE001 - the outcome is the test's subject
        outcome = (type(e).__name__, str(e))
    return outcome, _equal_state(model.state_dict(), original)


def test_bad_or_different_file_on_one_rank_raises_everywhere(pools, setup, tmp_path):
    folder, chosen, _ = setup
    good = chosen[1][0]
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"not a safetensors file")
    (r0, same0), (r1, same1) = pools(2).run(one_rank_differs_task, folder, [good, bad])
    assert r1[0] == "ValueError" and str(bad) in r1[1], r1
    assert r0[0] == "RuntimeError" and "rank(s) [1]" in r0[1], r0
    assert same0 == [] and same1 == []
    other = lf.write_original(tmp_path / "other.safetensors",
                              lf.random_lora(WanTransformer3D.from_pretrained(folder), 99))
    (r0, same0), (r1, same1) = pools(2).run(one_rank_differs_task, folder, [good, Path(other)])
    assert r0[0] == r1[0] == "ValueError" and "rank(s) [1] computed something different" in r0[1], (r0, r1)
    assert same0 == [] and same1 == []


def merge_fails_on_one_rank_task(env, folder, file):
    ctx = env.context(ParallelConfig(1, 2, 1))
    if ctx.rank == 1:  # weights that cannot be written outside inference mode: the merge fails on this rank only
        with torch.inference_mode():
            model = WanTransformer3D.from_pretrained(folder)
    else:
        model = WanTransformer3D.from_pretrained(folder)
    original = {k: v.clone() for k, v in model.state_dict().items()}
    try:
        apply_loras({"main": model}, [LoraSpec(file, 1.0)], WAN_LORA_KEYS, ctx)
        outcome = None
    except Exception as e:  # noqa: BLE001 - the outcome is the test's subject
        outcome = (type(e).__name__, str(e))
    return outcome, _equal_state(model.state_dict(), original)


def test_a_merge_that_fails_on_one_rank_is_undone_on_every_rank(pools, setup):
    folder, chosen, _ = setup
    (r0, same0), (r1, same1) = pools(2).run(merge_fails_on_one_rank_task, folder, chosen[1][0])
    assert r0 is not None and r0[0] == "RuntimeError" and "merging LoRAs failed on rank(s) [1]" in r0[1], r0
    assert r1 is not None and "inference" in r1[1].lower(), r1
    assert same0 == [] and same1 == [], (same0[:3], same1[:3])
