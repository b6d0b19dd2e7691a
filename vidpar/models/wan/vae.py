"""Native single-device Wan 2.1 / 2.2 causal video VAE (same function as diffusers' ``AutoencoderKLWan``, non-tiled).

Time is processed chunk by chunk with an explicit :class:`FeatureCache`: the decoder takes one latent frame at a
time, the encoder one frame and then chunks of four. The decoder is a list of stages (``conv_in``, ``mid_block``,
each of ``up_blocks``, head) callable one at a time through :meth:`WanDecoder3d.forward_stage`, so a pipeline can
place stage ``i`` on rank ``i``. See ``vae_blocks`` for the spatial-padding and attention hooks.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from vidpar.models.staged_decoder import StagedDecoder, check_5d

from .vae_blocks import (
    AvgDown3D,
    CausalConv3d,
    DupUp3D,
    FeatureCache,
    MidBlock,
    Resample,
    ResidualBlock,
    RMSNorm,
)
from .vae_config import WanVAEConfig


class ResidualDownBlock(nn.Module):
    """Wan 2.2 encoder block: residual blocks + optional downsample, plus a parameter-free AvgDown3D shortcut."""

    def __init__(self, in_dim: int, out_dim: int, num_res_blocks: int, temporal: bool, down: bool) -> None:
        super().__init__()
        self.avg_shortcut = AvgDown3D(in_dim, out_dim, factor_t=2 if temporal else 1, factor_s=2 if down else 1)
        self.resnets = nn.ModuleList(
            [ResidualBlock(in_dim if i == 0 else out_dim, out_dim) for i in range(num_res_blocks)]
        )
        self.downsampler = Resample(out_dim, "downsample3d" if temporal else "downsample2d") if down else None

    def forward(self, x: torch.Tensor, cache: FeatureCache, first_chunk: bool = False) -> torch.Tensor:
        shortcut = self.avg_shortcut(x)
        for resnet in self.resnets:
            x = resnet(x, cache)
        if self.downsampler is not None:
            x = self.downsampler(x, cache, first_chunk)
        return x + shortcut


class UpBlock(nn.Module):
    """Decoder block: ``num_res_blocks + 1`` residual blocks then an optional upsample.

    Wan 2.1 (``residual=False``): the upsample halves the channels and its key is ``upsamplers.0``.
    Wan 2.2 (``residual=True``): key ``upsampler``, keeps channels, plus a parameter-free DupUp3D shortcut.
    """

    def __init__(
        self, in_dim: int, out_dim: int, num_res_blocks: int, up_mode: str | None, residual: bool
    ) -> None:
        super().__init__()
        self.residual = residual
        self.resnets = nn.ModuleList(
            [ResidualBlock(in_dim if i == 0 else out_dim, out_dim) for i in range(num_res_blocks + 1)]
        )
        if residual:
            self.avg_shortcut = (
                DupUp3D(in_dim, out_dim, factor_t=2 if up_mode == "upsample3d" else 1, factor_s=2)
                if up_mode is not None
                else None
            )
            self.upsampler = Resample(out_dim, up_mode, out_dim=out_dim) if up_mode is not None else None
        else:
            self.upsamplers = nn.ModuleList([Resample(out_dim, up_mode)]) if up_mode is not None else None

    def forward(self, x: torch.Tensor, cache: FeatureCache, first_chunk: bool = False) -> torch.Tensor:
        """x ``[B, in_dim, T, H, W]`` -> ``[B, C', T', H', W']``."""
        x_in = x
        for resnet in self.resnets:
            x = resnet(x, cache)
        up = self.upsampler if self.residual else (self.upsamplers[0] if self.upsamplers is not None else None)
        if up is not None:
            x = up(x, cache, first_chunk)
        if self.residual and self.avg_shortcut is not None:
            x = x + self.avg_shortcut(x_in, first_chunk=first_chunk)
        return x


class WanEncoder3d(nn.Module):
    """Pixels (patchified for 2.2) ``[B, in_channels, T, H, W]`` -> ``[B, 2*z_dim, T', H/8, W/8]`` per chunk."""

    def __init__(self, cfg: WanVAEConfig) -> None:
        super().__init__()
        dim = cfg.base_dim
        dims = [dim * u for u in (1, *cfg.dim_mult)]
        last = len(cfg.dim_mult) - 1
        self.conv_in = CausalConv3d(cfg.in_channels, dims[0], 3, padding=1)
        self.down_blocks = nn.ModuleList()
        for i, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            temporal = bool(cfg.temperal_downsample[i]) if i != last else False
            if cfg.is_residual:
                self.down_blocks.append(ResidualDownBlock(in_dim, out_dim, cfg.num_res_blocks, temporal, i != last))
                continue
            # Wan 2.1: a flat list of residual blocks and resamples (names as in the checkpoints).
            for _ in range(cfg.num_res_blocks):
                self.down_blocks.append(ResidualBlock(in_dim, out_dim))
                in_dim = out_dim
            if i != last:
                self.down_blocks.append(Resample(out_dim, "downsample3d" if temporal else "downsample2d"))
        self.mid_block = MidBlock(dims[-1])
        self.norm_out = RMSNorm(dims[-1], images=False)
        self.conv_out = CausalConv3d(dims[-1], cfg.z_dim * 2, 3, padding=1)

    def forward(self, x: torch.Tensor, cache: FeatureCache, first_chunk: bool = False) -> torch.Tensor:
        x = self.conv_in(x, cache)
        for block in self.down_blocks:
            x = block(x, cache) if isinstance(block, ResidualBlock) else block(x, cache, first_chunk)
        x = self.mid_block(x, cache)
        return self.conv_out(F.silu(self.norm_out(x)), cache)


class WanDecoder3d(StagedDecoder):
    """Latent chunk ``[B, z_dim, t, h, w]`` -> pixel chunk ``[B, out_channels, t', 8h, 8w]`` as a list of stages.

    Stages: ``0`` conv_in; ``1`` mid_block; ``2 .. 1+len(up_blocks)`` the up blocks; last: head (norm_out, SiLU,
    conv_out). Each stage only touches the cache entries of its own modules.
    """

    def __init__(self, cfg: WanVAEConfig) -> None:
        super().__init__()
        dims = cfg.decoder_dims()
        self.conv_in = CausalConv3d(cfg.z_dim, dims[0], 3, padding=1)
        self.mid_block = MidBlock(dims[0])
        self.up_blocks = nn.ModuleList(
            UpBlock(lv.in_dim, lv.out_dim, cfg.num_res_blocks, lv.mode, cfg.is_residual) for lv in cfg.decoder_levels()
        )
        self.norm_out = RMSNorm(dims[-1], images=False)
        self.conv_out = CausalConv3d(dims[-1], cfg.out_channels, 3, padding=1)

    def forward_stage(self, i: int, x: torch.Tensor, cache: FeatureCache, first_chunk: bool = False) -> torch.Tensor:
        """Run stage ``i`` on one time chunk ``x [B, C_i, t, H_i, W_i]``; returns the next stage's input."""
        n = self.num_stages
        if i == 0:
            return self.conv_in(x, cache)
        if i == 1:
            return self.mid_block(x, cache)
        if i == n - 1:
            return self.conv_out(F.silu(self.norm_out(x)), cache)
        if 2 <= i < n - 1:
            return self.up_blocks[i - 2](x, cache, first_chunk)
        raise ValueError(f"stage index {i} out of range [0, {n})")

    def forward(self, x: torch.Tensor, cache: FeatureCache, first_chunk: bool = False) -> torch.Tensor:
        for i in range(self.num_stages):
            x = self.forward_stage(i, x, cache, first_chunk)
        return x


def patchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """``[B, C, T, H, W]`` -> ``[B, C*p*p, T, H/p, W/p]`` (channel order ``(c, pw, ph)`` as in Wan 2.2)."""
    if p == 1:
        return x
    b, c, t, h, w = x.shape
    x = x.view(b, c, t, h // p, p, w // p, p).permute(0, 1, 6, 4, 2, 3, 5)
    return x.reshape(b, c * p * p, t, h // p, w // p)


def unpatchify(x: torch.Tensor, p: int) -> torch.Tensor:
    """Inverse of :func:`patchify`: ``[B, C*p*p, T, h, w]`` -> ``[B, C, T, h*p, w*p]``."""
    if p == 1:
        return x
    b, cp, t, h, w = x.shape
    x = x.view(b, cp // (p * p), p, p, t, h, w).permute(0, 1, 4, 5, 3, 6, 2)
    return x.reshape(b, cp // (p * p), t, h * p, w * p)


class FrameDecodeLoop(nn.Module):
    """The decode loop: the decoder over latent frames one at a time (one ``FeatureCache``), then unpatchify + clamp.

    A parameterless submodule of :class:`WanVAE` so that a parallel plan can swap the whole loop (patch / pipeline
    decoding, see ``vae_plan``) without touching the model code.
    """

    def __init__(self, patch: int) -> None:
        super().__init__()
        self.patch = patch

    def forward(self, decoder: "WanDecoder3d", x: torch.Tensor) -> torch.Tensor | None:
        """x ``[B, z_dim, T, h, w]`` (after ``post_quant_conv``) -> video ``[B, 3, 1 + 4*(T-1), h*s, w*s]``."""
        cache = FeatureCache()
        frames = [decoder(x[:, :, i : i + 1], cache, first_chunk=(i == 0)) for i in range(x.shape[2])]
        return unpatchify(torch.cat(frames, dim=2), self.patch).clamp(-1.0, 1.0)


class WanVAE(nn.Module):
    """Wan 2.1 / 2.2 VAE. Parameter names are diffusers' (``encoder.*``, ``quant_conv``, ``post_quant_conv``,
    ``decoder.*``), so ``load_state_dict`` takes a diffusers state dict as is."""

    def __init__(self, config: WanVAEConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else WanVAEConfig.wan21()
        z = self.config.z_dim
        self.encoder = WanEncoder3d(self.config)
        self.quant_conv = CausalConv3d(2 * z, 2 * z, 1)
        self.post_quant_conv = CausalConv3d(z, z, 1)
        self.decoder = WanDecoder3d(self.config)
        self.decode_loop = FrameDecodeLoop(self.config.patch)  # no parameters; swapped by parallel plans

    @classmethod
    def from_pretrained(
        cls,
        path: str | os.PathLike,
        config: WanVAEConfig | dict | None = None,
        dtype: torch.dtype | None = None,
    ) -> "WanVAE":
        """Load a diffusers folder (``vae/`` or the folder itself) or an official ``Wan2.x_VAE.pth``.

        ``config`` overrides the folder's ``config.json``; for a ``.pth`` it defaults to the 2.1 or 2.2 preset
        (chosen from the key layout). Mismatched keys or shapes raise ``ValueError`` naming them.
        """
        from .vae_loader import load_wan_vae

        return load_wan_vae(path, config=config, dtype=dtype)

    # ---- latent statistics -------------------------------------------------------------------------------------

    def _stats(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = torch.tensor(self.config.latents_mean, device=z.device, dtype=z.dtype).view(1, -1, 1, 1, 1)
        inv_std = 1.0 / torch.tensor(self.config.latents_std, device=z.device, dtype=z.dtype).view(1, -1, 1, 1, 1)
        return mean, inv_std

    def normalize_latents(self, z: torch.Tensor) -> torch.Tensor:
        """VAE latents -> diffusion-space latents: ``(z - mean) / std``; z ``[B, z_dim, T, h, w]``.

        Written as diffusers' pipelines do (multiply by ``1/std``) so results match them bit for bit.
        """
        check_5d("latents", z, self.config.z_dim)
        mean, inv_std = self._stats(z)
        return (z - mean) * inv_std

    def denormalize_latents(self, z: torch.Tensor) -> torch.Tensor:
        """Diffusion-space latents -> VAE latents: ``z * std + mean`` (as diffusers' ``z / (1/std) + mean``)."""
        check_5d("latents", z, self.config.z_dim)
        mean, inv_std = self._stats(z)
        return z / inv_std + mean

    # ---- decode / encode ---------------------------------------------------------------------------------------

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Decode VAE latents (NOT de-normalised here, exactly like ``AutoencoderKLWan.decode``).

        Args:
            z: ``[B, z_dim, T, h, w]``, T >= 1.
        Returns:
            video ``[B, 3, 1 + 4*(T-1), h*s, w*s]`` in [-1, 1] (s = 8 for 2.1, 16 for 2.2). After
            ``vidpar.parallelize(vae, ctx, output="rank0")`` ranks other than 0 return None.
        """
        check_5d("latents", z, self.config.z_dim)
        z = z.to(self.post_quant_conv.weight.dtype)
        x = self.post_quant_conv(z)  # 1x1x1: per pixel and per frame, so applied to all frames at once
        return self.decode_loop(self.decoder, x)

    def parallel_plan(self, vae_mode: str = "auto", output: str = "all", pipeline_degree: int | None = None):
        """The plan ``vidpar.parallelize(vae, ctx, **options)`` applies: decode over every rank of the world.

        Args:
            vae_mode: ``"patch"`` (latent rows split over the ranks, halo exchange), ``"pipeline"`` (decoder
                stages on different ranks, latent frames streamed through), ``"combined"`` (pipeline x patch) or
                ``"auto"`` (chosen per call; see ``vae_plan``).
            output: ``"all"`` (the video on every rank) or ``"rank0"`` (on rank 0; other ranks get None).
            pipeline_degree: pipeline stage groups for ``"combined"`` (default 2).
        """
        from .vae_plan import wan_vae_plan

        return wan_vae_plan(self, vae_mode=vae_mode, output=output, pipeline_degree=pipeline_degree)

    def encode(self, video: torch.Tensor) -> torch.Tensor:
        """Encode a video to the mean of the latent distribution (``AutoencoderKLWan.encode(x).latent_dist.mean``).

        Args:
            video: ``[B, 3, F, H, W]`` in [-1, 1], F = 1 + 4k; H, W divisible by ``patch_size`` (2.2).
        Returns:
            ``[B, z_dim, 1 + (F-1)/4, ceil(H/s), ceil(W/s)]`` (not normalised; see :meth:`normalize_latents`).
        """
        cfg = self.config
        check_5d("video", video, cfg.video_channels)
        f, h, w = video.shape[2:]
        if (f - 1) % cfg.scale_factor_temporal:
            # diffusers silently drops the trailing frames; refuse instead.
            raise ValueError(f"video frame count must be 1 + {cfg.scale_factor_temporal}k, got {f}")
        if h % cfg.patch or w % cfg.patch:
            raise ValueError(f"video H, W must be divisible by patch_size={cfg.patch}, got {h}x{w}")
        x = patchify(video.to(self.quant_conv.weight.dtype), cfg.patch)
        cache = FeatureCache()
        chunks = [x[:, :, :1]]
        if f > 1:
            chunks += list(x[:, :, 1:].split(cfg.scale_factor_temporal, dim=2))
        out = torch.cat([self.encoder(c, cache, first_chunk=(i == 0)) for i, c in enumerate(chunks)], dim=2)
        return self.quant_conv(out)[:, : cfg.z_dim]
