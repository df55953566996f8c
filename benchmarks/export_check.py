"""Which models export to ONNX, how long it takes, and how close onnxruntime is to PyTorch.

Every model is built at x4 with random weights (seed 0; trained weights ship only for some models and scales - the
operators, and so exportability, do not depend on the values), exported with dynamic
height/width by :func:`lightsr.export.export_onnx` and run in onnxruntime on two input sizes.

    python benchmarks/export_check.py                       # all six models
    python benchmarks/export_check.py --models lamnet --exporter dynamo
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

import lightsr
from lightsr.export import ExportError, export_onnx

MODELS = ["dlgsanet_tiny", "dlgsanet_light", "dlgsanet", "lgun", "lamnet", "lamnet_large"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", default=MODELS)
    ap.add_argument("--scale", type=int, default=4)
    ap.add_argument("--exporter", default="torchscript", choices=("torchscript", "dynamo"))
    ap.add_argument("--sizes", nargs="+", default=["24x32", "37x19"])
    args = ap.parse_args()
    sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes]
    import onnxruntime

    print(f"torch {torch.__version__}, onnxruntime {onnxruntime.__version__}, exporter {args.exporter}, x{args.scale}, "
          f"random-init weights (seed 0); max |onnx - torch| on inputs {', '.join(args.sizes)}")
    print(f"{'model':16s} {'export s':>9s} {'MB':>6s}  max abs diff per size / error")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.models:
            torch.manual_seed(0)
            model = lightsr.create_model(name, args.scale).eval()
            path = Path(tmp) / f"{name}.onnx"
            t0 = time.perf_counter()
            try:
                report = export_onnx(model, path, exporter=args.exporter, sizes=sizes, atol=1e-4)
            except ExportError as exc:
                print(f"{name:16s} {time.perf_counter() - t0:9.1f} {'-':>6s}  FAILED: {exc}", flush=True)
                continue
            diffs = "  ".join(f"{k}: {v:.2e}" for k, v in report.max_abs_diff.items())
            note = " (TLC off)" if report.notes else ""
            print(f"{name:16s} {report.seconds:9.1f} {path.stat().st_size / 1e6:6.2f}  {diffs}{note}", flush=True)


if __name__ == "__main__":
    main()
