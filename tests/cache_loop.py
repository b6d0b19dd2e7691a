"""A denoising loop over one DiT driven by a ``CacheSession`` directly (no text encoder, no VAE): cheap enough to run
a few steps of a family's transformer on every mesh, with the two guidance branches as in ``Pipeline``."""

from __future__ import annotations

from dataclasses import replace

import torch

from vidpar.cache import CacheSession
from vidpar.models.family import CacheProfile, StepInfo


class DiTOnly:
    """The part of a ``LoadedModel`` a ``CacheSession`` reads, for one bare denoiser."""

    def __init__(self, model: torch.nn.Module, name: str = "dit") -> None:
        self.model = model
        self.card = type("Card", (), {"name": name})()

    def denoisers(self):
        return [self.model]

    def block_loop(self, module):
        return module.block_loop

    def cache_profile(self, module):
        return CacheProfile()


TIMESTEPS = (999.0, 900.0, 780.0, 650.0, 520.0, 400.0, 290.0, 190.0, 100.0, 30.0)


@torch.no_grad()
def cached_loop(model, ctx, policy, latents: torch.Tensor, inputs: dict, steps: int, scale: float = 4.0,
                perturb: dict | None = None, timesteps=TIMESTEPS):
    """``steps`` Euler-like steps of ``model(latents, t, **inputs[branch])`` with CFG over ``inputs``' branches
    (``{"cond": {...}, "uncond": {...}}`` or cond only); with ``cfg=2`` each half runs its branch and the flows are
    all-gathered as the pipeline does. ``perturb``: ``{step: tensor}`` added to the latents before that step.

    Returns ``(latents, trace, stats)`` (trace and stats of this rank's session)."""
    session = CacheSession(policy, DiTOnly(model), ctx, steps)
    branches = tuple(inputs)
    with session.attached():
        for i in range(steps):
            if perturb and i in perturb:
                latents = latents + perturb[i]
            t = torch.tensor(timesteps[i])
            step = StepInfo(i, steps, t)
            session.begin_step(step, branches)
            mine = branches if ctx.config.cfg == 1 or len(branches) == 1 else (branches[ctx.coords["cfg"]],)
            flows = {}
            for branch in mine:
                session.enter(replace(step, branch=branch))
                flows[branch] = model(latents, t.reshape(1).expand(latents.shape[0]).float(), **inputs[branch])
            if len(branches) == 2 and ctx.config.cfg == 2:
                both = ctx.comm.all_gather(flows[mine[0]].contiguous(), "cfg")
                flows = {"cond": both[0], "uncond": both[1]}
            flow = flows["cond"] if len(branches) == 1 else flows["uncond"] + scale * (flows["cond"] - flows["uncond"])
            latents = latents - 0.1 * flow.to(latents.dtype)
    return latents, session.trace, session.stats
