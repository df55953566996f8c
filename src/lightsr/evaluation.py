"""Benchmark evaluation as super-resolution papers do it: ``lightsr.evaluate(model, dataset, ...)``.

For every image: LR uint8 -> float [0, 1] -> model -> clamp, x255, round to uint8 -> PSNR / SSIM
against the HR (cropped to LR x scale), with a border of ``crop_border`` pixels shaved (default:
the scale), on BT.601 Y; the set's number is the mean of the per-image values.

The small choices that move the second decimal are named in a :class:`Convention`; the presets are

* ``basicsr`` (default) - RCAN -> BasicSR -> SwinIR -> DLGSANet / LAMNet: Y unrounded, grayscale
  images replicated to RGB (as OpenCV reads them) and scored like colour images, bicubic baseline
  = MATLAB ``imresize`` of the uint8 RGB LR (rounded to uint8).
* ``matlab-y`` - the SRCNN / VDSR MATLAB protocol where the published *bicubic* rows come from:
  Y = ``rgb2ycbcr`` of the uint8 image (rounded), grayscale images scored on their own values,
  bicubic computed on that Y channel (``imresize`` of the uint8 Y by 1/s, then x s in double).
* ``ntire`` - the NTIRE efficient-SR challenges: RGB PSNR / SSIM with a 4-pixel border.

Any field can be overridden (``crop_border=4``, ``round_y=True``, ``gray="y"`` ...).

>>> import lightsr
>>> from lightsr.data.benchmark import find_benchmark
>>> model = lightsr.load_model("IMDN_x4.pth", name="imdn", scale=4)            # doctest: +SKIP
>>> result = lightsr.evaluate(model, find_benchmark("benchmark", "Set5", 4))   # doctest: +SKIP
>>> print(result.to_markdown())                                                # doctest: +SKIP
"""
from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Mapping

import numpy as np
import torch
import torch.nn as nn

from lightsr.data.benchmark import BenchmarkSet, Sample, find_benchmark
from lightsr.data.imresize import imresize, imresize_tensor
from lightsr.inference.partfiles import write_text_atomic
from lightsr.metrics import psnr, rgb_to_y, ssim, to_uint8

__all__ = [
    "Bicubic",
    "CONVENTIONS",
    "Convention",
    "EvalResult",
    "ImageResult",
    "SetResult",
    "evaluate",
    "forward_self_ensemble",
    "forward_tiled",
]


# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Convention:
    """How SR output is scored. See ``docs/evaluation.md`` for what each choice does to the numbers.

    Attributes:
        crop_border: pixels shaved from each side (``None`` = the scale).
        y_channel: score BT.601 Y (papers) or RGB (``False``; NTIRE).
        round_y: round Y to integers (MATLAB ``rgb2ycbcr`` on uint8) instead of keeping it unrounded.
        gray: ``"rgb"``: grayscale images go to the model as R = G = B and are scored like colour
            images (Y = 16 + 219/255 g); ``"y"``: they are scored on their own gray values (SR
            output turned gray with the BT.601 luma 0.299 R + 0.587 G + 0.114 B, rounded).
        bicubic_output: bicubic baseline only: ``"uint8"`` (MATLAB ``imresize`` of a uint8 image,
            rounded after each pass) or ``"float"`` (not rounded, as ``imresize`` of a double image).
        bicubic_channel: bicubic baseline only: ``"rgb"`` (resize the RGB LR) or ``"y"`` (the whole
            degradation and upscaling on the Y channel, as SRCNN/VDSR scripts do).
    """

    crop_border: int | None = None
    y_channel: bool = True
    round_y: bool = False
    gray: str = "rgb"
    bicubic_output: str = "uint8"
    bicubic_channel: str = "rgb"

    def __post_init__(self) -> None:
        if self.gray not in ("rgb", "y"):
            raise ValueError(f"gray must be 'rgb' or 'y', got {self.gray!r}")
        if self.bicubic_output not in ("uint8", "float"):
            raise ValueError(f"bicubic_output must be 'uint8' or 'float', got {self.bicubic_output!r}")
        if self.bicubic_channel not in ("rgb", "y"):
            raise ValueError(f"bicubic_channel must be 'rgb' or 'y', got {self.bicubic_channel!r}")
        if self.crop_border is not None and int(self.crop_border) < 0:
            raise ValueError(f"crop_border must be >= 0, got {self.crop_border}")
        if self.bicubic_channel == "y" and not self.y_channel:
            raise ValueError("bicubic_channel='y' produces only a Y channel; it needs y_channel=True")

    def border(self, scale: int) -> int:
        return int(scale if self.crop_border is None else self.crop_border)

    def describe(self, scale: int) -> str:
        parts = [
            "Y (BT.601" + (", rounded)" if self.round_y else ", unrounded)") if self.y_channel else "RGB",
            f"border {self.border(scale)}",
            "gray images as R=G=B" if self.gray == "rgb" else "gray images on their own values",
        ]
        return ", ".join(parts)


