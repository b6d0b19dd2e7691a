"""What one generation asks of the hardware, model-neutral: the planner's view of a denoiser and a VAE.

A family builds these objects from the same config objects its models are built from (``vidpar/models/<family>/
workload.py``); the planner reads only them. Config objects that know their workload expose it through
``planner_workload()`` (a denoiser or VAE config) or ``planner_spec()`` (a denoiser config paired with its released
VAE), so planner functions accept a family's config directly.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass(frozen=True)
class ForwardFlops:
    """FLOPs of one DiT forward at batch 1 (multiply-add = 2 FLOPs), split by how they run."""

    attention: float  # token-mixing attention (video x video, and video x joint tokens for joint attention)
    linear: float  # every GEMM over video tokens
    context: float  # per-forward work independent of the video tokens (text/image K/V, text streams)
    cross_attention: float  # video queries against cross-attended text (and image) keys

    @property
    def total(self) -> float:
        return self.attention + self.linear + self.context + self.cross_attention


@dataclass(frozen=True)
class DitWorkload:
    """One denoiser as the planner sees it.

    ``joint_tokens``: text tokens attended jointly with the video in every layer (joint-attention models; 0 for
    cross-attention models) — they change the comm model (one joint-output all-gather per layer).
    ``extra_bytes_per_token``: activation bytes per local token beyond a plain block (e.g. per-token timesteps).
    """

    name: str
    num_layers: int
    dim: int
    num_heads: int
    ffn_dim: int
    in_channels: int
    out_channels: int
    patch_size: tuple[int, int, int]
    params: int  # exact parameter count of one denoiser
    flops: Callable[[int], ForwardFlops] = field(compare=False, repr=False)  # video tokens -> one forward
    joint_tokens: int = 0
    extra_bytes_per_token: float = 0.0

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def patch_volume(self) -> int:
        pt, ph, pw = self.patch_size
        return pt * ph * pw

    def forward_flops(self, tokens: int) -> ForwardFlops:
        return self.flops(tokens)


class VaeWorkload(ABC):
    """A VAE as the planner sees it: geometry, size, decode cost estimates and its exact decode comm walk."""

    temporal: int  # latent frames -> video frames: (T - 1) * temporal + 1
    spatial: int  # pixels per latent row/column
    z_dim: int  # latent channels
    params: float
    decode_flops_per_pixel: float  # an estimate (uncalibrated)
    decode_bytes_per_chunk_pixel: float  # live activations per output pixel of one decoded chunk (estimate)

    @abstractmethod
    def num_stages(self) -> int:
        """Decoder stages the pipeline mode can place on different ranks."""

    @abstractmethod
    def decode_comm_bytes(self, latent_shape: tuple[int, ...], world_size: int, vae_mode: str = "auto",
                          output: str = "all", dtype_bytes: int = 4, *, batch: int = 1, rank: int | None = None,
                          pipeline_degree: int | None = None) -> dict[str, int]:
        """Bytes ``rank`` sends in one parallel decode per ``ctx.comm_stats()`` key (None: per-key maximum)."""


@dataclass(frozen=True)
class ModelSpec:
    """A denoiser plus what the planner needs beside it."""

    name: str
    config: DitWorkload
    vae: VaeWorkload
    experts: int = 1  # denoisers resident in memory (one runs per step)
    text_encoder_params: float = 0.0


def as_dit_workload(obj: Any) -> DitWorkload:
    """A ``DitWorkload`` from itself, a ``ModelSpec`` or a family config with ``planner_workload()``."""
    if isinstance(obj, DitWorkload):
        return obj
    if isinstance(obj, ModelSpec):
        return obj.config
    if hasattr(obj, "planner_workload"):
        return obj.planner_workload()
    raise TypeError(f"{type(obj).__name__} is not a denoiser workload (no planner_workload())")


def as_vae_workload(obj: Any) -> VaeWorkload:
    """A ``VaeWorkload`` from itself or a family VAE config with ``planner_workload()``."""
    if isinstance(obj, VaeWorkload):
        return obj
    if hasattr(obj, "planner_workload"):
        return obj.planner_workload()
    raise TypeError(f"{type(obj).__name__} is not a VAE workload (no planner_workload())")


def resolve_model(model: str) -> ModelSpec:
    """A planner preset (``"wan2.1-t2v-14b"``...), a built-in model name or a checkpoint folder, via the model
    registry (each family describes its own checkpoints)."""
    from vidpar.models.registry import planner_model

    return planner_model(model)


def model_spec(model: Any) -> ModelSpec:
    """A ``ModelSpec`` from a name/folder, a spec, or a family's denoiser config (with its released VAE)."""
    if isinstance(model, ModelSpec):
        return model
    if isinstance(model, str):
        return resolve_model(model)
    if hasattr(model, "planner_spec"):
        return model.planner_spec()
    raise TypeError(f"cannot plan for a {type(model).__name__}")


def dit_params(model: Any) -> int:
    """Exact parameter count of one denoiser."""
    return as_dit_workload(model).params


def forward_flops(model: Any, tokens: int) -> ForwardFlops:
    """FLOPs of one forward over ``tokens`` video tokens (batch 1)."""
    return as_dit_workload(model).forward_flops(tokens)


def latent_shape(vae: VaeWorkload, height: int, width: int, frames: int) -> tuple[int, int, int, int]:
    """``(C, F_lat, H_lat, W_lat)`` of the latent of a ``frames x height x width`` video.

    Raises ``ValueError`` unless ``frames = t k + 1`` and height/width are multiples of the VAE's spatial factor.
    """
    if frames < 1 or (frames - 1) % vae.temporal:
        raise ValueError(f"frames must be {vae.temporal}k+1 (e.g. 81), got {frames}")
    if height % vae.spatial or width % vae.spatial or height < 1 or width < 1:
        raise ValueError(f"height and width must be positive multiples of {vae.spatial}, got {height}x{width}")
    return vae.z_dim, (frames - 1) // vae.temporal + 1, height // vae.spatial, width // vae.spatial


def num_tokens(model: Any, latent: tuple[int, ...]) -> int:
    """Tokens of a latent ``(..., F, H, W)``: ``prod(F/pt, H/ph, W/pw)`` (e.g. 75600 for an 8x-stride latent of
    720p x 81 frames with patch 1x2x2)."""
    dit = as_dit_workload(model)
    f, h, w = latent[-3:]
    pt, ph, pw = dit.patch_size
    if f % pt or h % ph or w % pw:
        raise ValueError(f"latent {tuple(latent[-3:])} is not divisible by the patch size {dit.patch_size}")
    return (f // pt) * (h // ph) * (w // pw)


__all__ = ["DitWorkload", "ForwardFlops", "ModelSpec", "VaeWorkload", "as_dit_workload", "as_vae_workload",
           "dit_params", "forward_flops", "latent_shape", "model_spec", "num_tokens", "resolve_model"]
