"""Tiny random LoRA files in every layout, and a float64 merge written independently of vidpar (tests only).

A ``LoraContent`` holds one LoRA in the official Wan module naming (``blocks.0.self_attn.q``); the writers put
the same content into each file layout. Names are converted with the checkpoint key converters of
``transformer_loader`` (which ``test_wan_transformer`` checks against diffusers' own conversion), never with
``vidpar.lora``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import save_file

from vidpar.models.wan.transformer_loader import official_to_diffusers_key

BLOCK_LINEARS = ("self_attn.q", "self_attn.k", "self_attn.v", "self_attn.o",
                 "cross_attn.q", "cross_attn.k", "cross_attn.v", "cross_attn.o", "ffn.0", "ffn.2")
TOP_LINEARS = ("text_embedding.0", "text_embedding.2", "time_embedding.0", "time_embedding.2",
               "time_projection.1", "head.head")


@dataclass
class ModuleLora:
    down: torch.Tensor | None = None  # [r, in, *kernel]
    up: torch.Tensor | None = None  # [out, r, *ones]
    alpha: float | None = None
    diff: torch.Tensor | None = None
    diff_b: torch.Tensor | None = None


@dataclass
class LoraContent:
    modules: dict[str, ModuleLora] = field(default_factory=dict)  # official module name -> what it holds


def official_weights(model) -> dict[str, torch.Tensor]:
    from vidpar.models.wan import native_state_dict_to_official

    return {k: v.detach().clone() for k, v in native_state_dict_to_official(model).items()}


def random_lora(model, seed: int, rank: int = 4, alpha: float | None = 8.0, blocks_only: bool = False,
                rank_of: dict[str, int] | None = None, alpha_of: dict[str, float] | None = None,
                bias_diffs: bool = False, extras: bool = False, std: float = 0.1) -> LoraContent:
    """A random LoRA on every linear layer of the Wan ``model`` (official names).

    ``rank_of`` / ``alpha_of``: per-module overrides. ``bias_diffs``: ``diff_b`` on every block linear.
    ``extras``: what diffusers does not read: ``diff`` on norms, a linear weight and modulation tables, and a
    LoRA on the patch-embedding Conv3d."""
    g = torch.Generator().manual_seed(seed)
    weights = official_weights(model)
    names = [f"blocks.{i}.{n}" for i in range(model.config.num_layers) for n in BLOCK_LINEARS]
    if not blocks_only:
        names += list(TOP_LINEARS)
    content = LoraContent()
    for name in names:
        w = weights[f"{name}.weight"]
        r = (rank_of or {}).get(name, rank)
        a = (alpha_of or {}).get(name, alpha)
        m = ModuleLora(torch.randn(r, w.shape[1], generator=g) * std, torch.randn(w.shape[0], r, generator=g) * std, a)
        if bias_diffs and name.startswith("blocks."):
            m.diff_b = torch.randn(w.shape[0], generator=g) * std
        content.modules[name] = m
    if extras:
        for i in range(model.config.num_layers):
            for norm in ("norm3", "self_attn.norm_q", "cross_attn.norm_k"):
                w = weights[f"blocks.{i}.{norm}.weight"]
                m = content.modules.setdefault(f"blocks.{i}.{norm}", ModuleLora())
                m.diff = torch.randn(w.shape, generator=g) * std
                if f"blocks.{i}.{norm}.bias" in weights:
                    m.diff_b = torch.randn(w.shape, generator=g) * std
            content.modules[f"blocks.{i}.modulation"] = ModuleLora(
                diff=torch.randn(weights[f"blocks.{i}.modulation"].shape, generator=g) * std)
        content.modules["blocks.0.ffn.2"].diff = torch.randn(weights["blocks.0.ffn.2.weight"].shape, generator=g) * std
        content.modules["head.modulation"] = ModuleLora(diff=torch.randn(weights["head.modulation"].shape, generator=g))
        pw = weights["patch_embedding.weight"]  # [dim, C, kt, kh, kw]
        content.modules["patch_embedding"] = ModuleLora(
            torch.randn(rank, *pw.shape[1:], generator=g) * std,
            torch.randn(pw.shape[0], rank, 1, 1, 1, generator=g) * std, alpha, diff_b=torch.randn(pw.shape[0], generator=g))
    return content


def expected_official(weights: dict[str, torch.Tensor], loras: list[tuple[LoraContent, float]]) -> dict:
    """The merged official state dict, computed in float64 and cast to each weight's dtype."""
    out = {k: v.double().clone() for k, v in weights.items()}
    for content, strength in loras:
        for name, m in content.modules.items():
            wkey = f"{name}.weight" if f"{name}.weight" in out else name
            if m.down is not None:
                r = m.down.shape[0]
                scale = strength * ((m.alpha if m.alpha is not None else r) / r)
                out[wkey] += scale * (m.up.double().flatten(1) @ m.down.double().flatten(1)).reshape(out[wkey].shape)
            if m.diff is not None:
                out[wkey] += strength * m.diff.double()
            if m.diff_b is not None:
                out[f"{name}.bias"] += strength * m.diff_b.double()
    return {k: v.to(weights[k].dtype) for k, v in out.items()}


