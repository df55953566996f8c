"""Running a model on one tile: device, precision, padding, NaN fallback and memory estimates.

* **Device**: ``auto`` picks CUDA when available, else the CPU. Only the tile being processed is
  moved to the device; results come back to the CPU as float32.
* **Precision**: ``fp32`` (default everywhere), ``bf16`` (CPU and CUDA) and ``fp16`` (CUDA only)
  run under :func:`torch.autocast`, which keeps numerically sensitive ops (normalisation,
  softmax, reductions) in float32. ``fp16`` on the CPU is refused with a one-line warning and
  fp32 is used instead (PyTorch's CPU half kernels are missing or very slow). A tile whose
  reduced-precision output holds NaN or Inf is computed again in fp32, with a warning.
* **Non-finite output**: an output that still holds NaN or Inf (in fp32: broken or overflowing
  weights) raises :class:`NonFiniteOutput`; it is never returned, so never written.
* **Padding**: tiles are padded by reflection only when the model needs it: a model may declare
  ``size_multiple`` (input sides must be multiples of it) and ``min_size``; none of lightsr's
  models does. Tiles smaller than :data:`MIN_SIDE` pixels (a 1x1 image) are padded by
  replicating their edge: a network with zero-padded convolutions sees mostly border on a tiny
  input and shifts its colour; replicated, it sees a small flat image.
* **Memory**: :func:`available_memory` is the smaller of the system's available memory and the
  room left under a container's cgroup limit (v2 ``memory.max``, v1 ``memory.limit_in_bytes``).
* **Memory**: :meth:`ModelRunner.bytes_per_pixel` measures the peak tensor memory of one forward
  pass on a small probe (every tensor allocated by every operator is counted while it is alive),
  which :func:`auto_tile` turns into the largest tile that fits a memory budget.
"""
from __future__ import annotations

import contextlib
import math
import os
import warnings
import weakref
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils._pytree import tree_leaves

__all__ = [
    "MIN_SIDE",
    "ModelRunner",
    "NonFiniteOutput",
    "OutOfMemory",
    "PRECISIONS",
    "auto_tile",
    "available_memory",
    "resolve_device",
    "resolve_precision",
]

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
# generous bound on a lightweight SR model's activation bytes per input pixel (the measured
# values are ~2.5-5 KiB in fp32): images this bound says fit are run whole without probing.
PRIOR_BYTES_PER_PIXEL = 16 << 10
_OOM_MARKERS = ("out of memory", "can't allocate memory", "not enough memory", "cannot allocate memory",
                "failed to allocate")


MIN_SIDE = 16  # tiles smaller than this (in either side) are padded by edge replication


class OutOfMemory(RuntimeError):
    """The device ran out of memory for a tile (the caller retries with smaller tiles)."""


class NonFiniteOutput(ArithmeticError):
    """The model's output holds NaN or Inf even in fp32: broken or overflowing weights (one line)."""


def is_oom(exc: BaseException) -> bool:
    if isinstance(exc, (MemoryError, getattr(torch, "OutOfMemoryError", MemoryError))):
        return True
    return isinstance(exc, RuntimeError) and any(m in str(exc).lower() for m in _OOM_MARKERS)


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """``auto`` -> cuda if available else cpu; ``cuda`` without a GPU -> ValueError (one line)."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but PyTorch sees no CUDA GPU (use --device cpu or auto)")
    return dev


def resolve_precision(precision: str, device: torch.device) -> tuple[torch.dtype | None, str | None]:
    """(autocast dtype or None for fp32, warning or None)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    dtype = PRECISIONS[precision]
    if dtype is torch.float16 and device.type == "cpu":
        return None, "fp16 is not supported on the CPU (PyTorch lacks fast half-precision CPU kernels): using fp32; bf16 works on the CPU"
    if dtype is torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16, "this GPU has no bf16 support: using fp16"
    return dtype, None


