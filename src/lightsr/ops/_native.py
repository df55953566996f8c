"""Optional native (C) kernels, compiled on first use with the system C compiler and loaded with ctypes.

Every ``native/*.c`` file is compiled into one shared library:

* ``focal_attention.c``: the focal separable attention on CPU in float32, forward and the whole
  backward in one pass over each row / column (wrappers :func:`fsa_forward`, :func:`fsa_backward`);
* ``depthwise.c``: channels-last depth-wise convolutions in float32 and bfloat16, with the gates of
  the gated feed-forward networks fused (used by :mod:`lightsr.ops.depthwise_conv`);
* ``dynamic_dwconv.c``: the apply of DLGSANet's pixel-wise dynamic convolution
  (:mod:`lightsr.ops.dynamic_dwconv`);
* ``channel_attention.c`` / ``channel_attention_dp.c``: the transposed attention at inference (heads
  of 8 channels; wide heads on bfloat16 with AVX512-BF16 dot products), ``layer_norm.c``: the
  channels-last LayerNorm (inference, and float32 training), ``exchange.c``: LAMNet's information
  exchange in float32 training, ``elementwise.c``: a bfloat16 branch added onto a float32 stream;
* ``parallel.c``: the parallel calls of the others.

Every other device stays pure PyTorch. :func:`run_rows` splits a kernel's rows into one part per
intra-op thread of torch and runs the parts in an OpenMP parallel region of ``parallel.c``: on
the threads of torch's own OpenMP pool (libgomp.so.1 resolves to the copy torch loaded), so they
do not compete with ATen's spinning workers. Built without OpenMP (a compiler without
``-fopenmp``), the parts run on Python threads (ctypes releases the GIL during the call).

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

__all__ = ["available", "enabled", "use_native", "fsa_forward", "fsa_backward", "library", "library_path",
           "build_error", "load", "run_rows", "vector_tanh"]

log = logging.getLogger(__name__)

_DIR = Path(__file__).with_name("native")
_SOURCES = sorted(_DIR.glob("*.c"))
_HEADERS = sorted(_DIR.glob("*.h"))
_lock = threading.Lock()
_state: dict = {"lib": None, "tried": False, "error": None, "path": None, "vector_tanh": False,
                "enabled": os.environ.get("LIGHTSR_NATIVE", "1").strip().lower() not in ("0", "false", "no", "off")}
_pool: dict = {}
_i64 = ctypes.c_longlong


def _cache_dir() -> Path:
    from lightsr.data.benchmark import default_cache_dir

    return default_cache_dir() / "native"


def _variants() -> list[tuple[list[str], list[str]]]:
    """(compiler flags, libraries) to try in turn: with AVX2 + FMA where the CPU has them, then plain."""
    base = ["-O3", "-std=c99", "-shared", "-fPIC", "-fopenmp-simd", "-fno-math-errno", "-ffp-contract=fast", "-Wno-psabi"]
    if _torch_uses_openmp():  # parts on torch's own OpenMP threads (parallel.c)
        base = base + ["-fopenmp"]
    variants = []
    if cpu_capability() in ("AVX2", "AVX512"):  # what torch itself detected on this CPU
        # -fno-semantic-interposition: the exported entry points cannot be interposed, so calls
        # between and into them are optimised as in an executable (-fPIC alone made the dynamic
        # convolution measurably slower on this EPYC)
        fast = base + ["-mavx2", "-mfma", "-fno-semantic-interposition"]
        variants.append((fast, ["-lm"]))
    variants.append((base, ["-lm"]))
    if "-fopenmp" in base:  # a compiler without OpenMP: the parts on Python threads
        variants.append(([f for f in base if f != "-fopenmp"], ["-lm"]))
    return variants


def cpu_capability() -> str:
    """The vector capability torch detected on this CPU (``DEFAULT``, ``AVX2``, ``AVX512``, ...)."""
    try:
        return torch.backends.cpu.get_cpu_capability()
    except Exception:  # pragma: no cover - very old torch
        return "DEFAULT"


def _torch_uses_openmp() -> bool:
    """ATen's parallel backend is OpenMP (then with libgomp: the Linux wheels)."""
    try:
        return "ATen parallel backend: OpenMP" in torch.__config__.parallel_info()
    except Exception:  # pragma: no cover - very old torch
        return False


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return shutil.which(name)
    return None


