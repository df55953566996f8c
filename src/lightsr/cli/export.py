"""``lightsr export``: export a model to ONNX (dynamic size), verified with onnxruntime."""
from __future__ import annotations

import argparse
import sys

EPILOG = """\
examples:
  lightsr export --weights lamnet_x4.safetensors -o lamnet_x4.onnx
  lightsr export --model dlgsanet_light --scale 4 --weights DLGSANet_light_x4.pth -o dlgsanet_light_x4.onnx
  lightsr export --weights w.safetensors -o w.onnx --check-sizes 64x64 120x80 --atol 1e-4

The graph: input "input" (N, 3, H, W) float32 RGB in [0, 1], output "output" (N, 3, sH, sW),
unclamped; N, H, W dynamic. The file is written atomically and only after onnxruntime has run it
on the --check-sizes inputs within --atol of PyTorch. DLGSANet is exported with TLC off (its
window layout depends on the input size; see docs/export.md). Needs: pip install "lightsr[onnx]".
"""


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "export",
        help="export a model to ONNX (dynamic height/width), verified with onnxruntime",
        description="Export a lightsr model to ONNX with dynamic batch, height and width.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default=None, help="model name (default: what --weights holds)")
    p.add_argument("--scale", type=int, default=None, choices=(2, 3, 4), help="scale (default: the weights')")
    p.add_argument("--weights", default=None, metavar="FILE", help="lightsr .safetensors or BasicSR .pth, or an http(s):// URL (downloaded once, cached; append #sha256=<hex> to verify) (default: shipped weights)")
    p.add_argument("--format", default="onnx", choices=("onnx",), help="export format (onnx)")
    p.add_argument("-o", "--output", required=True, metavar="FILE", help="output .onnx file")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17; the dynamo exporter uses >= 18)")
    p.add_argument("--exporter", default="torchscript", choices=("torchscript", "dynamo"),
                   help="torchscript (default, fast) or dynamo (torch.export; slow for these models, needs onnxscript)")
    p.add_argument("--check-sizes", nargs="+", default=["24x32", "37x19"], metavar="HxW",
                   help="input sizes run in onnxruntime against PyTorch (default 24x32 37x19)")
    p.add_argument("--atol", type=float, default=1e-4, help="largest accepted |onnx - torch| (default 1e-4)")
    p.add_argument("--no-verify", action="store_true", help="do not run onnxruntime (export unverified)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    return p


def _parse_size(text: str) -> tuple[int, int]:
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise ValueError(f"--check-sizes takes HxW values such as 24x32, not {text!r}") from None
    if h < 2 or w < 2:
        raise ValueError(f"--check-sizes: {text} is too small")
    return h, w


def run(args) -> int:
    from lightsr import CheckpointError
    from lightsr.export import ExportError, export_onnx
    from lightsr.inference import WeightsMissing, load_upscale_model

    def error(msg: str) -> int:
        print(f"lightsr export: error: {msg}", file=sys.stderr)
        return 2

    try:
        sizes = [_parse_size(s) for s in args.check_sizes]
        model, scale = load_upscale_model(args.model, args.scale, args.weights)
    except (CheckpointError, WeightsMissing, ValueError, KeyError) as exc:
        return error(str(exc).strip().splitlines()[0])
    name = getattr(model, "lightsr_config", {}).get("name", type(model).__name__)
    print(f"lightsr export: {name} x{scale} -> {args.output} ({args.exporter} exporter, opset {args.opset})")
    try:
        report = export_onnx(model, args.output, opset=args.opset, exporter=args.exporter, verify=not args.no_verify,
                             sizes=sizes, atol=args.atol, overwrite=args.overwrite)
    except ExportError as exc:
        print(f"lightsr export: error: {exc}", file=sys.stderr)
        return 1
    for note in report.notes:
        print(f"note: {note}")
    if report.verified:
        diffs = ", ".join(f"{k}: {v:.2e}" for k, v in report.max_abs_diff.items())
        print(f"verified with onnxruntime, max |onnx - torch| = {diffs} (tolerance {args.atol:g})")
    else:
        print("not verified (--no-verify)")
    print(f"wrote {report.path} in {report.seconds:.1f} s")
    return 0
