"""ctypes bindings of ``native/dynamic_dwconv.c``: the apply, input-gradient and kernel-gradient
loops of the dynamic depth-wise convolution on one strip of the planar canvas (float32 CPU).

:mod:`lightsr.ops.dynamic_dwconv` builds the canvas, the kernels (one matrix product per strip)
and the strips, and calls these in place of its per-tap tensor passes when :func:`usable` says so.
Every tensor argument is a strided view whose last (column) stride is 1; the strides are passed
to the kernel, nothing is copied here.
"""
from __future__ import annotations

import ctypes

import torch

from lightsr.ops import _native

__all__ = ["NATIVE_SIGNATURES", "apply", "fused_backward_channels_last", "fused_forward_channels_last", "grad_input",
           "usable", "usable_channels_last", "weight_grad"]

_FIELDS = ("G", "P", "R", "L", "K", "og", "oc", "orow", "xg", "xc", "xrow", "wg", "wt", "wrow", "sg", "sc", "srow")


class _Geom(ctypes.Structure):
    _fields_ = [(name, ctypes.c_longlong) for name in _FIELDS]


class _FusedGeom(ctypes.Structure):
    _fields_ = [(name, ctypes.c_longlong) for name in ("B", "H", "W", "C", "G", "P", "K", "NH")]


class _BwdGeom(ctypes.Structure):
    _fields_ = ([(name, ctypes.c_longlong) for name in ("B", "H", "W", "C", "G", "P", "K", "NH", "band")]
                + [(name, ctypes.c_void_p) for name in ("x", "hidden", "wk", "bias", "go", "gx", "gh")])


_p, _i64 = ctypes.c_void_p, ctypes.c_longlong
NATIVE_SIGNATURES = {name: [_p, _p, _p, ctypes.POINTER(_Geom), _i64, _i64]
                     for name in ("lightsr_dyn_apply", "lightsr_dyn_weight_grad", "lightsr_dyn_grad_input")}
NATIVE_SIGNATURES["lightsr_dyn_fused_cl"] = [_p, _p, _p, _p, _p, ctypes.POINTER(_FusedGeom), _i64, _i64]
NATIVE_SIGNATURES["lightsr_dyn_fused_bwd_cl"] = [ctypes.POINTER(_BwdGeom), _p, _i64, _i64, _i64]


def usable(t: torch.Tensor) -> bool:
    """The native loops run on float32 CPU canvases (also those of bfloat16 / float16 inputs)."""
    return t.device.type == "cpu" and t.dtype == torch.float32 and _native.library() is not None


def _strides(t: torch.Tensor, dims: tuple[int, ...]) -> list[int]:
    if t.stride(-1) != 1:
        raise ValueError("dynamic_dwconv native loops need unit column stride")
    return [t.stride(d) for d in dims]


def _run(name: str, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, geom: _Geom, lines: int) -> None:
    if any(t.dtype != torch.float32 or t.device.type != "cpu" for t in (a, b, c)):
        raise TypeError(f"{name}: the native loops take float32 CPU tensors")
    fn = getattr(_native.library(), name)
    pa, pb, pc = (ctypes.c_void_p(t.data_ptr()) for t in (a, b, c))
    _native.run_rows(fn, lambda _, l0, l1: (pa, pb, pc, geom, l0, l1), lines, min_rows=1)


def apply(o: torch.Tensor, xp: torch.Tensor, w: torch.Tensor, k: int) -> None:
    """o (G, P, R, L) = sum_t w (G, K*K, 1, R, L)[:, t] * (xp (G, P, >= R + K - 1, >= L + K - 1) shifted by t)."""
    g, p, r, n = o.shape
    geom = _Geom(g, p, r, n, k, *_strides(o, (0, 1, 2)), *_strides(xp, (0, 1, 2)), *_strides(w, (0, 1, 3)), 0, 0, 0)
    _run("lightsr_dyn_apply", o, xp, w, geom, g * r)


def grad_input(gp: torch.Tensor, gs: torch.Tensor, w: torch.Tensor, k: int) -> None:
    """gp (G, P, R + K - 1, L + K - 1: the strip's rows of the padded gradient) += the adjoint of
    :func:`apply` for the output gradient gs (G, P, R, L)."""
    g, p, r, n = gs.shape
    geom = _Geom(g, p, r, n, k, *_strides(gp, (0, 1, 2)), *_strides(gs, (0, 1, 2)), *_strides(w, (0, 1, 3)), 0, 0, 0)
    _run("lightsr_dyn_grad_input", gp, gs, w, geom, g * (r + k - 1))


def weight_grad(gw: torch.Tensor, xp: torch.Tensor, gs: torch.Tensor, k: int) -> None:
    """gw (G, K*K, R, L)[:, t] = sum over each group's channels of gs (G, P, R, L) * (xp shifted by t)."""
    g, p, r, n = gs.shape
    geom = _Geom(g, p, r, n, k, 0, 0, 0, *_strides(xp, (0, 1, 2)), *_strides(gw, (0, 1, 2)), *_strides(gs, (0, 1, 2)))
    _run("lightsr_dyn_weight_grad", gw, xp, gs, geom, g * r)


