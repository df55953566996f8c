"""Training and validation data for super-resolution.

* :class:`SRTrainDataset` - HR/LR pairs from folders (``PairedImageDataset``) or HR-only folders
  whose LR images are made with lightsr's MATLAB-compatible bicubic :func:`~lightsr.data.imresize`
  (``HRImageDataset``; LR images are cached on disk, written atomically, keyed by the HR file's
  path, size, modification time and the scale). Several folders can be listed; images can be
  pre-loaded into memory (``preload``); aligned random crops (``lq_size`` LR pixels and
  ``scale * lq_size`` HR pixels), horizontal flips and the 90-degree rotations.
* :class:`TrainBatchSampler` - the data order as a pure function of ``(seed, iteration)``: every
  sample carries its own augmentation seed, so the order and the crops/flips are identical
  whatever the number of DataLoader workers, and resuming at iteration ``i`` continues exactly
  where an uninterrupted run would be. Batches are sharded across distributed ranks: the effective
  (global) batch of an iteration is the same set of samples for any world size.
* :class:`SRValDataset` - whole images for validation (GT cropped to ``scale x`` the LR size).

Images smaller than the training patch are skipped (default, with one warning giving the count)
or, with ``small_images="pad"``, mirror-padded (HR by ``scale x`` the LR padding) to the patch size.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import signal
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = [
    "IMAGE_EXTENSIONS",
    "SRTrainDataset",
    "SRValDataset",
    "TrainBatchSampler",
    "augment",
    "default_cache_dir",
    "list_images",
    "lr_from_hr",
    "read_image",
    "worker_init",
]

log = logging.getLogger("lightsr.train")

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp", ".ppm")
CACHE_VERSION = "1"  # bump when the LR recipe changes
PRELOAD_AUTO_LIMIT = int(os.environ.get("LIGHTSR_PRELOAD_LIMIT_MB", "3072")) * 2**20


class DataError(ValueError):
    """Bad dataset folders or files (one-line message)."""


# --------------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------------


def list_images(folder: str | os.PathLike) -> list[Path]:
    """Image files directly inside ``folder``, sorted by name."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder (relative paths are relative to the working directory {os.getcwd()})")
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))
    if not files:
        raise DataError(f"{folder}: no images ({', '.join(IMAGE_EXTENSIONS)})")
    return files


def read_image(path: str | os.PathLike) -> np.ndarray:
    """8-bit RGB HxWx3 uint8 array (gray and palette images are converted to RGB, alpha dropped)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read image ({exc})") from None


def image_size(path: Path) -> tuple[int, int]:
    """(height, width) from the file header, without decoding."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            w, h = im.size
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read image ({exc})") from None
    return h, w


