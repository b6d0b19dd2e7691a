"""The Wan family's description object (``vidpar.models.family.ModelFamily``): Wan 2.1 / 2.2 checkpoints in the
official and diffusers layouts, and the built-in ``tiny`` / ``tiny-shapes`` models."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from vidpar.models.family import ModelCard, ModelFamily, SamplerSpec

from .card import TINY_DEFAULTS, folder_defaults, wan_card
from .components import BUILTIN_NAMES, WanComponents, check_source, display_name, load_components
from .weight_files import check_weight_files


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not readable JSON ({e})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return data


class WanFamily(ModelFamily):
    """Wan 2.1 (T2V 1.3B/14B, I2V 14B), Wan 2.2 (T2V/I2V A14B two-expert, TI2V-5B)."""

    name = "wan"

    def builtin_names(self) -> tuple[str, ...]:
        return BUILTIN_NAMES

    def planner_presets(self):
        from .workload import wan_planner_presets

        return wan_planner_presets()

    def planner_spec(self, path: Path):
        from .workload import wan_planner_spec_from_folder

        return wan_planner_spec_from_folder(path)

    def recognizes(self, path: Path) -> bool:
        index = path / "model_index.json"
        if index.is_file():
            try:
                return str(_read_json(index).get("_class_name", "")).startswith("Wan")
            except ValueError:
                return False
        config = path / "config.json"
        if not config.is_file():
            config = path / "high_noise_model" / "config.json"
        if not config.is_file():
            return False
        try:
            cfg = _read_json(config)
        except ValueError:
            return False
        return "dim" in cfg and "num_heads" in cfg and "_class_name" not in cfg

    def check_source(self, source):
        return check_source(source)

    def card(self, source) -> ModelCard:
        from .builtin import tiny_transformer_config, tiny_vae_config
        from .transformer_loader import read_wan_transformer_config
        from .vae_config import WanVAEConfig

        source = check_source(source)
        text_encoder_params = check_weight_files(source)  # every weight file checked, headers only
        if source == "tiny":
            return wan_card("tiny", tiny_transformer_config(), tiny_vae_config(), defaults=TINY_DEFAULTS,
                            sampler=SamplerSpec("unipc", 3.0), text_encoder_params=text_encoder_params)
        path = Path(source)
        name = display_name(path)
        expand = False
        if (path / "model_index.json").is_file():
            index = _read_json(path / "model_index.json")
            dit = read_wan_transformer_config(path / "transformer")
            experts = 2 if (path / "transformer_2").is_dir() and index.get("transformer_2", [None])[0] else 1
            if experts == 2:
                read_wan_transformer_config(path / "transformer_2")  # its config and headers checked too
            vae_file = path / "vae" / "config.json"
            try:
                vae = WanVAEConfig.from_dict(_read_json(vae_file))
            except (TypeError, KeyError, ValueError) as e:
                raise ValueError(f"{vae_file}: {e}") from None
            expand = bool(index.get("expand_timesteps"))
        else:
            two = not (path / "config.json").is_file()
            dit = read_wan_transformer_config(path / "high_noise_model" if two else path)
            if two:
                read_wan_transformer_config(path / "low_noise_model")
            experts = 2 if two else 1
            vae = WanVAEConfig.wan22() if (path / "Wan2.2_VAE.pth").is_file() else WanVAEConfig.wan21()
            expand = dit.model_type == "ti2v"
        defaults, sampler = folder_defaults(path, dit, experts)
        return wan_card(name, dit, vae, defaults=defaults, sampler=sampler, experts=experts,
                        expand_timesteps=expand, text_encoder_params=text_encoder_params)

    def check_prompts(self, source, prompts) -> None:
        from .builtin import char_tokenizer
        from .components import OFFICIAL_TOKENIZER
        from .text_encoder import check_prompts, load_tokenizer

        source = check_source(source)
        text_len = self.card(source).text_len
        if source == "tiny":
            tokenizer = char_tokenizer()
        else:
            path = Path(source)
            folder = path / "tokenizer" if (path / "model_index.json").is_file() else path / OFFICIAL_TOKENIZER
            try:
                tokenizer = load_tokenizer(folder)
            except (OSError, ValueError) as e:
                raise ValueError(f"{folder}: the tokenizer does not load ({e})") from None
        check_prompts(tokenizer, list(prompts), text_len)

    def load(self, source, *, dtype: torch.dtype, device, attention_backend: str = "auto",
             load_text_encoder: bool = True, load_image_encoder: bool | None = None) -> WanComponents:
        return load_components(source, dtype, device, load_text_encoder, attention_backend, load_image_encoder)


__all__ = ["WanFamily"]
