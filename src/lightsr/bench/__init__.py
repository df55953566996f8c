"""Latency, peak memory and environment reporting for ``lightsr bench`` and ``benchmarks/``.

Protocol (conventions 2f, the papers' snippets): eval mode, batch 1, float32 by default, a fixed
random input of the 1280x720-output LR size, ``inference_mode``, warm-up runs, then timed runs;
CUDA timings with events and a synchronize. Alternatives (fast vs reference ops, TLC on vs off)
are timed **interleaved** - one repetition of each in turn - so that a change of machine load
hits all of them alike; medians and p90s are reported.

Peak memory: on CUDA ``torch.cuda.max_memory_allocated`` (minus what was allocated before the
forward). On CPU the growth of the process' peak resident set during one forward (the kernel's
peak-RSS mark is reset after a warm-up, then ``VmHWM`` - ``VmRSS`` before), measured in a fresh
subprocess (:mod:`lightsr.bench._memprobe`) so that nothing else the parent did (other models,
earlier peaks) is included: RSS is what the operating system has to provide,
including allocator caching and fragmentation; ``tracemalloc`` does not see tensor memory and
the profiler's memory events count allocator requests, not the peak that matters for OOM.
"""
from __future__ import annotations

import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from typing import Callable, Mapping, Sequence

import torch

__all__ = [
    "TimingStats",
    "environment",
    "format_environment",
    "interleaved_timings",
    "load_average",
    "matmul_rate",
    "peak_memory",
    "stats",
    "sync",
]


def load_average() -> tuple[float, float, float] | None:
    try:
        return tuple(round(v, 2) for v in os.getloadavg())  # type: ignore[return-value]
    except (OSError, AttributeError):  # pragma: no cover - not on Linux/macOS
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> list[str]:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    return [f for f in ("avx2", "fma", "avx512f", "avx512_bf16", "amx_tile") if f in flags]
    except OSError:
        pass
    return []


def environment(device: str | torch.device = "cpu") -> dict:
    """Everything a timing depends on: versions, threads, CPU / GPU, load."""
    device = torch.device(device)
    env = {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_interop_threads": torch.get_num_interop_threads(),
        "cpu_capability": getattr(torch.backends.cpu, "get_cpu_capability", lambda: "?")(),
        "mkldnn": torch.backends.mkldnn.is_available(),
        "load_average": load_average(),
        "time": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "native_ops": _native_status(),
    }
    try:
        from lightsr import __version__

        env["lightsr"] = __version__
    except ImportError:  # pragma: no cover
        pass
    if device.type == "cuda" and torch.cuda.is_available():
        idx = device.index if device.index is not None else torch.cuda.current_device()
        env["gpu"] = torch.cuda.get_device_name(idx)
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
        env["cudnn_benchmark"] = torch.backends.cudnn.benchmark
    return env


def _native_status() -> str:
    from lightsr.ops import _native

    if not _native.enabled():
        return "off (LIGHTSR_NATIVE=0)"
    if _native.available():
        return f"on ({_native.library_path().name})"
    return f"unavailable ({_native.build_error()})"


def format_environment(env: Mapping) -> str:
    parts = [
        f"torch {env['torch']} (python {env['python']})",
        f"CPU: {env['cpu']} [{', '.join(env.get('cpu_flags') or [])}], {env.get('cpus_usable')} usable cores, "
        f"capability {env.get('cpu_capability')}",
        f"threads: {env['torch_threads']} intra-op, {env['torch_interop_threads']} inter-op",
        f"load average (1/5/15 min): {env.get('load_average')}",
    ]
    if "native_ops" in env:
        parts.insert(3, f"native CPU kernels (lightsr.ops._native): {env['native_ops']}")
    if "gpu" in env:
        parts.append(f"GPU: {env['gpu']} (CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}, benchmark={env.get('cudnn_benchmark')})")
    return "\n".join(parts)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class TimingStats:
    """Seconds of repeated runs of one configuration."""

    times: list[float]

    @property
    def n(self) -> int:
        return len(self.times)

    @property
    def median(self) -> float:
        return statistics.median(self.times)

    @property
    def p90(self) -> float:
        """90th percentile, nearest-rank definition (with fewer than 10 runs: the slowest run)."""
        s = sorted(self.times)
        return s[min(len(s) - 1, max(0, math.ceil(0.9 * len(s)) - 1))]

    @property
    def mean(self) -> float:
        return statistics.fmean(self.times)

    @property
    def min(self) -> float:
        return min(self.times)

    def to_dict(self, scale: float = 1000.0) -> dict:
        return {
            "n": self.n,
            "median_ms": self.median * scale,
            "p90_ms": self.p90 * scale,
            "mean_ms": self.mean * scale,
            "min_ms": self.min * scale,
        }