def write_original(path: Path, content: LoraContent, style: str = "lora_down", prefix: str = "diffusion_model.",
                   alpha_dtype=torch.float32) -> Path:
    """The official/ComfyUI layout: ``diffusion_model.<name>.lora_down.weight`` (or ``lora_A``), ``.alpha``,
    ``.diff``, ``.diff_b``."""
    down, up = ("lora_down", "lora_up") if style == "lora_down" else ("lora_A", "lora_B")
    sd = {}
    for name, m in content.modules.items():
        key = prefix + name
        if m.down is not None:
            sd[f"{key}.{down}.weight"] = m.down
            sd[f"{key}.{up}.weight"] = m.up
            if m.alpha is not None:
                sd[f"{key}.alpha"] = torch.tensor(m.alpha, dtype=alpha_dtype)
        if m.diff is not None:
            sd[f"{key}.diff"] = m.diff
        if m.diff_b is not None:
            sd[f"{key}.diff_b"] = m.diff_b
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


def write_kohya(path: Path, content: LoraContent) -> Path:
    """kohya / musubi-tuner: ``lora_unet_<name with _>.lora_down.weight``, ``.lora_up.weight``, ``.alpha``."""
    sd = {}
    for name, m in content.modules.items():
        key = "lora_unet_" + name.replace(".", "_")
        if m.down is not None:
            sd[f"{key}.lora_down.weight"] = m.down
            sd[f"{key}.lora_up.weight"] = m.up
            if m.alpha is not None:
                sd[f"{key}.alpha"] = torch.tensor(m.alpha)
        if m.diff is not None:
            sd[f"{key}.diff"] = m.diff
        if m.diff_b is not None:
            sd[f"{key}.diff_b"] = m.diff_b
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return path


def diffusers_name(official: str) -> str:
    return official_to_diffusers_key(official + ".weight").removesuffix(".weight")


def write_peft(folder: Path, content: LoraContent, metadata: dict | None, up_bias: bool = False) -> Path:
    """The diffusers/PEFT layout, written by diffusers' own ``WanPipeline.save_lora_weights``; ``metadata`` is the
    LoraConfig it stores in the safetensors header (None: no header, alpha = rank). ``up_bias`` writes each
    ``diff_b`` as PEFT's ``lora_B.bias`` (scaled by alpha / rank like the rest of the branch)."""
    from diffusers import WanPipeline

    layers = {}
    for name, m in content.modules.items():
        d = diffusers_name(name)
        if m.down is not None:
            layers[f"{d}.lora_A.weight"] = m.down.contiguous()
            layers[f"{d}.lora_B.weight"] = m.up.contiguous()
            if up_bias and m.diff_b is not None:
                layers[f"{d}.lora_B.bias"] = m.diff_b.contiguous()
    folder.mkdir(parents=True, exist_ok=True)
    WanPipeline.save_lora_weights(folder, transformer_lora_layers=layers, transformer_lora_adapter_metadata=metadata)
    return folder / "pytorch_lora_weights.safetensors"


def peft_metadata(content: LoraContent, rank: int, alpha: float, **extra) -> dict:
    """A LoraConfig dict as diffusers stores it: rank/alpha patterns for modules that differ (PEFT regexes)."""
    targets = sorted(diffusers_name(n) for n, m in content.modules.items() if m.down is not None)
    rank_pattern, alpha_pattern = {}, {}
    for name, m in content.modules.items():
        if m.down is None:
            continue
        if m.down.shape[0] != rank:
            rank_pattern[diffusers_name(name)] = int(m.down.shape[0])
        if m.alpha != alpha:
            alpha_pattern[diffusers_name(name)] = m.alpha
    return dict(r=rank, lora_alpha=alpha, target_modules=targets, rank_pattern=rank_pattern,
                alpha_pattern=alpha_pattern, **extra)


