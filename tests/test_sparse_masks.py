"""Sparse patterns: token masks against per-token definitions written here, tile classes consistent with them,
densities, the config/CLI, and the windowed-ring schedule. No process group."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from vidpar.parallel.config import ParallelConfig
from vidpar.parallel.sparse import SparseAttention, TokenGrid, attended_fraction, mask_density, ring_schedule
from vidpar.parallel.sparse.grid import EMPTY, FULL, Tiling
from vidpar.parallel.sparse.schedule import windowed_schedule

GRIDS = [TokenGrid(5, 3, 4), TokenGrid(7, 2, 5), TokenGrid(3, 5, 3)]


def coords(grid, t):
    return t // (grid.rows * grid.cols), (t // grid.cols) % grid.rows, t % grid.cols


def sta_keep(grid, tile, window, q, k):
    """STA: key tile within the window centred on the query tile, centre clamped into the tile grid."""
    counts = [math.ceil(n / t) for n, t in zip(grid.shape(), tile)]
    for cq, ck, t, w, n in zip(coords(grid, q), coords(grid, k), tile, window, counts):
        tq, tk = cq // t, ck // t
        if w >= n:
            continue
        centre = min(max(tq, w // 2), n - 1 - w // 2)
        if abs(centre - tk) > w // 2:
            return False
    return True


def radial_keep(grid, decay, dense_radius, sink, min_width, q, k):
    """Radial Attention's frame-pair rule (authors' attn_mask.py) with the exact in-frame band."""
    p = grid.rows * grid.cols
    fq, fk = q // p, k // p
    sq, sk = q % p, k % p
    d = abs(fq - fk)
    if fk < sink or d <= dense_radius:
        return True
    group = d.bit_length()
    base = 2 ** p.bit_length() / 2 ** group
    if base < min_width and d % int(min_width / base) != 0:
        return False
    return abs(sq - sk) <= max(base * decay, min_width)


def svg_keep(grid, density, sink, head, q, k):
    p = grid.rows * grid.cols
    fq, fk, sq, sk = q // p, k // p, q % p, k % p
    if fk < sink:
        return True
    shrink = 1 - math.sqrt(1 - density)
    if head == 0:  # spatial: nearby frames, every position
        return abs(fq - fk) <= int(grid.frames * shrink)
    return abs(sq - sk) <= int(p * shrink)  # temporal: nearby positions, every frame


def brute(grid, keep):
    n = grid.tokens
    return torch.tensor([[keep(q, k) for k in range(n)] for q in range(n)])


CASES = [
    ("window:tile=2x2x2,window=3x1x3", lambda g: lambda q, k: sta_keep(g, (2, 2, 2), (3, 1, 3), q, k)),
    ("window:tile=1x2x3,window=1x3x1", lambda g: lambda q, k: sta_keep(g, (1, 2, 3), (1, 3, 1), q, k)),
    ("radial:tile=1x1x4,min_width=4,decay_factor=0.5",
     lambda g: lambda q, k: radial_keep(g, 0.5, 1, 1, 4, q, k)),
    ("radial:tile=2x2x2,min_width=2,decay_factor=0.95,sink_frames=0,dense_radius=0",
     lambda g: lambda q, k: radial_keep(g, 0.95, 0, 0, 2, q, k)),
]


def check_classes(pattern, grid, mask):
    tiling = Tiling(grid, pattern.tile)
    tile_of = tiling.tile_of(torch.arange(grid.tokens))
    classes = pattern.tile_classes(grid)
    assert classes.shape == (tiling.num_tiles, tiling.num_tiles)
    for a, b in itertools.product(range(tiling.num_tiles), repeat=2):
        block = mask[tile_of == a][:, tile_of == b]
        if classes[a, b] == FULL:
            assert block.all(), (a, b)
        elif classes[a, b] == EMPTY:
            assert not block.any(), (a, b)
    return classes


@pytest.mark.parametrize("spec, reference", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("grid", GRIDS, ids=str)
def test_token_mask_and_tiles(spec, reference, grid):
    config = SparseAttention.from_cli(spec)
    (pattern,) = config.patterns(grid)
    idx = torch.arange(grid.tokens)
    mask = pattern.token_mask(grid, idx, idx)
    ref = brute(grid, reference(grid))
    assert torch.equal(mask, ref)
    assert mask.diagonal().all()  # every token sees itself
    classes = check_classes(pattern, grid, mask)
    if config.pattern == "window":
        assert not (classes == 1).any()  # STA has no partial tiles
    assert pattern.density(grid) == pytest.approx(mask.double().mean().item(), abs=1e-12)
    assert mask_density(config, grid) == pytest.approx(pattern.density(grid))
    assert attended_fraction(config, grid) >= mask_density(config, grid) - 1e-12


@pytest.mark.parametrize("grid", GRIDS, ids=str)
def test_svg_head_patterns(grid):
    config = SparseAttention.from_cli("svg:tile=1x2x2,density=0.4")
    spatial, temporal = config.patterns(grid)
    idx = torch.arange(grid.tokens)
    for head, pattern in enumerate((spatial, temporal)):
        mask = pattern.token_mask(grid, idx, idx)
        assert torch.equal(mask, brute(grid, lambda q, k: svg_keep(grid, 0.4, 1, head, q, k)))
        check_classes(pattern, grid, mask)
        assert pattern.density(grid) == pytest.approx(mask.double().mean().item(), abs=1e-12)
    mixed = mask_density(config, grid, head_choice=[0, 1, 1])
    assert mixed == pytest.approx((spatial.density(grid) + 2 * temporal.density(grid)) / 3)
    with pytest.raises(ValueError, match="per head"):
        attended_fraction(config, grid)


def test_window_fraction_shrinks_with_tokens():
    config = SparseAttention.from_cli("window:tile=2x4x4,window=3x3x3")
    fractions = [attended_fraction(config, (f, 16, 16)) for f in (6, 12, 24)]
    assert fractions[0] > fractions[1] > fractions[2]
    assert fractions[2] == pytest.approx(mask_density(config, (24, 16, 16)))  # tile-exact: computed == kept


def test_cli_parsing_and_errors():
    c = SparseAttention.from_cli("window:window=3x3x5, tile=6x8x8, dense-first=20%, dense_last=2")
    assert (c.window, c.tile, c.dense_first, c.dense_last, c.dense_layers) == ((3, 3, 5), (6, 8, 8), 0.2, 2, 0)
    r = SparseAttention.from_cli("radial")
    assert (r.tile, r.decay_factor, r.sink_frames, r.dense_first, r.dense_layers) == ((1, 1, 128), 0.2, 1, 0.24, 1)
    s = SparseAttention.from_cli("svg:density=0.3,num_samples=32")
    assert (s.density, s.num_samples, s.dense_first, s.dense_layers) == (0.3, 32, 0.2, 0.03)
    for bad, msg in [("dense", "one of"), ("window:window=2x3x3", "odd"), ("window:tile=2x2", "AxBxC"),
                     ("radial:decay=1", "unknown option"), ("svg:density=0", "density"),
                     ("window:dense_first=1.5", "fraction"), ("", "NAME")]:
        with pytest.raises(ValueError, match=msg):
            SparseAttention.from_cli(bad)


def test_dense_steps_and_layers():
    c = SparseAttention.from_cli("radial")  # 12 of 50 steps and the first layer dense
    assert [c.is_sparse(s, 50, 1, 30) for s in (0, 11, 12, 49)] == [False, False, True, True]
    assert not c.is_sparse(20, 50, 0, 30)
    e = SparseAttention.from_cli("window:dense_first=2,dense_last=1,dense_layers=10%")
    assert [e.is_sparse(s, 10, 5, 40) for s in range(10)] == [False] * 2 + [True] * 7 + [False]
    assert not e.is_sparse(5, 10, 3, 40) and e.is_sparse(5, 10, 4, 40)
    assert e.is_sparse(None, None, 4, 40)  # outside a loop only the layer rule applies


def held_until(schedule, rank, step):
    """Blocks ``rank`` holds after ``step`` steps: its own, then what arrived."""
    held = [rank]
    for s in range(1, step + 1):
        held += [b for b, _, _ in schedule.recvs(rank, s)]
    return held


@pytest.mark.parametrize("r", [2, 3, 4, 5, 8])
def test_schedule_delivers_needs_once(r):
    g = torch.Generator().manual_seed(r)
    for trial in range(20):
        needs = (torch.rand(r, r, generator=g) < (trial / 20)).tolist()
        s = windowed_schedule(needs, [3] * r)
        for i in range(r):
            held = held_until(s, i, s.steps)
            assert len(held) == len(set(held))  # nothing arrives twice, nothing comes back
            assert all(j in held for j in range(r) if needs[i][j])
            for step in range(1, s.steps + 1):  # what i sends at a step it held before, and the peer expects it
                for b, d, peer in s.sends(i, step):
                    assert b in held_until(s, i, step - 1)
                    assert (b, d, i) in s.recvs(peer, step)
    dense = windowed_schedule([[True] * r for _ in range(r)], [1] * r)
    assert all(dense.sent_tokens(i) == r - 1 for i in range(r))  # what the dense ring sends
    assert dense.steps == r // 2


def test_schedule_rows_shrink_along_the_chain():
    # Block 0 is needed by ranks 1 and 2 (forward), rank 1 needs rows {0..3}, rank 2 rows {2, 3}.
    r = 5
    keys = [[torch.zeros(10, dtype=torch.bool) for _ in range(r)] for _ in range(r)]
    keys[1][0][:4] = True
    keys[2][0][2:4] = True
    needs = [[bool(x.any()) for x in line] for line in keys]
    s = windowed_schedule(needs, [10] * r, keys)
    assert s.fwd[0] == 2 and s.count(0, 0, 1) == 4 and s.count(0, 0, 2) == 2
    assert torch.equal(s.select(0, 0, 1), torch.arange(4)) and torch.equal(s.select(0, 0, 2), torch.tensor([2, 3]))
    assert s.sent_tokens(0) == 4 and s.sent_tokens(1) == 2 and s.sent_tokens(2) == 0


def test_local_pattern_schedule_is_windowed():
    config = SparseAttention.from_cli("window:tile=1x4x4,window=3x3x3")
    s = ring_schedule(config, (16, 8, 8), ParallelConfig(ring=8))  # 2 frames (128 tokens) per ring block
    assert s.fwd == (1,) * 7 + (0,) and s.bwd == (0,) + (1,) * 7
    assert max(s.sent_tokens(i) for i in range(8)) == 128  # one frame each way, vs 7 * 128 for the dense ring
