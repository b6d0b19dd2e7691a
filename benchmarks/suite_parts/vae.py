"""Wan VAE decode: time and peak memory per mode (dtype, eager or the decoder compiled) for a short clip."""

from __future__ import annotations

import torch

from vidpar.compile import CompileOptions, compile_regions
from vidpar.models.wan.vae import WanVAE
from vidpar.models.wan.vae_config import WanVAEConfig
from vidpar.models.wan.workload import wan_vae_workload

from .common import Budget, rel_err, skipped, timed


def vae_decode(config: WanVAEConfig, latent_shape: tuple[int, ...], modes: list[tuple[str, torch.dtype]],
               device: torch.device, compile_backend: str, repeats: int, budget: Budget) -> dict:
    """Decode random latents ``latent_shape`` with a random VAE of ``config`` in each ``(mode, dtype)``
    (``mode``: ``"eager"`` or ``"compiled"``: the decoder, as ``vidpar.compile`` compiles it). ``err``: max
    relative difference to the first mode's video. One process (the parallel decode needs several ranks)."""
    torch.manual_seed(0)
    base = WanVAE(config).eval()
    with torch.no_grad():
        for p in base.parameters():  # norm gammas start at one, biases at zero: make every weight matter
            p.add_(0.02 * torch.randn_like(p))
    z = torch.randn(latent_shape, generator=torch.Generator().manual_seed(1))
    frames = 1 + config.scale_factor_temporal * (latent_shape[2] - 1)
    pixels = frames * latent_shape[3] * latent_shape[4] * config.scale_factor_spatial ** 2
    rows, first = [], None
    for mode, dtype in modes:
        row = {"mode": mode, "dtype": str(dtype).replace("torch.", ""), "frames": frames,
               "height": latent_shape[3] * config.scale_factor_spatial,
               "width": latent_shape[4] * config.scale_factor_spatial}
        if not budget.allows(240 if mode == "compiled" else 30):
            rows.append({**row, **skipped("time budget")})
            continue
        vae = WanVAE(config).to(device=device, dtype=dtype).eval()
        vae.load_state_dict(base.state_dict())
        if mode == "compiled":
            torch._dynamo.reset()
            compile_regions([vae.decoder], CompileOptions(backend=compile_backend, vae=True))
        zin = z.to(device=device, dtype=dtype)
        try:
            with torch.no_grad():
                result = timed(lambda: vae.decode(zin), device, repeats)
                video = vae.decode(zin).float().cpu()
        except Exception as e:  # noqa: BLE001 - recorded, the suite goes on
            rows.append({**row, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"})
            continue
        finally:
            del vae
        first = video if first is None else first
        rows.append({**row, **result, "err_vs_first_mode": rel_err(video, first)})
    return {"latent_shape": list(latent_shape), "pixels": pixels,
            "decode_flops_per_pixel": wan_vae_workload(config).decode_flops_per_pixel, "rows": rows}
