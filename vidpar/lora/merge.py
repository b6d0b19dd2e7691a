"""Merge LoRAs into the denoisers' weights exactly, and take them out again bit for bit.

Every touched parameter is recomputed from its saved original: ``W = cast(W0 + t1 + t2 + ...)`` with each term
``scale * (up @ down)`` or ``scale * delta`` computed in fp32 (float64 for a float64 model) and the sum cast once.
The LoRAs are summed in a canonical order (by content hash), so the weights depend only on the set of LoRAs, not
on the order they were loaded in.

FSDP2: a sharded parameter (``DTensor``, rows split over the ranks) is merged on its local rows. The term is
computed over the full parameter on every rank and then sliced, so each element goes through exactly the same
operations as in an unsharded merge: the merged weights are bit-identical on any mesh. Cost per rank, transient
(one parameter at a time): ``4 * numel`` bytes for the full fp32 term plus ``4 * local numel`` for the fp32
accumulator; kept: the originals of the touched parameters' local rows (on the host by default).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Mapping, Sequence

import torch
from torch import nn

from vidpar.parallel.agree import run_agreed
from vidpar.parallel.context import ParallelContext

from .keys import LoraKeyMap
from .layouts import LoraFile, read_lora_file
from .plan import ParamKey, Term, build_plan, local_rows
from .spec import LoraSpec, lora_set_digest

DIGEST_INTS = 4  # a sha256 as four int64 for the cross-rank check


@dataclass(frozen=True)
class _Loaded:
    spec: LoraSpec
    file: LoraFile

    @property
    def order(self) -> tuple:
        return (self.file.sha256, self.spec.strength, self.spec.target)


class LoraHandle:
    """The LoRAs merged into a set of denoisers, and the originals to restore them.

    Args:
        denoisers: ``{name: module}``, e.g. ``{"high": dit, "low": dit_2}``; a ``LoraSpec.target`` names one.
        keys: the family's module renaming (``LoraKeyMap``).
        ctx: with more than one rank, every rank checks its files and the outcome is agreed before any weight
            changes (a bad file raises on every rank; ranks that read different bytes raise ``ValueError``).
        keep: where the original values are kept for ``remove``: ``"host"`` (CPU memory) or ``"device"``.
    """

    def __init__(
        self,
        denoisers: Mapping[str, nn.Module],
        keys: LoraKeyMap,
        ctx: ParallelContext | None = None,
        keep: Literal["host", "device"] = "host",
    ) -> None:
        if not denoisers:
            raise ValueError("LoRAs need at least one denoiser to go into")
        if keep not in ("host", "device"):
            raise ValueError(f"keep must be 'host' or 'device', got {keep!r}")
        self.denoisers = dict(denoisers)
        self.keys = keys
        self.ctx = ctx
        self.keep = keep
        self._loaded: list[_Loaded] = []  # in the order the user gave them
        self._plan: dict[ParamKey, list[Term]] = {}
        self._originals: dict[ParamKey, torch.Tensor] = {}

    # ---- what is loaded ----

    @property
    def specs(self) -> tuple[LoraSpec, ...]:
        """The merged LoRAs, in the order they were added."""
        return tuple(item.spec for item in self._loaded)

    @property
    def digest(self) -> str:
        """Hex digest of the merged set (content hashes, strengths, targets); for a checkpoint's snapshot key."""
        return lora_set_digest(item.order for item in self._loaded)

    def describe(self) -> list[dict]:
        """``[{"file", "sha256", "strength", "target", "layout"}]`` of the merged LoRAs, for logs and keys."""
        return [dict(file=str(i.spec.path), sha256=i.file.sha256, strength=i.spec.strength, target=i.spec.target,
                     layout=i.file.layout) for i in self._loaded]

    def kept_bytes(self) -> int:
        """Bytes held for ``remove`` (the touched parameters' local originals)."""
        return sum(t.numel() * t.element_size() for t in self._originals.values())

    # ---- changing the weights ----

    def add(self, specs: Sequence[LoraSpec]) -> "LoraHandle":
        """Merge more LoRAs. All files are read and checked on every rank before any weight changes."""
        specs = [LoraSpec.coerce(s) for s in specs]
        if not specs:
            return self

        _reshard(self.denoisers.values())  # FSDP: check and merge the sharded parameters, not gathered copies

        def prepare():
            new = [_Loaded(s, read_lora_file(s.path)) for s in specs]
            loaded = [*self._loaded, *new]
            ordered = sorted(loaded, key=lambda item: item.order)
            plan = build_plan(self.denoisers, [(i.spec, i.file) for i in ordered], self.keys)
            touched = sorted(build_plan(self.denoisers, [(i.spec, i.file) for i in new], self.keys))
            return loaded, plan, touched

        loaded, plan, touched = run_agreed(
            self.ctx, prepare, fingerprint=lambda r: _digest_ints(lora_set_digest(i.order for i in r[0])),
            fingerprint_len=DIGEST_INTS, what="loading LoRAs")
        self._merge(plan, touched, rollback_to=self._plan)
        self._loaded, self._plan = loaded, plan
        return self

    def remove(self) -> None:
        """Restore every touched parameter to its original value, bit for bit, and forget all LoRAs."""
        _reshard(self.denoisers.values())
        with torch.no_grad():
            for key in self._originals:
                self._local(key).copy_(self._original(key))
        self._loaded, self._plan, self._originals = [], {}, {}

    # ---- internals ----

    def _param(self, key: ParamKey) -> torch.Tensor:
        target, name = key
        return self.denoisers[target].get_parameter(name)

    def _local(self, key: ParamKey) -> torch.Tensor:
        p = self._param(key)
        return p.to_local() if hasattr(p, "to_local") else p  # written under no_grad, never through .data

    def _original(self, key: ParamKey) -> torch.Tensor:
        """The original local rows of a parameter (saved on first touch). Originals saved before FSDP sharding
        are full tensors: their local rows are sliced out."""
        if key not in self._originals:
            local = self._local(key).detach()
            self._originals[key] = local.to("cpu", copy=True) if self.keep == "host" else local.clone()
        original = self._originals[key]
        rows = local_rows(self._param(key))
        if rows is not None and original.shape[0] != rows.stop - rows.start:
            original = original[rows]
        return original

    def _merge(self, plan: dict[ParamKey, list[Term]], touched: list[ParamKey], rollback_to) -> None:
        """Write ``plan`` into the ``touched`` parameters, agreed over ranks; on failure anywhere, every rank
        puts back the weights of ``rollback_to`` (a plan that was merged before)."""

        def write():
            with torch.no_grad():
                for key in touched:
                    _write(self._param(key), self._local(key), self._original(key), plan.get(key, []))

        try:
            run_agreed(self.ctx, write, what="merging LoRAs")
        except Exception as error:
            try:
                with torch.no_grad():
                    for key in touched:
                        if key in self._originals:
                            _write(self._param(key), self._local(key), self._original(key), rollback_to.get(key, []))
                        if key not in rollback_to:
                            self._originals.pop(key, None)
            except Exception as again:
                raise RuntimeError(f"merging LoRAs failed ({error}) and putting the previous weights back failed "
                                   f"too ({again}): reload the model") from again
            raise


