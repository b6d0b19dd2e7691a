"""Everything a Wan generation needs, from a built-in name or a checkpoint folder (diffusers or official layout).

diffusers layout (a ``Wan-AI/*-Diffusers`` folder): ``model_index.json``, ``transformer/`` (+ ``transformer_2/`` for
the Wan 2.2 A14B low-noise expert), ``vae/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/``.
Official layout (a ``Wan-AI/Wan2.x-*`` folder): the DiT's ``config.json`` + safetensors at the top (or
``high_noise_model/`` + ``low_noise_model/`` for A14B), ``Wan2.1_VAE.pth`` or ``Wan2.2_VAE.pth``,
``models_t5_umt5-xxl-enc-bf16.pth`` and the tokenizer in ``google/umt5-xxl/``.

Image-to-video: a diffusers Wan 2.1 I2V folder adds ``image_encoder/`` (``CLIPVisionModel``) and
``image_processor/`` (``CLIPImageProcessor``); Wan 2.2 I2V A14B needs neither; Wan 2.2 TI2V-5B is marked by
``expand_timesteps: true`` in ``model_index.json`` (official: ``model_type: "ti2v"``). The official Wan 2.1 I2V
CLIP file (``models_clip_open-clip-xlm-roberta-large-vit-huge-14.pth``) is not supported: such a folder loads, but
image-to-video with it raises ``ValueError`` (convert it to the diffusers layout).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from vidpar.models.family import ModelDefaults

from .card import folder_defaults, image_kind
from .image_conditioning import WanImageEncoder, clip_num_tokens
from .runtime import OFFICIAL_CLIP, WanRuntime
from .text_encoder import WanTextEncoder, load_tokenizer
from .transformer import WanTransformer3D
from .vae import WanVAE
from .weight_files import check_weight_files

BUILTIN_NAMES = ("tiny", "tiny-shapes")
# Built-in names backed by a checkpoint folder shipped inside the package (trained by examples/train_tiny.py).
PACKAGED_MODELS = {"tiny-shapes": Path(__file__).resolve().parents[2] / "assets" / "tiny-shapes"}
OFFICIAL_T5 = "models_t5_umt5-xxl-enc-bf16.pth"
OFFICIAL_TOKENIZER = "google/umt5-xxl"
# Official Wan 2.2 defaults (wan/configs/wan_*_A14B.py): expert boundary and sample shift.
OFFICIAL_A14B = {"t2v": (0.875, 12.0), "i2v": (0.900, 5.0)}


@dataclass
class WanComponents(WanRuntime):
    """Loaded parts, and (through ``WanRuntime``) the family seam's ``LoadedModel``. ``text_encoder`` and
    ``image_encoder`` are None on ranks that do not run them (the tokenizer and ``image_tokens``, the CLIP state
    count, are everywhere). ``scheduler``/``flow_shift`` are the checkpoint's sampler, ``defaults`` its generation
    defaults (None: diffusers' pipeline defaults, or the ``tiny`` test clip)."""

    transformer: WanTransformer3D
    vae: WanVAE
    text_encoder: WanTextEncoder | None
    tokenizer: object
    transformer_2: WanTransformer3D | None = None  # low-noise expert (Wan 2.2 A14B)
    boundary_ratio: float | None = None  # expert switch at t < boundary * 1000
    flow_shift: float = 5.0
    name: str = ""
    image_encoder: WanImageEncoder | None = None  # CLIP (Wan 2.1 I2V), on the ranks that run it
    image_tokens: int | None = None  # its states' token count, known on every rank; None: no image encoder
    expand_timesteps: bool = False  # Wan 2.2 TI2V-5B: the image latent replaces the first latent frame
    scheduler: str = "unipc"
    defaults: ModelDefaults | None = None
    text_encoder_params: float | None = None  # the checkpoint's text encoder size (None: umT5-XXL), every rank

    @property
    def text_len(self) -> int:
        return self.transformer.config.text_len

    @property
    def image_mode(self) -> str:
        """``"i2v"`` (36-channel input: noise + mask + image latent), ``"ti2v"`` (image optional, replaces the first
        latent frame) or ``"t2v"`` (no image). Raises ``ValueError`` for a channel count that fits none."""
        kind = image_kind(self.transformer.config, self.vae.config, self.expand_timesteps)
        return {"none": "t2v", "required": "i2v", "optional": "ti2v"}[kind]


def display_name(source: str | Path) -> str:
    """A checked source's name: a built-in name (also for the packaged folders) or the folder path."""
    return next((n for n, p in PACKAGED_MODELS.items() if p == source), str(source))


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
    load_image_encoder: bool | None = None,
) -> WanComponents:
    """Load a built-in model or a checkpoint folder onto ``device``.

    Args:
        dtype: weights of the DiT(s) and text encoder; the VAE runs in fp32 on CPU (unless float64) and in
            ``dtype`` elsewhere.
        load_text_encoder: False on ranks that receive the text states by broadcast (saves its memory).
        load_image_encoder: the same for the CLIP image encoder (Wan 2.1 I2V); None: as ``load_text_encoder``.
    """
    if load_image_encoder is None:
        load_image_encoder = load_text_encoder
    source = check_source(source)
    text_encoder_params = check_weight_files(source)  # a truncated file is named before any tensor is read
    if source == "tiny":
        from .builtin import build_tiny

        dit, vae, te, tok = build_tiny(load_text_encoder=load_text_encoder, attention_backend=attention_backend)
        comps = WanComponents(dit, vae, te, tok, flow_shift=3.0, name="tiny")  # defaults: the tiny test clip
    elif (source / "model_index.json").is_file():
        comps = _load_diffusers(source, dtype, load_text_encoder, attention_backend, load_image_encoder)
    else:
        comps = _load_official(source, dtype, load_text_encoder, attention_backend)
    comps.name = display_name(source)
    comps.text_encoder_params = text_encoder_params
    # bf16/fp16 VAEs are slow or unsupported on CPU; float64 (exact-comparison runs) is kept everywhere.
    vae_dtype = torch.float32 if torch.device(device).type == "cpu" and dtype != torch.float64 else dtype
    comps.transformer.to(device=device, dtype=dtype)
    if comps.transformer_2 is not None:
        comps.transformer_2.to(device=device, dtype=dtype)
    comps.vae.to(device=device, dtype=vae_dtype)
    if comps.text_encoder is not None:
        comps.text_encoder.model.to(device=device, dtype=dtype)
    if comps.image_encoder is not None:
        comps.image_encoder.model.to(device=device, dtype=dtype)
    return comps


