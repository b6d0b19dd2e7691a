"""Check a set of parsed LoRA files against the denoisers and list, per parameter, what to add to it.

Nothing here changes a weight: the plan is built and validated completely (names, shapes, sharding) before the
merge starts, so a bad file leaves the model untouched.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch
from torch import nn

from .keys import LoraKeyMap, NameResolver
from .layouts import LoraFile, LoraModule
from .spec import EVERY_DENOISER, LoraSpec


@dataclass(frozen=True)
class Term:
    """One addend of a parameter: ``scale * (up @ down)`` (``up [out, r]``, ``down [r, in...]``) or
    ``scale * delta`` (``delta`` of the parameter's full shape). Tensors stay on the CPU until the merge."""

    scale: float
    up: torch.Tensor | None = None
    down: torch.Tensor | None = None
    delta: torch.Tensor | None = None


ParamKey = tuple[str, str]  # (denoiser name, native parameter name)


def targets_of(spec: LoraSpec, denoisers: Mapping[str, nn.Module]) -> list[str]:
    """The denoiser names ``spec`` goes into; ``ValueError`` if it names one the model does not have."""
    if spec.target == EVERY_DENOISER:
        return list(denoisers)
    if spec.target not in denoisers:
        raise ValueError(f"LoRA {spec.path}: target {spec.target!r} is not a denoiser of this model "
                         f"(it has {', '.join(repr(n) for n in denoisers)}; use 'both' for all of them)")
    return [spec.target]


def build_plan(
    denoisers: Mapping[str, nn.Module],
    loras: Sequence[tuple[LoraSpec, LoraFile]],
    keys: LoraKeyMap,
) -> dict[ParamKey, list[Term]]:
    """``{(denoiser, parameter): [terms in the order of loras]}``; raises ``ValueError`` naming the file and the
    first offending key (unknown module, wrong shape, a LoRA for another model) before anything changes."""
    plan: dict[ParamKey, list[Term]] = {}
    resolvers = {name: NameResolver(module, keys) for name, module in denoisers.items()}
    for spec, lora in loras:
        for target in targets_of(spec, denoisers):
            resolver = resolvers[target]
            names = sorted(lora.modules)
            _, natives, missing = resolver.resolve_all(names, lora.naming)
            if missing is not None:
                key = lora.modules[missing].first_key
                raise ValueError(f"LoRA {lora.path} ({lora.layout} layout): key {key!r} matches no module of "
                                 f"the {target!r} denoiser (is this LoRA for another model?)")
            for name in names:
                for param, term in _module_terms(lora, lora.modules[name], natives[name], resolver, spec.strength):
                    _check_sharding(lora, lora.modules[name], param, resolver.params[param])
                    plan.setdefault((target, param), []).append(term)
    return plan


def _module_terms(lora: LoraFile, mod: LoraModule, native: str, res: NameResolver, strength: float):
    """The ``(native parameter name, Term)`` pairs of one module entry, shapes checked."""
    out = []
    module = res.modules.get(native)
    weight_name = native if module is None else f"{native}.weight"
    weight = res.params.get(weight_name)
    bias_name = f"{native}.bias"
    bias = res.params.get(bias_name) if module is not None else None

    def fail(what: str, detail: str):
        raise ValueError(f"LoRA {lora.path} ({lora.layout} layout): key {mod.keys[what]!r} {detail} "
                         f"(is this LoRA for another model or model size?)")

    if mod.down is not None:
        if weight is None or weight.dim() < 2:
            fail("down", f"targets {native}, which has no weight matrix")
        fan_in = math.prod(weight.shape[1:])
        if mod.up.shape[0] != weight.shape[0] or math.prod(mod.down.shape[1:]) != fan_in:
            fail("up", f"gives {native} a [{mod.up.shape[0]} x {math.prod(mod.down.shape[1:])}] update (up "
                       f"{list(mod.up.shape)}, down {list(mod.down.shape)}) but its weight is {list(weight.shape)}")
        out.append((weight_name, Term(strength * mod.scale, up=mod.up, down=mod.down)))
        if mod.up_bias is not None:
            if bias is None or tuple(bias.shape) != tuple(mod.up_bias.shape):
                fail("up_bias", f"has shape {list(mod.up_bias.shape)} but {native} has "
                                f"{'no bias' if bias is None else f'a bias of shape {list(bias.shape)}'}")
            out.append((bias_name, Term(strength * mod.scale, delta=mod.up_bias)))
    if mod.diff is not None:
        if weight is None or tuple(weight.shape) != tuple(mod.diff.shape):
            fail("diff", f"has shape {list(mod.diff.shape)} but {native} has "
                         f"{'no weight' if weight is None else f'a weight of shape {list(weight.shape)}'}")
        out.append((weight_name, Term(strength, delta=mod.diff)))
    if mod.diff_b is not None:
        if bias is None or tuple(bias.shape) != tuple(mod.diff_b.shape):
            fail("diff_b", f"has shape {list(mod.diff_b.shape)} but {native} has "
                           f"{'no bias' if bias is None else f'a bias of shape {list(bias.shape)}'}")
        out.append((bias_name, Term(strength, delta=mod.diff_b)))
    return out


def local_rows(param: torch.Tensor) -> slice | None:
    """The rows (dim 0) of the full parameter this rank holds: None for an ordinary tensor; for an FSDP2
    ``DTensor`` sharded on dim 0 over a 1-D mesh, ``torch.chunk``'s piece for this rank.

    Raises ``ValueError`` for any other sharding (it would need a different slicing rule)."""
    if not hasattr(param, "to_local"):
        return None
    from torch.distributed.tensor import Shard

    mesh, placements = param.device_mesh, tuple(param.placements)
    if mesh.ndim != 1 or len(placements) != 1 or not isinstance(placements[0], Shard) or placements[0].dim != 0:
        raise ValueError(f"vidpar merges LoRAs into weights sharded on dim 0 over one mesh dim (FSDP2), "
                         f"not {placements} over a {mesh.ndim}-D mesh")
    n, parts = param.shape[0], mesh.size()
    chunk = -(-n // parts)
    start = min(mesh.get_local_rank() * chunk, n)
    return slice(start, min(start + chunk, n))


def _check_sharding(lora: LoraFile, mod: LoraModule, name: str, param: torch.Tensor) -> None:
    rows = local_rows(param)
    if rows is None:
        return
    local = param.to_local()
    if local.shape[0] != rows.stop - rows.start or tuple(local.shape[1:]) != tuple(param.shape[1:]):
        raise ValueError(f"LoRA {lora.path}: {name} is sharded as {list(local.shape)} of {list(param.shape)}, "
                         f"not as torch.chunk rows {rows.start}:{rows.stop}; vidpar cannot merge into it")