def _compile(cc: str, flags: list[str], libs: list[str]) -> Path:
    """The cached library for this source, compiler and flags (built atomically if missing)."""
    text = b"".join(p.name.encode() + p.read_bytes() for p in _SOURCES + _HEADERS)
    key = hashlib.sha256(text + cc.encode() + " ".join(flags + libs).encode()).hexdigest()[:16]
    out_dir = _cache_dir()
    path = out_dir / f"lightsr_native-{key}.so"
    if path.exists():
        return path
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".lightsr_native-", suffix=".so", dir=out_dir)
    os.close(fd)
    try:
        proc = subprocess.run([cc, *flags, "-o", tmp, *map(str, _SOURCES), *libs], capture_output=True, text=True,
                              timeout=300)
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
            lib = load(path)
            break
        except (RuntimeError, OSError, subprocess.SubprocessError) as exc:
            errors.append(str(exc))
    else:
        raise RuntimeError("; ".join(errors))
    _state["path"] = path
    _state["vector_tanh"] = bool(lib.lightsr_fsa_vector_tanh())
    _state["openmp"] = bool(lib.lightsr_parallel_available())
    return lib


def load(path, partial: bool = False) -> ctypes.CDLL:
    """A built library file with every entry point declared (argtypes, restype). The ops use the one
    :func:`library` returns; ``benchmarks/native_ab.py`` loads an older build beside it
    (``partial``: entry points the older source lacks are left undeclared, not an error)."""
    lib = ctypes.CDLL(str(path))
    ptr = ctypes.c_void_p
    for name in ("lightsr_fsa_forward", "lightsr_fsa_forward_bf16"):
        getattr(lib, name).restype = ctypes.c_int
        getattr(lib, name).argtypes = [ptr, ptr, ptr] + [_i64] * 5 + [ptr, ptr] + [_i64] * 14
    lib.lightsr_fsa_backward.restype = ctypes.c_int
    lib.lightsr_fsa_backward.argtypes = [ptr] * 5 + [_i64] * 5 + [ptr, ptr] + [_i64] * 20
    lib.lightsr_fsa_vector_tanh.restype = ctypes.c_int
    lib.lightsr_parallel_available.restype = ctypes.c_int
    lib.lightsr_parallel_calls.restype = ctypes.c_int
    lib.lightsr_parallel_calls.argtypes = [ptr, _i64, ptr, _i64, ptr]
    for name in ("_attention_native", "_depthwise_native", "_dynamic_native", "_elementwise_native", "_exchange_native",
                 "_layer_norm_native"):
        _declare(lib, name, partial)
    return lib


def _declare(lib: ctypes.CDLL, module: str, partial: bool = False) -> None:
    """argtypes of the entry points that ``lightsr.ops.<module>`` declares in its ``NATIVE_SIGNATURES``."""
    import importlib

    signatures = importlib.import_module(f"lightsr.ops.{module}").NATIVE_SIGNATURES
    for name, argtypes in signatures.items():
        if partial and not hasattr(lib, name):
            continue
        fn = getattr(lib, name)
        fn.restype = ctypes.c_int
        fn.argtypes = argtypes


def library() -> ctypes.CDLL | None:
    """The loaded library when enabled and built (compiling on the first call), else None."""
    return _library() if _state["enabled"] else None


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
    """Whether the library applies tanh with vector code (then fusing LAMNet's tanh pays): always,
    since the kernel carries its own rational tanh; kept for libraries built before that."""
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