# images in the complete benchmark sets: a set with fewer is labelled a subset in every table
FULL_SIZES = {"Set5": 5, "Set14": 14, "B100": 100, "Urban100": 100, "Manga109": 109, "DIV2K": 100}

CONVENTIONS: dict[str, Convention] = {
    "basicsr": Convention(),
    "matlab-y": Convention(round_y=True, gray="y", bicubic_output="float", bicubic_channel="y"),
    "ntire": Convention(crop_border=4, y_channel=False),
}


def _resolve_convention(convention: str | Convention, overrides: Mapping[str, object]) -> Convention:
    if isinstance(convention, str):
        try:
            base = CONVENTIONS[convention]
        except KeyError:
            raise ValueError(f"unknown convention {convention!r}; choose from {', '.join(CONVENTIONS)}") from None
    elif isinstance(convention, Convention):
        base = convention
    else:
        raise TypeError(f"convention must be a name or a Convention, got {type(convention).__name__}")
    changes = {k: v for k, v in overrides.items() if v is not None}
    return dataclasses.replace(base, **changes) if changes else base


# ----------------------------------------------------------------------------------------------
class Bicubic(nn.Module):
    """The bicubic baseline: MATLAB-compatible ``imresize`` by the scale (a model with no weights).

    As an ``nn.Module`` it maps a float (B, C, H, W) batch to its float upscaling (float64 math);
    :func:`evaluate` uses the exact uint8 / Y-channel paths of :class:`Convention` instead.
    """

    def __init__(self, scale: int):
        super().__init__()
        self.scale = int(scale)
        self.lightsr_config = {"name": "bicubic", "scale": self.scale, "options": {}}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return imresize_tensor(x.double(), self.scale).to(x.dtype)

    def upscale_uint8(self, lr: np.ndarray, output: str = "uint8") -> np.ndarray:
        """MATLAB ``imresize(lr, scale)`` of a uint8 image: uint8 (rounded per pass) or float64."""
        if output == "uint8":
            return imresize(lr, self.scale)
        return imresize(lr.astype(np.float64), self.scale)


# ----------------------------------------------------------------------------------------------
def forward_tiled(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, scale: int, tile: int,
                  overlap: int = 16) -> torch.Tensor:
    """Run ``fn`` on overlapping ``tile`` x ``tile`` LR tiles and average the overlaps (bounded memory).

    Tiles step by ``tile - overlap``; the last row/column of tiles is aligned to the border. With
    models whose receptive field exceeds the overlap the result differs slightly from a whole-image
    pass, so benchmark numbers are normally computed without tiling.
    """
    b, c, h, w = x.shape
    tile = int(tile)
    if tile <= 0:
        raise ValueError(f"tile must be positive, got {tile}")
    if h <= tile and w <= tile:
        return fn(x)
    overlap = max(0, min(int(overlap), tile - 1))
    step = tile - overlap

    def starts(n: int) -> list[int]:
        if n <= tile:
            return [0]
        s = list(range(0, n - tile, step))
        return s + [n - tile]

    out = None
    weight = torch.zeros(1, 1, h * scale, w * scale, dtype=torch.float32, device=x.device)
    for top in starts(h):
        for left in starts(w):
            patch = x[..., top : top + tile, left : left + tile]
            y = fn(patch)
            if out is None:
                out = torch.zeros(b, y.shape[1], h * scale, w * scale, dtype=y.dtype, device=y.device)
            th, tw = patch.shape[-2] * scale, patch.shape[-1] * scale
            out[..., top * scale : top * scale + th, left * scale : left * scale + tw] += y[..., :th, :tw]
            weight[..., top * scale : top * scale + th, left * scale : left * scale + tw] += 1
    return out / weight.to(out.dtype)


