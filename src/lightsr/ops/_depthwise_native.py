"""ctypes bindings of ``native/depthwise.c``: channels-last depth-wise convolution (float32 and
bfloat16 storage, float32 arithmetic) with the fused gates, as an ``autograd.Function``.

Used by :func:`lightsr.ops.depthwise_conv2d` and :func:`lightsr.ops.gated_depthwise_conv2d` on CPU
when :func:`supported` says so; both fall back to aten otherwise. The kernel computes
``d = conv(x)`` and the gate's output ``y`` in one pass; in training it also stores ``d``, from
which the backward gets the gate's gradient, then the input gradient (the forward with the
flipped kernel) and the kernel / bias gradients (per-thread partial sums).
"""
from __future__ import annotations

import ctypes

import torch

from lightsr.ops import _native

__all__ = ["GATES", "NATIVE_SIGNATURES", "NativeDepthwise", "NativeScaleGelu", "scale_gelu", "supported"]

GATES = {"none": 0, "gelu": 1, "dual": 2}
_FIELDS = ("B", "H", "W", "C", "KH", "KW", "DH", "DW", "PH", "PW", "xb", "xh", "xw", "yb", "yh", "yw",
           "db", "dh", "dw", "gate")


class _Geom(ctypes.Structure):
    _fields_ = [(name, ctypes.c_longlong) for name in _FIELDS]


_p, _i64, _g = ctypes.c_void_p, ctypes.c_longlong, ctypes.POINTER(_Geom)
NATIVE_SIGNATURES = {
    **{f"lightsr_dw_forward_{s}": [_p] * 5 + [_g, _i64, _i64] for s in ("f32", "bf16")},
    **{f"lightsr_dw_gate_backward_{s}": [_p] * 3 + [_g, _i64, _i64] for s in ("f32", "bf16")},
    **{f"lightsr_dw_weight_grad_{s}": [_p] * 4 + [_g, _i64, _i64] for s in ("f32", "bf16")},
    **{f"lightsr_scale_gelu_{s}": [_p] * 3 + [_g, _i64, _i64] for s in ("f32", "bf16")},
    **{f"lightsr_scale_gelu_backward_{s}": [_p] * 5 + [_g, _i64, _i64] for s in ("f32", "bf16")},
}
_SUFFIX = {torch.float32: "f32", torch.bfloat16: "bf16"}


def _same_size(size: int, k: int, pad: int, dil: int) -> bool:
    return 2 * pad == dil * (k - 1)


def supported(x: torch.Tensor, weight: torch.Tensor, padding, dilation) -> bool:
    """CPU, float32 / bfloat16, unit channel stride (channels-last or a channel slice of it), an
    output the size of the input, and the library built."""
    if x.device.type != "cpu" or x.dtype not in _SUFFIX or x.dim() != 4 or x.numel() == 0:
        return False
    if x.shape[1] > 1 and x.stride(1) != 1:
        return False
    kh, kw = weight.shape[2:]
    if not (_same_size(x.shape[2], kh, padding[0], dilation[0]) and _same_size(x.shape[3], kw, padding[1], dilation[1])):
        return False
    return library_ready()


def library_ready() -> bool:
    """The native library is enabled and built."""
    return _native.library() is not None


def _ptr(t: torch.Tensor | None):
    return None if t is None else ctypes.c_void_p(t.data_ptr())


def _empty_cl(shape, dtype) -> torch.Tensor:
    return torch.empty(shape, dtype=dtype, memory_format=torch.channels_last)


def _unit_channel_stride(t: torch.Tensor) -> torch.Tensor:
    return t if t.shape[1] == 1 or t.stride(1) == 1 else t.contiguous(memory_format=torch.channels_last)


def _geom(x, kernel_hw, padding, dilation, y=None, d=None, gate: int = 0) -> _Geom:
    b, c, h, w = x.shape
    vals = [b, h, w, c, *kernel_hw, *dilation, *padding, x.stride(0), x.stride(2), x.stride(3)]
    for t in (y, d):
        vals += [0, 0, 0] if t is None else [t.stride(0), t.stride(2), t.stride(3)]
    return _Geom(*vals, gate)


def _check(codes) -> None:
    if any(codes):
        raise MemoryError("depth-wise convolution: cannot allocate the native kernel's scratch buffers")


def _taps(weight: torch.Tensor) -> torch.Tensor:
    """(C, 1, KH, KW) -> float32 (KH * KW, C), the layout the kernel reads."""
    c, _, kh, kw = weight.shape
    return weight.detach().float().permute(2, 3, 0, 1).reshape(kh * kw, c).contiguous()