def _load_image_encoder(path: Path, index: dict, dtype, load: bool, image_dim: int | None):
    """``(encoder or None, token count or None)`` of a diffusers folder's CLIP; checks it fits the DiT."""
    if index.get("image_encoder", [None])[0] is None or not (path / "image_encoder").is_dir():
        return None, None
    from transformers import CLIPVisionConfig

    config = CLIPVisionConfig.from_pretrained(path / "image_encoder")
    if image_dim is not None and config.hidden_size != image_dim:
        raise ValueError(f"image_encoder width {config.hidden_size} does not match the DiT's image_dim {image_dim}")
    encoder = WanImageEncoder.from_pretrained(path, dtype=dtype) if load else None
    return encoder, clip_num_tokens(config)


def _load_diffusers(
    path: Path, dtype, load_text_encoder: bool, backend: str, load_image_encoder: bool = False
) -> WanComponents:
    index = json.loads((path / "model_index.json").read_text())
    dit = WanTransformer3D.from_pretrained(path / "transformer", dtype=dtype, attention_backend=backend)
    dit_2 = None
    if (path / "transformer_2").is_dir() and index.get("transformer_2", [None])[0] is not None:
        dit_2 = WanTransformer3D.from_pretrained(path / "transformer_2", dtype=dtype, attention_backend=backend)
    defaults, sampler = folder_defaults(path, dit.config, 2 if dit_2 is not None else 1)
    te = WanTextEncoder.from_pretrained(path, dtype=dtype) if load_text_encoder else None
    image_encoder, image_tokens = None, None
    if dit.config.image_dim is not None:
        image_encoder, image_tokens = _load_image_encoder(path, index, dtype, load_image_encoder, dit.config.image_dim)
    return WanComponents(
        dit, WanVAE.from_pretrained(path / "vae"), te, load_tokenizer(path / "tokenizer"),
        transformer_2=dit_2, boundary_ratio=index.get("boundary_ratio"), flow_shift=sampler.shift, name=str(path),
        image_encoder=image_encoder, image_tokens=image_tokens, expand_timesteps=bool(index.get("expand_timesteps")),
        scheduler=sampler.name, defaults=defaults,
    )


def _load_official(path: Path, dtype, load_text_encoder: bool, backend: str) -> WanComponents:
    boundary, dit_2 = None, None
    if (path / "config.json").is_file():
        dit = WanTransformer3D.from_pretrained(path, dtype=dtype, attention_backend=backend)
    else:
        dit = WanTransformer3D.from_pretrained(path / "high_noise_model", dtype=dtype, attention_backend=backend)
        dit_2 = WanTransformer3D.from_pretrained(path / "low_noise_model", dtype=dtype, attention_backend=backend)
        boundary = OFFICIAL_A14B.get(dit.config.model_type, OFFICIAL_A14B["t2v"])[0]
    vae_file = next(path / f for f in ("Wan2.2_VAE.pth", "Wan2.1_VAE.pth") if (path / f).is_file())
    te = None
    if load_text_encoder:
        te = WanTextEncoder.from_official(path / OFFICIAL_T5, path / OFFICIAL_TOKENIZER, dtype=dtype)
    defaults, sampler = folder_defaults(path, dit.config, 2 if dit_2 is not None else 1)
    return WanComponents(
        dit, WanVAE.from_pretrained(vae_file), te, load_tokenizer(path / OFFICIAL_TOKENIZER),
        transformer_2=dit_2, boundary_ratio=boundary, flow_shift=sampler.shift, name=str(path),
        expand_timesteps=dit.config.model_type == "ti2v",  # the official CLIP (OFFICIAL_CLIP) is not loaded
        scheduler=sampler.name, defaults=defaults,
    )
