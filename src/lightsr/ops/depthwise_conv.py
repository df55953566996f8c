"""Static depth-wise convolutions, alone or followed by the gate of a gated feed-forward network.

Every model runs depth-wise convolutions on full-resolution feature maps (DLGSANet's and LAMNet's
FFNs, SparseGSA's q/k/v, LAMNet's 1 x 23 kernel predictors, LGUN's large-kernel sequences). They
do 9-49 multiply-adds per value, so they are bound by memory traffic, and oneDNN's channels-last
kernels reach a small fraction of that bound on the CPUs measured here (docs/speed.md).

* :func:`depthwise_conv2d_reference` - ``F.conv2d(..., groups=C)``: the test oracle.
* :func:`depthwise_conv2d` - on CPU tensors with unit channel stride (the models' channels-last
  layout, or a channel slice of it) in float32 or bfloat16: the native kernel
  (``native/depthwise.c`` through :mod:`lightsr.ops._depthwise_native`: one pass, all taps of a
  pixel's channels accumulated in registers; backward = the same kernel with the flipped
  taps + a weight-gradient kernel). Elsewhere (GPUs, NCHW, no compiler, ``LIGHTSR_NATIVE=0``,
  while the MAC counter, an exporter or ``torch.compile`` looks): aten, with a faster weight
  gradient for ``1 x K`` kernels on channels-last CPU tensors (oneDNN computes it several times
  slower than the ``K x 1`` one; transposing height and width turns one into the other:
  ``dL/dw[c, 0, k] (1 x K, on x, g) = dL/dw[c, k, 0] (K x 1, on x^T, g^T)``).
* :func:`gated_depthwise_conv2d` (reference :func:`gated_depthwise_conv2d_reference`): the
  convolution followed by :func:`apply_gate` - GDFN's ``GELU(d1) * d2`` or DGFN's
  ``[GELU(d1) d1, GELU(d1) d2]`` - fused into the native kernel's forward (the convolution's
  output is not written at inference).

Under CPU bf16 autocast the native kernel reads and writes bfloat16 (float32 arithmetic). The aten
path runs a 1 x K kernel that would be computed in bfloat16/float16 on the CPU in float32:
oneDNN's bfloat16 1 x 23 depth-wise convolution hangs.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

from lightsr.ops import _depthwise_native, _native
from lightsr.ops._common import autocast_dtype, exporting, memory_format_of, needs_grad, plain_tensors

__all__ = [
    "apply_gate",
    "depthwise_conv2d",
    "depthwise_conv2d_reference",
    "gated_depthwise_conv2d",
    "gated_depthwise_conv2d_reference",
    "scale_gelu",
    "scale_gelu_reference",
]


def _check(x: torch.Tensor, weight: torch.Tensor) -> None:
    if x.dim() != 4 or weight.dim() != 4 or weight.shape[1] != 1 or weight.shape[0] != x.shape[1]:
        raise ValueError(
            f"depth-wise convolution expects x (B, C, H, W) and weight (C, 1, kh, kw); got "
            f"{tuple(x.shape)} and {tuple(weight.shape)}"
        )


def _reduced_precision_line_on_cpu(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """A 1 x K kernel on CPU that would run in bfloat16/float16 (input dtype or CPU autocast).

    oneDNN's bfloat16 depth-wise 1 x 23 convolution on channels-last CPU tensors does not return
    (minutes and counting for a 1 x 8 x 32 x 32 input; 1 x 13, 23 x 1 and float32 are fine;
    torch 2.13.0+cpu on this machine's AVX-512 EPYC): such calls run in float32 instead.
    """
    return (x.device.type == "cpu" and weight.shape[2] == 1 and weight.shape[3] > 1
            and (x.dtype in (torch.bfloat16, torch.float16) or torch.is_autocast_enabled("cpu")))


def _conv(x, weight, bias, padding) -> torch.Tensor:
    """``F.conv2d(..., groups=C)``; a 1 x K kernel that would run in reduced precision on the CPU runs
    in float32 (output float32 under autocast, else cast back to the input dtype)."""
    if not _reduced_precision_line_on_cpu(x, weight):
        return F.conv2d(x, weight, bias, padding=tuple(padding), groups=x.shape[1])
    with torch.autocast("cpu", enabled=False):
        y = F.conv2d(x.float(), weight.float(), None if bias is None else bias.float(), padding=tuple(padding),
                     groups=x.shape[1])
    return y if torch.is_autocast_enabled("cpu") else y.to(x.dtype)


def depthwise_conv2d_reference(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: tuple[int, int],
    dilation: tuple[int, int] = (1, 1),
) -> torch.Tensor:
    """Depth-wise convolution, stride 1, zero padding ``(ph, pw)``: plain ``F.conv2d`` (autograd's backward)."""
    _check(x, weight)
    if tuple(dilation) != (1, 1):
        return F.conv2d(x, weight, bias, padding=tuple(padding), dilation=tuple(dilation), groups=x.shape[1])
    return _conv(x, weight, bias, padding)


def _transposed_weight_grad(grad: torch.Tensor, x: torch.Tensor, weight: torch.Tensor, padding) -> torch.Tensor:
    """Weight gradient of a 1 x K depth-wise conv, computed as the K x 1 one on transposed planes."""
    cl = torch.channels_last
    xt = x.transpose(2, 3).contiguous(memory_format=cl)
    gt = grad.transpose(2, 3).contiguous(memory_format=cl)
    wt = weight.transpose(2, 3)
    c = x.shape[1]
    _, gw, _ = torch.ops.aten.convolution_backward(
        gt, xt, wt, None, [1, 1], [padding[1], padding[0]], [1, 1], False, [0, 0], c, [False, True, False]
    )
    return gw.transpose(2, 3).contiguous()


class _DepthwiseConv(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, padding):
        # under autocast the convolution would cast its operands itself, and the backward (which runs
        # outside autocast) would then see a bfloat16 input beside a float32 weight: cast explicitly
        # and save the operands the convolution actually used
        dtype = autocast_dtype(x.device.type)
        if dtype is not None:
            x, weight = x.to(dtype), weight.to(dtype)
            bias = None if bias is None else bias.to(dtype)
        ctx.save_for_backward(x, weight)
        ctx.padding = tuple(padding)
        ctx.has_bias = bias is not None
        with torch.autocast(x.device.type, enabled=False) if dtype is not None else contextlib.nullcontext():
            return F.conv2d(x, weight, bias, padding=ctx.padding, groups=x.shape[1])

    @staticmethod
    def backward(ctx, grad):
        x, weight = ctx.saved_tensors
        need_x, need_w, need_b = ctx.needs_input_grad[:3]
        c, pad = x.shape[1], list(ctx.padding)
        line = weight.shape[2] == 1 and weight.shape[3] > 1
        # channels-last includes channel slices of a channels-last tensor (LAMNet's x2 = chunk of proj_in):
        # aten's own weight gradient is slow for those too (benchmarks/ops_speed.py --backward, 'channel slice' row)
        fast_w = (need_w and line and x.device.type == "cpu" and memory_format_of(x) == torch.channels_last)
        mask = [need_x, need_w and not fast_w, False]
        gx = gw = gb = None
        if any(mask):
            gx, gw, _ = torch.ops.aten.convolution_backward(
                grad, x, weight, None, [1, 1], pad, [1, 1], False, [0, 0], c, mask
            )
        if fast_w:
            gw = _transposed_weight_grad(grad, x, weight, ctx.padding)
        if need_b and ctx.has_bias:
            gb = grad.sum(dim=(0, 2, 3))
        return gx, gw, gb, None



def _native_eligible(x: torch.Tensor, weight: torch.Tensor, padding, dilation) -> bool:
    """The native kernel may run: plain eager CPU execution (no exporter, compiler or dispatch mode
    such as the MAC counter, which must see aten convolutions) and a supported input."""
    if exporting() or not plain_tensors(x, weight):
        return False
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and compiler.is_compiling():
        return False
    return _depthwise_native.supported(x, weight, padding, dilation)


def _native_call(x, weight, bias, padding, dilation, gate: str) -> torch.Tensor:
    """The native kernel, in bfloat16 under CPU bf16 autocast (float32 arithmetic either way)."""
    if autocast_dtype("cpu") == torch.bfloat16:
        x = x.to(torch.bfloat16)
    code = _depthwise_native.GATES[gate]
    if needs_grad(x, weight, bias):
        return _depthwise_native.NativeDepthwise.apply(x, weight, bias, tuple(padding), tuple(dilation), code)
    return _depthwise_native.forward(x, weight, bias, padding, dilation, code, False)[0]


def onednn_preferred(x: torch.Tensor, weight: torch.Tensor, padding, dilation) -> bool:
    """Inference on a CPU whose oneDNN runs AVX-512 kernels, where its channels-last depth-wise
    convolution beats the native kernel: in bfloat16 up to 192 channels, in float32 up to 144
    channels for kernels other than 3 x 3 and K x 1 columns and up to 32 for 3 x 3; never a dilated
    kernel spanning more than 13 pixels (oneDNN 7-9x slower on LGUN's 9x9 at dilation 2) nor a
    bfloat16 1 x K one (see _reduced_precision_line_on_cpu). ``python benchmarks/native_speed.py
    --kernels`` (Zen 4 EPYC, 180x320 maps): oneDNN 1.4-2.3x faster on 12-48 channels in bfloat16, on
    12-32 channels for 5x5 ... 1x23 kernels and on 16 channels for 3x3 in float32, within 0.9-1.2x on
    3x3 at 48-192 channels, 1.1-1.4x slower at 270; the native column kernel (dense column strips)
    1.33x faster than oneDNN on LAMNet's 23x1 in float32
    (``docs/results/cpu_epyc_zen4_2026-12-06f/native_kernels.md``). CPUs without AVX-512 keep the
    native kernel (measured faster there when it was written)."""
    if needs_grad(x, weight) or x.device.type != "cpu" or _native.cpu_capability() != "AVX512":
        return False
    if x.dim() != 4 or (x.shape[1] > 1 and x.stride(1) != 1) or _reduced_precision_line_on_cpu(x, weight):
        return False  # (oneDNN's bf16 1 x K does not return on small inputs)
    spans = [d * (k - 1) + 1 for d, k in zip(dilation, weight.shape[2:])]
    if any(d > 1 and s > 13 for d, s in zip(dilation, spans)):
        return False
    if x.dtype == torch.bfloat16 or autocast_dtype("cpu") == torch.bfloat16:
        return x.shape[1] <= 192
    kh, kw = weight.shape[2:]
    column = kw == 1 and kh >= 5 and dilation[0] == 1  # the native column kernel (forward_columns)
    return x.shape[1] <= 144 and not column and ((kh, kw) != (3, 3) or x.shape[1] <= 32)


def _onednn(x, weight, bias, padding, dilation) -> torch.Tensor:
    """aten's grouped convolution; outside autocast the weights in the input's dtype (the native
    kernel takes float32 weights with bfloat16 maps; aten wants one dtype)."""
    if not torch.is_autocast_enabled("cpu"):
        weight = weight.to(x.dtype)
        bias = None if bias is None else bias.to(x.dtype)
    return F.conv2d(x, weight, bias, padding=tuple(padding), dilation=tuple(dilation), groups=x.shape[1])


def depthwise_conv2d(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, padding: tuple[int, int],
    dilation: tuple[int, int] = (1, 1),
) -> torch.Tensor:
    """Depth-wise convolution (same result as the reference): the native kernel on channels-last
    CPU tensors (at inference oneDNN's where :func:`onednn_preferred`), else aten with the faster
    1 x K weight gradient."""
    _check(x, weight)
    if onednn_preferred(x, weight, padding, dilation) and plain_tensors(x, weight):
        return _onednn(x, weight, bias, padding, dilation)
    if _native_eligible(x, weight, padding, dilation):
        return _native_call(x, weight, bias, padding, dilation, "none")
    if tuple(dilation) != (1, 1):
        return F.conv2d(x, weight, bias, padding=tuple(padding), dilation=tuple(dilation), groups=x.shape[1])
    if (exporting() or _reduced_precision_line_on_cpu(x, weight) or not needs_grad(x, weight, bias)):
        return _conv(x, weight, bias, padding)
    return _DepthwiseConv.apply(x, weight, bias, tuple(padding))


# --- depth-wise convolution + the gate of a gated feed-forward network -------------------------

GATES = ("gelu", "dual")


def apply_gate(d: torch.Tensor, gate: str) -> torch.Tensor:
    """``gelu``: GELU(d1) * d2 (Restormer's GDFN); ``dual``: [GELU(d1) * d1, GELU(d1) * d2] (LAMNet's
    DGFN), with d1 / d2 the halves of ``d``'s channels."""
    if gate not in GATES:
        raise ValueError(f"gate must be one of {GATES}, got {gate!r}")
    d1, d2 = d.chunk(2, dim=1)
    g = F.gelu(d1)
    return g * d2 if gate == "gelu" else torch.cat([g * d1, g * d2], dim=1)


def gated_depthwise_conv2d_reference(x, weight, bias, padding, gate: str) -> torch.Tensor:
    """``apply_gate(conv(x), gate)`` with aten's convolution (the test oracle)."""
    _check(x, weight)
    return apply_gate(F.conv2d(x, weight, bias, padding=tuple(padding), groups=x.shape[1]), gate)


def gated_depthwise_conv2d(x, weight, bias, padding, gate: str) -> torch.Tensor:
    """The reference's result; on channels-last CPU tensors in one native pass (the convolution's
    output is never written in inference; in training it is kept for the backward)."""
    _check(x, weight)
    if gate not in GATES:
        raise ValueError(f"gate must be one of {GATES}, got {gate!r}")
    if x.shape[1] % 2:
        raise ValueError(f"a gated convolution needs an even number of channels, got {x.shape[1]}")
    if _native_eligible(x, weight, padding, (1, 1)):
        return _native_call(x, weight, bias, padding, (1, 1), gate)
    return apply_gate(depthwise_conv2d(x, weight, bias, padding), gate)


# --- a squeeze-and-excitation scale followed by GELU (LGUN's SAL) ----------------------------

def scale_gelu_reference(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``GELU(x * scale)`` with ``scale`` of shape (B, C, 1, 1) (the test oracle)."""
    return F.gelu(x * scale)


def scale_gelu(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The reference's result; on CPU tensors with unit channel stride (float32 or bfloat16) one
    native pass: the scaled tensor is never written. In float32 training (outside autocast) the
    backward is one native pass too (both gradients from gy and d; GELU' by a rational erf and a
    polynomial exp)."""
    if (x.dim() == 4 and x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16)
            and scale.numel() == x.shape[0] * x.shape[1] and x.numel() > 0
            and (x.shape[1] == 1 or x.stride(1) == 1)
            and not exporting() and plain_tensors(x, scale) and _depthwise_native.library_ready()):
        if not needs_grad(x, scale):
            return _depthwise_native.scale_gelu(x, scale)
        if x.dtype == scale.dtype == torch.float32 and not torch.is_autocast_enabled("cpu"):
            return _depthwise_native.NativeScaleGelu.apply(x, scale)
    return scale_gelu_reference(x, scale)
