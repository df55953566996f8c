"""Benchmark test sets (Set5, Set14, B100, Urban100, Manga109, DIV2K) in the folder layouts found in
the wild, with LR images made by MATLAB-compatible bicubic when a set has none.

Layouts recognised by :func:`find_benchmark` (``root`` is what you pass as ``--data``):

* EDSR ``benchmark.tar`` / SwinIR ``testsets``: ``root/<Set>/HR/<name>.png`` and
  ``root/<Set>/LR_bicubic/X<s>/<name>x<s>.png``;
* BasicSR: ``root/<Set>/GTmod12/<name>.png`` and ``root/<Set>/LRbicx<s>/<name>.png``;
* RCAN / LAMNet: ``root/HR/<Set>/x<s>/<name>_HR_x<s>.png`` and
  ``root/LR/LRBI/<Set>/x<s>/<name>_LRBI_x<s>.png``;
* DIV2K: ``root/DIV2K_valid_HR/0801.png`` and ``root/DIV2K_valid_LR_bicubic/X<s>/0801x<s>.png``
  (also under ``root/DIV2K/``);
* a plain folder of HR images (``root/<Set>/*.png`` or ``root`` itself).

Any other layout: build a :class:`BenchmarkSet` directly with ``hr_dir``, ``lr_dir`` and filename
templates (``{name}`` and ``{scale}`` fields, like BasicSR's ``filename_tmpl``).

Sets without LR files (or with ``lr_source="generate"``) get their LR from
``imresize(modcrop(HR, scale), 1/scale)`` on uint8 - bit-exact to MATLAB on Set5/Set14 - cached
as PNG under a cache folder (``$LIGHTSR_CACHE`` or ``~/.cache/lightsr``), written atomically and
never inside the dataset folder. Folders named ``LR_bicubic_replicate`` (SelfExSR's LR with
clamped borders) are deliberately not used as LR: they are not MATLAB ``imresize`` output.

Grayscale images (Set14 ``bridge``) are kept single-channel here (``Sample.gray``); how they are fed
to a model and scored is the evaluation's choice (see :mod:`lightsr.evaluation`).

>>> from lightsr.data.benchmark import find_benchmark
>>> s = find_benchmark("../shared/datasets/benchmark", "Set5", scale=4)   # doctest: +SKIP
>>> sample = s[0]; sample.name, sample.hr.shape, sample.lr.shape          # doctest: +SKIP
('baby', (512, 512, 3), (128, 128, 3))
"""
from __future__ import annotations

import hashlib
import os
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
from PIL import Image

from lightsr.data.imresize import imresize, modcrop

__all__ = [
    "BenchmarkSet",
    "Sample",
    "DEFAULT_SETS",
    "SET_ALIASES",
    "find_benchmark",
    "default_cache_dir",
    "read_image",
]

IMG_EXTS = (".png", ".bmp", ".jpg", ".jpeg", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
DEFAULT_SETS = ("Set5", "Set14", "B100", "Urban100", "Manga109")
SET_ALIASES: dict[str, tuple[str, ...]] = {
    "Set5": ("Set5",),
    "Set14": ("Set14",),
    "B100": ("B100", "BSD100", "BSDS100"),
    "Urban100": ("Urban100",),
    "Manga109": ("Manga109",),
    "DIV2K": ("DIV2K", "DIV2K_valid"),
}
LR_SOURCES = ("auto", "file", "generate")
CACHE_VERSION = "imresize-matlab-v1"


def default_cache_dir() -> Path:
    """``$LIGHTSR_CACHE``, else ``$XDG_CACHE_HOME/lightsr``, else ``~/.cache/lightsr``."""
    env = os.environ.get("LIGHTSR_CACHE")
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".cache") / "lightsr"


