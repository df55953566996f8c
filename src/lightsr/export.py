"""Export models to ONNX with dynamic height and width, verified against onnxruntime.

>>> import lightsr
>>> from lightsr.export import export_onnx
>>> model = lightsr.load_model("lamnet_x4.safetensors")
>>> report = export_onnx(model, "lamnet_x4.onnx")          # written atomically, then verified
>>> report.max_abs_diff                                     # vs PyTorch on two input sizes

Needs the optional extra ``pip install "lightsr[onnx]"`` (onnx, onnxruntime; the ``dynamo``
exporter also needs onnxscript). The graph has one input ``input`` (N, 3, H, W) float32 RGB in
[0, 1] and one output ``output`` (N, 3, sH, sW), unclamped, with N, H and W dynamic.

What exports (see ``docs/export.md`` for the measured differences):

* LAMNet / LAMNet-large: everything, including IEM (global means are ordinary reductions) and
  FSA (its Python loop over the 13 taps is unrolled at trace time; the taps are constants).
* DLGSANet (tiny / light / full): with **TLC off**. TLC computes its window layout from the input
  size in Python (how many windows, where they start); a traced graph would freeze the layout
  of the example input and be wrong at any other size. Export switches TLC off (the exported
  model attends over the whole image, as DLGSANet does in training) and says so. The dynamic
  depth-wise convolution (a loop over 49 taps of shifted slices) exports as plain Slice/Mul/Add.
* LGUN: top-k attention exports as TopK + ScatterElements (k is a constant: it depends on the
  channel count only).

Two exporters: ``torchscript`` (default; fast: tens of seconds for a full model) and ``dynamo``
(``torch.export`` based; minutes for these models because of their many small operators). The
TorchScript exporter needs one help: lightsr's channels-first LayerNorm passes its channel count
as ``x.shape[1]``, which that exporter records as a dynamic value and then refuses as a
LayerNorm shape; :func:`export_onnx` registers a symbolic that maps ``aten::layer_norm`` to ONNX
``LayerNormalization`` over the last axes (only the *number* of normalised axes is needed).
"""
from __future__ import annotations

import contextlib
import os
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import torch
import torch.nn as nn

__all__ = ["ExportError", "ExportReport", "export_onnx", "verify_onnx"]

DEFAULT_SIZES = ((24, 32), (37, 19))
DEFAULT_OPSET = 17


class ExportError(RuntimeError):
    """Export failed, or the exported graph does not match PyTorch (message is one line)."""


@dataclass
class ExportReport:
    path: Path
    exporter: str
    opset: int
    seconds: float
    verified: bool = False
    max_abs_diff: dict[str, float] = field(default_factory=dict)  # "HxW" -> max |onnx - torch|
    notes: list[str] = field(default_factory=list)