def max_rel_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max |out - ref| / max |ref|, in fp64 (as ``wan_reference.max_rel_error``, without importing diffusers)."""
    return ((out.double() - ref.double()).abs().max() / ref.double().abs().max()).item()


def dump_keys(path: Path) -> list[str]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:
        return sorted(fh.keys())


TINY = dict(num_attention_heads=3, attention_head_dim=8)  # dim 24, 3 heads: uneven on 2 and 4 ranks


def inputs(seed: int = 5) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(latents [1, 16, 3, 6, 10] = 45 tokens, timestep [1], text states [1, 7, 32]) for the tiny DiT."""
    g = torch.Generator().manual_seed(seed)
    return torch.randn(1, 16, 3, 6, 10, generator=g), torch.tensor([500.0]), torch.randn(1, 7, 32, generator=g)


def diffusers_with_loras(folder: Path, files: list[tuple[Path, float]]):
    """diffusers' WanTransformer3DModel with the LoRAs loaded by ``WanPipeline.load_lora_weights`` (PEFT layers,
    not fused) at the given strengths."""
    from diffusers import WanPipeline, WanTransformer3DModel

    ref = WanTransformer3DModel.from_pretrained(folder).float().eval()
    pipe = WanPipeline(tokenizer=None, text_encoder=None, vae=None, scheduler=None, transformer=ref)
    names = [f"l{i}" for i in range(len(files))]
    for (path, _), name in zip(files, names):
        # low_cpu_mem_usage=False: modules a file leaves out keep PEFT's zero init instead of meta tensors
        pipe.load_lora_weights(str(path), adapter_name=name, low_cpu_mem_usage=False)
    pipe.set_adapters(names, [s for _, s in files])
    return ref


def diffusers_readable_files(model, tmp: Path) -> dict[str, tuple[Path, object]]:
    """One file per layout diffusers reads, each a different random LoRA: name -> (path, content)."""
    files = {}
    # diffusers' own save_lora_weights, alpha and rank in the metadata header, with patterns and lora_B.bias
    c = random_lora(model, 1, rank=4, alpha=8.0, rank_of={"blocks.0.ffn.0": 2, "head.head": 3},
                    alpha_of={"blocks.1.self_attn.q": 1.0, "blocks.0.ffn.0": 6.0}, bias_diffs=True)
    meta = peft_metadata(c, 4, 8.0, lora_bias=True)
    files["peft_metadata"] = (write_peft(tmp / "peft_metadata", c, meta, up_bias=True), c)
    c = random_lora(model, 2, alpha=None)  # no header: alpha = rank
    files["peft_plain"] = (write_peft(tmp / "peft_plain", c, None), c)
    c = random_lora(model, 3, alpha=2.0, bias_diffs=True)
    for name in TOP_LINEARS:  # diffusers reads alphas of block modules only in this layout
        c.modules[name].alpha = None
    files["original_down_up"] = (write_original(tmp / "original.safetensors", c), c)
    c = random_lora(model, 4, alpha=16.0, blocks_only=True)
    files["original_A_B"] = (write_original(tmp / "original_ab.safetensors", c, style="lora_A"), c)
    c = random_lora(model, 5, alpha=12.0, blocks_only=True)  # musubi-tuner: every block linear, with alphas
    files["kohya"] = (write_kohya(tmp / "kohya.safetensors", c), c)
    c = random_lora(model, 6, rank=4, alpha=6.0, rank_of={"blocks.1.ffn.0": 2})  # rank-stabilised: alpha/sqrt(r)
    files["peft_rslora"] = (write_peft(tmp / "peft_rslora", c, peft_metadata(c, 4, 6.0, use_rslora=True)), c)
    return files


__all__ = ["LoraContent", "ModuleLora", "dump_keys", "expected_official", "official_weights",
           "peft_metadata", "random_lora", "write_kohya", "write_original", "write_peft", "TINY",
           "diffusers_readable_files", "diffusers_with_loras", "inputs", "max_rel_error"]
