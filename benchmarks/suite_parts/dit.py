"""One Wan DiT forward: vidpar's ``WanTransformer3D`` vs diffusers' ``WanTransformer3DModel`` with the same random
weights, eager and with the blocks compiled (``vidpar.compile``'s regional compile, applied to both the same way)."""

from __future__ import annotations

import importlib.util
import json
import tempfile
from pathlib import Path

import torch
from safetensors.torch import save_file

from vidpar.compile import CompileOptions, compile_regions
from vidpar.models.wan import WanTransformer3D, WanTransformerConfig
from vidpar.models.wan.transformer_loader import native_to_official_key, official_to_diffusers_key

from .common import Budget, rel_err, skipped, timed


def write_diffusers_folder(config: WanTransformerConfig, folder: Path, device: torch.device, seed: int = 0) -> None:
    """A random Wan DiT of ``config`` as a diffusers-layout folder (``config.json`` + one safetensors file, bf16),
    readable by both vidpar and diffusers (each applies its own precision policy when loading)."""
    torch.manual_seed(seed)
    with torch.device(device):
        model = WanTransformer3D(config)
    state = {official_to_diffusers_key(native_to_official_key(k)): v.detach().to(torch.bfloat16).cpu().contiguous()
             for k, v in model.state_dict().items()}
    del model
    save_file(state, str(folder / "diffusion_pytorch_model.safetensors"))
    c = config
    (folder / "config.json").write_text(json.dumps({
        "_class_name": "WanTransformer3DModel", "patch_size": list(c.patch_size), "num_attention_heads": c.num_heads,
        "attention_head_dim": c.head_dim, "in_channels": c.in_channels, "out_channels": c.out_channels,
        "text_dim": c.text_dim, "freq_dim": c.freq_dim, "ffn_dim": c.ffn_dim, "num_layers": c.num_layers,
        "cross_attn_norm": c.cross_attn_norm, "qk_norm": "rms_norm_across_heads", "eps": c.eps, "image_dim": None,
        "added_kv_proj_dim": None, "rope_max_seq_len": 1024,
    }))


def _load_diffusers(folder: Path, dtype: torch.dtype, device: torch.device):
    """diffusers' model from the folder with its own precision policy (``_keep_in_fp32_modules`` stay fp32, as its
    ``from_pretrained`` does), built directly so that ``accelerate`` is not needed."""
    from diffusers import WanTransformer3DModel
    from safetensors.torch import load_file

    config = {k: v for k, v in json.loads((folder / "config.json").read_text()).items() if not k.startswith("_")}
    with torch.device(device):  # random init on the GPU is fast; every weight is overwritten next
        model = WanTransformer3DModel(**config)
    info = model.load_state_dict(load_file(str(folder / "diffusion_pytorch_model.safetensors")), strict=False)
    if info.missing_keys or info.unexpected_keys:
        raise RuntimeError(f"diffusers did not load the same weights: {info}")
    keep = WanTransformer3DModel._keep_in_fp32_modules or []
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        fp32 = any(m in name.split(".") for m in keep) or not t.is_floating_point()
        t.data = t.data.to(device=device, dtype=t.dtype if fp32 and not t.is_floating_point() else
                           (torch.float32 if fp32 else dtype))
    return model.to(device).eval()


def dit_forward(config: WanTransformerConfig, grids: dict[str, tuple[int, int, int]], text_tokens: int,
                dtype: torch.dtype, device: torch.device, compile_backend: str, repeats: int, budget: Budget,
                with_diffusers: bool = True) -> dict:
    """Per grid (latent ``(F, H, W)``) and implementation: eager and compiled forward times, peak memory, the
    compile time (first compiled call minus an eager call) and the agreement of the outputs."""
    version, problem = _diffusers() if with_diffusers else (None, "diffusers comparison turned off")
    use_diffusers = version is not None
    out: dict = {"config": {"dim": config.dim, "heads": config.num_heads, "layers": config.num_layers,
                            "ffn": config.ffn_dim, "text_tokens": text_tokens},
                 "diffusers": version, "note": problem}
    rows, outputs = [], {}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_diffusers_folder(config, folder, device)
        impls = {"vidpar": WanTransformer3D.from_pretrained(folder, dtype=dtype, device=device)}
        if use_diffusers:
            impls["diffusers"] = _load_diffusers(folder, dtype, device)
    g = torch.Generator().manual_seed(1)
    inputs = {}
    for name, (f, h, w) in grids.items():
        latents = torch.randn(1, config.in_channels, f, h, w, generator=g).to(device, dtype)
        text = torch.randn(1, text_tokens, config.text_dim, generator=g).to(device, dtype)
        inputs[name] = (latents, torch.tensor([700.0], device=device), text)
    for impl, model in impls.items():
        call = _caller(impl, model)
        for mode in ("eager", "compiled"):
            if mode == "compiled":
                torch._dynamo.reset()
                compile_regions(model.blocks, CompileOptions(backend=compile_backend, dynamic=False))
            for grid, args in inputs.items():
                row = {"impl": impl, "mode": mode, "grid": grid, "tokens": _tokens(config, args[0])}
                if not budget.allows(60 if mode == "compiled" else 20):
                    rows.append({**row, **skipped("time budget")})
                    continue
                try:
                    with torch.no_grad():
                        result = timed(lambda: call(*args), device, repeats)
                        outputs[(impl, mode, grid)] = call(*args).float().cpu()
                except Exception as e:  # noqa: BLE001 - recorded, the suite goes on
                    rows.append({**row, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"})
                    continue
                rows.append({**row, **result})
        del model
        impls[impl] = None  # free this implementation's weights before the next one runs
        if device.type == "cuda":
            torch.cuda.empty_cache()
    for row in rows:
        key = (row["impl"], row["mode"], row["grid"])
        if key in outputs and ("vidpar", "eager", row["grid"]) in outputs:
            row["err_vs_vidpar_eager"] = rel_err(outputs[key], outputs[("vidpar", "eager", row["grid"])])
    _compile_times(rows)
    out["rows"] = rows
    return out


def _caller(impl: str, model):
    if impl == "vidpar":
        return lambda latents, t, text: model(latents, t, text)
    return lambda latents, t, text: model(hidden_states=latents, timestep=t, encoder_hidden_states=text,
                                          return_dict=False)[0]


def _tokens(config: WanTransformerConfig, latents: torch.Tensor) -> int:
    f, h, w = latents.shape[2:]
    pt, ph, pw = config.patch_size
    return (f // pt) * (h // ph) * (w // pw)


def _compile_times(rows: list[dict]) -> None:
    """``compile_s``: first compiled call minus the eager call's time (what compiling cost, roughly)."""
    eager = {(r["impl"], r["grid"]): r for r in rows if r["mode"] == "eager" and "median_ms" in r}
    for r in rows:
        e = eager.get((r["impl"], r["grid"]))
        if r["mode"] == "compiled" and "first_s" in r and e is not None:
            r["compile_s"] = round(r["first_s"] - e["median_ms"] * 1e-3, 2)


def _diffusers() -> tuple[str | None, str | None]:
    """``(version, None)`` if diffusers imports, else ``(None, why the comparison is skipped)``."""
    if importlib.util.find_spec("diffusers") is None:
        return None, "diffusers is not installed: vidpar only (it is pure Python: put it on PYTHONPATH to compare)"
    try:
        import diffusers
        from diffusers import WanTransformer3DModel  # noqa: F401
    except Exception as e:  # noqa: BLE001 - e.g. a missing dependency of diffusers on this machine
        return None, f"diffusers does not import here ({type(e).__name__}: {e}): vidpar only"
    return diffusers.__version__, None
