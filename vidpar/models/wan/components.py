"""Everything a Wan generation needs, from a built-in name or a checkpoint folder (diffusers or official layout).

diffusers layout (a ``Wan-AI/*-Diffusers`` folder): ``model_index.json``, ``transformer/`` (+ ``transformer_2/`` for
the Wan 2.2 A14B low-noise expert), ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``.
Official layout (a ``Wan-AI/Wan2.x-*`` folder): the DiT's ``config.json`` + safetensors at the top (or
``high_noise_model/`` + ``low_noise_model/`` for A14B), ``Wan2.1_VAE.pth`` or ``Wan2.2_VAE.pth``,
``models_t5_umt5-xxl-enc-bf16.pth`` and the tokenizer in ``google/umt5-xxl/``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .text_encoder import WanTextEncoder, load_tokenizer
from .transformer import WanTransformer3D
from .vae import WanVAE

BUILTIN_NAMES = ("tiny", "tiny-shapes")
# Built-in names backed by a checkpoint folder shipped inside the package (trained by examples/train_tiny.py).
PACKAGED_MODELS = {"tiny-shapes": Path(__file__).resolve().parents[2] / "assets" / "tiny-shapes"}
OFFICIAL_T5 = "models_t5_umt5-xxl-enc-bf16.pth"
OFFICIAL_TOKENIZER = "google/umt5-xxl"
# Official Wan 2.2 defaults (wan/configs/wan_*_A14B.py): expert boundary and sample shift.
OFFICIAL_A14B = {"t2v": (0.875, 12.0), "i2v": (0.900, 5.0)}


@dataclass
class WanComponents:
    """Loaded parts. ``text_encoder`` is None on ranks that do not run it (the tokenizer is everywhere)."""

    transformer: WanTransformer3D
    vae: WanVAE
    text_encoder: WanTextEncoder | None
    tokenizer: object
    transformer_2: WanTransformer3D | None = None  # low-noise expert (Wan 2.2 A14B)
    boundary_ratio: float | None = None  # expert switch at t < boundary * 1000
    flow_shift: float = 5.0
    name: str = ""

    @property
    def text_len(self) -> int:
        return self.transformer.config.text_len


def check_source(source: str | Path) -> Path | str:
    """Validate a built-in name or a checkpoint folder's files without loading weights (run on every rank)."""
    source = PACKAGED_MODELS.get(str(source), source)
    if str(source) in BUILTIN_NAMES:
        return str(source)
    path = Path(source)
    if not path.is_dir():
        raise ValueError(
            f"unknown model {str(source)!r}: not a built-in name ({', '.join(BUILTIN_NAMES)}) and not a folder"
        )
    if (path / "model_index.json").is_file():
        required = ["transformer/config.json", "vae/config.json", "text_encoder", "tokenizer"]
    else:
        dit = ["config.json"] if (path / "config.json").is_file() else ["high_noise_model", "low_noise_model"]
        required = dit + [OFFICIAL_T5, OFFICIAL_TOKENIZER]
        if not any((path / f).is_file() for f in ("Wan2.1_VAE.pth", "Wan2.2_VAE.pth")):
            required.append("Wan2.1_VAE.pth or Wan2.2_VAE.pth")
    missing = [r for r in required if not (path / r).exists()]
    if missing:
        raise ValueError(f"checkpoint folder {path} is missing: {', '.join(missing)}")
    return path


def load_components(
    source: str | Path,
    dtype: torch.dtype = torch.bfloat16,
    device: torch.device | str = "cpu",
    load_text_encoder: bool = True,
    attention_backend: str = "auto",
) -> WanComponents:
    """Load a built-in model or a checkpoint folder onto ``device``.

    Args:
        dtype: weights of the DiT(s) and text encoder; the VAE runs in fp32 on CPU (unless float64) and in
            ``dtype`` elsewhere.
        load_text_encoder: False on ranks that receive the text states by broadcast (saves its memory).
    """
    source = check_source(source)
    if source == "tiny":
        from .builtin import build_tiny

        dit, vae, te, tok = build_tiny(load_text_encoder=load_text_encoder, attention_backend=attention_backend)
        comps = WanComponents(dit, vae, te, tok, flow_shift=3.0, name="tiny")
    elif (source / "model_index.json").is_file():
        comps = _load_diffusers(source, dtype, load_text_encoder, attention_backend)
    else:
        comps = _load_official(source, dtype, load_text_encoder, attention_backend)
    # bf16/fp16 VAEs are slow or unsupported on CPU; float64 (exact-comparison runs) is kept everywhere.
    vae_dtype = torch.float32 if torch.device(device).type == "cpu" and dtype != torch.float64 else dtype
    comps.transformer.to(device=device, dtype=dtype)
    if comps.transformer_2 is not None:
        comps.transformer_2.to(device=device, dtype=dtype)
    comps.vae.to(device=device, dtype=vae_dtype)
    if comps.text_encoder is not None:
        comps.text_encoder.model.to(device=device, dtype=dtype)
    return comps


def _load_diffusers(path: Path, dtype, load_text_encoder: bool, backend: str) -> WanComponents:
    index = json.loads((path / "model_index.json").read_text())
    dit = WanTransformer3D.from_pretrained(path / "transformer", dtype=dtype, attention_backend=backend)
    dit_2 = None
    if (path / "transformer_2").is_dir() and index.get("transformer_2", [None])[0] is not None:
        dit_2 = WanTransformer3D.from_pretrained(path / "transformer_2", dtype=dtype, attention_backend=backend)
    sched_file = path / "scheduler" / "scheduler_config.json"
    shift = json.loads(sched_file.read_text()).get("flow_shift", 5.0) if sched_file.is_file() else 5.0
    te = WanTextEncoder.from_pretrained(path, dtype=dtype) if load_text_encoder else None
    return WanComponents(
        dit, WanVAE.from_pretrained(path / "vae"), te, load_tokenizer(path / "tokenizer"),
        transformer_2=dit_2, boundary_ratio=index.get("boundary_ratio"), flow_shift=float(shift), name=str(path),
    )


def _load_official(path: Path, dtype, load_text_encoder: bool, backend: str) -> WanComponents:
    boundary, shift, dit_2 = None, 5.0, None
    if (path / "config.json").is_file():
        dit = WanTransformer3D.from_pretrained(path, dtype=dtype, attention_backend=backend)
    else:
        dit = WanTransformer3D.from_pretrained(path / "high_noise_model", dtype=dtype, attention_backend=backend)
        dit_2 = WanTransformer3D.from_pretrained(path / "low_noise_model", dtype=dtype, attention_backend=backend)
        boundary, shift = OFFICIAL_A14B.get(dit.config.model_type, OFFICIAL_A14B["t2v"])
    vae_file = next(path / f for f in ("Wan2.2_VAE.pth", "Wan2.1_VAE.pth") if (path / f).is_file())
    te = None
    if load_text_encoder:
        te = WanTextEncoder.from_official(path / OFFICIAL_T5, path / OFFICIAL_TOKENIZER, dtype=dtype)
    return WanComponents(
        dit, WanVAE.from_pretrained(vae_file), te, load_tokenizer(path / OFFICIAL_TOKENIZER),
        transformer_2=dit_2, boundary_ratio=boundary, flow_shift=shift, name=str(path),
    )
