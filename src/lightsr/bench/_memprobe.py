"""Peak memory of one eval forward, run as ``python -m lightsr.bench._memprobe '<json spec>'``.

Prints one JSON line ``{"peak_bytes": ..., "method": ..., ...}``. On CPU: after a warm-up on a
tiny input (library initialisation), the kernel's peak-RSS mark is reset (``/proc/self/clear_refs``)
and the growth of the peak over the RSS before the forward is reported. A fresh process keeps
other models' memory out of it.
"""
from __future__ import annotations

import json
import resource
import sys

import torch

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def _status_bytes(field: str) -> int | None:
    """``VmRSS`` / ``VmHWM`` (peak RSS) of this process from /proc/self/status, in bytes."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS mark (VmHWM) to the current RSS (Linux >= 4.0)."""
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _maxrss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


def measure(spec: dict) -> dict:
    from lightsr.models import create_model
    from lightsr.ops import use_reference_ops

    device = torch.device(spec["device"])
    dtype = _DTYPES[spec.get("dtype", "float32")]
    if spec.get("threads"):
        torch.set_num_threads(int(spec["threads"]))
    model = create_model(spec["name"], spec["scale"], **spec.get("options", {})).eval().to(device=device, dtype=dtype)
    if spec.get("tlc") is not None and hasattr(model, "set_tlc"):
        model.set_tlc(bool(spec["tlc"]))
    h, w = spec["lr_size"]
    x = torch.rand(1, 3, h, w, device=device, dtype=dtype)
    with use_reference_ops(bool(spec.get("reference_ops"))), torch.inference_mode():
        model(torch.rand(1, 3, 16, 16, device=device, dtype=dtype))  # lazy initialisation outside the peak
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            y = model(x)
            torch.cuda.synchronize(device)
            peak = torch.cuda.max_memory_allocated(device) - base
            method = "cuda max_memory_allocated - allocated before"
        elif _reset_peak_rss() and _status_bytes("VmRSS") is not None:
            base = _status_bytes("VmRSS")
            y = model(x)
            peak = max(0, _status_bytes("VmHWM") - base)
            method = "peak RSS (VmHWM, reset before the forward) - RSS before the forward, fresh process"
        else:  # no way to reset the mark: the peak may include the warm-up's
            base = _status_bytes("VmRSS") or _maxrss_bytes()
            y = model(x)
            peak = max(0, _maxrss_bytes() - base)
            method = "peak RSS (ru_maxrss, process lifetime) - RSS before the forward, fresh process"
    return {"peak_bytes": int(peak), "method": method, "output_bytes": int(y.numel() * y.element_size())}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    print(json.dumps(measure(json.loads(argv[0]))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