def usable_channels_last(x: torch.Tensor, hidden: torch.Tensor) -> bool:
    """The channels-last forward: CPU float32 / bfloat16 dense channels-last x and hidden."""
    def dense_cl(t):
        return t.dim() == 4 and t.is_contiguous(memory_format=torch.channels_last)
    return (x.device.type == "cpu" and x.dtype in (torch.float32, torch.bfloat16) and x.numel() > 0
            and dense_cl(x) and dense_cl(hidden) and _native.library() is not None)


def fused_forward_channels_last(x, hidden, conv_weight, conv_bias, k: int, groups: int) -> torch.Tensor:
    """The fused op's forward on channels-last tensors in one native pass: each pixel's kernels are
    made from its hidden values in registers (the 1x1 convolution) and applied at once; no kernel
    tensor, no canvas, no matrix-product calls between native ones."""
    b, c, h, w = x.shape
    xf = x.float().contiguous(memory_format=torch.channels_last)
    hf = hidden.float().contiguous(memory_format=torch.channels_last)
    nk, nh = conv_weight.shape[0], conv_weight.shape[1]
    wt = conv_weight.detach().float().reshape(nk, nh).t().contiguous()  # (NH, G*K*K) rows
    bias = None if conv_bias is None else conv_bias.detach().float().contiguous()
    y = torch.empty(xf.shape, dtype=torch.float32, memory_format=torch.channels_last)
    fn = _native.library().lightsr_dyn_fused_cl
    geom = _FusedGeom(b, h, w, c, groups, c // groups, k, nh)
    args = [None if t is None else ctypes.c_void_p(t.data_ptr()) for t in (xf, hf, wt, bias, y)]
    codes = _native.run_rows(fn, lambda _, r0, r1: (*args, geom, r0, r1), b * h, min_rows=1)
    if any(codes):
        raise MemoryError("dynamic_dwconv: cannot allocate the native kernel's buffer")
    return y if x.dtype == torch.float32 else y.to(x.dtype)


def _dense_cl_f32(t: torch.Tensor) -> torch.Tensor:
    return t.detach().float().contiguous(memory_format=torch.channels_last)


def fused_backward_channels_last(grad, x, hidden, conv_weight, conv_bias, k: int, groups: int):
    """Gradients of the fused op w.r.t. (x, hidden, conv_weight, conv_bias) in one native pass over
    channels-last float32 copies (``native/dynamic_dwconv_bwd.c``); the bias' is empty when there is
    none. Bands of rows of even index, then of odd index, each pass split over the threads; the result
    does not depend on the thread count."""
    b, c, h, w = x.shape
    xf, hf, gf = _dense_cl_f32(x), _dense_cl_f32(hidden), _dense_cl_f32(grad)
    nk, nh = conv_weight.shape[0], conv_weight.shape[1]
    wk = conv_weight.detach().float().reshape(nk, nh).contiguous()
    bias = None if conv_bias is None else conv_bias.detach().float().contiguous()
    gx = torch.zeros_like(xf, memory_format=torch.channels_last)
    gh = torch.empty(hf.shape, dtype=torch.float32, memory_format=torch.channels_last)
    band = max(k - 1, 16)
    bands = -(-b * h // band)
    geom = _BwdGeom(b, h, w, c, groups, c // groups, k, nh, band,
                    *(None if t is None else t.data_ptr() for t in (xf, hf, wk, bias, gf, gx, gh)))
    fn = _native.library().lightsr_dyn_fused_bwd_cl
    per_band = torch.empty(bands, nk * nh + nk, dtype=torch.float32)  # each band's weight, then bias sums
    out = ctypes.c_void_p(per_band.data_ptr())
    for parity in (0, 1):  # two bands of one parity never write the same rows of gx
        lines = (bands - parity + 1) // 2
        codes = _native.run_rows(fn, lambda _, l0, l1: (geom, out, parity, l0, l1), lines, min_rows=1) if lines else []
        if any(codes):
            raise MemoryError("dynamic_dwconv: cannot allocate the native backward's buffers")
    sums = per_band[0].clone()
    for row in per_band[1:]:  # in band order: the same sums whatever the thread count
        sums += row
    g_bias = sums[nk * nh:] if conv_bias is not None else conv_weight.new_empty(0)
    g_weight = sums[:nk * nh].view_as(conv_weight)
    # the two gradients are separate tensors (not views of one: a custom op's outputs must not alias)
    return (gx.to(x.dtype), gh.to(hidden.dtype), g_weight.to(conv_weight.dtype, copy=True),
            g_bias.to(conv_weight.dtype, copy=True))
