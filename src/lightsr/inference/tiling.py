"""Seam-free tiled upscaling with bounded memory.

The image is cut into a grid of equally sized, overlapping tiles, as few as the tile size allows
and each only as large as needed to cover the image with the requested overlap
(:func:`balanced_tile`: no tile is computed mostly twice). Every tile is upscaled on its own and the
results are blended with smooth separable weights:

* along an axis, a tile's weight is 1 except on a side that overlaps a neighbouring tile; there it
  is 0 for the outer quarter of the overlap (the pixels that saw the tile's artificial border),
  then rises along a raised-cosine ramp over the middle half, and is 1 for the inner quarter;
* sides on the image border never taper (the weight there is 1, never 0);
* the weights of all tiles covering a pixel are normalised to sum to exactly 1 (with a neighbour
  overlap of at least ``overlap`` pixels, some tile always has weight >= 0.5 there).

Memory: the input stays on the CPU and only the tile being processed is handed to ``fn`` (which
moves it to the device). Output rows are accumulated on the CPU in float32 for *one row of tiles*
at a time; rows that no later tile touches are handed to a ``sink`` right away, so the float32
working set is one band of ``tile x scale`` rows - not the whole output - and the caller can
quantise straight into the final 8- or 16-bit array.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

__all__ = ["TileGrid", "axis_weights", "balanced_tile", "plan_grid", "run_tiled", "tile_starts"]

TileFn = Callable[[torch.Tensor], torch.Tensor]  # (C, h, w) float32 CPU -> (C', s*h, s*w) float32 CPU
Sink = Callable[[int, int, torch.Tensor], None]  # (y0, y1, rows (C', y1-y0, s*W)) float32


def tile_starts(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of equally sized tiles covering ``length`` with neighbours overlapping >= ``overlap``.

    Tiles are spread evenly (the first flush with 0, the last flush with the end); a tile at least
    as large as ``length`` gives a single tile.
    """
    if tile >= length:
        return [0]
    if overlap >= tile:
        raise ValueError(f"overlap {overlap} must be smaller than the tile size {tile}")
    n = math.ceil((length - overlap) / (tile - overlap))
    n = max(n, 2)
    span = length - tile
    return [round(i * span / (n - 1)) for i in range(n)]


