"""The HunyuanVideo-1.5 family's description object (``vidpar.models.family.ModelFamily``).

Layouts:
- diffusers (``HunyuanVideo15Pipeline`` / ``HunyuanVideo15ImageToVideoPipeline`` folders): ``model_index.json``,
  ``transformer/``, ``vae/``, ``text_encoder/`` + ``tokenizer/`` (Qwen2.5-VL), ``text_encoder_2/`` + ``tokenizer_2/``
  (ByT5 glyph), ``scheduler/``, ``guider/``; I2V adds ``image_encoder/`` + ``feature_extractor/`` (SigLIP);
- official (``tencent/HunyuanVideo-1.5``'s ``ckpts/``): ``transformer/<variant>/`` (one variant in the folder, or
  the variant folder itself), ``vae/``, ``text_encoder/{llm, byt5-small, Glyph-SDXL-v2}``; I2V adds
  ``vision_encoder/siglip``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from vidpar.models.family import ModelCard, ModelFamily

from .card import FAMILY, hy15_card
from .runtime import HunyuanComponents

DIFFUSERS_FILES = ("transformer/config.json", "vae/config.json", "text_encoder/config.json", "tokenizer",
                   "text_encoder_2/config.json", "tokenizer_2", "scheduler/scheduler_config.json")
OFFICIAL_FILES = ("vae/config.json", "text_encoder/llm", "text_encoder/byt5-small", "text_encoder/Glyph-SDXL-v2")
I2V_DIFFUSERS = ("image_encoder/config.json", "feature_extractor")
I2V_OFFICIAL = ("vision_encoder/siglip",)


def _index_class(path: Path) -> str:
    try:
        return str(json.loads((path / "model_index.json").read_text(encoding="utf-8")).get("_class_name", ""))
    except (OSError, ValueError, AttributeError):
        return ""


def official_root(path: Path) -> tuple[Path, Path] | None:
    """``(ckpts root, transformer variant folder)`` of an official layout, or None."""
    if path.parent.name == "transformer" and (path / "config.json").is_file():
        return path.parent.parent, path
    variants = sorted(p.parent for p in (path / "transformer").glob("*/config.json"))
    if len(variants) == 1:
        return path, variants[0]
    if len(variants) > 1:
        raise ValueError(f"{path} holds several transformer variants {[v.name for v in variants]}; pass "
                         f"{path / 'transformer'}/<variant>")
    return None


class HunyuanVideo15Family(ModelFamily):
    """HunyuanVideo-1.5 (8.3B MMDiT): 480p / 720p, text-to-video and image-to-video, and the distilled variants."""

    name = FAMILY

    def builtin_names(self) -> tuple[str, ...]:
        return ()

    def planner_presets(self):
        from .workload import hy15_planner_presets

        return hy15_planner_presets()

    def planner_spec(self, path: Path):
        from .workload import hy15_planner_spec_from_folder

        return hy15_planner_spec_from_folder(path)

    def recognizes(self, path: Path) -> bool:
        if (path / "model_index.json").is_file():
            return _index_class(path).startswith("HunyuanVideo15")
        try:
            found = official_root(path)
        except ValueError:
            return True  # ours, with several variants: check_source says which to pass
        if found is None:
            return False
        try:
            cfg = json.loads((found[1] / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return isinstance(cfg, dict) and "hidden_size" in cfg and "heads_num" in cfg

    def check_source(self, source):
        path = Path(source)
        if not path.is_dir():
            raise ValueError(f"HunyuanVideo-1.5 checkpoint {path} is not a folder")
        if (path / "model_index.json").is_file():
            required = list(DIFFUSERS_FILES)
            if _index_class(path) == "HunyuanVideo15ImageToVideoPipeline":
                required += I2V_DIFFUSERS
            root = path
        else:
            found = official_root(path)
            if found is None:
                raise ValueError(f"{path} has neither model_index.json nor transformer/<variant>/config.json")
            root, variant = found
            required = list(OFFICIAL_FILES)
            if self._dit_config(variant).task == "i2v":
                required += I2V_OFFICIAL
        missing = [r for r in required if not (root / r).exists()]
        if missing:
            raise ValueError(f"HunyuanVideo-1.5 checkpoint {root} is missing: {', '.join(missing)}")
        return path

    @staticmethod
    def _dit_config(folder: Path):
        from .transformer_loader import read_transformer_config

        return read_transformer_config(folder)

    def _parts(self, path: Path) -> tuple[Path, Path, bool]:
        """``(root, transformer folder, diffusers layout?)`` of a checked source."""
        if (path / "model_index.json").is_file():
            return path, path / "transformer", True
        root, variant = official_root(path)
        return root, variant, False

    def card(self, source) -> ModelCard:
        from .vae_loader import read_config

        root, dit_folder, diffusers = self._parts(Path(source))
        dit = self._dit_config(dit_folder)
        if dit.use_meanflow:
            raise ValueError(f"{dit_folder}: the step-distilled MeanFlow checkpoint (use_meanflow) is not supported "
                             "yet (its sampler passes the next timestep; no reference pipeline to test it against)")
        name = str(root) if diffusers else f"{root} ({dit_folder.name})"
        return hy15_card(name, dit, read_config(root / "vae"), root, diffusers_layout=diffusers)

    def _tokenizers(self, path: Path):
        from .prompt_encoder import PromptTokenizers

        root, _, diffusers = self._parts(path)
        return PromptTokenizers.from_pretrained(root) if diffusers else PromptTokenizers.from_official(root)

    def check_prompts(self, source, prompts) -> None:
        """Both tokenizers (Qwen template + crop, ByT5 glyph text), no weights; ``PromptError`` for the first bad one."""
        from vidpar.models.family import PromptError

        tokenizers = self._tokenizers(Path(source))
        for i, prompt in enumerate(prompts):
            try:
                tokenizers.check([prompt])
            except ValueError as e:
                raise PromptError(i, str(e).replace("prompt 0: ", "").replace("prompt 0 ", "")) from None

    def load(self, source, *, dtype: torch.dtype, device, attention_backend: str = "auto",
             load_text_encoder: bool = True, load_image_encoder: bool | None = None) -> HunyuanComponents:
        from .image_encoder import HunyuanImageEncoder
        from .prompt_encoder import HunyuanPromptEncoder
        from .transformer import HunyuanVideo15Transformer3D
        from .vae import HunyuanVideo15VAE

        if load_image_encoder is None:
            load_image_encoder = load_text_encoder
        card = self.card(source)
        root, dit_folder, diffusers = self._parts(Path(source))
        dit = HunyuanVideo15Transformer3D.from_pretrained(dit_folder, dtype=dtype, attention_backend=attention_backend)
        # bf16/fp16 VAEs are slow or unsupported on CPU; float64 (exact-comparison runs) is kept everywhere.
        vae_dtype = torch.float32 if torch.device(device).type == "cpu" and dtype != torch.float64 else dtype
        vae = HunyuanVideo15VAE.from_pretrained(root / "vae", dtype=vae_dtype, attention_backend=attention_backend)
        tokenizers = self._tokenizers(Path(source))
        if diffusers:
            encoder = HunyuanPromptEncoder.from_pretrained(root, dtype, device) if load_text_encoder else None
            image_folder = root
        else:
            encoder = HunyuanPromptEncoder.from_official(root, dtype, device) if load_text_encoder else None
            image_folder = root / "vision_encoder" / "siglip"
        image = None
        if card.image == "required" and load_image_encoder:
            image = HunyuanImageEncoder.from_pretrained(image_folder, dtype, device)
        return HunyuanComponents(card, dit.to(device), vae.to(device), tokenizers, encoder, image)


__all__ = ["HunyuanVideo15Family", "official_root"]