def _write_png_atomic(path: Path, img: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        Image.fromarray(img).save(tmp, format="PNG", compress_level=1)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def default_cache_dir() -> Path:
    """``$LIGHTSR_CACHE/lr`` or ``$XDG_CACHE_HOME/lightsr/lr`` or ``~/.cache/lightsr/lr``."""
    root = os.environ.get("LIGHTSR_CACHE")
    if root:
        return Path(root) / "lr"
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(xdg) / "lightsr" / "lr"


def lr_from_hr(hr: np.ndarray, scale: int) -> tuple[np.ndarray, np.ndarray]:
    """``(hr_cropped, lr)``: HR cropped to a multiple of ``scale`` and its MATLAB-bicubic downscale."""
    from lightsr.data.imresize import imresize, modcrop

    hr = np.ascontiguousarray(modcrop(hr, scale))
    return hr, imresize(hr, 1.0 / scale)


def _cache_path(cache_dir: Path, hr_path: Path, scale: int) -> Path:
    st = hr_path.stat()
    key = f"{hr_path.resolve()}|{st.st_size}|{st.st_mtime_ns}|x{scale}|v{CACHE_VERSION}"
    digest = hashlib.sha1(key.encode()).hexdigest()[:16]
    return cache_dir / f"x{scale}" / f"{hr_path.stem}_{digest}.png"


def cached_lr(hr_path: Path, hr: np.ndarray, scale: int, cache_dir: Path | None) -> np.ndarray:
    """LR image of ``hr`` (already modcropped) from the disk cache, made and cached on a miss."""
    from lightsr.data.imresize import imresize

    if cache_dir is None:
        return imresize(hr, 1.0 / scale)
    path = _cache_path(cache_dir, hr_path, scale)
    if path.is_file():
        try:
            lr = read_image(path)
            if lr.shape == (hr.shape[0] // scale, hr.shape[1] // scale, 3):
                return lr
        except DataError:
            pass  # corrupt cache entry: rebuild it
    lr = imresize(hr, 1.0 / scale)
    try:
        _write_png_atomic(path, lr)
    except OSError as exc:  # a read-only cache must not stop training
        log.warning("LR cache %s not writable (%s); LR images are recomputed", path.parent, exc)
    return lr


# --------------------------------------------------------------------------------------------
# augmentation
# --------------------------------------------------------------------------------------------


def augment(imgs: Sequence[np.ndarray], hflip: bool, vflip: bool, transpose: bool) -> list[np.ndarray]:
    """Apply the same flips / transpose (HxWxC arrays) to every image; the 8 combinations are the
    dihedral group: BasicSR's ``augment(hflip, rot)`` and LGUN's "rotation by 90/180/270 + horizontal
    flip" both draw uniformly from it."""
    out = []
    for img in imgs:
        if hflip:
            img = img[:, ::-1]
        if vflip:
            img = img[::-1]
        if transpose:
            img = img.transpose(1, 0, 2)
        out.append(img)
    return out


def _to_tensor(img: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1))).float().div_(255.0)


def _pad_to(img: np.ndarray, h: int, w: int) -> np.ndarray:
    ph, pw = max(0, h - img.shape[0]), max(0, w - img.shape[1])
    if ph == 0 and pw == 0:
        return img
    return np.pad(img, ((0, ph), (0, pw), (0, 0)), mode="symmetric")


# --------------------------------------------------------------------------------------------
# datasets
# --------------------------------------------------------------------------------------------


@dataclass
class _Item:
    gt: Path
    lq: Path | None  # None: made from gt
    gt_size: tuple[int, int] | None = None  # (h, w) from a BasicSR meta-info line, saves a header read


def _load_pair(it: _Item, scale: int, cache_dir: Path | None) -> tuple[np.ndarray, np.ndarray]:
    """(HR, LR) of one item: a given LR with its GT cropped to ``scale`` x its size (as BasicSR),
    or, for HR-only data, the mod-cropped HR and its cached MATLAB-bicubic LR."""
    hr = read_image(it.gt)
    if it.lq is not None:
        lr = read_image(it.lq)
        h, w = lr.shape[0] * scale, lr.shape[1] * scale
        if hr.shape[0] < h or hr.shape[1] < w:
            raise DataError(
                f"{it.gt}: HR {hr.shape[1]}x{hr.shape[0]} is smaller than x{scale} its LR "
                f"{lr.shape[1]}x{lr.shape[0]} ({it.lq.name}); wrong scale or mismatched pair"
            )
        return np.ascontiguousarray(hr[:h, :w]), lr
    from lightsr.data.imresize import modcrop

    hr = np.ascontiguousarray(modcrop(hr, scale))
    return hr, cached_lr(it.gt, hr, scale, cache_dir)


def _as_list(value) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, (str, os.PathLike)) else list(value)


