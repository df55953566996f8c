"""glibc ``malloc`` settings that stop a CPU training step from page-faulting on every tensor.

PyTorch allocates CPU tensors with the C library's ``malloc``. With glibc's defaults, a block
above the (dynamic) mmap threshold is a fresh ``mmap`` that is unmapped again when the tensor
is freed, and freed memory at the top of the heap is given back to the kernel once it exceeds
the trim threshold. A training step allocates and frees the same activation-sized tensors (a
few MB to tens of MB each) hundreds of times, so every step touches fresh pages: measured on a
LAMNet training step (batch 16, LR patch 48, one thread, this repository's 2-core EPYC)
hundreds of thousands of minor page faults and seconds of system time per step
(``python benchmarks/train_throughput.py --models lamnet --scale 4 --batch 16 --patch 48 --chunk 16
--threads 1 --compare-ops --malloc both``).

:func:`tune_malloc` keeps freed memory in the process instead (a fixed mmap threshold of
32 MiB, the largest glibc accepts, and no trimming): the pages are faulted in once and reused.
The cost is that the process keeps its peak heap size until it exits, which is what a training
process does anyway. ``lightsr train`` applies it on CPU unless ``train.malloc_tuning: false``.

It is a process-wide, one-way setting (glibc has no way back to the dynamic threshold), a no-op
outside Linux/glibc, and never raises.
"""
from __future__ import annotations

import ctypes
import logging
import platform
import sys

__all__ = ["MMAP_THRESHOLD", "tune_malloc", "malloc_tuned"]

log = logging.getLogger("lightsr")

# glibc's largest accepted mmap threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX = 4 MiB * sizeof(long))
MMAP_THRESHOLD = 32 * 1024 * 1024
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_TUNED = False


def malloc_tuned() -> bool:
    """Whether :func:`tune_malloc` has changed this process's malloc settings."""
    return _TUNED


def tune_malloc(mmap_threshold: int = MMAP_THRESHOLD) -> bool:
    """Keep freed memory for reuse (glibc only). Returns True when the settings are in effect."""
    global _TUNED
    if _TUNED:
        return True
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
        mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        ok = bool(mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold)))
        # trim only beyond 2 GiB - 1 of free memory at the heap top, i.e. in practice never
        ok = bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)) and ok
    except (OSError, AttributeError) as exc:  # no mallopt symbol (not glibc after all)
        log.debug("malloc tuning unavailable: %s", exc)
        return False
    _TUNED = ok
    return ok
