"""Parameter names of the HunyuanVideo-1.5 DiT in vidpar, the official checkpoints and diffusers.

vidpar's names are the official ones (``hyvideo/models/transformers/hunyuanvideo_1_5_transformer.py`` and its
``modules/`` in Tencent-Hunyuan/HunyuanVideo-1.5), except that the dual-stream blocks are ``blocks.<i>`` instead of
``double_blocks.<i>``. The official <-> diffusers map is the one of diffusers'
``scripts/convert_hunyuan_video1_5_to_diffusers.py``, written out both ways, with two tensor changes:

* the refiner's fused ``self_attn_qkv`` (official) is diffusers' ``attn.to_q``, ``to_k``, ``to_v`` (rows in that
  order);
* the final layer's modulation is ``(shift, scale)`` in the official layout, ``(scale, shift)`` in diffusers'.

``time_r_in`` (MeanFlow, step-distilled checkpoint) <-> ``time_embed.timestep_embedder_r`` is not in diffusers'
conversion script; it is mapped by structure (both are Linear(256, dim), SiLU, Linear(dim, dim) on the same
sinusoidal features, added to the timestep embedding).
"""

from __future__ import annotations

import re
from typing import Iterable, Mapping

import torch

OFFICIAL, DIFFUSERS = "official", "diffusers"
COPY, FUSED_QKV, SWAPPED_HALVES = "copy", "fused_qkv", "swapped_halves"

# (vidpar, diffusers) name pairs outside the blocks. A name ending in "." is a prefix.
_TOP_PAIRS: tuple[tuple[str, str], ...] = (
    ("img_in.proj.", "x_embedder.proj."),
    ("time_in.mlp.0.", "time_embed.timestep_embedder.linear_1."),
    ("time_in.mlp.2.", "time_embed.timestep_embedder.linear_2."),
    ("time_r_in.mlp.0.", "time_embed.timestep_embedder_r.linear_1."),
    ("time_r_in.mlp.2.", "time_embed.timestep_embedder_r.linear_2."),
    ("txt_in.input_embedder.", "context_embedder.proj_in."),
    ("txt_in.t_embedder.mlp.0.", "context_embedder.time_text_embed.timestep_embedder.linear_1."),
    ("txt_in.t_embedder.mlp.2.", "context_embedder.time_text_embed.timestep_embedder.linear_2."),
    ("txt_in.c_embedder.linear_1.", "context_embedder.time_text_embed.text_embedder.linear_1."),
    ("txt_in.c_embedder.linear_2.", "context_embedder.time_text_embed.text_embedder.linear_2."),
    ("byt5_in.layernorm.", "context_embedder_2.norm."),
    ("byt5_in.fc1.", "context_embedder_2.linear_1."),
    ("byt5_in.fc2.", "context_embedder_2.linear_2."),
    ("byt5_in.fc3.", "context_embedder_2.linear_3."),
    ("vision_in.proj.0.", "image_embedder.norm_in."),
    ("vision_in.proj.1.", "image_embedder.linear_1."),
    ("vision_in.proj.3.", "image_embedder.linear_2."),
    ("vision_in.proj.4.", "image_embedder.norm_out."),
    ("cond_type_embedding.", "cond_type_embed."),
    ("final_layer.adaLN_modulation.1.", "norm_out.linear."),  # halves swapped
    ("final_layer.linear.", "proj_out."),
)
_SWAPPED = "final_layer.adaLN_modulation.1."
# Inside ``txt_in.individual_token_refiner.blocks.<i>.`` <-> ``context_embedder.token_refiner.refiner_blocks.<i>.``
_REFINER_PAIRS: tuple[tuple[str, str], ...] = (
    ("norm1.", "norm1."),
    ("self_attn_proj.", "attn.to_out.0."),
    ("norm2.", "norm2."),
    ("mlp.fc1.", "ff.net.0.proj."),
    ("mlp.fc2.", "ff.net.2."),
    ("adaLN_modulation.1.", "norm_out.linear."),
)
_FUSED = "self_attn_qkv."
_QKV_PARTS = ("attn.to_q.", "attn.to_k.", "attn.to_v.")
# Inside ``blocks.<i>.`` <-> ``transformer_blocks.<i>.`` (official ``double_blocks.<i>.``).
_BLOCK_PAIRS: tuple[tuple[str, str], ...] = (
    ("img_mod.linear.", "norm1.linear."),
    ("txt_mod.linear.", "norm1_context.linear."),
    ("img_attn_q.", "attn.to_q."),
    ("img_attn_k.", "attn.to_k."),
    ("img_attn_v.", "attn.to_v."),
    ("img_attn_q_norm.", "attn.norm_q."),
    ("img_attn_k_norm.", "attn.norm_k."),
    ("img_attn_proj.", "attn.to_out.0."),
    ("txt_attn_q.", "attn.add_q_proj."),
    ("txt_attn_k.", "attn.add_k_proj."),
    ("txt_attn_v.", "attn.add_v_proj."),
    ("txt_attn_q_norm.", "attn.norm_added_q."),
    ("txt_attn_k_norm.", "attn.norm_added_k."),
    ("txt_attn_proj.", "attn.to_add_out."),
    ("img_mlp.fc1.", "ff.net.0.proj."),
    ("img_mlp.fc2.", "ff.net.2."),
    ("txt_mlp.fc1.", "ff_context.net.0.proj."),
    ("txt_mlp.fc2.", "ff_context.net.2."),
)
_SCOPES = (  # (vidpar block prefix, diffusers block prefix, inner pairs)
    ("txt_in.individual_token_refiner.blocks.", "context_embedder.token_refiner.refiner_blocks.", _REFINER_PAIRS),
    ("blocks.", "transformer_blocks.", _BLOCK_PAIRS),
)


