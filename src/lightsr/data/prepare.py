"""Cut large HR images into overlapping sub-images with aligned LR counterparts (BasicSR's
``extract_subimages`` convention for DIV2K: 480-pixel crops every 240 pixels, plus a last crop flush
with the border when more than ``thresh_size`` pixels would be left over).

The LR sub-images are cut from the MATLAB-bicubic downscale of the *whole* HR image (so pixels at a
sub-image's edge see their real neighbours, as when cutting the official DIV2K LR images), at
``position / s`` with size ``crop / s``. The HR image is first cropped to a multiple of the least
common multiple of the scales so that every position is on every scale's grid. Images smaller than
the crop give one sub-image of their own (cropped) size. Outputs are written atomically; existing
outputs are kept, so an interrupted run can simply be started again.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from lightsr.data.train_dataset import DataError, _write_png_atomic, list_images, read_image

__all__ = ["PrepareReport", "crop_positions", "default_output_dirs", "extract_subimages", "process_image"]


def crop_positions(length: int, crop: int, step: int, thresh_size: int) -> list[int]:
    """Start offsets along one axis, as BasicSR: ``0, step, 2*step, ...`` and ``length - crop`` if the
    remainder exceeds ``thresh_size``. An axis shorter than ``crop`` gives ``[0]``."""
    if length <= crop:
        return [0]
    pos = list(range(0, length - crop + 1, step))
    if length - (pos[-1] + crop) > thresh_size:
        pos.append(length - crop)
    return pos


def default_output_dirs(hr_dir: Path, out_root: Path | None, scales: Sequence[int]) -> tuple[Path, dict[int, Path]]:
    """``DIV2K_train_HR`` -> ``DIV2K_train_HR_sub`` and ``DIV2K_train_LR_bicubic/X{s}_sub`` (BasicSR names)."""
    hr_dir = Path(hr_dir)
    root = Path(out_root) if out_root is not None else hr_dir.parent
    name = hr_dir.name
    prefix = name[:-3] if name.endswith("_HR") else name
    return root / f"{name}_sub", {s: root / f"{prefix}_LR_bicubic" / f"X{s}_sub" for s in scales}


@dataclass
class PrepareReport:
    images: int = 0
    written: int = 0
    skipped: int = 0
    failed: list[str] = field(default_factory=list)


def process_image(path: Path, out_hr: Path, out_lr: dict[int, Path], crop: int, step: int, thresh_size: int,
                  overwrite: bool = False) -> tuple[int, int]:
    """Cut one image; returns ``(written, skipped)`` counts of sub-image sets."""
    from lightsr.data.imresize import imresize, modcrop

    scales = sorted(out_lr)
    lcm = math.lcm(*scales) if scales else 1
    names = None
    hr = None
    # cheap existence check first: resuming an interrupted run must not decode every image again
    from PIL import Image

    with Image.open(path) as im:
        w0, h0 = im.size
    h, w = h0 - h0 % lcm, w0 - w0 % lcm
    ch, cw = min(crop, h), min(crop, w)
    ch, cw = ch - ch % lcm, cw - cw % lcm
    if ch == 0 or cw == 0:
        raise DataError(f"{path}: {w0}x{h0} is too small for scales {scales}")
    ys = crop_positions(h, ch, step, thresh_size)
    xs = crop_positions(w, cw, step, thresh_size)
    names = [f"{path.stem}_s{i + 1:03d}.png" for i in range(len(ys) * len(xs))]
    targets = [out_hr] + [out_lr[s] for s in scales]
    if not overwrite and all((d / n).is_file() for d in targets for n in names):
        return 0, len(names)
    hr = np.ascontiguousarray(modcrop(read_image(path), lcm))
    lrs = {s: imresize(hr, 1.0 / s) for s in scales}
    written = skipped = 0
    k = 0
    for y in ys:
        for x in xs:
            name = names[k]
            k += 1
            if not overwrite and all((d / name).is_file() for d in targets):
                skipped += 1
                continue
            for s in scales:
                lr = lrs[s][y // s : (y + ch) // s, x // s : (x + cw) // s]
                _write_png_atomic(out_lr[s] / name, np.ascontiguousarray(lr))
            _write_png_atomic(out_hr / name, np.ascontiguousarray(hr[y : y + ch, x : x + cw]))  # HR last
            written += 1
    return written, skipped


def _work(job):
    path, out_hr, out_lr, crop, step, thresh, overwrite = job
    try:
        return str(path), process_image(path, out_hr, out_lr, crop, step, thresh, overwrite), None
    except (DataError, OSError, ValueError) as exc:
        return str(path), (0, 0), str(exc).splitlines()[0]


def extract_subimages(
    hr_dir: str | os.PathLike,
    out_hr: str | os.PathLike,
    out_lr: dict[int, str | os.PathLike],
    *,
    crop: int = 480,
    step: int = 240,
    thresh_size: int = 0,
    workers: int = 1,
    overwrite: bool = False,
    progress: bool = True,
) -> PrepareReport:
    """Cut every image of ``hr_dir`` into sub-images in ``out_hr`` and LR counterparts in ``out_lr[s]``."""
    from tqdm import tqdm

    hr_dir, out_hr = Path(hr_dir), Path(out_hr)
    out_lr = {int(s): Path(d) for s, d in out_lr.items()}
    for s in out_lr:
        if s < 1 or crop % s or step % s:
            raise DataError(f"crop {crop} and step {step} must be multiples of every scale (got x{s})")
    if crop <= 0 or step <= 0 or thresh_size < 0:
        raise DataError("crop and step must be positive, thresh_size >= 0")
    src = hr_dir.resolve()
    for d in [out_hr, *out_lr.values()]:
        if d.resolve() == src:
            raise DataError(f"output folder {d} is the input folder; choose another one")
    files = list_images(hr_dir)
    out_hr.mkdir(parents=True, exist_ok=True)
    for d in out_lr.values():
        d.mkdir(parents=True, exist_ok=True)
    report = PrepareReport(images=len(files))
    jobs = [(p, out_hr, out_lr, crop, step, thresh_size, overwrite) for p in files]
    bar = tqdm(total=len(files), unit="img", desc="extracting sub-images", disable=not progress, dynamic_ncols=True)
    if workers > 1:
        import multiprocessing as mp

        with mp.get_context("spawn" if os.name == "nt" else "fork").Pool(workers) as pool:
            results = pool.imap_unordered(_work, jobs)
            for res in results:
                _account(report, res, bar)
    else:
        for job in jobs:
            _account(report, _work(job), bar)
    bar.close()
    return report


def _account(report: PrepareReport, res, bar) -> None:
    path, (written, skipped), error = res
    report.written += written
    report.skipped += skipped
    if error:
        report.failed.append(error)
        bar.write(f"error: {error}")
    bar.update(1)
