"""Tiling: layout, blending weights, exactness for local models, bounded band accumulation, OOM retry."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lightsr.inference import Upscaler
from lightsr.inference.runner import ModelRunner, OutOfMemory, auto_tile
from lightsr.inference.tiling import TileGrid, axis_weights, run_tiled, tile_starts


class LocalNet(nn.Module):
    """Three 3x3 convolutions (receptive radius 3) then pixel shuffle x2: purely local, deterministic."""

    scale = 2

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(1)
        self.convs = nn.ModuleList(nn.Conv2d(3 if i == 0 else 8, 8 if i < 2 else 12, 3, padding=1) for i in range(3))
        for conv in self.convs:
            conv.weight.data = torch.randn(conv.weight.shape, generator=g) * 0.2
            conv.bias.data = torch.randn(conv.bias.shape, generator=g) * 0.1

    def forward(self, x):
        for i, conv in enumerate(self.convs):
            x = conv(x)
            if i < 2:
                x = F.gelu(x)
        return F.pixel_shuffle(x, 2).sigmoid()


@pytest.mark.parametrize("length,tile,overlap", [(100, 32, 8), (33, 32, 8), (257, 64, 16), (64, 64, 16), (10, 64, 4)])
def test_tile_layout_covers_and_overlaps(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    t = min(tile, length)
    assert starts[0] == 0 and starts[-1] + t == length
    for a, b in zip(starts, starts[1:]):
        assert b > a and a + t - b >= overlap  # neighbours overlap by at least `overlap`


@pytest.mark.parametrize("length,tile,overlap", [(400, 128, 64), (130, 128, 32), (1000, 96, 8)])
def test_weights_sum_to_one_never_zero_at_border(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    ws = axis_weights(length, starts, tile, overlap)
    total = np.zeros(length)
    for s, w in zip(starts, ws):
        total[s : s + tile] += w
    np.testing.assert_allclose(total, 1.0, atol=1e-12)
    assert ws[0][0] == pytest.approx(1.0) and ws[-1][-1] == pytest.approx(1.0)  # image border: full weight
    # every pixel has a tile with weight >= 0.5 (no pixel rests on a tile's unreliable edge only)
    best = np.zeros(length)
    for s, w in zip(starts, ws):
        best[s : s + tile] = np.maximum(best[s : s + tile], w)
    assert best.min() >= 0.5 - 1e-9
    # weights taper smoothly: no jump larger than the ramp allows
    for w in ws:
        assert np.abs(np.diff(w)).max() < 4.0 / overlap


def test_tiled_equals_whole_for_a_local_model():
    torch.manual_seed(0)
    x = torch.rand(3, 75, 94)
    net = LocalNet().eval()
    with torch.no_grad():
        whole = net(x[None])[0]
    rows = []
    grid = run_tiled(lambda t: net(t[None])[0].detach(), x, 2, lambda y0, y1, r: rows.append((y0, y1, r.clone())),
                     tile=32, overlap=16)
    assert len(grid) > 6
    # sink got every output row exactly once, in order
    assert rows[0][0] == 0 and rows[-1][1] == 150
    assert all(a[1] == b[0] for a, b in zip(rows, rows[1:]))
    tiled = torch.cat([r for _, _, r in rows], dim=1)
    assert (tiled - whole).abs().max() < 1e-5  # overlap/4 = 4 px > receptive radius 3


def test_band_accumulation_is_bounded():
    x = torch.rand(3, 200, 40)
    biggest = []
    run_tiled(lambda t: F.interpolate(t[None], scale_factor=2)[0], x, 2, lambda y0, y1, r: biggest.append(r.shape[1]),
              tile=32, overlap=8)
    assert max(biggest) <= 32 * 2  # never more than one tile row of output rows at a time


def test_grid_repr_and_single_tile():
    g = TileGrid(50, 60, None, 32, 4)
    assert len(g) == 1 and "1x1 tiles" in repr(g)


class FailsAbove(nn.Module):
    """Nearest x2 that raises a CUDA-style out-of-memory error for tiles larger than `limit` pixels."""

    scale = 2

    def __init__(self, limit):
        super().__init__()
        self.limit = limit
        self.calls = []

    def forward(self, x):
        self.calls.append(tuple(x.shape[-2:]))
        if max(x.shape[-2:]) > self.limit:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return F.interpolate(x, scale_factor=2, mode="nearest")


def test_oom_retries_with_smaller_tiles():
    net = FailsAbove(40)
    msgs = []
    up = Upscaler(net, tile=0, tile_overlap=8, warn=msgs.append)
    a = np.random.default_rng(0).integers(0, 256, size=(90, 100, 3), dtype=np.uint8)
    out = up(a)
    np.testing.assert_array_equal(out, a.repeat(2, 0).repeat(2, 1))
    assert any("out of memory" in m for m in msgs)
    # the tile setting was halved until the (balanced) tiles fit: FailsAbove(40) saw no larger tile
    assert up.last_tile is not None and up.last_tile < 100


def test_oom_error_is_classified():
    runner = ModelRunner(FailsAbove(4), 2, "cpu")
    with pytest.raises(OutOfMemory):
        runner(torch.rand(3, 8, 8))


def test_auto_tile_from_measured_memory():
    runner = ModelRunner(LocalNet(), 2, "cpu")
    bpp = runner.bytes_per_pixel()
    assert bpp > 0
    assert auto_tile(runner, 64, 64, budget=1 << 30) is None  # fits whole
    tile = auto_tile(runner, 4000, 3000, budget=64 << 20)
    assert tile is not None and 32 <= tile and tile * tile * bpp * 1.5 <= 64 << 20


@pytest.mark.parametrize("length,tile,overlap", [(720, 640, 32), (1280, 600, 32), (100, 48, 32), (97, 96, 16),
                                                 (1000, 64, 8), (33, 32, 31)])
def test_balanced_tiles_cover_with_the_fewest_tiles_and_little_waste(length, tile, overlap):
    """Tiles are no larger than asked, as few as the asked size needs, and the image's pixels are
    computed at most (1 + overlap share) times: no tile pushed flush against the border on top of
    its neighbour."""
    from lightsr.inference.tiling import balanced_tile

    t = balanced_tile(length, tile, overlap)
    o = min(overlap, t // 2)
    fixed = tile_starts(length, tile, min(overlap, tile // 2))
    starts = tile_starts(length, t, o)
    assert t <= tile and len(starts) == len(fixed)
    covered = np.zeros(length, dtype=int)
    for s in starts:
        covered[s : s + t] += 1
    assert covered.min() >= 1
    assert len(starts) * t <= len(fixed) * tile  # never more work than fixed-size tiles
    if (length, tile) == (720, 640):
        assert len(starts) * t <= 1.05 * length  # was 1280 rows computed for 720
