"""The repeated blocks of a denoiser as one call that a policy can act on (step caching), for every family.

A DiT calls its blocks through a ``BlockLoop`` instead of a ``for`` loop::

    (x,) = self.block_loop((x,), e0, context, context_img, rope, modulation=e0)          # Wan: one stream
    x, _ = self.block_loop((x, context), vec, rope, modulation=vec)                        # HunyuanVideo-1.5

``states`` are the residual streams the blocks update (each block takes ``*states, *args`` and returns the new
states, a tensor for one stream or a tuple); ``args`` are passed unchanged to every block. The loop's ``streams``
say, per state, whether it is split over the sequence-parallel ranks (``sharded``: the video tokens) or full and
identical on every rank (the text tokens of a dual-stream model), and whether the model reads it after the loop
(``output``). ``modulation`` is the timestep signal the blocks are conditioned on (TeaCache-class estimators
compare it between steps); ``modulation_sharded`` says it is per token (split like the video tokens).

With no runner attached the call is exactly the plain loop (bit-identical to writing it out). A runner (see
``vidpar.cache``) receives the loop, the states, the args and the signals, and may run any prefix of the blocks
(``run(states, args, 0, n)``), the rest, or none. The loop does not own the blocks: they stay registered on the
model as ``blocks`` (checkpoint keys, sharding plans and FSDP units are unchanged).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import torch
from torch import nn


@dataclass(frozen=True)
class Stream:
    """One residual stream of a block loop."""

    name: str
    sharded: bool  # split along dim 1 over the sequence-parallel ranks (else full and identical on every rank)
    output: bool = True  # read by the model after the loop (a non-output stream's final value is discarded)


@dataclass(frozen=True)
class LoopSignals:
    """What a loop call tells a policy besides the states: the timestep modulation the blocks receive."""

    modulation: torch.Tensor | None = None
    modulation_sharded: bool = False  # per-token modulation, split along dim 1 like the video tokens


class LoopRunner(Protocol):
    """What a policy attaches to a loop (``loop.runner = ...``)."""

    def run_loop(self, loop: "BlockLoop", states: tuple[torch.Tensor, ...], args: tuple,
                 signals: LoopSignals) -> tuple[torch.Tensor, ...]:
        """The loop's output states (same shapes as ``states``)."""


class BlockLoop:
    """Calls ``blocks`` in order on residual ``streams``; see the module docstring.

    Not an ``nn.Module`` on purpose: it holds a reference to the model's ``blocks`` without registering them a
    second time, so parameter names and ``state_dict`` keys are those of the model.
    """

    def __init__(self, blocks: nn.ModuleList, streams: Sequence[Stream]) -> None:
        if not streams or not any(s.output for s in streams):
            raise ValueError("a block loop needs at least one output stream")
        self.blocks = blocks
        self.streams = tuple(streams)
        self.runner: LoopRunner | None = None

    def __len__(self) -> int:
        return len(self.blocks)

    @property
    def output_streams(self) -> tuple[int, ...]:
        """Indices of the streams the model reads after the loop (the ones a cache must reproduce)."""
        return tuple(i for i, s in enumerate(self.streams) if s.output)

    def __call__(self, states: tuple[torch.Tensor, ...], *args, modulation: torch.Tensor | None = None,
                 modulation_sharded: bool = False) -> tuple[torch.Tensor, ...]:
        """Run the blocks on ``states`` (one tensor per stream, e.g. ``x [B, S, dim]``); returns the new states."""
        if len(states) != len(self.streams):
            raise ValueError(f"block loop over {[s.name for s in self.streams]} got {len(states)} states")
        if self.runner is None:
            return self.run(states, args)
        return self.runner.run_loop(self, tuple(states), args, LoopSignals(modulation, modulation_sharded))

    def run(self, states: tuple[torch.Tensor, ...], args: tuple, start: int = 0,
            stop: int | None = None) -> tuple[torch.Tensor, ...]:
        """Blocks ``start .. stop - 1`` (default: all) applied to ``states``."""
        stop = len(self.blocks) if stop is None else stop
        for i in range(start, stop):
            out = self.blocks[i](*states, *args)
            states = out if isinstance(out, tuple) else (out,)
        return tuple(states)


__all__ = ["BlockLoop", "LoopRunner", "LoopSignals", "Stream"]