def _write(param: torch.Tensor, local: torch.Tensor, original: torch.Tensor, terms: list[Term]) -> None:
    """``local = cast(original + sum(terms))`` with the sum in fp32 (float64 stays float64)."""
    if local.numel() == 0:
        return
    wide = torch.float64 if local.dtype == torch.float64 else torch.float32
    rows = local_rows(param)
    acc = original.to(device=local.device, dtype=wide, copy=True)
    for term in terms:
        acc.add_(_term_value(term, tuple(param.shape), local.device, wide, rows))
    local.copy_(acc)


def _term_value(term: Term, shape: tuple[int, ...], device, wide, rows: slice | None) -> torch.Tensor:
    """The term over the full parameter, then this rank's rows. Plain matmul, then mul: no fused op whose
    rounding could depend on the tensor's size or position."""
    if term.delta is not None:
        value = term.delta.to(device=device, dtype=wide).mul(term.scale)
    else:
        up = term.up.to(device=device, dtype=wide).flatten(1)
        down = term.down.to(device=device, dtype=wide).flatten(1)
        value = torch.matmul(up, down).reshape(shape).mul_(term.scale)
    return value if rows is None else value[rows]


def _reshard(modules) -> None:
    """FSDP2 keeps the root's weights unsharded after a forward; put every FSDP unit back on its shards so that
    the parameters seen are the sharded ones that the next forward gathers from."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # a torch without FSDP2 cannot have sharded modules either
        return
    for module in modules:
        for sub in module.modules():
            if isinstance(sub, FSDPModule):
                sub.reshard()


def _digest_ints(hex_digest: str) -> list[int]:
    raw = bytes.fromhex(hex_digest)
    return [int.from_bytes(raw[8 * i: 8 * i + 8], "big", signed=True) for i in range(DIGEST_INTS)]


def apply_loras(
    denoisers: Mapping[str, nn.Module],
    specs: Sequence[LoraSpec | str | tuple],
    keys: LoraKeyMap,
    ctx: ParallelContext | None = None,
    keep: Literal["host", "device"] = "host",
) -> LoraHandle:
    """Merge ``specs`` into ``denoisers`` and return the handle that can ``add`` more or ``remove`` them all.

    ``specs`` items: ``LoraSpec``, ``"FILE[:STRENGTH[:TARGET]]"`` or ``(path, strength[, target])``.
    Raises ``ValueError`` (on every rank of ``ctx``) naming the file and first offending key, with no weight
    changed.
    """
    return LoraHandle(denoisers, keys, ctx, keep).add(specs)