def forward_self_ensemble(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """x8 geometric self-ensemble: mean of ``fn`` over the 4 rotations x 2 flips, each transformed back."""
    acc = None
    for flip in (False, True):
        xf = torch.flip(x, dims=(-1,)) if flip else x
        for k in range(4):
            y = fn(torch.rot90(xf, k, dims=(-2, -1)))
            y = torch.rot90(y, -k, dims=(-2, -1))
            if flip:
                y = torch.flip(y, dims=(-1,))
            acc = y.float() if acc is None else acc + y.float()
    return acc / 8


# ----------------------------------------------------------------------------------------------
@dataclass
class ImageResult:
    set: str
    name: str
    psnr: float
    ssim: float
    lr_height: int
    lr_width: int
    gray: bool
    seconds: float
    lr_origin: str


@dataclass
class SetResult:
    name: str
    scale: int
    images: list[ImageResult] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)
    sparsity: float | None = None
    description: str = ""

    @property
    def psnr(self) -> float:
        return float(np.mean([r.psnr for r in self.images])) if self.images else math.nan

    @property
    def ssim(self) -> float:
        return float(np.mean([r.ssim for r in self.images])) if self.images else math.nan

    @property
    def seconds(self) -> float:
        return float(sum(r.seconds for r in self.images))

    @property
    def subset(self) -> tuple[int, int] | None:
        """(images used, images of the complete set) when this is a subset of a standard set, else None."""
        full = FULL_SIZES.get(self.name)
        n = len(self.images) + len(self.failures)
        return (n, full) if full is not None and n < full else None

    @property
    def header(self) -> str:
        sub = self.subset
        return f"{self.name} ({sub[0]} of {sub[1]})" if sub else self.name