def _pair_files(gt_dirs: list[str], lq_dirs: list[str], tmpl: str, meta_info_file: str | None) -> list[_Item]:
    items: list[_Item] = []
    for i, gt_dir in enumerate(gt_dirs):
        sizes: dict[Path, tuple[int, int]] = {}
        if meta_info_file:
            try:
                lines = Path(meta_info_file).read_text().splitlines()
            except OSError as exc:
                raise DataError(f"{meta_info_file}: cannot read meta_info_file ({exc.strerror})") from None
            gt_files = []
            for line in lines:
                if not line.strip():
                    continue
                name, _, rest = line.strip().partition(" ")
                p = Path(gt_dir) / name
                gt_files.append(p)
                m = re.match(r"\((\d+),\s*(\d+)", rest.strip())  # BasicSR: "0001_s001.png (480,480,3)"
                if m:
                    sizes[p] = (int(m.group(1)), int(m.group(2)))
            missing = [p for p in gt_files if not p.is_file()]
            if missing:
                raise DataError(f"{meta_info_file}: {len(missing)} listed files missing in {gt_dir} (e.g. {missing[0].name})")
        else:
            gt_files = list_images(gt_dir)
        if not lq_dirs:
            items.extend(_Item(p, None, sizes.get(p)) for p in gt_files)
            continue
        lq_index: dict[str, Path] = {}
        for p in list_images(lq_dirs[i]):
            lq_index.setdefault(p.stem, p)
        missing = []
        for p in gt_files:
            lq = lq_index.get(tmpl.format(p.stem))
            if lq is None:
                missing.append(p)
            else:
                items.append(_Item(p, lq, sizes.get(p)))
        if missing:
            raise DataError(
                f"{lq_dirs[i]}: no LR image for {len(missing)} of {len(gt_files)} HR images of {gt_dir} "
                f"(e.g. expected '{tmpl.format(missing[0].stem)}.*' for {missing[0].name}; check filename_tmpl)"
            )
    return items


