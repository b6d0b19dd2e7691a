"""The native HunyuanVideo-1.5 VAE: diffusers' ``AutoencoderKLHunyuanVideo15`` as plain PyTorch.

Decoding runs over the latent frames one at a time with a temporal cache (``vae_blocks``): the same result as
diffusers' whole-clip decode (causal convs, causal attention) with the activations of one chunk alive instead of
the whole clip. The decoder is a list of stages (``conv_in``, ``mid_block``, each of ``up_blocks``, head) callable
one at a time through :meth:`Decoder.forward_stage`, so a pipeline can place stage ``i`` on rank ``i``.
Encoding runs on the whole clip at once (as diffusers; image-to-video encodes one frame).
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from vidpar.models.staged_decoder import StagedDecoder, check_5d

from .vae_blocks import CausalConv3d, Downsample, MidBlock, ResnetBlock, RMSNorm, TimeCache, Upsample
from .vae_config import HunyuanVideo15VAEConfig


class UpBlock(nn.Module):
    """``layers_per_block + 1`` residual blocks, then an optional :class:`Upsample` (key ``upsamplers.0``)."""

    def __init__(self, in_dim: int, out_dim: int, num_layers: int, up_dim: int | None, temporal: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(ResnetBlock(in_dim if i == 0 else out_dim, out_dim) for i in range(num_layers))
        self.upsamplers = nn.ModuleList([Upsample(out_dim, up_dim, temporal)]) if up_dim is not None else None

    def forward(self, x: torch.Tensor, cache: TimeCache | None = None, first_chunk: bool = True) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x, cache)
        if self.upsamplers is not None:
            x = self.upsamplers[0](x, cache, first_chunk)
        return x


class DownBlock(nn.Module):
    """``layers_per_block`` residual blocks, then an optional :class:`Downsample` (key ``downsamplers.0``)."""

    def __init__(self, in_dim: int, out_dim: int, num_layers: int, down_dim: int | None, temporal: bool) -> None:
        super().__init__()
        self.resnets = nn.ModuleList(ResnetBlock(in_dim if i == 0 else out_dim, out_dim) for i in range(num_layers))
        self.downsamplers = nn.ModuleList([Downsample(out_dim, down_dim, temporal)]) if down_dim is not None else None

    def forward(self, x: torch.Tensor, cache: TimeCache | None = None, first_chunk: bool = True) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x, cache)
        if self.downsamplers is not None:
            x = self.downsamplers[0](x, cache, first_chunk)
        return x


class Encoder(nn.Module):
    """Video ``[B, 3, F, H, W]`` -> moments ``[B, 2*latent, 1 + (F-1)/t, H/s, W/s]`` (mean, then log-variance)."""

    def __init__(self, cfg: HunyuanVideo15VAEConfig, attention_backend: str = "auto") -> None:
        super().__init__()
        blocks = cfg.block_out_channels
        self.conv_in = CausalConv3d(cfg.in_channels, blocks[0])
        self.down_blocks = nn.ModuleList(
            DownBlock(lv.in_dim, lv.out_dim, cfg.layers_per_block, lv.down_dim, lv.temporal)
            for lv in cfg.encoder_levels()
        )
        self.mid_block = MidBlock(blocks[-1], attention_backend)
        self.norm_out = RMSNorm(blocks[-1])
        self.conv_out = CausalConv3d(blocks[-1], 2 * cfg.latent_channels)
        self.group_size = blocks[-1] // (2 * cfg.latent_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv_in(x)
        for block in self.down_blocks:
            x = block(x)
        x = self.mid_block(x)
        b, _, t, h, w = x.shape
        shortcut = x.view(b, -1, self.group_size, t, h, w).mean(dim=2)
        return self.conv_out(F.silu(self.norm_out(x))) + shortcut


class Decoder(StagedDecoder):
    """Latent chunk ``[B, latent, t, h, w]`` -> video chunk ``[B, 3, t', s*h, s*w]`` as a list of stages.

    Stages: ``0`` conv_in (plus the latent's channels repeated); ``1`` mid_block; ``2 .. 1+len(up_blocks)`` the up
    blocks; last: head (norm_out, SiLU, conv_out). Each stage only touches the cache entries of its own modules.
    """

    def __init__(self, cfg: HunyuanVideo15VAEConfig, attention_backend: str = "auto") -> None:
        super().__init__()
        levels = cfg.decoder_levels()
        width = levels[0].in_dim
        self.repeat = width // cfg.latent_channels
        self.conv_in = CausalConv3d(cfg.latent_channels, width)
        self.mid_block = MidBlock(width, attention_backend)
        self.up_blocks = nn.ModuleList(
            UpBlock(lv.in_dim, lv.out_dim, cfg.layers_per_block + 1, lv.up_dim, lv.temporal) for lv in levels
        )
        last = levels[-1].up_dim if levels[-1].up_dim is not None else levels[-1].out_dim
        self.norm_out = RMSNorm(last)
        self.conv_out = CausalConv3d(last, cfg.out_channels)

    def forward_stage(self, i: int, x: torch.Tensor, cache: TimeCache | None, first_chunk: bool = True) -> torch.Tensor:
        """Run stage ``i`` on one time chunk ``x [B, C_i, t, H_i, W_i]``; returns the next stage's input."""
        n = self.num_stages
        if i == 0:
            return self.conv_in(x, cache) + x.repeat_interleave(self.repeat, dim=1)
        if i == 1:
            return self.mid_block(x, cache)
        if i == n - 1:
            return self.conv_out(F.silu(self.norm_out(x)), cache)
        if 2 <= i < n - 1:
            return self.up_blocks[i - 2](x, cache, first_chunk)
        raise ValueError(f"stage index {i} out of range [0, {n})")

    def forward(self, x: torch.Tensor, cache: TimeCache | None = None, first_chunk: bool = True) -> torch.Tensor:
        for i in range(self.num_stages):
            x = self.forward_stage(i, x, cache, first_chunk)
        return x


class FrameDecodeLoop(nn.Module):
    """The decode loop: the decoder over latent frames one at a time, one temporal cache for the whole clip.

    A parameterless submodule of :class:`HunyuanVideo15VAE` so that a parallel plan can swap the whole loop
    (patch / pipeline decoding, see ``vae_plan``) without touching the model code.
    """

    def forward(self, decoder: Decoder, z: torch.Tensor) -> torch.Tensor | None:
        """z ``[B, latent, T, h, w]`` -> video ``[B, 3, 1 + 4*(T-1), 16h, 16w]`` (released strides)."""
        cache: TimeCache = {}
        frames = [decoder(z[:, :, i : i + 1], cache, first_chunk=(i == 0)) for i in range(z.shape[2])]
        return torch.cat(frames, dim=2)


class HunyuanVideo15VAE(nn.Module):
    """HunyuanVideo-1.5 VAE. Parameter names are diffusers' (``encoder.*``, ``decoder.*``; no quant convs), so
    ``load_state_dict`` takes a diffusers state dict as is.

    Args:
        config: the architecture (default: the released VAE).
        attention_backend: local backend of the mid-block attention (``vidpar.kernels``; ``"auto"``: the fastest).
            Parallel patch decoding runs ring attention over the bands, which needs a backend with a log-sum-exp.
    """

    def __init__(self, config: HunyuanVideo15VAEConfig | None = None, attention_backend: str = "auto") -> None:
        super().__init__()
        self.config = config if config is not None else HunyuanVideo15VAEConfig()
        self.encoder = Encoder(self.config, attention_backend)
        self.decoder = Decoder(self.config, attention_backend)
        self.decode_loop = FrameDecodeLoop()  # no parameters; swapped by parallel plans

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        config: HunyuanVideo15VAEConfig | dict | None = None,
        dtype: torch.dtype | None = None,
        attention_backend: str = "auto",
    ) -> "HunyuanVideo15VAE":
        """Load a diffusers or official ``vae/`` folder (or the pipeline folder above it), or one weights file
        (``.safetensors``, or ``.pt``/``.pth``/``.ckpt`` read with ``weights_only=True``) in either key layout.

        ``config`` overrides the folder's ``config.json``; a single file defaults to the released preset.
        Mismatched keys or shapes raise ``ValueError`` naming them and the file.
        """
        from .vae_loader import load_hunyuanvideo15_vae

        return load_hunyuanvideo15_vae(path, config=config, dtype=dtype, attention_backend=attention_backend)

    # ---- latent scaling ------------------------------------------------------------------------------------------

    def normalize_latents(self, z: torch.Tensor) -> torch.Tensor:
        """VAE latents -> diffusion-space latents: ``(z - shift) * scaling_factor`` (``z * scaling_factor`` without a
        shift, exactly as diffusers' image-to-video pipeline scales the image latents); z ``[B, C, T, h, w]``."""
        check_5d("latents", z, self.config.latent_channels)
        shift = self.config.shift_factor
        return (z if shift is None else z - shift) * self.config.scaling_factor

    def denormalize_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Diffusion-space latents -> VAE latents: ``z / scaling_factor (+ shift)``, as diffusers' pipelines (and the
        official one, with its shift) do before ``vae.decode``."""
        check_5d("latents", z, self.config.latent_channels)
        z = z / self.config.scaling_factor
        shift = self.config.shift_factor
        return z if shift is None else z + shift

    # ---- decode / encode -----------------------------------------------------------------------------------------

    def decode(self, z: torch.Tensor) -> torch.Tensor | None:
        """Decode VAE latents (NOT de-normalised here, exactly like ``AutoencoderKLHunyuanVideo15.decode``).

        Args:
            z: ``[B, latent_channels, T, h, w]``, T >= 1.
        Returns:
            video ``[B, 3, 1 + t*(T-1), s*h, s*w]`` (t, s: temporal and spatial factors; 4 and 16 released), not
            clamped (as diffusers). After ``vidpar.parallelize(vae, ctx, output="rank0")`` ranks other than 0
            return None.
        """
        check_5d("latents", z, self.config.latent_channels)
        return self.decode_loop(self.decoder, z.to(self.decoder.conv_in.conv.weight.dtype))

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Encode a video to the mean of the latent distribution (``encode(x).latent_dist.mode()`` in diffusers).

        Args:
            video: ``[B, 3, F, H, W]`` in [-1, 1], F = 1 + t*k; H, W divisible by the spatial factor.
        Returns:
            ``[B, latent_channels, 1 + (F-1)/t, H/s, W/s]`` (not normalised; see :meth:`normalize_latents`).
        """
        cfg = self.config
        check_5d("video", video, cfg.in_channels)
        f, h, w = video.shape[2:]
        cfg.latent_frames(f)  # raises unless F = 1 + t*k
        s = cfg.spatial_factor
        if h % s or w % s:
            raise ValueError(f"video H, W must be divisible by the spatial factor {s}, got {h}x{w}")
        moments = self.encoder(video.to(self.encoder.conv_in.conv.weight.dtype))
        return moments[:, : cfg.latent_channels]

    def parallel_plan(self, vae_mode: str = "auto", output: str = "all", pipeline_degree: int | None = None):
        """The plan ``vidpar.parallelize(vae, ctx, **options)`` applies: decode over every rank of the world.

        Args:
            vae_mode: ``"patch"`` (latent rows split over the ranks, halo exchange), ``"pipeline"`` (decoder
                stages on different ranks, latent frames streamed through), ``"combined"`` (pipeline x patch) or
                ``"auto"`` (chosen per call; see ``vidpar.parallel.vae_decode``).
            output: ``"all"`` (the video on every rank) or ``"rank0"`` (on rank 0; other ranks get None).
            pipeline_degree: pipeline stage groups for ``"combined"`` (default 2).
        """
        from .vae_plan import hunyuanvideo15_vae_plan

        return hunyuanvideo15_vae_plan(self, vae_mode=vae_mode, output=output, pipeline_degree=pipeline_degree)