def balanced_tile(length: int, tile: int, overlap: int) -> int:
    """The tile side (at most ``tile``) that covers ``length`` with as few tiles as ``tile`` needs,
    spread evenly: the same number of tiles, each no larger than necessary.

    With a fixed side the last tile is moved flush with the border and may overlap its neighbour
    almost entirely (720 rows in 640-pixel tiles: two tiles, 560 rows computed twice, a 1.8x cost);
    balanced, the two tiles are 376 rows and overlap by the requested 32.
    """
    if tile >= length:
        return length
    o = min(max(0, overlap), tile // 2)
    n = max(2, math.ceil((length - o) / (tile - o)))
    return min(tile, max(2 * o, math.ceil((length + (n - 1) * o) / n)))


def _ramp(t: np.ndarray, overlap: float) -> np.ndarray:
    """0 for t < overlap/4, raised cosine up to 1 at 3*overlap/4, then 1 (t = distance from the edge)."""
    if overlap <= 0:
        return np.ones_like(t)
    x = np.clip((t - overlap / 4) / (overlap / 2), 0.0, 1.0)
    return 0.5 - 0.5 * np.cos(np.pi * x)


def axis_weights(length: int, starts: list[int], tile: int, overlap: int) -> list[np.ndarray]:
    """Per-tile 1-D blending weights (each of size ``tile``) along one axis, normalised to sum to 1."""
    centres = np.arange(tile, dtype=np.float64) + 0.5
    raw = []
    for i, s in enumerate(starts):
        w = np.ones(tile)
        if i > 0:  # a neighbour overlaps on the low side
            w *= _ramp(centres, overlap)
        if i < len(starts) - 1:  # a neighbour overlaps on the high side
            w *= _ramp(tile - centres, overlap)
        raw.append(w)
    total = np.zeros(length)
    for s, w in zip(starts, raw):
        total[s : s + tile] += w
    if not np.all(total > 0):  # pragma: no cover - excluded by tile_starts' overlap guarantee
        raise AssertionError("blending weights vanish somewhere; overlap too small for the tile layout")
    return [w / total[s : s + tile] for s, w in zip(starts, raw)]


class TileGrid:
    """The tile layout of an ``height x width`` image (LR pixels) and its blending weights (HR pixels)."""

    def __init__(self, height: int, width: int, tile: int | None, overlap: int, scale: int):
        self.height, self.width, self.scale = height, width, scale
        overlap = max(0, int(overlap))
        th = height if not tile else balanced_tile(height, tile, overlap)
        tw = width if not tile else balanced_tile(width, tile, overlap)
        oy = min(overlap, th // 2) if th < height else 0
        ox = min(overlap, tw // 2) if tw < width else 0
        self.tile_h, self.tile_w, self.overlap = th, tw, max(oy, ox)
        self.ys = tile_starts(height, th, oy)
        self.xs = tile_starts(width, tw, ox)
        self.wy = [torch.from_numpy(w.astype(np.float32)) for w in axis_weights(height * scale, [y * scale for y in self.ys], th * scale, oy * scale)]
        self.wx = [torch.from_numpy(w.astype(np.float32)) for w in axis_weights(width * scale, [x * scale for x in self.xs], tw * scale, ox * scale)]

    def __len__(self) -> int:
        return len(self.ys) * len(self.xs)

    def __repr__(self) -> str:
        return (f"TileGrid({self.height}x{self.width}: {len(self.ys)}x{len(self.xs)} tiles of "
                f"{self.tile_h}x{self.tile_w}, overlap {self.overlap})")


def plan_grid(height: int, width: int, tile: int | None, overlap: int, scale: int) -> TileGrid:
    return TileGrid(height, width, tile, overlap, scale)


def run_tiled(
    fn: TileFn,
    image: torch.Tensor | np.ndarray,
    scale: int,
    sink: Sink,
    *,
    tile: int | None = None,
    overlap: int = 32,
    on_tile: Callable[[int, int], None] | None = None,
) -> TileGrid:
    """Upscale ``image`` (C, H, W) on the CPU tile by tile; finished rows go to ``sink``.

    Args:
        image: a float32 tensor, or any (C, H, W) array ``fn`` understands - e.g. a NumPy view of
            8-bit pixels, so that only the tile being processed is ever converted to float.
        fn: upscales one tile (a slice of ``image``) -> (C', scale*h, scale*w), float32 on the CPU.
        sink: called as ``sink(y0, y1, rows)`` with final output rows ``[y0, y1)`` (HR pixels) in
            increasing order; ``rows`` is a float32 tensor (C', y1 - y0, scale * W) that may be reused.
        tile: tile size in input pixels (``None`` or 0: the whole image in one piece).
        overlap: minimum overlap between neighbouring tiles, in input pixels.
        on_tile: progress callback ``on_tile(done, total)`` after each tile.
    """
    if len(image.shape) != 3:
        raise ValueError("run_tiled expects a (C, H, W) tensor or array")
    _, h, w = image.shape
    grid = TileGrid(h, w, tile, overlap, scale)
    s = scale
    th, tw = grid.tile_h, grid.tile_w
    carry: torch.Tensor | None = None  # accumulated rows starting at this tile row's first output row
    done, total = 0, len(grid)
    for r, y in enumerate(grid.ys):
        band = None
        for c, x in enumerate(grid.xs):
            out = fn(image[:, y : y + th, x : x + tw])
            if out.shape[-2:] != (th * s, tw * s):
                raise RuntimeError(
                    f"the model returned {tuple(out.shape[-2:])} for a {th}x{tw} tile; expected "
                    f"{(th * s, tw * s)} (is the scale x{s} right?)"
                )
            if band is None:
                band = torch.zeros(out.shape[0], th * s, w * s, dtype=torch.float32)
            band[:, :, x * s : (x + tw) * s].addcmul_(out, grid.wx[c])
            done += 1
            if on_tile is not None:
                on_tile(done, total)
        band.mul_(grid.wy[r].view(1, -1, 1))
        y0 = y * s
        if carry is not None:  # rows of the previous tile row that this one also covers
            n = carry.shape[1]
            band[:, : n].add_(carry)
        last = r == len(grid.ys) - 1
        next_y0 = h * s if last else grid.ys[r + 1] * s
        sink(y0, next_y0, band[:, : next_y0 - y0])
        carry = None if last else band[:, next_y0 - y0 :].clone()
    return grid
