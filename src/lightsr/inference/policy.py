"""Defaults chosen by measurement: the precision (``--precision auto``) and the CPU thread count.

**Precision** (``auto``, the default of ``lightsr upscale``, ``eval`` and ``bench``):

* on the CPU, ``bf16`` where the CPU computes bfloat16 natively (AVX512-BF16 or AMX: the
  ``avx512_bf16`` / ``amx_bf16`` flags) **and** the weights are known to lose at most
  :data:`BF16_TOLERANCE_DB` of Set5 PSNR in bf16 - measured per weights file by
  ``benchmarks/model_card.py`` and recorded, by the file's sha256, in
  ``lightsr/pretrained/precision.json`` (and in the model card); ``fp32`` otherwise, with the
  reason. On CPUs without native bf16, bf16 is emulated and slower than fp32.
* on CUDA, ``fp32`` (reduced precision stays an explicit choice there).

**Threads** (``--threads`` unset): the usable cores minus the load already on them
(:func:`default_threads`). PyTorch's intra-op threads spin-wait at every parallel region; when
another process already occupies a core, a thread scheduled there stalls all the others, and
2 threads on a busy 2-core machine ran 5-18 times slower than 1 (issue 21; ``benchmarks/threads.py``
measures it, docs/speed.md has the numbers).
"""
from __future__ import annotations

import hashlib
import json
import os
from functools import lru_cache
from pathlib import Path

import torch

__all__ = ["BF16_TOLERANCE_DB", "auto_precision", "bf16_measurement", "cpu_flags", "default_threads", "native_bf16"]

BF16_TOLERANCE_DB = 0.02
_MEASUREMENTS = Path(__file__).resolve().parents[1] / "pretrained" / "precision.json"


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_bf16() -> bool:
    """The CPU computes bfloat16 natively (AVX512-BF16 or AMX), where bf16 pays."""
    return bool(cpu_flags() & {"avx512_bf16", "amx_bf16"})


@lru_cache(maxsize=64)
def _sha256(path: str, size: int, mtime: float) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def bf16_measurement(weights: str | os.PathLike | None) -> dict | None:
    """The recorded bf16-vs-fp32 Set5 measurement of a weights file (by sha256), or None."""
    if weights is None or not Path(weights).is_file():
        return None
    try:
        table = json.loads(_MEASUREMENTS.read_text())
    except (OSError, ValueError):
        return None
    st = Path(weights).stat()
    return table.get(_sha256(str(weights), st.st_size, st.st_mtime))


def auto_precision(device: torch.device, weights: str | os.PathLike | None) -> tuple[str, str]:
    """(``fp32`` or ``bf16``, the reason) for ``--precision auto``."""
    if device.type != "cpu":
        return "fp32", "auto: fp32 on GPUs"
    if not native_bf16():
        return "fp32", "auto: fp32 (this CPU has no native bf16: no avx512_bf16 / amx_bf16)"
    m = bf16_measurement(weights)
    if m is None:
        return "fp32", "auto: fp32 (no bf16 measurement recorded for these weights)"
    delta = abs(float(m["set5_bf16"]) - float(m["set5_fp32"]))
    if delta > BF16_TOLERANCE_DB:
        return "fp32", f"auto: fp32 (bf16 costs {delta:.3f} dB on Set5 with these weights)"
    return "bf16", f"auto: bf16 (native bf16 CPU; Set5 within {delta:.3f} dB of fp32 with these weights)"


def _load() -> float:
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return 0.0


def usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def default_threads(processes: int = 1, load: float | None = None) -> int:
    """Intra-op threads for one of ``processes`` local processes: the usable cores not already
    busy (1-minute load average, rounded), shared among the processes, at least 1."""
    cores = usable_cores()
    busy = _load() if load is None else load
    free = max(1, cores - int(busy + 0.5))
    return max(1, free // max(1, processes))