def run_rows(fn, args_of, rows: int, min_rows: int = 4) -> list[int]:
    """Call the native entry point ``fn(*args_of(part, row0, row1))`` over [0, rows) split into one
    part per intra-op thread of torch (fewer when there are under ``min_rows`` rows per thread), in
    parallel; the return codes. Every argument is a pointer (``c_void_p``, a ctypes structure or
    array: passed by address, or None) or an integer."""
    threads = threads_for(rows, min_rows)
    if threads <= 1:
        return [fn(*args_of(0, 0, rows))]
    bounds = [rows * i // threads for i in range(threads + 1)]
    parts = [args_of(i, bounds[i], bounds[i + 1]) for i in range(threads)]
    if _state.get("openmp"):
        words = [_word(a) for args in parts for a in args]
        codes = (ctypes.c_int * threads)()
        rc = _state["lib"].lightsr_parallel_calls(ctypes.cast(fn, ctypes.c_void_p), len(parts[0]),
                                                  (_i64 * len(words))(*words), threads, codes)
        if rc != 0:
            raise ValueError(f"lightsr_parallel_calls: {len(parts[0])} arguments per call is not supported")
        return list(codes)
    key = (os.getpid(), threads)  # a forked child must not reuse the parent's (threadless) pool
    pool = _pool.get(key)
    if pool is None:
        pool = _pool[key] = ThreadPoolExecutor(threads, thread_name_prefix="lightsr-native")
    return list(pool.map(lambda args: fn(*args), parts))


def _word(arg) -> int:
    """One argument as the 64-bit word the C calling convention passes: an address or an integer."""
    if arg is None:
        return 0
    if isinstance(arg, int):
        return arg
    if isinstance(arg, (ctypes.Structure, ctypes.Array)):
        return ctypes.addressof(arg)
    if isinstance(arg, (ctypes.c_void_p, ctypes.c_longlong)):
        return arg.value or 0
    raise TypeError(f"run_rows: cannot pass {type(arg).__name__} as a word")


def threads_for(rows: int, min_rows: int = 4) -> int:
    """How many parts :func:`run_rows` splits ``rows`` into."""
    return max(1, min(torch.get_num_threads(), rows // max(1, min_rows)))


def _run_lines(fn, args_before: list, lines: int) -> None:
    """Call ``fn(*args_before, line0, line1)`` over [0, lines), split over torch's intra-op threads."""
    _check_rc(run_rows(fn, lambda _, a, b: (*args_before, a, b), lines))


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
    """Native FSA forward (CPU, float32, or bfloat16 storage with float32 arithmetic: ``x`` and
    ``kernel`` of one dtype); the output is channels-last (unit channel stride), in that dtype.
    Taps: ``offsets`` (the first offset each covers, ``focal_attention._first_offset``) and
    ``lengths``. ``act=1``: ``kernel`` holds logits, tanh is applied inside."""
    if kernel.dtype != x.dtype or x.dtype not in (torch.float32, torch.bfloat16):
        raise TypeError(f"fsa_forward: float32 or bfloat16 x and kernel of one dtype, got {x.dtype}, {kernel.dtype}")
    x, kernel = _channels_unit_stride(x), _channels_unit_stride(kernel)
    out = _empty_cl(tuple(x.shape), x)
    if out.numel():
        shape, lines = _problem(x, kernel, offsets, lengths, axis, act)
        fn = _library().lightsr_fsa_forward if x.dtype == torch.float32 else _library().lightsr_fsa_forward_bf16
        _run_lines(fn,
                   [_ptr(x), _ptr(kernel), _ptr(out), *shape,
                    *_geometry(x, axis), *_geometry(kernel, axis), *_geometry(out, axis)], lines)
    return out


def fsa_backward(grad: torch.Tensor, x: torch.Tensor, kernel: torch.Tensor, offsets, lengths, axis: int, act: int = 0):
    """Native FSA backward: (grad x, grad kernel), both channels-last (with ``act=1`` the gradient
    of the logits)."""
    if x.dtype != torch.float32 or kernel.dtype != torch.float32:
        raise TypeError(f"fsa_backward: float32 x and kernel, got {x.dtype}, {kernel.dtype}")
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