class SRTrainDataset(Dataset):
    """Random aligned LR/HR patches for training.

    Args:
        gt_dirs, lq_dirs: HR folders and (optionally) matching LR folders; without ``lq_dirs`` the
            LR images are made with MATLAB-compatible bicubic and cached in ``cache_dir``.
        scale: 2, 3 or 4.
        lq_size: LR patch side (HR patch = ``scale * lq_size``).
        use_hflip, use_rot: augmentation (flips and 90-degree rotations).
        filename_tmpl: LR stem for an HR stem ``x`` is ``filename_tmpl.format(x)``.
        preload: keep every decoded image in memory (``"auto"``: if they fit in
            ``$LIGHTSR_PRELOAD_LIMIT_MB``, default 3 GiB).
        small_images: ``"skip"`` or ``"pad"`` images smaller than the patch.
        enlarge_ratio: the dataset is repeated this many times per epoch.
        seed: seed used when an item is requested by a plain index (the sampler passes its own).

    Items are requested as ``(index, seed_tuple)`` by :class:`TrainBatchSampler` (or plain ``index``)
    and returned as ``(lq, gt)`` float tensors in [0, 1], (3, p, p) and (3, s*p, s*p).
    """

    def __init__(
        self,
        gt_dirs,
        lq_dirs=None,
        *,
        scale: int,
        lq_size: int,
        use_hflip: bool = True,
        use_rot: bool = True,
        filename_tmpl: str = "{}",
        meta_info_file: str | None = None,
        preload: bool | str = "auto",
        small_images: str = "skip",
        enlarge_ratio: int = 1,
        cache_dir: str | os.PathLike | None = None,
        use_cache: bool = True,
        seed: int = 0,
        progress: bool = False,
    ):
        self.scale = int(scale)
        self.lq_size = int(lq_size)
        self.use_hflip, self.use_rot = bool(use_hflip), bool(use_rot)
        self.enlarge_ratio = int(enlarge_ratio)
        self.seed = int(seed)
        self.small_images = small_images
        if small_images not in ("skip", "pad"):
            raise ValueError(f"small_images must be 'skip' or 'pad', not {small_images!r}")
        gt_dirs, lq_dirs = _as_list(gt_dirs), _as_list(lq_dirs)
        if lq_dirs and len(lq_dirs) != len(gt_dirs):
            raise DataError(f"{len(gt_dirs)} HR folders but {len(lq_dirs)} LR folders")
        self.paired = bool(lq_dirs)
        self.cache_dir = (Path(cache_dir) if cache_dir else default_cache_dir()) if (use_cache and not self.paired) else None
        items = _pair_files(gt_dirs, lq_dirs, filename_tmpl, meta_info_file)
        # drop images smaller than the patch (sizes from the headers, no decoding)
        kept, small = [], []
        need = self.lq_size * self.scale
        total_bytes = 0
        for it in items:
            if it.gt_size is not None:
                h, w = it.gt_size
                h, w = h - h % self.scale, w - w % self.scale
            elif it.lq is not None:
                h, w = image_size(it.lq)
                h, w = h * self.scale, w * self.scale
            else:
                h, w = image_size(it.gt)
                h, w = h - h % self.scale, w - w % self.scale
            total_bytes += h * w * 3 * (1 + 1 / self.scale**2)
            if (h < need or w < need) and small_images == "skip":
                small.append(it)
            else:
                kept.append(it)
        if small:
            log.warning(
                "%d of %d training images are smaller than the %dx%d HR patch and are skipped (e.g. %s); "
                "set small_images: pad to use them mirror-padded",
                len(small), len(items), need, need, small[0].gt.name,
            )
        if not kept:
            raise DataError(f"no training image is at least {need}x{need} pixels (HR); lower the patch size")
        self.items = kept
        self.folders = gt_dirs
        if preload == "auto":
            preload = total_bytes <= PRELOAD_AUTO_LIMIT
        self.preloaded: list[tuple[np.ndarray, np.ndarray]] | None = None
        if preload:
            self.preloaded = self._preload(progress)

    # -- loading --------------------------------------------------------------------------
    def _load(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        hr, lr = _load_pair(self.items[i], self.scale, self.cache_dir)
        if self.small_images == "pad":
            p = self.lq_size
            if lr.shape[0] < p or lr.shape[1] < p:
                lr = _pad_to(lr, max(p, lr.shape[0]), max(p, lr.shape[1]))
                hr = _pad_to(hr, lr.shape[0] * self.scale, lr.shape[1] * self.scale)
        return hr, lr

    def _preload(self, progress: bool) -> list[tuple[np.ndarray, np.ndarray]]:
        from tqdm import tqdm

        out = []
        for i in tqdm(range(len(self.items)), desc="loading training images", unit="img",
                      disable=not progress, leave=False, dynamic_ncols=True):
            out.append(self._load(i))
        return out

    def pair(self, i: int) -> tuple[np.ndarray, np.ndarray]:
        """(HR, LR) uint8 arrays of item ``i`` (before cropping)."""
        return self.preloaded[i] if self.preloaded is not None else self._load(i)

    def fingerprint(self) -> dict:
        """What defines the data order: checked when resuming."""
        h = hashlib.sha1("\n".join(str(it.gt) for it in self.items).encode()).hexdigest()[:12]
        return {"items": len(self.items), "files_sha1": h, "enlarge_ratio": self.enlarge_ratio}

    # -- Dataset protocol -----------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.items) * self.enlarge_ratio

    def __getitem__(self, key):
        if isinstance(key, tuple):
            index, seed = key
        else:
            index, seed = int(key), (self.seed, int(key))
        rng = np.random.default_rng(list(seed))
        hr, lr = self.pair(int(index) % len(self.items))
        p, s = self.lq_size, self.scale
        top = int(rng.integers(0, lr.shape[0] - p + 1))
        left = int(rng.integers(0, lr.shape[1] - p + 1))
        lr = lr[top : top + p, left : left + p]
        hr = hr[top * s : (top + p) * s, left * s : (left + p) * s]
        hflip = self.use_hflip and rng.random() < 0.5
        vflip = self.use_rot and rng.random() < 0.5
        transpose = self.use_rot and rng.random() < 0.5
        lr, hr = augment((lr, hr), hflip, vflip, transpose)
        return _to_tensor(lr), _to_tensor(hr)


class SRValDataset(Dataset):
    """Whole validation images: ``(name, lq uint8 HxWx3, gt uint8 HxWx3)`` with GT = ``scale x`` LR size."""

    def __init__(self, gt_dirs, lq_dirs=None, *, scale: int, filename_tmpl: str = "{}",
                 meta_info_file: str | None = None, cache_dir=None, use_cache: bool = True):
        self.scale = int(scale)
        gt_dirs, lq_dirs = _as_list(gt_dirs), _as_list(lq_dirs)
        self.items = _pair_files(gt_dirs, lq_dirs, filename_tmpl, meta_info_file)
        self.cache_dir = (Path(cache_dir) if cache_dir else default_cache_dir()) if (use_cache and not lq_dirs) else None
        self._cache: dict[int, tuple[str, np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[str, np.ndarray, np.ndarray]:
        if i in self._cache:
            return self._cache[i]
        it = self.items[i]
        hr, lr = _load_pair(it, self.scale, self.cache_dir)
        out = (it.gt.stem, lr, hr)
        self._cache[i] = out  # validation sets are small and revisited every val_freq iterations
        return out


# --------------------------------------------------------------------------------------------
# sampling
# --------------------------------------------------------------------------------------------


class TrainBatchSampler:
    """Infinite stream of per-rank batches of ``(index, seed)`` keys, a pure function of the iteration.

    Epoch ``e`` is a permutation (seeded by ``(seed, e)``) of the ``len(dataset)`` positions
    (``items x enlarge_ratio``); iteration ``k`` (0-based) consumes global batch ``k``: positions
    ``[b*B, (b+1)*B)`` of its epoch, ``B = batch_per_rank x world_size``, of which rank ``r`` takes
    the ``r``-th contiguous chunk. The last incomplete global batch of an epoch is dropped. Each sample
    gets the augmentation seed ``(seed, epoch, position)``, so crops and flips do not depend on which
    worker process loads it.
    """

    def __init__(self, length: int, batch_per_rank: int, *, world_size: int = 1, rank: int = 0,
                 seed: int = 0, shuffle: bool = True, start_iter: int = 0):
        self.length = int(length)
        self.batch = int(batch_per_rank)
        self.world_size, self.rank = int(world_size), int(rank)
        self.global_batch = self.batch * self.world_size
        self.seed, self.shuffle = int(seed), bool(shuffle)
        self.start_iter = int(start_iter)
        if self.length < self.global_batch:
            raise DataError(
                f"the training set has {self.length} samples per epoch but one iteration needs "
                f"{self.global_batch}; add images or raise dataset_enlarge_ratio"
            )
        self.batches_per_epoch = self.length // self.global_batch
        self._perm_epoch, self._perm = -1, None

    def epoch_of(self, iteration: int) -> int:
        """Epoch (0-based) that the ``iteration``-th batch (0-based) belongs to."""
        return iteration // self.batches_per_epoch

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._perm_epoch:
            if self.shuffle:
                self._perm = np.random.default_rng([self.seed, epoch, 0x5EED]).permutation(self.length)
            else:
                self._perm = np.arange(self.length)
            self._perm_epoch = epoch
        return self._perm

    def batch_at(self, iteration: int) -> list[tuple[int, tuple[int, int, int]]]:
        epoch, b = divmod(int(iteration), self.batches_per_epoch)
        perm = self._permutation(epoch)
        start = b * self.global_batch + self.rank * self.batch
        return [(int(perm[pos]), (self.seed, epoch, pos)) for pos in range(start, start + self.batch)]

    def __iter__(self) -> Iterator[list]:
        it = self.start_iter
        while True:
            yield self.batch_at(it)
            it += 1


def worker_init(_worker_id: int) -> None:
    """DataLoader worker set-up: leave Ctrl-C and SIGTERM to the main process (it finishes the
    iteration, writes the checkpoint, then shuts the workers down), and use one thread per worker
    (the main process does the heavy lifting).

    Both signals often reach the whole process group (Ctrl-C in a terminal, ``kill -- -PGID``,
    systemd's default ``KillMode=control-group``, SLURM at a time limit). A worker killed by them
    made PyTorch's SIGCHLD handler raise in the main process at any point of the step, so the run
    stopped without its checkpoint. Ignored here, a worker still exits when the loader shuts it
    down, when the main process dies (PyTorch's parent watchdog), or on SIGKILL."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    torch.set_num_threads(1)
