"""Optional native (C) kernels, compiled on first use with the system C compiler and loaded with ctypes.

Only the focal separable attention has one (``native/focal_attention.c``): on CPU in float32 it
computes the forward and the whole backward in one pass over each row / column, without the
padded copies and per-tap passes of the PyTorch implementation (``benchmarks/ops_speed.py``
times both). Everything else, and every other device and dtype, stays pure PyTorch.

Why ctypes and a plain C file rather than ``torch.utils.cpp_extension``: the kernel needs no
torch headers, so it compiles in about a second with ``cc`` alone (a torch C++ extension takes
a minute and needs ninja), and a wheel of lightsr stays pure Python. When no compiler is found,
compiling fails, or ``LIGHTSR_NATIVE=0`` is set, the PyTorch implementation is used: the same
results up to float32 rounding (both are tested against the reference).

The shared library is cached under ``$LIGHTSR_CACHE/native`` (default ``~/.cache/lightsr``),
named by a hash of the source, the compiler and the flags, written atomically (a temporary file
renamed into place), so concurrent processes (torchrun workers) may build it at the same time.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

__all__ = ["available", "enabled", "use_native", "fsa_forward", "fsa_backward", "library_path", "build_error",
           "vector_tanh"]

log = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("native") / "focal_attention.c"
_lock = threading.Lock()
_state: dict = {"lib": None, "tried": False, "error": None, "path": None, "vector_tanh": False,
                "enabled": os.environ.get("LIGHTSR_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")}
_pool: dict = {}
_i64 = ctypes.c_longlong


def _cache_dir() -> Path:
    from lightsr.data.benchmark import default_cache_dir

    return default_cache_dir() / "native"


def _variants() -> list[tuple[list[str], list[str]]]:
    """(compiler flags, libraries) to try in turn: with AVX2 + FMA and glibc's vectorised tanhf
    (libmvec, glibc >= 2.35) where the CPU has them, then plain."""
    base = ["-O3", "-std=c99", "-shared", "-fPIC", "-fopenmp-simd", "-fno-math-errno", "-Wno-psabi"]
    try:
        capability = torch.backends.cpu.get_cpu_capability()
    except Exception:  # pragma: no cover - very old torch
        capability = "DEFAULT"
    variants = []
    if capability in ("AVX2", "AVX512"):  # what torch itself detected on this CPU
        variants.append((base + ["-mavx2", "-mfma", "-DLIGHTSR_MVEC"], ["-lmvec", "-lm"]))
        variants.append((base + ["-mavx2", "-mfma"], ["-lm"]))
    variants.append((base, ["-lm"]))
    return variants


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _compile(cc: str, flags: list[str], libs: list[str]) -> Path:
    """The cached library for this source, compiler and flags (built atomically if missing)."""
    key = hashlib.sha256(_SOURCE.read_bytes() + cc.encode() + " ".join(flags + libs).encode()).hexdigest()[:16]
    out_dir = _cache_dir()
    path = out_dir / f"focal_attention-{key}.so"
    if path.exists():
        return path
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".focal_attention-", suffix=".so", dir=out_dir)
    os.close(fd)
    try:
        proc = subprocess.run([cc, *flags, "-o", tmp, str(_SOURCE), *libs], capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            raise RuntimeError(f"{cc} failed: {(proc.stderr or proc.stdout).strip()[-500:]}")
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _build() -> ctypes.CDLL:
    cc = _compiler()
    if cc is None:
        raise RuntimeError("no C compiler (cc, gcc or clang) on PATH")
    errors = []
    for flags, libs in _variants():
        try:
            path = _compile(cc, flags, libs)
            lib = ctypes.CDLL(str(path))
            break
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            errors.append(str(exc))
    else:
        raise RuntimeError("; ".join(errors))
    ptr = ctypes.c_void_p
    lib.lightsr_fsa_forward.restype = ctypes.c_int
    lib.lightsr_fsa_forward.argtypes = [ptr, ptr, ptr] + [_i64] * 5 + [ptr, ptr] + [_i64] * 14
    lib.lightsr_fsa_backward.restype = ctypes.c_int
    lib.lightsr_fsa_backward.argtypes = [ptr] * 5 + [_i64] * 5 + [ptr, ptr] + [_i64] * 20
    lib.lightsr_fsa_vector_tanh.restype = ctypes.c_int
    _state["path"] = path
    _state["vector_tanh"] = bool(lib.lightsr_fsa_vector_tanh())
    return lib


def _library() -> ctypes.CDLL | None:
    if not _state["tried"]:
        with _lock:
            if not _state["tried"]:
                try:
                    _state["lib"] = _build()
                except Exception as exc:  # no compiler, read-only cache, ...: fall back to PyTorch
                    _state["error"] = f"{type(exc).__name__}: {exc}"
                    log.info("native focal attention unavailable (%s); using the PyTorch implementation", _state["error"])
                _state["tried"] = True
    return _state["lib"]


def enabled() -> bool:
    """Whether the native kernels may be used (``LIGHTSR_NATIVE=0`` or :func:`use_native` turn them off)."""
    return _state["enabled"]


def available() -> bool:
    """Enabled and built (compiling on the first call); False when no compiler works."""
    return _state["enabled"] and _library() is not None


def vector_tanh() -> bool:
    """Whether the library applies tanh with a vectorised tanhf (then fusing LAMNet's tanh pays)."""
    return available() and bool(_state.get("vector_tanh"))


def library_path() -> Path | None:
    return _state["path"] if available() else None


def build_error() -> str | None:
    """Why the library could not be built (None when it was, or was not tried)."""
    return _state["error"]


class use_native:
    """Context manager (and decorator-free switch): ``with use_native(False): ...`` runs the PyTorch path."""

    def __init__(self, flag: bool = True):
        self.flag, self.previous = bool(flag), None

    def __enter__(self):
        self.previous = _state["enabled"]
        _state["enabled"] = self.flag
        return self

    def __exit__(self, *exc):
        _state["enabled"] = self.previous
        return False


def _ptr(t: torch.Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr())


def _run_lines(fn, args_before: list, lines: int) -> None:
    """Call ``fn(*args_before, line0, line1)`` over [0, lines), split over torch's intra-op threads
    (ctypes releases the GIL during the call)."""
    threads = max(1, torch.get_num_threads())
    if threads == 1 or lines < 4 * threads:
        _check_rc([fn(*args_before, 0, lines)])
        return
    key = (os.getpid(), threads)  # a forked child must not reuse the parent's (threadless) pool
    pool = _pool.get(key)
    if pool is None:
        pool = _pool[key] = ThreadPoolExecutor(threads, thread_name_prefix="lightsr-native")
    bounds = [lines * i // threads for i in range(threads + 1)]
    _check_rc(list(pool.map(lambda i: fn(*args_before, bounds[i], bounds[i + 1]), range(threads))))


def _check_rc(codes: list[int]) -> None:
    if 1 in codes:
        raise ValueError("focal attention: more than 256 taps or more than 512 channels per group or 4096 channels "
                         "(native kernel limits; LIGHTSR_NATIVE=0 uses the PyTorch implementation)")
    if 2 in codes:
        raise MemoryError("focal attention: cannot allocate the native kernel's line buffers")


def _geometry(t: torch.Tensor, axis: int) -> tuple[int, int, int]:
    """(batch, other-axis, along-axis) element strides of a (B, C, H, W) tensor for lines along ``axis``."""
    sb, _, sh, sw = t.stride()
    return (sb, sw, sh) if axis == -2 else (sb, sh, sw)


def _taps(lo, lengths) -> tuple[ctypes.Array, ctypes.Array, int, int]:
    """ctypes tap tables and the window [dmin, dmax] from each tap's first offset and length."""
    dmin = min(lo)
    dmax = max(o + n - 1 for o, n in zip(lo, lengths))
    return (_i64 * len(lo))(*lo), (_i64 * len(lengths))(*lengths), dmin, dmax


def _channels_unit_stride(t: torch.Tensor) -> torch.Tensor:
    if t.shape[1] == 1 or t.stride(1) == 1:
        return t
    return t.contiguous(memory_format=torch.channels_last)


def _empty_cl(shape, like: torch.Tensor) -> torch.Tensor:
    return torch.empty(shape, dtype=like.dtype, device=like.device, memory_format=torch.channels_last)


def _problem(x: torch.Tensor, kernel: torch.Tensor, offsets, lengths, axis: int, act: int) -> tuple[list, int]:
    """The kernels' shape arguments (lines, pixels per line, channels, groups, taps, tap tables,
    window, activation) and the number of lines."""
    b, c, h, w = x.shape
    n_taps = len(offsets)
    lo, n, dmin, dmax = _taps(offsets, lengths)
    J, L = (w, h) if axis == -2 else (h, w)
    return [J, L, c, kernel.shape[1] // n_taps, n_taps, lo, n, dmin, dmax, int(act)], b * J


def fsa_forward(x: torch.Tensor, kernel: torch.Tensor, offsets, lengths, axis: int, act: int = 0) -> torch.Tensor:
    """Native FSA forward (float32 CPU); the output is channels-last (unit channel stride).
    Taps: ``offsets`` (the first offset each covers, ``focal_attention._first_offset``) and
    ``lengths``. ``act=1``: ``kernel`` holds logits, tanh is applied inside."""
    x, kernel = _channels_unit_stride(x), _channels_unit_stride(kernel)
    out = _empty_cl(tuple(x.shape), x)
    if out.numel():
        shape, lines = _problem(x, kernel, offsets, lengths, axis, act)
        _run_lines(_library().lightsr_fsa_forward,
                   [_ptr(x), _ptr(kernel), _ptr(out), *shape,
                    *_geometry(x, axis), *_geometry(kernel, axis), *_geometry(out, axis)], lines)
    return out


def fsa_backward(grad: torch.Tensor, x: torch.Tensor, kernel: torch.Tensor, offsets, lengths, axis: int, act: int = 0):
    """Native FSA backward: (grad x, grad kernel), both channels-last (with ``act=1`` the gradient
    of the logits)."""
    grad = _channels_unit_stride(grad.to(torch.float32))
    x, kernel = _channels_unit_stride(x), _channels_unit_stride(kernel)
    gx = _empty_cl(tuple(x.shape), x)
    gk = _empty_cl(tuple(kernel.shape), kernel)
    if gx.numel():
        shape, lines = _problem(x, kernel, offsets, lengths, axis, act)
        _run_lines(_library().lightsr_fsa_backward,
                   [_ptr(grad), _ptr(x), _ptr(kernel), _ptr(gx), _ptr(gk), *shape,
                    *_geometry(grad, axis), *_geometry(x, axis), *_geometry(kernel, axis),
                    *_geometry(gx, axis), *_geometry(gk, axis)], lines)
    elif gk.numel():
        gk.zero_()
    return gx, gk