def _require(module: str, what: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ExportError(f"{what} needs the '{module}' package: pip install \"lightsr[onnx]\"") from None


_LN_REGISTERED: set[int] = set()


def _register_layer_norm(opset: int) -> None:
    """aten::layer_norm -> ONNX LayerNormalization, without needing the normalised shape as a constant."""
    if opset in _LN_REGISTERED:
        return
    from torch.onnx import symbolic_helper as sh

    def layer_norm(g, input, normalized_shape, weight, bias, eps, cudnn_enable):
        if sh._is_packed_list(normalized_shape):
            n = len(sh._unpack_list(normalized_shape))
        else:
            n = len(sh._get_const(normalized_shape, "is", "normalized_shape"))
        return g.op("LayerNormalization", input, weight, bias, axis_i=-n, epsilon_f=sh._get_const(eps, "f", "eps"))

    torch.onnx.register_custom_op_symbolic("aten::layer_norm", layer_norm, opset)
    _LN_REGISTERED.add(opset)


def prepare_for_export(model: nn.Module) -> list[str]:
    """Switch off what cannot be exported with dynamic sizes; returns notes for the user."""
    notes = []
    if hasattr(model, "set_tlc") and any(getattr(m, "tlc", False) for m in model.modules()):
        model.set_tlc(False)
        notes.append(
            "DLGSANet's TLC switched off: its window layout is computed in Python from the input size, "
            "so a graph traced at one size would be wrong at others (the exported model attends globally)"
        )
    return notes


@contextlib.contextmanager
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        yield


def _export(model: nn.Module, path: Path, exporter: str, opset: int, example: torch.Tensor) -> None:
    if exporter == "torchscript":
        if opset < 17:
            raise ExportError("opset >= 17 is needed (LayerNormalization)")
        _register_layer_norm(opset)
        with _quiet(), torch.no_grad():
            torch.onnx.export(
                model, (example,), str(path), dynamo=False, opset_version=opset,
                input_names=["input"], output_names=["output"],
                dynamic_axes={"input": {0: "batch", 2: "height", 3: "width"},
                              "output": {0: "batch", 2: "out_height", 3: "out_width"}},
            )
    elif exporter == "dynamo":
        _require("onnxscript", "the dynamo exporter")
        batch = torch.export.Dim("batch", min=1, max=1024)
        h = torch.export.Dim("height", min=2, max=1 << 15)
        w = torch.export.Dim("width", min=2, max=1 << 15)
        arg = next(iter(__import__("inspect").signature(model.forward).parameters))
        with _quiet(), torch.no_grad():
            program = torch.onnx.export(
                model, (example,), dynamo=True, opset_version=max(opset, 18), input_names=["input"],
                output_names=["output"], dynamic_shapes={arg: {0: batch, 2: h, 3: w}}, optimize=False,
                external_data=False, verbose=False,
            )
            program.save(str(path), external_data=False)
    else:
        raise ExportError(f"unknown exporter {exporter!r} (torchscript or dynamo)")


def verify_onnx(path: str | os.PathLike, model: nn.Module, sizes: Sequence[tuple[int, int]] = DEFAULT_SIZES,
                seed: int = 0) -> dict[str, float]:
    """Run the ONNX file in onnxruntime (CPU) on random inputs of ``sizes``; max |onnx - torch| per size."""
    import numpy as np

    ort = _require("onnxruntime", "verification")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    g = torch.Generator().manual_seed(seed)
    out = {}
    for h, w in sizes:
        x = torch.rand(1, 3, h, w, generator=g)
        with torch.inference_mode():
            ref = model(x).float().numpy()
        got = session.run(None, {name: x.numpy()})[0]
        if got.shape != ref.shape:
            raise ExportError(f"ONNX output shape {got.shape} != PyTorch {ref.shape} for a {h}x{w} input")
        out[f"{h}x{w}"] = float(np.abs(got - ref).max())
    return out


def export_onnx(
    model: nn.Module,
    path: str | os.PathLike,
    *,
    opset: int = DEFAULT_OPSET,
    exporter: str = "torchscript",
    verify: bool = True,
    sizes: Sequence[tuple[int, int]] = DEFAULT_SIZES,
    atol: float = 1e-4,
    overwrite: bool = False,
) -> ExportReport:
    """Export ``model`` (float32, CPU) to ONNX with dynamic batch/height/width, atomically.

    The file is written to a temporary name beside ``path``, checked with ``onnx.checker`` and
    (``verify=True``, needs onnxruntime) run on inputs of each of ``sizes``; only when every
    output is within ``atol`` of PyTorch's is it renamed to ``path``. Raises :class:`ExportError`.
    If onnxruntime is missing and ``verify`` is true, an :class:`ExportError` says how to install
    it; pass ``verify=False`` to export unverified.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise ExportError(f"{path} exists (use --overwrite to replace it)")
    _require("onnx", "ONNX export")
    if verify:
        _require("onnxruntime", "verifying the export")
    model = model.float().cpu().eval()
    notes = prepare_for_export(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    t0 = time.perf_counter()
    try:
        example = torch.rand(1, 3, *sizes[0])
        try:
            _export(model, tmp, exporter, opset, example)
        except ExportError:
            raise
        except Exception as exc:  # exporter errors are long; keep the first line
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            if "namespace lightsr::" in str(exc) or "lightsr::" in first:
                raise ExportError(
                    f"{exporter} export failed: a lightsr operator is registered as a torch custom op, "
                    f"which ONNX exporters cannot trace into ({first[:200]})"
                ) from exc
            raise ExportError(f"{exporter} export failed: {first[:300]}") from exc
        import onnx

        try:
            onnx.checker.check_model(str(tmp))
        except Exception as exc:
            raise ExportError(f"the exported graph is not valid ONNX: {str(exc).splitlines()[0][:300]}") from None
        report = ExportReport(path=path, exporter=exporter, opset=opset, seconds=time.perf_counter() - t0, notes=notes)
        if verify:
            report.max_abs_diff = verify_onnx(tmp, model, sizes)
            worst = max(report.max_abs_diff.values())
            if not worst <= atol:
                raise ExportError(f"onnxruntime output differs from PyTorch by {worst:.3g} (> {atol:g}): {report.max_abs_diff}")
            report.verified = True
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        return report
    finally:
        tmp.unlink(missing_ok=True)