def _rename(key: str, pairs: Iterable[tuple[str, str]], forward: bool) -> str | None:
    for a, b in pairs:
        src, dst = (a, b) if forward else (b, a)
        if key.startswith(src):
            return dst + key[len(src):]
    return None


def official_to_native_key(key: str) -> str:
    """Official name -> vidpar name (``double_blocks.<i>.`` -> ``blocks.<i>.``)."""
    return "blocks." + key[len("double_blocks."):] if key.startswith("double_blocks.") else key


def native_to_official_key(key: str) -> str:
    """vidpar name -> official name."""
    return "double_blocks." + key[len("blocks."):] if key.startswith("blocks.") else key


def native_to_diffusers(key: str) -> tuple[tuple[str, ...], str]:
    """vidpar name -> (diffusers name(s), how the tensor is stored): ``COPY``, ``FUSED_QKV`` (three diffusers
    tensors concatenated on dim 0) or ``SWAPPED_HALVES``. Unknown names raise ``KeyError``."""
    for ours, theirs, pairs in _SCOPES:
        m = re.match(re.escape(ours) + r"(\d+)\.(.*)", key)
        if m:
            idx, rest = m.groups()
            if rest.startswith(_FUSED):
                tail = rest[len(_FUSED):]
                return tuple(f"{theirs}{idx}.{p}{tail}" for p in _QKV_PARTS), FUSED_QKV
            inner = _rename(rest, pairs, forward=True)
            if inner is not None:
                return (f"{theirs}{idx}.{inner}",), COPY
            raise KeyError(key)
    name = _rename(key, _TOP_PAIRS, forward=True)
    if name is None:
        raise KeyError(key)
    return (name,), SWAPPED_HALVES if key.startswith(_SWAPPED) else COPY


def diffusers_to_native(key: str) -> tuple[str, int, str]:
    """diffusers name -> (vidpar name, part index within it, storage kind); the inverse of ``native_to_diffusers``.

    Unknown names raise ``KeyError``.
    """
    for ours, theirs, pairs in _SCOPES:
        m = re.match(re.escape(theirs) + r"(\d+)\.(.*)", key)
        if m:
            idx, rest = m.groups()
            if pairs is _REFINER_PAIRS:
                for part, prefix in enumerate(_QKV_PARTS):
                    if rest.startswith(prefix):
                        return f"{ours}{idx}.{_FUSED}{rest[len(prefix):]}", part, FUSED_QKV
            inner = _rename(rest, pairs, forward=False)
            if inner is not None:
                return f"{ours}{idx}.{inner}", 0, COPY
            raise KeyError(key)
    name = _rename(key, _TOP_PAIRS, forward=False)
    if name is None:
        raise KeyError(key)
    return name, 0, SWAPPED_HALVES if name.startswith(_SWAPPED) else COPY


def layout_names(native_key: str, layout: str) -> tuple[tuple[str, ...], str]:
    """Where a vidpar parameter lives in a checkpoint of ``layout`` (``"official"`` or ``"diffusers"``)."""
    if layout == OFFICIAL:
        return (native_to_official_key(native_key),), COPY
    return native_to_diffusers(native_key)


def split_for_layout(tensor: torch.Tensor, kind: str, parts: int) -> tuple[torch.Tensor, ...]:
    """A vidpar tensor as its checkpoint tensor(s)."""
    if kind == FUSED_QKV:
        return tensor.chunk(parts, dim=0)
    if kind == SWAPPED_HALVES:
        first, second = tensor.chunk(2, dim=0)
        return (torch.cat([second, first], dim=0),)
    return (tensor,)


def join_from_layout(tensors: list[torch.Tensor], kind: str) -> torch.Tensor:
    """Checkpoint tensor(s) -> the vidpar tensor (inverse of ``split_for_layout``)."""
    if kind == FUSED_QKV:
        return torch.cat(tensors, dim=0)
    if kind == SWAPPED_HALVES:
        first, second = tensors[0].chunk(2, dim=0)
        return torch.cat([second, first], dim=0)
    return tensors[0]


def split_shape(shape: tuple[int, ...], kind: str, parts: int) -> tuple[int, ...]:
    """Shape of each checkpoint tensor holding a vidpar tensor of ``shape``."""
    return (shape[0] // parts, *shape[1:]) if kind == FUSED_QKV else tuple(shape)


def native_state_dict_to_layout(state: Mapping[str, torch.Tensor], layout: str) -> dict[str, torch.Tensor]:
    """vidpar-named tensors -> checkpoint-named tensors of ``layout``."""
    out: dict[str, torch.Tensor] = {}
    for key, tensor in state.items():
        names, kind = layout_names(key, layout)
        out.update(zip(names, split_for_layout(tensor, kind, len(names))))
    return out


def diffusers_to_official_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A diffusers ``HunyuanVideo15Transformer3DModel`` state dict under official names and layout."""
    groups: dict[str, dict[int, torch.Tensor]] = {}
    kinds: dict[str, str] = {}
    for key, tensor in state.items():
        native, part, kind = diffusers_to_native(key)
        groups.setdefault(native, {})[part] = tensor
        kinds[native] = kind
    return {native_to_official_key(k): join_from_layout([parts[i] for i in sorted(parts)], kinds[k])
            for k, parts in groups.items()}


def official_to_diffusers_state_dict(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """An official state dict under diffusers' names and layout."""
    return native_state_dict_to_layout({official_to_native_key(k): v for k, v in state.items()}, DIFFUSERS)