def _natural_key(text: str):
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def read_image(path: str | os.PathLike) -> tuple[np.ndarray, bool]:
    """Read an 8-bit benchmark image: ``(uint8 array, is_gray)``; HxW for gray, HxWx3 otherwise.

    Gray (``L``/``LA``/``1``) stays single-channel, every other 8-bit mode (palette, RGBA, CMYK,
    YCbCr) is converted to RGB (alpha dropped). 16-bit and float images raise ``ValueError``.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            mode = im.mode
            if mode not in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
                gray = mode in ("L", "LA", "1")
                return np.asarray(im.convert("L" if gray else "RGB")), gray
    except MemoryError:
        raise ValueError(f"{path}: not enough memory to decode this image") from None
    except Exception as exc:  # noqa: BLE001 - Pillow's decoders raise many types on crafted files
        text = " ".join(str(exc).split()) or type(exc).__name__
        raise ValueError(f"{path}: cannot read image ({text[:200]})") from None
    raise ValueError(f"{path}: {mode} (16-bit or float) images are not supported as benchmark images")


def _write_png_atomic(arr: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        Image.fromarray(arr).save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _template_regex(template: str, scale: int) -> re.Pattern:
    if "{name}" not in template:
        raise ValueError(f"filename template {template!r} must contain {{name}}")
    parts = re.split(r"(\{name\}|\{scale\})", template)
    out = []
    for p in parts:
        if p == "{name}":
            out.append(r"(?P<name>.+?)")
        elif p == "{scale}":
            out.append(re.escape(str(scale)))
        else:
            out.append(re.escape(p))
    return re.compile("^" + "".join(out) + "$")


@dataclass
class Sample:
    """One benchmark image pair. ``hr`` is cropped to exactly ``lr`` size x scale."""

    name: str
    hr: np.ndarray
    lr: np.ndarray
    gray: bool
    hr_path: Path
    lr_path: Path | None = None
    lr_origin: str = "file"  # "file" (from the dataset), "generated" or "cached" (our imresize)


@dataclass
class _Entry:
    name: str
    hr_path: Path
    lr_path: Path | None


@dataclass
class BenchmarkSet:
    """A benchmark set at one scale: a sequence of :class:`Sample` loaded on access.

    Args:
        hr_dir: folder with the HR images.
        scale: the SR factor.
        lr_dir: folder with the LR images (optional).
        name: set name for tables (default: derived from the folders).
        hr_template / lr_template: file stems, with ``{name}`` (and ``{scale}``) fields, e.g.
            ``"{name}_HR_x{scale}"`` / ``"{name}_LRBI_x{scale}"`` (RCAN) or ``"{name}x{scale}"``.
        lr_source: ``auto`` (LR files where present, else generated), ``file`` (LR files required)
            or ``generate`` (always ``imresize(modcrop(HR, mod), 1/scale)``, ignoring LR files).
        mod: modcrop of HR before generating LR (default: the scale; 12 for BasicSR's GTmod12).
        cache_dir: where generated LR images are cached (default :func:`default_cache_dir`).
        cache: set False to regenerate in memory every time and write nothing.
        layout: description of the recognised layout (for reports).
    """

    hr_dir: Path
    scale: int
    lr_dir: Path | None = None
    name: str | None = None
    hr_template: str = "{name}"
    lr_template: str = "{name}x{scale}"
    lr_source: str = "auto"
    mod: int | None = None
    cache_dir: Path | None = None
    cache: bool = True
    layout: str = "custom"
    _entries: list[_Entry] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        self.hr_dir = Path(self.hr_dir)
        self.scale = int(self.scale)
        if self.scale < 1:
            raise ValueError(f"scale must be >= 1, got {self.scale}")
        if self.lr_dir is not None:
            self.lr_dir = Path(self.lr_dir)
        if self.lr_source not in LR_SOURCES:
            raise ValueError(f"lr_source must be one of {LR_SOURCES}, got {self.lr_source!r}")
        self.mod = int(self.mod) if self.mod else self.scale
        if self.mod % self.scale:
            raise ValueError(f"mod ({self.mod}) must be a multiple of the scale ({self.scale})")
        if not self.hr_dir.is_dir():
            raise FileNotFoundError(f"HR folder not found: {self.hr_dir}")
        if self.name is None:
            self.name = self.hr_dir.parent.name if self.hr_dir.name.lower() in ("hr", "gtmod12") else self.hr_dir.name
        self.cache_dir = Path(self.cache_dir).expanduser() if self.cache_dir else default_cache_dir()
        self._entries = self._scan()
        if not self._entries:
            raise FileNotFoundError(f"no HR images matching {self.hr_template!r} in {self.hr_dir}")
        if self.lr_source == "file":
            missing = [e.name for e in self._entries if e.lr_path is None]
            if missing:
                where = self.lr_dir if self.lr_dir else "(no LR folder)"
                raise FileNotFoundError(
                    f"{self.name} x{self.scale}: {len(missing)} of {len(self._entries)} LR images missing in {where} "
                    f"(e.g. {self.lr_template.format(name=missing[0], scale=self.scale)}); use lr_source='auto' to generate them")

    # ------------------------------------------------------------------------------------------
    def _scan(self) -> list[_Entry]:
        pattern = _template_regex(self.hr_template, self.scale)
        lr_index: dict[str, Path] = {}
        if self.lr_dir is not None and self.lr_dir.is_dir() and self.lr_source != "generate":
            for p in self.lr_dir.iterdir():
                if p.suffix.lower() in IMG_EXTS and p.is_file():
                    lr_index.setdefault(p.stem, p)
        entries = []
        for p in sorted(self.hr_dir.iterdir(), key=lambda q: _natural_key(q.name)):
            if p.suffix.lower() not in IMG_EXTS or not p.is_file() or p.name.startswith("."):
                continue
            m = pattern.match(p.stem)
            if not m:
                continue
            name = m.group("name")
            lr_stem = self.lr_template.format(name=name, scale=self.scale)
            entries.append(_Entry(name, p, lr_index.get(lr_stem)))
        return entries

    @property
    def names(self) -> list[str]:
        return [e.name for e in self._entries]

    @property
    def lr_origin(self) -> str:
        """``files``, ``generated`` or ``mixed``: where this set's LR images come from."""
        has = {e.lr_path is not None for e in self._entries}
        return "files" if has == {True} else "generated" if has == {False} else "mixed"

    def describe(self) -> str:
        lr = {"files": f"LR {self.lr_dir}", "generated": f"LR generated (MATLAB bicubic, modcrop {self.mod})",
              "mixed": f"LR {self.lr_dir} + generated where missing"}[self.lr_origin]
        return f"{self.name} x{self.scale}: {len(self)} images [{self.layout}], HR {self.hr_dir}, {lr}"

    def __len__(self) -> int:
        return len(self._entries)

    def __iter__(self) -> Iterator[Sample]:
        for i in range(len(self)):
            yield self[i]

    def __getitem__(self, index: int) -> Sample:
        e = self._entries[index]
        hr, gray = read_image(e.hr_path)
        s = self.scale
        if e.lr_path is not None:
            lr, lr_gray = read_image(e.lr_path)
            if lr_gray != gray:  # e.g. a gray HR whose LR file was saved as RGB
                lr = np.asarray(Image.fromarray(lr).convert("L")) if gray else np.repeat(lr[..., None], 3, axis=2)
            h, w = lr.shape[0] * s, lr.shape[1] * s
            if hr.shape[0] < h or hr.shape[1] < w:
                raise ValueError(f"{e.hr_path}: HR {hr.shape[1]}x{hr.shape[0]} is smaller than LR "
                                 f"{lr.shape[1]}x{lr.shape[0]} x{s} ({e.lr_path})")
            return Sample(e.name, np.ascontiguousarray(hr[:h, :w]), lr, gray, e.hr_path, e.lr_path, "file")
        hr = np.ascontiguousarray(modcrop(hr, self.mod))
        lr, cache_path, origin = self._generated_lr(e, hr)
        return Sample(e.name, hr, lr, gray, e.hr_path, cache_path, origin)

    # ------------------------------------------------------------------------------------------
    def _cache_path(self, e: _Entry) -> Path:
        st = e.hr_path.stat()
        key = f"{e.hr_path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{self.scale}|{self.mod}|{CACHE_VERSION}"
        digest = hashlib.sha1(key.encode()).hexdigest()[:16]
        return self.cache_dir / "lr_bicubic" / f"X{self.scale}" / f"{e.name}x{self.scale}-{digest}.png"

    def _generated_lr(self, e: _Entry, hr: np.ndarray) -> tuple[np.ndarray, Path | None, str]:
        path = self._cache_path(e) if self.cache else None
        if path is not None and path.is_file():
            try:
                lr, _ = read_image(path)
                if lr.shape[:2] == (hr.shape[0] // self.scale, hr.shape[1] // self.scale) and lr.ndim == hr.ndim:
                    return lr, path, "cached"
            except ValueError:
                pass  # unreadable cache entry: regenerate and overwrite
        lr = imresize(hr, 1 / self.scale)
        if path is not None:
            try:
                _write_png_atomic(lr, path)
            except OSError as exc:
                warnings.warn(f"cannot write LR cache {path} ({exc}); continuing without caching", stacklevel=3)
                self.cache = False
                path = None
        return lr, path, "generated"


# ----------------------------------------------------------------------------------------------
def _child(root: Path, names: Sequence[str]) -> Path | None:
    """First sub-folder of ``root`` whose name matches one of ``names`` (case-insensitively)."""
    if not root.is_dir():
        return None
    wanted = [n.lower() for n in names]
    found = {p.name.lower(): p for p in root.iterdir() if p.is_dir()}
    for n in wanted:
        if n in found:
            return found[n]
    return None


def _has_images(folder: Path) -> bool:
    return folder.is_dir() and any(p.suffix.lower() in IMG_EXTS for p in folder.iterdir() if p.is_file())


def _scale_dir(folder: Path | None, scale: int, prefixes: Sequence[str] = ("X", "x")) -> Path | None:
    if folder is None:
        return None
    return _child(folder, [f"{p}{scale}" for p in prefixes])


def find_benchmark(root: str | os.PathLike, set_name: str | None, scale: int, **options) -> BenchmarkSet:
    """Locate benchmark ``set_name`` under ``root`` in any of the known layouts (see module doc).

    ``set_name=None`` treats ``root`` itself as the set folder. ``options`` go to
    :class:`BenchmarkSet` (``lr_source``, ``mod``, ``cache_dir``, ``cache``, ``hr_template``,
    ``lr_template``, ``lr_dir``); templates given here override the layout's.
    """
    root = Path(root).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"data folder not found: {root}")
    scale = int(scale)
    canonical = None
    aliases: tuple[str, ...] = ()
    if set_name is not None:
        canonical = next((k for k, v in SET_ALIASES.items() if set_name.lower() in (a.lower() for a in v)), set_name)
        aliases = SET_ALIASES.get(canonical, (set_name,))

    def make(hr_dir, lr_dir, layout, **defaults) -> BenchmarkSet:
        kw = {**defaults, **{k: v for k, v in options.items() if v is not None}}
        kw.setdefault("name", canonical or Path(hr_dir).name)
        return BenchmarkSet(hr_dir, scale, lr_dir=kw.pop("lr_dir", lr_dir), layout=layout, **kw)

    set_dir = root if set_name is None else _child(root, aliases)
    if set_dir is None and set_name is not None and root.name.lower() in (a.lower() for a in aliases):
        set_dir = root
    if set_dir is not None:
        name = canonical or set_dir.name
        hr = _child(set_dir, ["HR"])
        if hr is not None and _has_images(hr):  # EDSR benchmark.tar / SwinIR testsets
            lr = _scale_dir(_child(set_dir, ["LR_bicubic"]), scale)
            return make(hr, lr, "EDSR/SwinIR (HR + LR_bicubic/X{s})", name=name)
        gt = _child(set_dir, ["GTmod12"])
        if gt is not None:  # BasicSR
            return make(gt, _child(set_dir, [f"LRbicx{scale}"]), "BasicSR (GTmod12 + LRbicx{s})",
                        name=name, lr_template="{name}", mod=12)
        div_hr = _child(set_dir, ["DIV2K_valid_HR"])
        if div_hr is not None:
            lr = _scale_dir(_child(set_dir, ["DIV2K_valid_LR_bicubic"]), scale)
            return make(div_hr, lr, "DIV2K (DIV2K_valid_HR + DIV2K_valid_LR_bicubic/X{s})", name=name)
        if _has_images(set_dir):
            return make(set_dir, None, "HR images only", name=name)
    # RCAN / LAMNet: root/HR/<Set>/x<s>, root/LR/LRBI/<Set>/x<s>
    if set_name is not None:
        rcan_hr = _scale_dir(_child(_child(root, ["HR"]) or root / "-", aliases), scale, ("x", "X"))
        if rcan_hr is not None:
            lrbi = _child(_child(root, ["LR"]) or root / "-", ["LRBI"])
            rcan_lr = _scale_dir(_child(lrbi, aliases) if lrbi else None, scale, ("x", "X"))
            return make(rcan_hr, rcan_lr, "RCAN (HR/<set>/x{s} + LR/LRBI/<set>/x{s})", name=canonical,
                        hr_template="{name}_HR_x{scale}", lr_template="{name}_LRBI_x{scale}")
    if canonical == "DIV2K":
        div_hr = _child(root, ["DIV2K_valid_HR"])
        if div_hr is not None:
            lr = _scale_dir(_child(root, ["DIV2K_valid_LR_bicubic"]), scale)
            return make(div_hr, lr, "DIV2K (DIV2K_valid_HR + DIV2K_valid_LR_bicubic/X{s})", name="DIV2K")
    what = f"set {set_name!r}" if set_name else "a benchmark set"
    raise FileNotFoundError(
        f"cannot find {what} x{scale} under {root}: expected <Set>/HR (+ LR_bicubic/X{scale}), <Set>/GTmod12, "
        f"HR/<Set>/x{scale} (RCAN), DIV2K_valid_HR, or a folder of images")