@dataclass
class EvalResult:
    """Per-set means and per-image values of one model at one scale under one convention."""

    label: str
    scale: int
    convention: Convention
    convention_name: str
    sets: list[SetResult] = field(default_factory=list)
    options: dict = field(default_factory=dict)

    @property
    def failures(self) -> list[tuple[str, str, str]]:
        return [(s.name, n, msg) for s in self.sets for n, msg in s.failures]

    def __getitem__(self, set_name: str) -> SetResult:
        for s in self.sets:
            if s.name == set_name:
                return s
        raise KeyError(set_name)

    def cell(self, s: SetResult) -> str:
        if not s.images:
            return "failed"
        text = f"{s.psnr:.2f}/{s.ssim:.4f}"
        return text + (f" ({len(s.failures)} failed)" if s.failures else "")

    def to_markdown(self) -> str:
        """Paper-style table: one row, PSNR/SSIM per set (2 and 4 decimals)."""
        header = "| Method | Scale | " + " | ".join(s.header for s in self.sets) + " |"
        rule = "|---|---|" + "---|" * len(self.sets)
        row = f"| {self.label} | x{self.scale} | " + " | ".join(self.cell(s) for s in self.sets) + " |"
        lines = [header, rule, row]
        if any(s.sparsity is not None for s in self.sets):
            lines.append(f"| SparseGSA positive share | x{self.scale} | "
                         + " | ".join("-" if s.sparsity is None else f"{100 * s.sparsity:.2f}%" for s in self.sets) + " |")
        lines.append("")
        unrounded = self.options.get("bicubic_output") == "float"
        lines.append(f"PSNR (dB) / SSIM; {self.convention_name} convention: {self.convention.describe(self.scale)}; "
                     f"{'unrounded' if unrounded else 'uint8'} output, mean of per-image values.")
        subsets = [(s.name, *s.subset) for s in self.sets if s.subset]
        if subsets:
            lines.append("Subsets, not the complete sets: " + ", ".join(f"{n} = {k} of its {full} images"
                                                                        for n, k, full in subsets) + ".")
        extras = [f"{k}={v}" for k, v in self.options.items() if v not in (None, False)]
        if extras:
            lines.append("Options: " + ", ".join(extras) + ".")
        return "\n".join(lines) + "\n"

    def to_csv(self) -> str:
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        w.writerow(["set", "image", "scale", "psnr", "ssim", "lr_height", "lr_width", "gray", "seconds", "lr_origin"])
        for s in self.sets:
            for r in s.images:
                w.writerow([r.set, r.name, self.scale, f"{r.psnr:.6f}", f"{r.ssim:.6f}", r.lr_height, r.lr_width,
                            int(r.gray), f"{r.seconds:.4f}", r.lr_origin])
        return buf.getvalue()

    def to_dict(self) -> dict:
        import lightsr

        return {
            "model": self.label,
            "scale": self.scale,
            "convention": {"name": self.convention_name, **dataclasses.asdict(self.convention),
                           "crop_border_used": self.convention.border(self.scale)},
            "options": self.options,
            "sets": {
                s.name: {"psnr": s.psnr, "ssim": s.ssim, "images": len(s.images), "failures": s.failures,
                         "complete_set_images": FULL_SIZES.get(s.name),
                         "seconds": s.seconds, "attention_positive_share": s.sparsity, "data": s.description}
                for s in self.sets
            },
            "images": [dataclasses.asdict(r) for s in self.sets for r in s.images],
            "lightsr_version": lightsr.__version__,
            "torch_version": torch.__version__,
            "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }

    def to_json(self) -> str:
        def clean(o):
            if isinstance(o, float) and not math.isfinite(o):
                return None if math.isnan(o) else ("inf" if o > 0 else "-inf")
            if isinstance(o, dict):
                return {k: clean(v) for k, v in o.items()}
            if isinstance(o, (list, tuple)):
                return [clean(v) for v in o]
            return o

        return json.dumps(clean(self.to_dict()), indent=2) + "\n"

    def write(self, out_dir: str | os.PathLike) -> dict[str, Path]:
        """Write ``results.md``, ``per_image.csv`` and ``results.json`` into ``out_dir`` (atomically)."""
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        paths = {"markdown": out / "results.md", "csv": out / "per_image.csv", "json": out / "results.json"}
        for key, text in (("markdown", self.to_markdown()), ("csv", self.to_csv()), ("json", self.to_json())):
            write_text_atomic(paths[key], text)
        return paths


def _save_png(img: np.ndarray, path: Path) -> None:
    """An SR image as PNG, atomically, with the usual file permissions."""
    from PIL import Image

    from lightsr.inference.io import atomic_output

    with atomic_output(path, overwrite=True) as f:
        Image.fromarray(img).save(f, format="PNG")


def _reason(exc: BaseException) -> str:
    """One line for a failed image (no ANSI codes, no traceback)."""
    lines = [line for line in re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", str(exc)).splitlines() if line.strip()]
    text = " ".join(lines[0].split()) if lines else ""  # the first line: the rest is usually a trace
    if isinstance(exc, MemoryError):
        return f"out of memory{': ' + text if text else ''}"
    if isinstance(exc, (ValueError, RuntimeError, OSError)):
        return text or type(exc).__name__
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# ----------------------------------------------------------------------------------------------
def _to_gray(rgb: np.ndarray) -> np.ndarray:
    """BT.601 luma 0.299 R + 0.587 G + 0.114 B of a uint8/float RGB image, rounded to uint8."""
    x = rgb.astype(np.float64)
    luma = 0.299 * x[..., 0] + 0.587 * x[..., 1] + 0.114 * x[..., 2]
    return np.clip(np.floor(luma + 0.5), 0, 255).astype(np.uint8)


def _score(sr: np.ndarray, hr: np.ndarray, gray: bool, scale: int, conv: Convention) -> tuple[float, float]:
    """PSNR/SSIM of one SR image (uint8, or float64 for the unrounded bicubic variant)."""
    border = conv.border(scale)
    if gray and conv.gray == "y":
        if sr.ndim == 3:
            sr = _to_gray(sr) if sr.dtype == np.uint8 else 0.299 * sr[..., 0] + 0.587 * sr[..., 1] + 0.114 * sr[..., 2]
        kw = dict(y_channel=False)
    else:
        if hr.ndim == 2:
            hr = np.repeat(hr[..., None], 3, axis=2)
        if sr.ndim == 2:
            sr = np.repeat(sr[..., None], 3, axis=2)
        kw = dict(y_channel=conv.y_channel, round_y=conv.round_y)
    if sr.dtype != hr.dtype:
        hr = hr.astype(sr.dtype)
    return psnr(sr, hr, border, **kw), ssim(sr, hr, border, **kw)


def _bicubic_y(sample: Sample, scale: int, conv: Convention) -> tuple[float, float, np.ndarray]:
    """SRCNN/VDSR protocol: downscale the (rounded) Y of the HR as uint8, upscale it in double."""
    hr = sample.hr
    if sample.gray and conv.gray == "y":
        y = hr.astype(np.float64)
    else:
        rgb = hr if hr.ndim == 3 else np.repeat(hr[..., None], 3, axis=2)
        y = rgb_to_y(rgb, round_y=conv.round_y)
    if conv.round_y or (sample.gray and conv.gray == "y"):
        lr = imresize(y.astype(np.uint8), 1 / scale)
    else:  # unrounded Y: the LR is made in float and rounded once
        lr = np.clip(np.floor(imresize(y, 1 / scale) + 0.5), 0, 255).astype(np.uint8)
    sr = imresize(lr, scale) if conv.bicubic_output == "uint8" else imresize(lr.astype(np.float64), scale)
    sr_f = sr.astype(np.float64)
    border = conv.border(scale)
    return psnr(sr_f, y, border, y_channel=False), ssim(sr_f, y, border, y_channel=False), sr


def _model_label(model) -> str:
    cfg = getattr(model, "lightsr_config", None)
    if cfg:
        return str(cfg.get("name"))
    return type(model).__name__


def _as_sets(dataset, scale: int) -> list[BenchmarkSet]:
    if isinstance(dataset, BenchmarkSet):
        return [dataset]
    if isinstance(dataset, (str, os.PathLike)):
        return [find_benchmark(dataset, None, scale)]
    if isinstance(dataset, Mapping):
        return list(dataset.values())
    if isinstance(dataset, Iterable):
        sets = list(dataset)
        if all(isinstance(s, BenchmarkSet) for s in sets):
            return sets
    raise TypeError("dataset must be a BenchmarkSet, a list of them, or a folder path")


def evaluate(
    model: nn.Module | Callable[[torch.Tensor], torch.Tensor] | str,
    dataset,
    *,
    scale: int | None = None,
    convention: str | Convention = "basicsr",
    crop_border: int | None = None,
    y_channel: bool | None = None,
    round_y: bool | None = None,
    gray: str | None = None,
    bicubic_output: str | None = None,
    bicubic_channel: str | None = None,
    self_ensemble: bool = False,
    tile: int | None = None,
    tile_overlap: int = 16,
    tlc: bool | None = None,
    device: str | torch.device | None = None,
    precision: str = "fp32",
    save_dir: str | os.PathLike | None = None,
    attention_stats: bool = False,
    label: str | None = None,
    progress: bool = True,
    limit: int | None = None,
    job=None,
) -> EvalResult | None:
    """Evaluate ``model`` on benchmark ``dataset`` and return per-set PSNR/SSIM (paper conventions).

    Args:
        model: any ``nn.Module`` (or callable) mapping an LR batch (1, 3, h, w) in [0, 1] to SR
            (1, 3, s h, s w); or ``"bicubic"`` / :class:`Bicubic` for the bicubic baseline.
        dataset: a :class:`~lightsr.data.benchmark.BenchmarkSet`, a list of them, or a folder.
        scale: SR factor (default: ``model.scale`` or the dataset's).
        convention: ``"basicsr"`` (default), ``"matlab-y"``, ``"ntire"`` or a :class:`Convention`;
            ``crop_border``, ``y_channel``, ``round_y``, ``gray``, ``bicubic_output`` and
            ``bicubic_channel`` override single fields of it.
        self_ensemble: x8 geometric self-ensemble (the "+" rows of papers).
        tile / tile_overlap: run the model on overlapping LR tiles to bound memory (changes the
            numbers slightly for models with a large receptive field; off by default).
        tlc: switch DLGSANet's test-time local converter on/off (``None``: leave as configured).
        device: where the model runs (default: where its parameters are, else CPU).
        precision: ``fp32`` (default: the papers' numbers), ``bf16`` or ``fp16``: the model runs
            under autocast (as ``lightsr upscale --precision`` does); recorded in the options.
        save_dir: write each SR image as ``save_dir/<set>/<image>.png`` (uint8, atomically).
        attention_stats: record the share of positive entries of DLGSANet's SparseGSA maps
            (paper Table 5), averaged per set into ``SetResult.sparsity``.
        label: name for tables (default: the model's registry name).
        progress: show progress per set (a bar on a terminal, a line every few seconds otherwise).
        limit: evaluate only the first ``limit`` images of each set (quick checks).
        job: a :class:`lightsr.parallel.Job` (``torchrun``): each process scores its share of
            every set's images and rank 0 gathers the per-image results in index order, so its
            result equals a single process's exactly; other ranks return ``None``.

    Images that fail (unreadable, wrong output size, NaN/Inf output, out of memory) are recorded in
    ``SetResult.failures`` with a one-line reason and never scored; the rest of the set is still
    evaluated.
    """
    if isinstance(model, str):
        if model.lower() != "bicubic":
            raise ValueError(f"model must be an nn.Module, a callable or 'bicubic', got {model!r}")
        if scale is None:
            raise ValueError("evaluate('bicubic', ...) needs scale=")
        model = Bicubic(scale)
    scale = _resolve_scale(model, dataset, scale)
    sets = _as_sets(dataset, scale)
    for s in sets:
        if s.scale != scale:
            raise ValueError(f"dataset {s.name} is prepared for x{s.scale}, the model is x{scale}")
    conv = _resolve_convention(convention, dict(
        crop_border=crop_border, y_channel=y_channel, round_y=round_y, gray=gray,
        bicubic_output=bicubic_output, bicubic_channel=bicubic_channel))
    conv_name = convention if isinstance(convention, str) else "custom"
    if isinstance(convention, str) and conv != CONVENTIONS[convention]:
        conv_name = f"{convention} (modified)"
    is_bicubic = isinstance(model, Bicubic)
    if is_bicubic and self_ensemble:
        raise ValueError("self-ensemble has no effect on the bicubic baseline; leave it off")
    device, dtype = _prepare_model(model, tlc, device)
    sparsity_ctx = _sparsity_collector(model) if attention_stats else None
    forward = _forward_fn(model, is_bicubic, device, precision, scale, tile, tile_overlap, self_ensemble)

    options = {"self_ensemble": self_ensemble, "tile": tile, "tlc": tlc, "device": str(device), "limit": limit,
               "precision": None if precision == "fp32" else precision}
    if is_bicubic:
        options = {"bicubic_output": conv.bicubic_output, "bicubic_channel": conv.bicubic_channel, "limit": limit}
    result = EvalResult(label or ("Bicubic" if is_bicubic else _model_label(model)), scale, conv, conv_name,
                        options=options)
    score = _ImageScorer(model, forward, is_bicubic, conv, scale, device, dtype,
                         Path(save_dir) if save_dir is not None else None)
    main = job is None or job.is_main
    for ds in sets:
        n = len(ds) if limit is None else min(limit, len(ds))
        sparsity = (lambda: sparsity_ctx(model)) if sparsity_ctx else None
        sr_set = _evaluate_set(ds, scale, n, score, job, sparsity, progress and main)
        if sr_set is not None:
            result.sets.append(sr_set)
    return result if main else None


def _resolve_scale(model, dataset, scale: int | None) -> int:
    """``scale``, else the model's ``.scale``, else a single benchmark set's."""
    if scale is None:
        scale = getattr(model, "scale", None)
    if scale is None:
        if not isinstance(dataset, BenchmarkSet):
            raise ValueError("cannot tell the scale: pass scale= (the model has no .scale attribute)")
        scale = dataset.scale
    return int(scale)


def _prepare_model(model, tlc: bool | None, device) -> tuple[torch.device, torch.dtype]:
    """Eval mode, the TLC switch, the device: returns where the model runs and the input dtype."""
    if not isinstance(model, nn.Module):
        return torch.device(device or "cpu"), torch.float32
    model.eval()
    if tlc is not None:
        if not hasattr(model, "set_tlc"):
            raise ValueError(f"{_model_label(model)} has no test-time local converter (TLC is a DLGSANet option)")
        model.set_tlc(bool(tlc))
    if device is None:
        p = next(iter(model.parameters()), None)
        device = p.device if p is not None else torch.device("cpu")
    device = torch.device(device)
    if not isinstance(model, Bicubic):
        model.to(device)
    p = next(iter(model.parameters()), None)
    return device, (p.dtype if p is not None and p.is_floating_point() else torch.float32)


def _sparsity_collector(model) -> Callable:
    """The context that records SparseGSA's share of positive attention entries (paper Table 5)."""
    from lightsr.models.dlgsanet import SparseGSA, collect_attention_sparsity

    if not isinstance(model, nn.Module) or not any(isinstance(m, SparseGSA) for m in model.modules()):
        raise ValueError("attention statistics need a DLGSANet model (no SparseGSA layers found)")
    return collect_attention_sparsity


def _forward_fn(model, is_bicubic: bool, device: torch.device, precision: str, scale: int, tile: int | None,
                tile_overlap: int, self_ensemble: bool) -> Callable[[torch.Tensor], torch.Tensor]:
    """LR batch -> SR batch as evaluated: under autocast for bf16 / fp16, tiled, self-ensembled."""
    autocast_dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}.get(precision, "?")
    if autocast_dtype == "?":
        raise ValueError(f"precision must be fp32, bf16 or fp16, got {precision!r}")

    def run_model(x: torch.Tensor) -> torch.Tensor:
        if autocast_dtype is None or is_bicubic:
            return model(x)
        if device.type == "cpu":
            x = x.contiguous(memory_format=torch.channels_last)  # oneDNN's fast reduced-precision layout
        with torch.autocast(device.type, dtype=autocast_dtype):
            return model(x).float()

    def forward(x: torch.Tensor) -> torch.Tensor:
        fn = run_model
        if tile:
            fn = lambda t: forward_tiled(run_model, t, scale, tile, tile_overlap)  # noqa: E731
        if self_ensemble:
            return forward_self_ensemble(fn, x)
        return fn(x)

    return forward


def _evaluate_set(ds: BenchmarkSet, scale: int, n: int, score: "_ImageScorer", job, sparsity: Callable | None,
                  progress: bool) -> SetResult | None:
    """The first ``n`` images of ``ds`` (this process's share under ``job``); rank 0 gets the whole set."""
    from lightsr.inference.progress import Progress

    idx = job.shard(range(n), key=int) if job is not None else list(range(n))
    outcomes = []  # per image: (ImageResult or (name, reason), its attention maps' positive shares)
    bar = Progress(len(idx), f"{ds.name} x{scale}", unit="img", enabled=progress, leave=False)
    with sparsity() if sparsity else contextlib.nullcontext(None) as log:
        for i in idx:
            seen = len(log) if log is not None else 0
            outcome = score(ds, i)
            maps = [t.detach().flatten().float().cpu() for t in log[seen:]] if log is not None else []
            if log is not None:
                del log[seen:]
            outcomes.append((outcome, maps))
            bar.update(1)
    bar.close()
    if job is not None:
        outcomes = job.gather(outcomes)  # rank 0: every image, in index order
        if outcomes is None:
            return None
    sr_set = SetResult(ds.name, scale, description=ds.describe())
    maps = []
    for outcome, image_maps in outcomes:
        (sr_set.images if isinstance(outcome, ImageResult) else sr_set.failures).append(outcome)
        maps.extend(image_maps)
    if maps:
        sr_set.sparsity = float(torch.cat(maps).mean())
    return sr_set


@dataclass
class _ImageScorer:
    """Scores image ``i`` of a set: ``ImageResult``, or ``(name, one-line reason)`` when it fails."""

    model: object
    forward: Callable[[torch.Tensor], torch.Tensor]
    is_bicubic: bool
    conv: Convention
    scale: int
    device: torch.device
    dtype: torch.dtype
    save_root: Path | None

    def __call__(self, ds: BenchmarkSet, i: int) -> ImageResult | tuple[str, str]:
        name = ds.names[i]
        try:
            sample = ds[i]
            t0 = time.perf_counter()
            if self.is_bicubic and self.conv.bicubic_channel == "y":
                p_val, s_val, sr = _bicubic_y(sample, self.scale, self.conv)
                seconds = time.perf_counter() - t0
            else:
                sr = self.model.upscale_uint8(sample.lr, self.conv.bicubic_output) if self.is_bicubic \
                    else self._super_resolve(sample)
                seconds = time.perf_counter() - t0
                p_val, s_val = _score(sr, sample.hr, sample.gray, self.scale, self.conv)
            if self.save_root is not None:
                self._save(sr, sample, self.save_root / ds.name / f"{name}.png")
            lr_h, lr_w = sample.lr.shape[:2]
            return ImageResult(ds.name, name, p_val, s_val, lr_h, lr_w, sample.gray, seconds, sample.lr_origin)
        except Exception as exc:  # noqa: BLE001 - one image's problem is recorded; the set goes on
            return name, _reason(exc)

    def _super_resolve(self, sample: Sample) -> np.ndarray:
        """The model's uint8 output for one LR image, cropped to the HR; ValueError when it is unusable."""
        lr = sample.lr if sample.lr.ndim == 3 else np.repeat(sample.lr[..., None], 3, axis=2)
        x = torch.from_numpy(np.ascontiguousarray(lr.transpose(2, 0, 1)))[None]
        x = x.to(device=self.device, dtype=self.dtype).div_(255.0)
        with torch.inference_mode():
            y = self.forward(x)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        h, w = sample.hr.shape[0], sample.hr.shape[1]
        if not isinstance(y, torch.Tensor) or y.dim() != 4 or y.shape[-2] < h or y.shape[-1] < w:
            shape = tuple(y.shape) if isinstance(y, torch.Tensor) else type(y).__name__
            raise ValueError(f"model output {shape} is smaller than the HR {h}x{w}")
        if not bool(torch.isfinite(y).all()):
            raise ValueError("the model's output holds NaN/Inf values: the weights are broken or "
                             "overflow (image not scored)")
        return to_uint8(y[0, :, :h, :w])

    @staticmethod
    def _save(sr: np.ndarray, sample: Sample, out_path: Path) -> None:
        if out_path.resolve() == sample.hr_path.resolve():
            raise ValueError(f"refusing to overwrite the input {sample.hr_path}")
        img = sr if sr.dtype == np.uint8 else np.clip(np.floor(sr + 0.5), 0, 255).astype(np.uint8)
        _save_png(img, out_path)
