"""Checks a ``Pipeline`` makes on every rank before it loads weights or starts a generation, so that a request the
run cannot serve is a ``ValueError`` everywhere instead of a failure at the first step or an out-of-memory kill:
the attention backend (known, installed, right device and dtype, a log-sum-exp where the mesh needs one) and the
predicted memory of a request (``vidpar.memory_check``)."""

from __future__ import annotations

import os

import torch

from vidpar.kernels.backends import resolve_backend
from vidpar.memory_check import (
    MemoryRequest, agree_capacity, describe_capacity, local_capacity, memory_problem,
)


def needs_lse(card, ring: int) -> bool:
    """Whether attention must return a log-sum-exp: ring attention, or a model with joint (text) tokens."""
    joint = card is not None and card.workload is not None and card.workload.config.joint_tokens
    return ring > 1 or bool(joint)


def attention_backend_problem(name: str, device: torch.device, dtype: torch.dtype, need_lse: bool) -> str | None:
    """Why ``name`` cannot serve this run (None: it can)."""
    try:
        resolve_backend(name, device, dtype, need_lse)
    except ValueError as e:
        return str(e)
    return None


def check_attention_backend(name: str, ctx, dtype: torch.dtype, card=None) -> None:
    """``ValueError`` (identical on every rank) unless ``name`` serves ``ctx``'s device, ``dtype`` and mesh."""
    problem = attention_backend_problem(name, ctx.device, dtype, needs_lse(card, ctx.config.ring))
    if problem is not None:
        raise ValueError(f"attention_backend: {problem}")


def check_fits(card, req, ctx, dtype: torch.dtype, vae_mode: str = "auto", fsdp: bool = False) -> None:
    """Refuse (``ValueError`` on every rank) a resolved request predicted not to fit this rank's memory: the
    smallest capacity over the ranks decides (one small all-gather), so every rank gives the same verdict."""
    local_world = int(os.environ.get("LOCAL_WORLD_SIZE", ctx.world_size))
    index = ctx.device.index if ctx.device.type == "cuda" and ctx.device.index is not None else 0
    capacity = agree_capacity(ctx, local_capacity(ctx.device.type, index, local_world))
    mreq = MemoryRequest(req.height, req.width, req.num_frames, ctx.config, dtype, ctx.device.type, vae_mode, fsdp)
    problem = memory_problem(card, mreq, capacity, describe_capacity(ctx.device.type, local_world))
    if problem is not None:
        raise ValueError(problem)


__all__ = ["attention_backend_problem", "check_attention_backend", "check_fits", "needs_lse"]