def stats(times: Sequence[float]) -> TimingStats:
    return TimingStats(list(times))


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize(device)
        return start.elapsed_time(end) / 1000.0
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def interleaved_timings(
    variants: Mapping[str, Callable[[], object]],
    *,
    device: str | torch.device = "cpu",
    warmup: int = 1,
    repeats: int | None = None,
    time_budget: float = 30.0,
    min_repeats: int = 3,
    max_repeats: int = 50,
    progress: Callable[[str], None] | None = None,
) -> dict[str, TimingStats]:
    """Time each callable, alternating between them every repetition.

    ``repeats=None`` picks the count from the warm-up: as many rounds as fit in ``time_budget``
    seconds, clamped to [``min_repeats``, ``max_repeats``].
    """
    device = torch.device(device)
    names = list(variants)
    warm = {n: [] for n in names}
    for _ in range(max(1, warmup)):
        for n in names:
            warm[n].append(_timed(variants[n], device))
    if repeats is None:
        per_round = sum(min(v) for v in warm.values())
        repeats = int(max(min_repeats, min(max_repeats, time_budget // max(per_round, 1e-9))))
    times = {n: [] for n in names}
    for r in range(repeats):
        order = names if r % 2 == 0 else names[::-1]  # alternate the order too
        for n in order:
            times[n].append(_timed(variants[n], device))
        if progress is not None:
            progress(f"{r + 1}/{repeats}")
    return {n: TimingStats(v) for n, v in times.items()}


def matmul_rate(
    device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32, n: int = 2048, repeats: int = 7
) -> float:
    """Measured multiply-accumulates per second of an ``n x n @ n x n`` matrix product (median)."""
    device = torch.device(device)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)
    t = interleaved_timings({"mm": lambda: torch.mm(a, b, out=out)}, device=device, warmup=2, repeats=repeats)["mm"]
    return n**3 / t.median


def peak_memory(
    name: str,
    scale: int,
    lr_size: Sequence[int],
    *,
    device: str | torch.device = "cpu",
    dtype: str = "float32",
    threads: int | None = None,
    tlc: bool | None = None,
    options: Mapping | None = None,
    reference_ops: bool = False,
    timeout: float = 1800.0,
) -> dict:
    """Peak memory of one eval forward of model ``name``: ``{"peak_bytes": int, "method": str}``.

    CPU: growth of the peak RSS during the forward, in a fresh subprocess. CUDA: in-process
    ``max_memory_allocated`` above what was allocated before the forward.
    """
    spec = {
        "name": name,
        "scale": int(scale),
        "lr_size": [int(v) for v in lr_size],
        "device": str(device),
        "dtype": dtype,
        "threads": threads,
        "tlc": tlc,
        "options": dict(options or {}),
        "reference_ops": reference_ops,
    }
    if torch.device(device).type == "cuda":
        from lightsr.bench._memprobe import measure

        return measure(spec)
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    proc = subprocess.run(
        [sys.executable, "-m", "lightsr.bench._memprobe", json.dumps(spec)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        err = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"memory probe for {name} x{scale} failed: {err}")
    return json.loads(lines[-1])
