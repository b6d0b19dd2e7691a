"""Bytes each rank sends in one decode of ``vae_decode.ParallelDecodeLoop``, from a family's walk of its stages.

The loop's traffic is model-neutral; only what each stage moves depends on the architecture. A family describes,
for latent chunk ``t`` (one latent frame), each decoder stage as a :class:`StageTraffic`; :func:`decode_comm_bytes`
turns that into the bytes a rank sends, per ``ctx.comm_stats()`` key, with the conventions of
``vidpar.parallel.comm.Comm``:

- ``"control"``: the latent-shape check, an all-gather of ``SHAPE_INTS`` int64 over the world;
- ``"vae.sp"``: every banded conv sends one halo row to each existing active neighbour (up and down);
- ``"vae.control"`` / ``"vae.ring"``: a band attention exchanges one ``ATTN_META_INTS`` control row, then ring
  attention passes ``active - 1`` K/V blocks (k and v, ``channels`` each) of the bands' key tokens;
- ``"vae.world"``: pipeline hand-offs (a ``META_INTS`` header plus the activation, from every stage group but the
  last), the band-shape broadcast from the first output band's rank and the output bands (``"all"``: broadcast,
  ``world - 1`` times the band; ``"rank0"``: each band sent once to rank 0).
Every term is exact: sizes only, nothing depends on the data.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Callable

from .split import split_sizes
from .vae_decode import ATTN_META_INTS

INT64 = 8
SHAPE_INTS = 5  # the decode loop's shape check: [B, C, T, h, w]
META_INTS = 8  # ``collect_bands``' band-shape broadcast and ``stream_chunks``' per-chunk header


@dataclass(frozen=True)
class StageTraffic:
    """What one decoder stage moves for one latent chunk, per batch item (elements, not bytes).

    Attributes:
        halo_row: one halo row of every banded conv of the stage, summed over its convs (each conv's input row:
            channels x frames it convolves, time context included, x width at its resolution).
        attn_rows: for a band attention, key tokens per latent row of a band (e.g. ``frames x w``), 0 if none.
        attn_channels: channels of k (= of v) of that attention (one head).
        out_elems_per_row: elements of the stage's output per latent row of a band (channels x frames x the rows
            one latent row became x width), for the pipeline hand-off after the stage.
    """

    halo_row: int = 0
    attn_rows: int = 0
    attn_channels: int = 0
    out_elems_per_row: int = 0


StageWalk = Callable[[int], list[StageTraffic]]  # latent chunk index -> every stage's traffic for that chunk


def decode_comm_bytes(
    walk: StageWalk,
    frames: int,
    h: int,
    batch: int,
    ranges: list[tuple[int, int]],
    patch: int,
    output: str,
    elem_bytes: int,
    rank: int,
    video_elems_per_row: int,
) -> dict[str, int]:
    """Bytes ``rank`` sends in one parallel decode of a ``[batch, C, frames, h, w]`` latent.

    Args:
        walk: the family's stages, per latent chunk (see :class:`StageTraffic`).
        ranges: ``balance_stages`` ranges of the ``pipe = len(ranges)`` stage groups.
        patch: band ranks per stage group (world = pipe x patch; rank = pipe_index * patch + band).
        output: ``"all"`` or ``"rank0"``; elem_bytes: bytes per activation element.
        video_elems_per_row: elements of the decoded video per latent row, per batch item (channels x frames x
            rows per latent row x width).
    Returns:
        ``{key: bytes}`` (zero entries left out; empty for a single rank).
    """
    pipe = len(ranges)
    world = pipe * patch
    out: dict[str, int] = defaultdict(int)
    if world == 1:
        return {}
    out["control"] += SHAPE_INTS * INT64 * (world - 1)
    active = min(patch, h)
    pipe_index, band = divmod(rank, patch)
    band_rows = split_sizes(h, active)
    lo, hi = ranges[pipe_index]
    if band < active:
        rows = band_rows[band]
        neighbours = (band > 0) + (band + 1 < active)
        for t in range(frames):
            stages = walk(t)
            for s in range(lo, hi):
                st = stages[s]
                out["vae.sp"] += batch * elem_bytes * neighbours * st.halo_row
                if st.attn_rows and active > 1:
                    out["vae.control"] += ATTN_META_INTS * INT64 * (active - 1)
                    held = sum(band_rows[(band - step) % active] for step in range(active - 1))
                    out["vae.ring"] += batch * elem_bytes * held * st.attn_rows * 2 * st.attn_channels
            if pipe_index < pipe - 1:  # hand-off of this chunk to the next stage group: header + activation
                out["vae.world"] += META_INTS * INT64 + batch * elem_bytes * rows * stages[hi - 1].out_elems_per_row
    # collect_bands: the shape broadcast from the first source, then the bands (broadcast, or sent to rank 0).
    sources = [(pipe - 1) * patch + i for i in range(active)]
    if rank == sources[0]:
        out["vae.world"] += META_INTS * INT64 * (world - 1)
    if rank in sources:
        band_video = batch * elem_bytes * band_rows[rank - sources[0]] * video_elems_per_row
        if output == "all":
            out["vae.world"] += band_video * (world - 1)
        elif rank != 0:
            out["vae.world"] += band_video
    return {k: v for k, v in out.items() if v}