def forward(x, weight, bias, padding, dilation, gate: int, save_d: bool):
    """(y, d or None): the convolution of ``x`` and its gate, by the native kernel."""
    lib = _native.library()
    b, c, h, w = x.shape
    y = _empty_cl((b, c // 2 if gate == GATES["gelu"] else c, h, w), x.dtype)
    d = _empty_cl(tuple(x.shape), x.dtype) if save_d else None
    geom = _geom(x, weight.shape[2:], padding, dilation, y, d, gate)
    taps = _taps(weight)
    bias32 = None if bias is None else bias.detach().float().contiguous()
    fn = getattr(lib, f"lightsr_dw_forward_{_SUFFIX[x.dtype]}")
    _check(_native.run_rows(fn, lambda _, r0, r1: (_ptr(x), _ptr(taps), _ptr(bias32), _ptr(y), _ptr(d), geom, r0, r1),
                            b * h))
    return y, d


def gate_backward(gy: torch.Tensor, d: torch.Tensor, gate: int) -> torch.Tensor:
    """The gradient of ``d`` from that of the gate's output."""
    lib = _native.library()
    gd = torch.empty_like(d)
    geom = _geom(d, (1, 1), (0, 0), (1, 1), gy, d, gate)
    fn = getattr(lib, f"lightsr_dw_gate_backward_{_SUFFIX[d.dtype]}")
    _check(_native.run_rows(fn, lambda _, r0, r1: (_ptr(gy), _ptr(d), _ptr(gd), geom, r0, r1), d.shape[0] * d.shape[2]))
    return gd


def weight_grad(gd: torch.Tensor, x: torch.Tensor, kernel_hw, padding, dilation, with_bias: bool):
    """(kernel gradient (C, 1, KH, KW), bias gradient (C,) or None), float32."""
    lib = _native.library()
    b, c, h, w = x.shape
    kh, kw = kernel_hw
    rows = b * h
    parts = _native.threads_for(rows)
    gw = torch.zeros(parts, kh * kw, c)
    gb = torch.zeros(parts, c) if with_bias else None
    geom = _geom(x, kernel_hw, padding, dilation, gd)
    fn = getattr(lib, f"lightsr_dw_weight_grad_{_SUFFIX[x.dtype]}")
    _check(_native.run_rows(fn, lambda i, r0, r1: (_ptr(gd), _ptr(x), _ptr(gw[i]), None if gb is None else _ptr(gb[i]),
                                                   geom, r0, r1), rows))
    grad_w = gw.sum(0).view(kh, kw, c).permute(2, 0, 1).unsqueeze(1).contiguous()
    return grad_w, None if gb is None else gb.sum(0)


def scale_gelu(d: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """``gelu(d * s)`` for a per-(image, channel) scale ``s`` (B, C), by the native kernel (no autograd);
    the output is channels-last in ``d``'s dtype."""
    b, c, h, w = d.shape
    y = _empty_cl(tuple(d.shape), d.dtype)
    geom = _geom(d, (1, 1), (0, 0), (1, 1), y)
    scale = s.detach().float().reshape(b, c).contiguous()
    fn = getattr(_native.library(), f"lightsr_scale_gelu_{_SUFFIX[d.dtype]}")
    _check(_native.run_rows(fn, lambda _, r0, r1: (_ptr(d), _ptr(scale), _ptr(y), geom, r0, r1), b * h))
    return y


def scale_gelu_backward(gy: torch.Tensor, d: torch.Tensor, s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The gradients of ``gelu(d * s)`` w.r.t. d (in d's dtype and layout) and s ((B, C) float32), by
    the native kernel: one pass over gy and d."""
    b, c, h, w = d.shape
    gy = _unit_channel_stride(gy.to(d.dtype))
    gd = torch.empty_like(d)
    gs_rows = torch.empty(b * h, c)  # per row of pixels: added per image below, in row order
    geom = _geom(d, (1, 1), (0, 0), (1, 1), gy, gd)
    scale = s.detach().float().reshape(b, c).contiguous()
    fn = getattr(_native.library(), f"lightsr_scale_gelu_backward_{_SUFFIX[d.dtype]}")
    _check(_native.run_rows(fn, lambda _, r0, r1: (_ptr(gy), _ptr(d), _ptr(scale), _ptr(gd), _ptr(gs_rows), geom,
                                                   r0, r1), b * h))
    return gd, gs_rows.view(b, h, c).sum(1)


class NativeScaleGelu(torch.autograd.Function):
    """``gelu(d * s)`` for a per-(image, channel) scale ``s`` (B, C, 1, 1) with its native backward:
    ``apply(d, s)`` (training; :func:`scale_gelu` without autograd)."""

    @staticmethod
    def forward(ctx, d, s):
        ctx.save_for_backward(d, s)
        return scale_gelu(d, s)

    @staticmethod
    def backward(ctx, gy):
        d, s = ctx.saved_tensors
        gd, gs = scale_gelu_backward(gy, d, s)
        return gd, gs.view(s.shape).to(s.dtype)


class NativeDepthwise(torch.autograd.Function):
    """``y = gate(conv(x))`` on the native kernel with its backward: ``apply(x, weight, bias, padding,
    dilation, gate)``."""

    @staticmethod
    def forward(ctx, x, weight, bias, padding, dilation, gate):
        # applied only when a gradient is needed (the op calls forward() directly otherwise)
        y, d = forward(x, weight, bias, padding, dilation, gate, gate != GATES["none"])
        ctx.save_for_backward(x, weight, d)
        ctx.conf = (tuple(padding), tuple(dilation), gate, bias is not None)
        return y

    @staticmethod
    def backward(ctx, gy):
        x, weight, d = ctx.saved_tensors
        padding, dilation, gate, has_bias = ctx.conf
        gy = _unit_channel_stride(gy.to(x.dtype))
        gd = gy if gate == GATES["none"] else gate_backward(gy, d, gate)
        gx = gw = gb = None
        if ctx.needs_input_grad[0]:
            gx, _ = forward(gd, weight.flip(2, 3), None, padding, dilation, GATES["none"], False)
        if ctx.needs_input_grad[1] or (has_bias and ctx.needs_input_grad[2]):
            gw, gb = weight_grad(gd, x, weight.shape[2:], padding, dilation, has_bias)
            gw = gw.to(weight.dtype)
            gb = None if gb is None else gb.to(weight.dtype)
        return gx, gw, gb, None, None, None
