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
32 MiB, the largest glibc accepts, no block served by its own ``mmap`` at all, and no trimming):
the pages are faulted in once and reused. Blocks above 32 MiB matter at inference: a 640x360
feature map of 64 channels is 59 MB (a 1280x720 photo at x2), and with ``mmap`` they were mapped,
faulted in and unmapped on every allocation.
The cost is that the process keeps its peak heap size until it exits, which is what a training
process does anyway. ``lightsr train`` applies it on CPU unless ``train.malloc_tuning: false``.

The price is memory: freed blocks stay in the heap, where a later block of another size cannot
always reuse them. 1280x720 -> x4 with automatic tiling, peak RSS (``python
benchmarks/upscale_memory.py --width 1280 --height 720 --scale 4 --model dlgsanet_tiny --threads 2``,
docs/results/cpu_epyc_avx2_2026-12-05c/): 0.86 GiB with glibc's defaults (upscale 44.0 s), 1.07 GiB
with the 32 MiB threshold alone (47.6 s), 1.40 GiB with no block mapped (38.1 s). ``LIGHTSR_MALLOC_TUNING=0`` in the environment keeps glibc's
defaults (for a machine where memory, not time, is short).

It is a process-wide, one-way setting (glibc has no way back to the dynamic threshold), a no-op
outside Linux/glibc, and never raises.
"""
from __future__ import annotations

import ctypes
import logging
import os
import platform
import sys

__all__ = ["MMAP_THRESHOLD", "tune_malloc", "malloc_tuned"]

log = logging.getLogger("lightsr")

# glibc's largest accepted mmap threshold on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX = 4 MiB * sizeof(long))
MMAP_THRESHOLD = 32 * 1024 * 1024
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3
_M_MMAP_MAX = -4
_TUNED = False


def malloc_tuned() -> bool:
    """Whether :func:`tune_malloc` has changed this process's malloc settings."""
    return _TUNED


def tune_malloc(mmap_threshold: int = MMAP_THRESHOLD) -> bool:
    """Keep freed memory for reuse (glibc only; not with ``LIGHTSR_MALLOC_TUNING=0``). Returns True
    when the settings are in effect."""
    global _TUNED
    if _TUNED:
        return True
    if os.environ.get("LIGHTSR_MALLOC_TUNING", "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(None)
        mallopt = libc.mallopt
        mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
        ok = bool(mallopt(_M_MMAP_THRESHOLD, int(mmap_threshold)))
        # no block gets its own mapping, however large: those above the threshold come from the heap
        # too (glibc still maps memory when the heap cannot grow: this never makes malloc fail)
        ok = bool(mallopt(_M_MMAP_MAX, 0)) and ok
        # trim only beyond 2 GiB - 1 of free memory at the heap top, i.e. in practice never
        ok = bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1)) and ok
    except (OSError, AttributeError) as exc:  # no mallopt symbol (not glibc after all)
        log.debug("malloc tuning unavailable: %s", exc)
        return False
    _TUNED = ok
    return ok