def available_memory(device: torch.device, *, cgroup_root: str = "/sys/fs/cgroup",
                     proc_self: str = "/proc/self") -> int:
    """Bytes available for new allocations: CUDA free memory; on the CPU the smaller of the
    system's ``MemAvailable`` and the room left under this process's cgroup memory limits."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    system = _meminfo_available(os.path.join("/proc", "meminfo") if proc_self == "/proc/self"
                                else os.path.join(os.path.dirname(proc_self), "meminfo"))
    limited = cgroup_available(cgroup_root, os.path.join(proc_self, "cgroup"))
    return min(system, limited) if limited is not None else system


def _meminfo_available(path: str) -> int:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 4 << 30  # unknown platform: assume 4 GiB


def _read_int(path: str) -> int | None:
    try:
        with open(path) as f:
            text = f.read().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None  # "max" (v2, no limit) -> None


def _inactive_file(stat_path: str) -> int:
    """Reclaimable page cache charged to the cgroup (not really in use)."""
    try:
        with open(stat_path) as f:
            fields = dict(line.split()[:2] for line in f if line.strip())
    except (OSError, ValueError):
        return 0
    for key in ("inactive_file", "total_inactive_file"):
        if fields.get(key, "").isdigit():
            return int(fields[key])
    return 0


def _cgroup_paths(proc_cgroup: str) -> tuple[str | None, str | None]:
    """This process's (v2 path, v1 memory path) from ``/proc/self/cgroup``."""
    v2 = v1 = None
    try:
        with open(proc_cgroup) as f:
            for line in f:
                parts = line.rstrip("\n").split(":", 2)
                if len(parts) != 3:
                    continue
                if parts[0] == "0" and parts[1] == "":
                    v2 = parts[2]
                elif "memory" in parts[1].split(","):
                    v1 = parts[2]
    except OSError:
        pass
    return v2, v1


def _levels(base: str, rel: str | None) -> list[str]:
    """``base/rel`` and its parents up to ``base`` (nested limits all apply); ``base`` alone when
    ``rel`` does not exist there (a container sees its own cgroup as the root)."""
    rel = (rel or "/").strip("/")
    here = os.path.join(base, rel) if rel else base
    if not os.path.isdir(here):
        return [base]
    out = []
    while True:
        out.append(here)
        if os.path.normpath(here) == os.path.normpath(base):
            return out
        here = os.path.dirname(here)


def cgroup_available(root: str = "/sys/fs/cgroup", proc_cgroup: str = "/proc/self/cgroup") -> int | None:
    """Bytes left under the tightest cgroup memory limit of this process (v2 or v1), or None if
    no limit applies. Usage counts without the reclaimable page cache (as Docker and Kubernetes do)."""
    v2_path, v1_path = _cgroup_paths(proc_cgroup)
    best: int | None = None
    if os.path.isfile(os.path.join(root, "cgroup.controllers")) or v2_path is not None and v1_path is None:
        for level in _levels(root, v2_path):
            limit = _read_int(os.path.join(level, "memory.max"))
            if limit is None:
                continue
            used = (_read_int(os.path.join(level, "memory.current")) or 0) - _inactive_file(os.path.join(level, "memory.stat"))
            room = max(limit - max(used, 0), 0)
            best = room if best is None else min(best, room)
    v1_root = os.path.join(root, "memory")
    if os.path.isdir(v1_root):
        for level in _levels(v1_root, v1_path):
            limit = _read_int(os.path.join(level, "memory.limit_in_bytes"))
            if limit is None or limit >= 1 << 60:  # v1 writes "no limit" as a huge number
                continue
            used = (_read_int(os.path.join(level, "memory.usage_in_bytes")) or 0) - _inactive_file(os.path.join(level, "memory.stat"))
            room = max(limit - max(used, 0), 0)
            best = room if best is None else min(best, room)
    return best


class _PeakTensorMemory(torch.utils._python_dispatch.TorchDispatchMode):
    """Tracks the peak bytes of tensor storages created by operators while the mode is active.

    ``lightsr_transparent``: lightsr's fast ops run as they do without the mode (native kernels,
    no custom-op dispatch, which would import ``torch._dynamo``: 3 s of every first image), and
    the tensors they allocate are counted."""

    lightsr_transparent = True

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._seen: set[int] = set()

    def _release(self, key: int, nbytes: int) -> None:
        self._seen.discard(key)
        self.live -= nbytes

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                st = t.untyped_storage()
                key = id(st)
                if key not in self._seen:
                    self._seen.add(key)
                    nbytes = st.nbytes()
                    self.live += nbytes
                    weakref.finalize(st, self._release, key, nbytes)
        self.peak = max(self.peak, self.live)
        return out


@dataclass
class TileStats:
    tiles: int = 0
    fp32_retries: int = 0


