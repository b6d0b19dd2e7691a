"""The planner's view of a HunyuanVideo-1.5 VAE, from the same ``HunyuanVideo15VAEConfig`` the model is built from.

It has the attributes and methods of the planner's ``VaeWorkload`` (``vidpar.planner.workload``): geometry, the
exact parameter count, decode cost estimates and the exact decode comm walk (``vae_comm_model``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from vidpar.planner.workload import VaeWorkload

from .vae_config import HunyuanVideo15VAEConfig


def decode_flops_per_pixel(cfg: HunyuanVideo15VAEConfig) -> float:
    """FLOPs of the decoder's convolutions per output pixel in the steady state (exact for the convs; the mid-block
    attention, quadratic in the latent size, is left out): ``2 x`` the stage costs' multiply-adds of one latent
    pixel over the ``temporal x spatial^2`` pixels it becomes."""
    from .vae_plan import stage_costs

    c0 = cfg.decoder_levels()[0].in_dim
    macs = sum(stage_costs(cfg, (1, 1, 1))) - 2.0 * c0  # minus the attention term at S = S_k = 1
    return 2.0 * macs / (cfg.temporal_factor * cfg.spatial_factor**2)


def decode_bytes_per_chunk_pixel(cfg: HunyuanVideo15VAEConfig) -> float:
    """ESTIMATED fp32 bytes the decode holds per output pixel of one steady chunk (temporal caches and the busiest
    stage's working set of ``vae_memory``; the attention's key cache, which grows with the clip, is left out)."""
    from .vae_memory import _stages

    stages = _stages(cfg, 0, 1, 1, 4, im2col=False)  # one latent pixel, fp32; 0 frames: no key cache
    held = sum(c for c, _, _ in stages) + max(wk for _, wk, _ in stages)
    return held / (cfg.temporal_factor * cfg.spatial_factor**2)


@dataclass(frozen=True)
class HunyuanVideo15VaeWorkload(VaeWorkload):
    """A HunyuanVideo-1.5 VAE for the planner (a ``vidpar.planner.workload.VaeWorkload``)."""

    config: HunyuanVideo15VAEConfig
    params: float = field(init=False)
    decode_flops_per_pixel: float = field(init=False)
    decode_bytes_per_chunk_pixel: float = field(init=False)

    def __post_init__(self) -> None:
        from .vae_memory import param_count

        object.__setattr__(self, "params", float(param_count(self.config)))
        object.__setattr__(self, "decode_flops_per_pixel", decode_flops_per_pixel(self.config))
        object.__setattr__(self, "decode_bytes_per_chunk_pixel", decode_bytes_per_chunk_pixel(self.config))

    @property
    def temporal(self) -> int:
        return self.config.temporal_factor

    @property
    def spatial(self) -> int:
        return self.config.spatial_factor

    @property
    def z_dim(self) -> int:
        return self.config.latent_channels

    def num_stages(self) -> int:
        from .vae_plan import num_stages

        return num_stages(self.config)

    def stage_costs(self, h: int, w: int, frames: int = 1) -> list[float]:
        """The costs the pipeline mode balances (``vae_plan.stage_costs``; they depend on ``frames`` through the
        causal attention's key count)."""
        from .vae_plan import stage_costs

        return stage_costs(self.config, (frames, h, w))

    def decode_comm_bytes(self, latent_shape, world_size, vae_mode="auto", output="all", dtype_bytes=4, *,
                          batch=1, rank=None, pipeline_degree=None) -> dict[str, int]:
        """Exact bytes ``rank`` sends in one parallel decode (``vae_comm_model.predict_vae_comm_bytes``)."""
        from .vae_comm_model import predict_vae_comm_bytes

        return predict_vae_comm_bytes(self.config, latent_shape, world_size, vae_mode, output, dtype_bytes,
                                      batch=batch, rank=rank, pipeline_degree=pipeline_degree)
