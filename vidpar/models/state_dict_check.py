"""How a checkpoint's tensors differ from a model's: one line naming missing, unexpected and wrong-shape keys."""

from __future__ import annotations

from typing import Mapping

import torch


def state_dict_mismatch(own: Mapping[str, torch.Tensor], loaded: Mapping[str, torch.Tensor]) -> str | None:
    """``"missing (N): a, b; unexpected (M): ...; wrong shape (K): k: checkpoint (..) vs model (..)"`` (at most 20
    names per kind), or None when ``loaded`` has exactly ``own``'s keys and shapes. ``own`` may live on the meta
    device (only shapes are read)."""
    missing = sorted(set(own) - set(loaded))
    unexpected = sorted(set(loaded) - set(own))
    wrong = sorted(
        f"{k}: checkpoint {tuple(loaded[k].shape)} vs model {tuple(own[k].shape)}"
        for k in set(own) & set(loaded)
        if tuple(loaded[k].shape) != tuple(own[k].shape)
    )
    parts = [
        f"{label} ({len(names)}): " + ", ".join(names[:20]) + (f", ... ({len(names)} in all)" if len(names) > 20 else "")
        for label, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong))
        if names
    ]
    return "; ".join(parts) if parts else None


__all__ = ["state_dict_mismatch"]
