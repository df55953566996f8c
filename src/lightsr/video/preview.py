"""``--preview N``: upscale N frames spread over the clip, to PNGs and one side-by-side sheet.

A quick look before a long job: the frames are taken at the centres of N equal parts of the
clip (or of ``frames=(A, B)``), written as ``<stem>_frame<index>_x<s>.png`` (16-bit PNG for
sources deeper than 8 bits), and ``<stem>_preview_x<s>.png`` shows each frame upscaled by
bicubic interpolation (left) and by the model (right), one row per frame.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from lightsr.video.api import frame_range, make_upscaler
from lightsr.video.decode import iter_frames
from lightsr.video.errors import VideoError, require_av
from lightsr.video.probe import probe_video

__all__ = ["preview_video", "spread"]

SHEET_MAX_WIDTH = 3840  # the sheet is shrunk to this width (the PNGs keep full size)


def spread(first: int, stop: int, count: int) -> list[int]:
    """``count`` frame indices at the centres of equal parts of ``[first, stop)`` (fewer if the range is shorter)."""
    n = max(0, min(count, stop - first))
    return [first + int((k + 0.5) * (stop - first) / n) for k in range(n)]


def _frame(info, index: int) -> np.ndarray:
    for _, _, rgb in iter_frames(info, index, index + 1):
        return rgb
    raise VideoError(f"frame {index} could not be decoded")


def _row(lr: np.ndarray, sr: np.ndarray, label: str):
    from PIL import Image, ImageDraw

    from lightsr.inference.io import to_8bit

    sr8 = Image.fromarray(to_8bit(sr))
    bicubic = Image.fromarray(to_8bit(lr)).resize(sr8.size, Image.BICUBIC)
    row = Image.new("RGB", (2 * sr8.width, sr8.height))
    row.paste(bicubic, (0, 0))
    row.paste(sr8, (sr8.width, 0))
    draw = ImageDraw.Draw(row)
    for x, text in ((4, f"{label} bicubic"), (sr8.width + 4, f"{label} lightsr")):
        draw.rectangle([x - 2, 2, x + 7 * len(text), 16], fill="black")
        draw.text((x, 3), text, fill="white")
    return row


def _sheet(rows: list):
    from PIL import Image

    width = max(r.width for r in rows)
    sheet = Image.new("RGB", (width, sum(r.height for r in rows)), "white")
    y = 0
    for r in rows:
        sheet.paste(r, (0, y))
        y += r.height
    if sheet.width > SHEET_MAX_WIDTH:
        sheet = sheet.resize((SHEET_MAX_WIDTH, round(sheet.height * SHEET_MAX_WIDTH / sheet.width)), Image.LANCZOS)
    return sheet


def preview_video(src: str | Path, outdir: str | Path, count: int = 4, model=None, scale: int | None = None, *,
                  weights=None, upscaler=None, frames: tuple[int, int | None] | None = None,
                  overwrite: bool = False, max_pixels: int | None = None, **upscaler_options) -> list[Path]:
    """Write the preview PNGs and the sheet into ``outdir``; returns their paths (sheet last)."""
    from lightsr.inference.io import ImageData, write_image

    require_av()
    if count < 1:
        raise VideoError("--preview needs at least 1 frame")
    src, outdir = Path(src), Path(outdir)
    info = probe_video(src, max_pixels)
    first, stop = frame_range(info, frames)
    upscaler = make_upscaler(upscaler, model, scale, weights, **upscaler_options)
    s = upscaler.scale
    paths, rows = [], []
    for index in spread(first, stop, count):
        lr = _frame(info, index)
        sr = upscaler.upscale_pixels(lr)
        paths.append(write_image(outdir / f"{src.stem}_frame{index:06d}_x{s}.png", ImageData(sr), "png",
                                 overwrite=overwrite))
        rows.append(_row(lr, sr, f"frame {index}"))
    sheet_path = outdir / f"{src.stem}_preview_x{s}.png"
    paths.append(write_image(sheet_path, ImageData(np.asarray(_sheet(rows))), "png", overwrite=overwrite))
    return paths