class ModelRunner:
    """Callable that upscales one (C, h, w) float32 CPU tile with ``model`` on ``device``.

    Args:
        model: any module mapping (B, 3, h, w) in [0, 1] to (B, 3, s*h, s*w).
        scale: its upscaling factor.
        device: ``auto``, ``cpu``, ``cuda`` or a torch.device.
        precision: ``fp32``, ``bf16`` or ``fp16``.
        warn: where warnings go (default: :func:`warnings.warn`).
    """

    def __init__(self, model: nn.Module, scale: int, device="auto", precision: str = "fp32",
                 warn: Callable[[str], None] | None = None, cuda_graphs: bool = False):
        self.device = resolve_device(device)
        self.warn = warn or (lambda msg: warnings.warn(msg, stacklevel=3))
        self.autocast_dtype, note = resolve_precision(precision, self.device)
        if note:
            self.warn(note)
        self.precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.autocast_dtype]
        self.scale = int(scale)
        self.model = model.to(self.device).eval()
        if self.autocast_dtype is not None and self.device.type == "cpu":
            self.model.to(memory_format=torch.channels_last)  # 4-D weights too (see _forward)
        for p in self.model.parameters():
            p.requires_grad_(False)
        params = list(self.model.parameters())
        self.param_dtype = params[0].dtype if params else torch.float32
        self.size_multiple = int(getattr(model, "size_multiple", 1) or 1)
        self.min_size = int(getattr(model, "min_size", 1) or 1)
        self.stats = TileStats()
        self._bpp: dict[str, float] = {}
        # CUDA: replay each tile shape's forward from one graph (lightsr.train.graph_step), behind a switch
        self._graphed = None
        if cuda_graphs:
            from lightsr.train.graph_step import GraphedForward

            self._graphed = GraphedForward(lambda x: self._forward_eager(x, self.autocast_dtype), self.device)
            if self._graphed.captures:
                torch.backends.cudnn.benchmark = True  # the tile shapes repeat
            else:
                self.warn(f"cuda_graphs: not used ({self._graphed.fallback_reason})")

    # -- one forward --------------------------------------------------------------------------
    def _pad(self, x: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        h, w = x.shape[-2:]
        m = self.size_multiple
        least = max(self.min_size, MIN_SIDE)
        ph = max(least, math.ceil(h / m) * m) - h
        pw = max(least, math.ceil(w / m) * m) - w
        if ph or pw:
            tiny = h < MIN_SIDE or w < MIN_SIDE
            mode = "reflect" if ph < h and pw < w and not tiny else "replicate"
            x = F.pad(x, (0, pw, 0, ph), mode=mode)
        return x, h, w

    def _forward(self, x: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
        if self._graphed is not None and self._graphed.captures and dtype == self.autocast_dtype:
            return self._graphed(x)
        return self._forward_eager(x, dtype)

    def _forward_eager(self, x: torch.Tensor, dtype: torch.dtype | None) -> torch.Tensor:
        with torch.inference_mode():
            if dtype is None:
                return self.model(x)
            if self.device.type == "cpu":
                # oneDNN's reduced-precision convolutions are fast on channels-last tensors only (lightsr's
                # models switch layout themselves; plain conv nets such as IMDN do not)
                x = x.contiguous(memory_format=torch.channels_last)
            with torch.autocast(self.device.type, dtype=dtype):
                return self.model(x)

    def __call__(self, tile: torch.Tensor) -> torch.Tensor:
        """(C, h, w) float32 CPU -> (C, s*h, s*w) float32 CPU (C = 3)."""
        x = tile.unsqueeze(0).to(self.device, self.param_dtype, non_blocking=True)
        x, h, w = self._pad(x)
        try:
            y = self._forward(x, self.autocast_dtype)
            finite = bool(torch.isfinite(y).all())
            if not finite and (self.autocast_dtype is not None or self.param_dtype != torch.float32):
                self.stats.fp32_retries += 1
                self.warn(f"a tile came out with NaN/Inf in {self.precision}: recomputed in fp32")
                y = self._forward_fp32(x)
                finite = bool(torch.isfinite(y).all())
        except Exception as exc:
            if is_oom(exc):
                if self.device.type == "cuda":
                    torch.cuda.empty_cache()
                raise OutOfMemory(str(exc).splitlines()[0] if str(exc) else "out of memory") from None
            raise
        if not finite:
            raise NonFiniteOutput("the model's output holds NaN/Inf values even in fp32: the weights are broken "
                                  "or overflow (nothing was written)")
        self.stats.tiles += 1
        s = self.scale
        return y[0, :, : h * s, : w * s].float().cpu()

    def _forward_fp32(self, x: torch.Tensor) -> torch.Tensor:
        if self.param_dtype == torch.float32:
            return self._forward(x.float(), None)
        model32 = self.model.float()  # a reduced-precision model given by the caller: fp32 copy for this tile
        try:
            return self._forward(x.float(), None)
        finally:
            model32.to(self.param_dtype)

    # -- memory estimate -----------------------------------------------------------------------
    def bytes_per_pixel(self, probe: int = 64) -> float:
        """Peak tensor bytes of one forward pass per input pixel, measured on a ``probe`` square.

        Counts every tensor created while the pass runs (activations, the output), at the real
        precision; parameters are excluded. A conservative upper bound per pixel: constant costs
        (attention matrices, etc.) are divided by a small probe.
        """
        key = f"{self.device}-{self.precision}-{probe}"
        if key not in self._bpp:
            disk_key = _probe_key(self.model, key)
            cached = _probe_cache_get(disk_key)
            if cached is None:
                cached = self._probe(probe)
                _probe_cache_put(disk_key, cached)
            self._bpp[key] = cached
        return self._bpp[key]

    def _probe(self, probe: int) -> float:
        x = torch.rand(1, 3, probe, probe, device=self.device, dtype=self.param_dtype)
        x, _, _ = self._pad(x)
        tracker = _PeakTensorMemory()
        with tracker:  # a Python dispatch mode: its first use imports torch._dynamo (~3 s), hence the cache
            y = self._forward_eager(x, self.autocast_dtype)
        del y
        return tracker.peak / (probe * probe)


def _probe_key(model: nn.Module, setting: str) -> str | None:
    """What a model's memory probe depends on: its architecture and options (lightsr models; other
    modules are not cached), the precision / device / probe size, and the software versions."""
    import hashlib
    import json

    config = getattr(model, "lightsr_config", None)
    if config is None:
        return None
    from lightsr import __version__
    from lightsr.ops import _native

    text = json.dumps([config, type(model).__name__, setting, torch.__version__, __version__,
                       str(_native.library_path())], sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def _probe_cache_file():
    from lightsr.data.benchmark import default_cache_dir

    return default_cache_dir() / "memory_probe.json"


def _probe_cache_get(key: str | None) -> float | None:
    import json

    if key is None:
        return None
    try:
        value = json.loads(_probe_cache_file().read_text()).get(key)
    except (OSError, ValueError, AttributeError):
        return None
    return float(value) if isinstance(value, (int, float)) and value > 0 else None


def _probe_cache_put(key: str | None, value: float) -> None:
    """Remember a probe result (atomically; a cache that cannot be written is skipped)."""
    import json

    from lightsr.inference.partfiles import write_text_atomic

    if key is None:
        return
    path = _probe_cache_file()
    try:
        table = json.loads(path.read_text())
        table = table if isinstance(table, dict) else {}
    except (OSError, ValueError):
        table = {}
    table[key] = value
    with contextlib.suppress(OSError):
        write_text_atomic(path, json.dumps(table))


def auto_tile(runner: ModelRunner, height: int, width: int, budget: int | None = None,
              overhead: float = 1.5, multiple: int = 8, largest: int | None = None, smallest: int = 32,
              channels: int = 3) -> int | None:
    """Largest square tile (input pixels) whose estimated peak memory fits ``budget`` bytes.

    ``None`` when the whole image fits in one piece (no tiling at all: no seams, exact global
    statistics). ``budget`` defaults to :func:`default_budget`. The estimate adds up, for a tile
    of side T: the network's activations (measured, times ``overhead`` for allocator slack), the
    tile's float32 output (C s^2 T^2 values) and the float32 band of output rows that
    :func:`lightsr.inference.tiling.run_tiled` accumulates (about 2 C s^2 T W values with the
    carried overlap) - the band grows with the image *width*, so wide images get smaller tiles.
    """
    budget = default_budget(runner.device) if budget is None else int(budget)
    s2 = runner.scale * runner.scale
    band_per_row = 2 * 4 * channels * s2 * width  # bytes per input row of tile height
    out_per_px = 4 * channels * s2
    if height * width * PRIOR_BYTES_PER_PIXEL <= budget:  # small image: no need to measure
        return None
    a = runner.bytes_per_pixel() * overhead + out_per_px
    if a * height * width + band_per_row * height / 2 <= budget:  # whole image: one band = the output
        return None
    b = band_per_row
    side = (-b + math.sqrt(b * b + 4 * a * budget)) / (2 * a)
    if largest is None:
        largest = 2048 if runner.device.type == "cuda" else 1024
    side = int(side) // multiple * multiple
    return max(smallest, min(largest, side))


def default_budget(device: torch.device) -> int:
    """Activation memory allowed for one tile: 40% of free memory, at most 2 GiB on the CPU; 80% on CUDA."""
    free = available_memory(device)
    if device.type == "cuda":
        return int(free * 0.8)
    return int(min(free * 0.4, 2 << 30))
