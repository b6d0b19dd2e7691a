"""Regional ``torch.compile`` through the model-family seam.

Each repeated block of every denoiser (``LoadedModel.fsdp_units(dit)``: Wan's attention blocks, HunyuanVideo-1.5's
dual-stream blocks) is compiled on its own, as torchtitan does: all blocks of a model share one compiled graph
(their code and shapes are the same; parameters are graph inputs), so compile time is that of one block, paid once
per input shape, while the embeddings, the sharding hooks of the parallel plan and the sampler stay eager.

Every attention path compiles without a graph break: Ulysses all-to-alls become functional collectives, the ring
is a custom op (``vidpar.parallel.ring_op``), the attention backends are custom ops (``vidpar.kernels.ops``), and
the shard lengths come from the plan, so no length exchange runs in a compiled region. ``fullgraph=True`` (the
default) turns any break into an error instead of a silent slowdown.

The compiled path is for inference (no backward is registered for the custom ops).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterable

import torch
from torch import nn

COMPILE_BACKENDS = ("inductor", "aot_eager", "eager")


@dataclass(frozen=True)
class CompileOptions:
    """How the blocks are compiled (``torch.compile`` arguments).

    Args:
        backend: ``"inductor"`` (generated kernels), ``"aot_eager"`` / ``"eager"`` (tracing only: for tests and
            for finding graph breaks cheaply).
        mode: inductor mode (``None``, ``"max-autotune-no-cudagraphs"``...).
        dynamic: ``None`` lets torch mark a dimension dynamic after it changes once (e.g. the number of text tokens
            of HunyuanVideo-1.5 prompts), ``False`` compiles every shape on its own.
        fullgraph: raise on a graph break instead of splitting the block.
        vae: also compile the VAE decode's regions (``LoadedModel.vae_compile_units``) where the decode runs on
            one process (see ``compile_model``). Off by default: the Wan decoder traces as three graphs (first,
            second and later latent frames), a long compile next to a single decode.
    """

    backend: str = "inductor"
    mode: str | None = None
    dynamic: bool | None = None
    fullgraph: bool = True
    vae: bool = False

    def __post_init__(self) -> None:
        if self.backend not in COMPILE_BACKENDS:
            raise ValueError(f"CompileOptions.backend must be one of {COMPILE_BACKENDS}, got {self.backend!r}")
        if self.dynamic not in (None, True, False):
            raise ValueError(f"CompileOptions.dynamic must be None, True or False, got {self.dynamic!r}")

    @classmethod
    def coerce(cls, value: "bool | CompileOptions | None") -> "CompileOptions | None":
        """``True`` -> default options, ``False``/``None`` -> None (no compile), options as they are."""
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, cls):
            return value
        raise ValueError(f"compile must be a bool or a CompileOptions, got {value!r}")


def compile_regions(modules: Iterable[nn.Module], options: CompileOptions) -> int:
    """Compile each module in place (``nn.Module.compile``: names, parameters and hooks stay as they are).

    Returns the number of modules compiled.
    """
    n = 0
    for module in modules:
        module.compile(backend=options.backend, mode=options.mode, dynamic=options.dynamic,
                       fullgraph=options.fullgraph)
        n += 1
    return n


def compile_model(comps: Any, options: CompileOptions, vae: bool | None = None) -> dict[str, int]:
    """Regional compilation of a ``LoadedModel``: every denoiser's blocks, and the VAE decode's regions.

    Args:
        vae: compile ``comps.vae_compile_units()`` (default ``options.vae``). The caller turns it off where the
            decode runs over several ranks: the parallel decode's halo exchanges are point-to-point transfers,
            which do not trace (each would be a graph break), and its pipeline stages run stage by stage.
    Returns:
        how many regions were compiled, ``{"denoiser": n, "vae": m}``.
    """
    counts = {"denoiser": 0, "vae": 0}
    for dit in comps.denoisers():
        counts["denoiser"] += compile_regions(comps.fsdp_units(dit), options)
    if options.vae if vae is None else vae:
        counts["vae"] = compile_regions(comps.vae_compile_units(), options)
    return counts


@dataclass(frozen=True)
class GraphReport:
    """What dynamo made of one call: graphs, breaks and their reasons."""

    graphs: int
    breaks: int
    reasons: tuple[str, ...]


def graph_breaks(fn: Callable, *args, **kwargs) -> GraphReport:
    """Trace ``fn(*args, **kwargs)`` with dynamo (no code generation) and report its graphs and breaks.

    Compiled regions inside ``fn`` are traced as they are; the call runs once for real.
    """
    explained = torch._dynamo.explain(fn)(*args, **kwargs)
    reasons = tuple(str(b.reason).splitlines()[0] for b in explained.break_reasons)
    return GraphReport(explained.graph_count, explained.graph_break_count, reasons)


__all__ = ["COMPILE_BACKENDS", "CompileOptions", "GraphReport", "compile_model", "compile_regions", "graph_breaks"]
