"""The model-family seam: what a family folder ``vidpar/models/<family>/`` hands the rest of vidpar.

A family implements two objects:

- ``ModelFamily``: recognises and validates a model source (a built-in name or a checkpoint folder, official or
  diffusers layout) without loading weights, describes it as a ``ModelCard`` (latent geometry, defaults, sampler,
  guidance and image kind, prompt limit, the planner's workload) and loads it;
- ``LoadedModel``: the loaded parts behind one uniform interface — prompt encoding (fixed shapes, so rank 0 can
  encode and broadcast), image conditioning, the denoiser call for one guidance branch, the modules to parallelize
  and their FSDP units, and the VAE with its parallel decode plan.

``vidpar.Pipeline``, the CLI, the planner and the service read only these objects; ``vidpar.models.registry`` maps
names and folders to families. Policies that act on every family (step caching, LoRA merging, compile) act on what
``LoadedModel.denoisers()`` and ``fsdp_units`` expose, never on one family's classes.
"""

from __future__ import annotations

import dataclasses
import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from .block_loop import BlockLoop

GUIDANCE_KINDS = ("cfg", "embedded")  # two branches mixed by the pipeline, or one branch taking the scale
IMAGE_KINDS = ("none", "required", "optional")


@dataclass(frozen=True)
class LatentGeometry:
    """How pixels map to latents and latents to tokens.

    ``frames = temporal_stride * k + 1`` (causal VAEs keep the first frame alone); height and width must be
    multiples of ``spatial_stride * patch``.
    """

    channels: int
    temporal_stride: int
    spatial_stride: int
    patch: tuple[int, int, int]

    def latent_shape(self, height: int, width: int, frames: int) -> tuple[int, int, int, int, int]:
        """``[1, channels, T, h, w]`` of a ``frames x height x width`` video; ``ValueError`` names what is wrong."""
        st, ss = self.temporal_stride, self.spatial_stride
        pt, ph, pw = self.patch
        for name, value in (("num_frames", frames), ("height", height), ("width", width)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name} must be an int, got {value!r}")
        if frames < 1 or (frames - 1) % st:
            examples = ", ".join(str(st * k + 1) for k in range(4))
            raise ValueError(f"num_frames must be of the form {st}k+1 ({examples}, ...), got {frames}")
        for name, size, p in (("height", height, ph), ("width", width, pw)):
            if size < 1 or size % (ss * p):
                raise ValueError(f"{name} must be a positive multiple of {ss * p} (VAE stride x patch), got {size}")
        t = (frames - 1) // st + 1
        if t % pt:
            raise ValueError(f"{t} latent frames are not divisible by the temporal patch {pt}")
        return (1, self.channels, t, height // ss, width // ss)

    def num_tokens(self, height: int, width: int, frames: int) -> int:
        """Video tokens of one forward (the patchified latent grid)."""
        _, _, t, h, w = self.latent_shape(height, width, frames)
        return math.prod(n // p for n, p in zip((t, h, w), self.patch))

    def video_frames(self, latent_frames: int) -> int:
        return 1 + self.temporal_stride * (latent_frames - 1)


@dataclass(frozen=True)
class SamplerSpec:
    """The sampler a checkpoint was published with: a vidpar scheduler name and its shift (see
    ``vidpar.schedulers.sampler_from_config``)."""

    name: str
    shift: float


@dataclass(frozen=True)
class ModelDefaults:
    """What a generation uses when a setting is not given: the model's own (its card or its checkpoint)."""

    height: int
    width: int
    num_frames: int
    num_steps: int
    guidance_scale: float
    guidance_scale_2: float | None = None  # a second expert's scale (Wan 2.2 A14B), None: the same
    negative_prompt: str = ""
    fps: int = 16


@dataclass(frozen=True)
class ModelCard:
    """Everything known about a model without loading weights (cheap; identical on every rank)."""

    family: str
    name: str
    geometry: LatentGeometry
    defaults: ModelDefaults
    sampler: SamplerSpec
    guidance: str  # one of GUIDANCE_KINDS
    image: str  # one of IMAGE_KINDS
    text_len: int  # prompt token limit (tokens past it are refused, never cut)
    experts: int = 1  # denoisers held in memory (one runs per step)
    workload: Any = None  # ``vidpar.planner.ModelSpec`` of this model (None where it cannot be built cheaply)
    notes: tuple[str, ...] = ()  # limits and facts worth printing (``vidpar info --model``)

    def __post_init__(self) -> None:
        if self.guidance not in GUIDANCE_KINDS:
            raise ValueError(f"guidance must be one of {GUIDANCE_KINDS}, got {self.guidance!r}")
        if self.image not in IMAGE_KINDS:
            raise ValueError(f"image must be one of {IMAGE_KINDS}, got {self.image!r}")

    def replace(self, **changes: Any) -> "ModelCard":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """Plain values for printing and JSON (the workload is left out)."""
        d = {k: getattr(self, k) for k in ("family", "name", "guidance", "image", "text_len", "experts")}
        d["geometry"] = dataclasses.asdict(self.geometry)
        d["defaults"] = dataclasses.asdict(self.defaults)
        d["sampler"] = dataclasses.asdict(self.sampler)
        d["notes"] = list(self.notes)
        return d


@dataclass(frozen=True)
class TensorSpec:
    """Shape and dtype of a tensor every rank must know before it arrives by broadcast.

    ``fill`` says what a stand-in looks like (``vidpar check`` builds random inputs from specs): ``"normal"`` for
    states, ``"ones"`` for masks.
    """

    shape: tuple[int, ...]
    dtype: torch.dtype
    fill: str = "normal"

    def empty(self, device: torch.device) -> torch.Tensor:
        return torch.empty(self.shape, dtype=self.dtype, device=device)

    def example(self, generator: torch.Generator, device: torch.device) -> torch.Tensor:
        if self.fill == "ones":
            return torch.ones(self.shape, dtype=self.dtype, device=device)
        x = torch.randn(self.shape, generator=generator, dtype=torch.float64)
        return x.to(device=device, dtype=self.dtype)


TextStates = dict  # name -> tensor, one prompt's encoded states (batch dimension 1), shapes from ``text_spec``


class PromptError(ValueError):
    """A prompt the model cannot use: ``index`` is its position in the list checked, ``reason`` says why (without
    naming the prompt, so a caller can name it its own way: a file's line, "negative prompt")."""

    def __init__(self, index: int, reason: str) -> None:
        super().__init__(f"prompt {index}: {reason}")
        self.index = index
        self.reason = reason


@dataclass(frozen=True)
class StepInfo:
    """Where the denoising loop is, identical on every rank (``t`` is the scheduler's timestep value)."""

    index: int
    num_steps: int
    t: torch.Tensor
    num_train_timesteps: int = 1000
    branch: str = "cond"  # "cond" or "uncond" (the guidance branch being evaluated)


@dataclass(frozen=True)
class CacheProfile:
    """Published step-cache calibrations of one denoiser, for the policies of ``vidpar.cache`` (all optional).

    Numbers a family publishes here are the ones their authors calibrated for that checkpoint; a policy that needs
    one the profile lacks either falls back as it documents or refuses with a ``ValueError``.
    """

    source: str = ""  # which published calibration this is (e.g. "TeaCache4Wan2.1 t2v-1.3B"), for logs
    # TeaCache: polynomial (highest power first) rescaling the relative L1 change of the block loop's
    # ``modulation`` signal into the expected change of the output, and its published threshold.
    teacache_coefficients: tuple[float, ...] | None = None
    teacache_threshold: float | None = None
    # MagCache: per-step magnitude ratios of the conditional branch's block-loop residual (step 0 first, 1.0
    # there), calibrated at ``len(magcache_ratios)`` steps, and its published threshold and skip cap.
    magcache_ratios: tuple[float, ...] | None = None
    magcache_threshold: float | None = None
    magcache_max_skips: int | None = None
    # Per-model defaults of the policies that need no calibration (None: the policy's published default).
    fbcache_threshold: float | None = None
    taylorseer_interval: int | None = None
    taylorseer_warmup: float | None = None  # share of the steps always computed first


class LoadedModel(ABC):
    """A loaded model of some family; the pipeline's only view of it.

    Conventions: latents are ``[1, C, T, h, w]`` (``card.geometry``), in the pipeline's latent dtype; text states are
    one dict per prompt (``text_spec``); everything returned is identical on every rank.
    """

    card: ModelCard
    # The VAE: ``parallel_plan(vae_mode=..., output=...)`` for ``vidpar.parallelize``, ``denormalize_latents(z)`` and
    # ``decode(z) -> [B, 3, F, H, W]`` in [-1, 1] (after parallelize with ``output="rank0"``: None off rank 0).
    vae: nn.Module

    # ---- modules: what vidpar parallelizes, shards and lets policies act on

    @abstractmethod
    def denoisers(self) -> list[nn.Module]:
        """The denoising transformers (one, or two experts), each with a ``parallel_plan``."""

    def fsdp_units(self, module: nn.Module) -> list[nn.Module]:
        """Blocks of a denoiser that FSDP wraps one by one (its repeated blocks, ``module.blocks``)."""
        return list(module.blocks)

    def block_loop(self, module: nn.Module) -> BlockLoop | None:
        """The ``BlockLoop`` a denoiser calls its blocks through (``module.block_loop``), where step-cache policies
        act; None if the denoiser has none (step caching is then refused)."""
        loop = getattr(module, "block_loop", None)
        return loop if isinstance(loop, BlockLoop) else None

    def cache_profile(self, module: nn.Module) -> CacheProfile:
        """Published step-cache calibrations of a denoiser (none by default)."""
        return CacheProfile()
    def vae_compile_units(self) -> list[nn.Module]:
        """Modules of the VAE decode that ``torch.compile`` may compile one by one (regional compilation, when the
        decode runs on one process; see ``vidpar.compile``). Default: none."""
        return []

    def text_encoder_fsdp(self) -> tuple[nn.Module, list[nn.Module]] | None:
        """``(encoder module, its blocks)`` sharded when FSDP is on; None if there is none to shard."""
        return None

    def lora_targets(self) -> dict[str, nn.Module]:
        """The denoisers LoRAs may target, by name: ``{"main": dit}``, or ``{"high": ..., "low": ...}`` for a
        two-expert model (a LoRA's ``target`` is one of these names or ``"both"``)."""
        dits = self.denoisers()
        return {"main": dits[0]} if len(dits) == 1 else {"high": dits[0], "low": dits[1]}

    def attention_sites(self, module: nn.Module) -> tuple[str, Any]:
        """Where a denoiser attends over the video tokens, for structured sparse attention:
        ``(fnmatch pattern of its self-attention ops, grid_fn(args, kwargs) -> (frames, rows, cols))``, the token
        grid from the denoiser's forward arguments. Default: the ``blocks.*`` attention op and ``grid_size`` of the
        first (latents) argument."""
        def grid_fn(args, kwargs):
            return module.grid_size(args[0] if args else kwargs["latents"])

        return self.ATTENTION_OPS, grid_fn

    ATTENTION_OPS = "blocks.*.attn_op"

    @property
    def lora_keys(self) -> Any:
        """The family's ``vidpar.lora.LoraKeyMap`` (LoRA file names -> native module paths); None: this family
        does not take LoRAs."""
        return None

    @property
    def has_text_encoder(self) -> bool:
        """Whether this rank holds the text encoder (without FSDP only rank 0 does)."""
        return True

    # ---- prompts

    @abstractmethod
    def check_prompts(self, prompts: Sequence[str]) -> None:
        """Raise ``ValueError`` naming the prompt if one is too long or unusable (tokenizer only; no weights)."""

    @abstractmethod
    def text_spec(self, dtype: torch.dtype) -> dict[str, TensorSpec]:
        """Shapes and dtypes of one encoded prompt (batch dimension 1) for compute dtype ``dtype``, identical on
        every rank."""

    @abstractmethod
    def encode_text(self, prompts: Sequence[str]) -> list[TextStates]:
        """One dict per prompt, tensors shaped as ``text_spec``; runs on the ranks holding the text encoder."""

    # ---- images

    def check_image(self, image: Any, height: int, width: int) -> None:
        """Raise ``ValueError`` unless ``image`` is usable for this model and size (the pipeline already checked
        that the model takes an image)."""
        raise ValueError(f"{self.card.name} takes no image")

    def image_spec(self, latent_shape: tuple[int, ...], dtype: torch.dtype,
                   latent_dtype: torch.dtype) -> dict[str, TensorSpec]:
        """Shapes of the image conditioning tensors ``encode_image`` returns for latents of ``latent_shape``."""
        return {}

    def encode_image(self, image: Any, height: int, width: int, num_frames: int, latent_shape: tuple[int, ...],
                     dtype: torch.dtype, latent_dtype: torch.dtype) -> dict[str, torch.Tensor]:
        """The image's conditioning tensors, shaped as ``image_spec`` (computed once, on rank 0, and broadcast)."""
        raise ValueError(f"{self.card.name} takes no image")

    def image_digest(self, image: Any, height: int, width: int) -> str:
        """A stable digest of the image as the model sees it (part of a checkpoint snapshot's key)."""
        raise ValueError(f"{self.card.name} takes no image")

    # ---- denoising

    @abstractmethod
    def predict_flow(self, latents: torch.Tensor, step: StepInfo, text: TextStates,
                     image: dict[str, torch.Tensor] | None, guidance_scale: float) -> torch.Tensor:
        """One guidance branch's prediction ``[1, C, T, h, w]`` (latents' dtype) for ``text``.

        ``guidance_scale`` is used only by ``"embedded"`` guidance models (one branch that takes the scale)."""

    def guidance_scale(self, step: StepInfo, scale: float, scale_2: float | None) -> float:
        """The guidance scale of this step (a family with a second expert may use ``scale_2`` for it)."""
        return scale

    def finalize_latents(self, latents: torch.Tensor, image: dict[str, torch.Tensor] | None) -> torch.Tensor:
        """The latents handed to the VAE after the last step (e.g. the image latent imposed on frame 0)."""
        return latents

    def check_request(self, *, guidance_scale_2: float | None) -> None:
        """Refuse settings this model cannot use (e.g. a second expert's scale for a one-expert model)."""
        if guidance_scale_2 is not None and self.card.experts < 2:
            raise ValueError(f"guidance_scale_2 is for two-expert models; {self.card.name} has one denoiser")


class ModelFamily(ABC):
    """A family of checkpoints sharing model code (e.g. Wan 2.1/2.2)."""

    name: str = ""

    @abstractmethod
    def builtin_names(self) -> tuple[str, ...]:
        """Built-in model names this family answers to (no download)."""

    def planner_presets(self) -> Mapping[str, Any]:
        """Named released configurations for the planner (``name -> vidpar.planner.ModelSpec``)."""
        return {}

    def planner_spec(self, path: Path) -> Any | None:
        """The planner's ``ModelSpec`` from a folder's config files alone (no weights needed; e.g. a
        ``transformer/config.json``), or None if the folder holds no config of this family."""
        return None

    @abstractmethod
    def recognizes(self, path: Path) -> bool:
        """Whether the folder ``path`` is a checkpoint of this family (cheap: reads small config files only)."""

    @abstractmethod
    def check_source(self, source: str | Path) -> str | Path:
        """Validate a built-in name or folder (files present, configs readable) without weights; returns the
        normalised source. Raises ``ValueError`` naming the missing file or bad field."""

    @abstractmethod
    def card(self, source: str | Path) -> ModelCard:
        """The ``ModelCard`` of a checked source (configs only, no weights)."""

    def check_prompts(self, source: str | Path, prompts: Sequence[str]) -> None:
        """Check prompts against a checked source's tokenizer alone (no weights, cheap, identical on every rank),
        so a batch is refused before anything loads. Raise ``PromptError`` for the first unusable prompt.

        The default checks nothing here; the loaded model's ``LoadedModel.check_prompts`` still runs before the
        first collective of each generation."""

    @abstractmethod
    def load(self, source: str | Path, *, dtype: torch.dtype, device: torch.device | str,
             attention_backend: str = "auto", load_text_encoder: bool = True,
             load_image_encoder: bool | None = None) -> LoadedModel:
        """Load a checked source. ``load_text_encoder=False`` on ranks that receive prompt states by broadcast."""


@dataclass(frozen=True)
class CardFile:
    """``vidpar_card.json`` beside a checkpoint: the generation defaults its author declares (optional)."""

    defaults: dict[str, Any] = field(default_factory=dict)

    FILENAME = "vidpar_card.json"
    FIELDS = ("height", "width", "num_frames", "num_steps", "guidance_scale", "guidance_scale_2",
              "negative_prompt", "fps")

    @classmethod
    def read(cls, folder: Path) -> "CardFile":
        import json

        path = Path(folder) / cls.FILENAME
        if not path.is_file():
            return cls()
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: not readable JSON ({e})") from None
        defaults = raw.get("defaults", {}) if isinstance(raw, dict) else None
        if not isinstance(defaults, dict):
            raise ValueError(f"{path}: expected {{\"defaults\": {{...}}}}")
        unknown = sorted(set(defaults) - set(cls.FIELDS))
        if unknown:
            raise ValueError(f"{path}: unknown default(s) {unknown}; known: {list(cls.FIELDS)}")
        return cls(defaults)

    def apply(self, defaults: ModelDefaults, source: str) -> ModelDefaults:
        """``defaults`` with this file's values, type-checked (``source`` names the file in errors)."""
        ints = ("height", "width", "num_frames", "num_steps", "fps")
        values = {}
        for key, value in self.defaults.items():
            if key in ints:
                if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                    raise ValueError(f"{source}/{self.FILENAME}: {key} must be a positive int, got {value!r}")
            elif key == "negative_prompt":
                if not isinstance(value, str):
                    raise ValueError(f"{source}/{self.FILENAME}: negative_prompt must be a string")
            elif value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                        or not math.isfinite(value)):
                raise ValueError(f"{source}/{self.FILENAME}: {key} must be a finite number, got {value!r}")
            values[key] = float(value) if key.startswith("guidance") and value is not None else value
        return dataclasses.replace(defaults, **values)


__all__ = [
    "CacheProfile", "CardFile", "GUIDANCE_KINDS", "IMAGE_KINDS", "LatentGeometry", "LoadedModel", "ModelCard",
    "ModelDefaults", "ModelFamily", "PromptError", "SamplerSpec", "StepInfo", "TensorSpec", "TextStates",
]
