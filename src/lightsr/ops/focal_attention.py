"""Focal separable attention (FSA), the spatial operator of LAMNet's LSAM (paper Sec. 3.2).

A 1-D dynamic filter along one axis with ``K`` taps. Tap ``t`` covers ``len_t`` consecutive
pixels starting at offset ``start_t`` (walking outwards for negative starts) and contributes the
*mean* of those pixels, weighted by a per-pixel coefficient predicted by the network. Near taps
are single pixels; far taps are box averages ("focal"), so 13 taps span a 23-pixel window.

    out[b, c, h, w] = sum_t k[b, g(c)*K + t, h, w] * mean_{i < len_t} x[b, c, h, w + start_t + i*sign(start_t)]

(horizontal; vertical is the same along ``h``). Samples outside the image are zeros but still
count in ``len_t`` (count-include-pad averaging), as in the official CUDA op ``FSAttn``.
Channel ``c`` uses kernel group ``g(c) = c // (C // G)`` (contiguous blocks of channels);
kernel channels are ordered group-major, tap-minor.

* :func:`focal_attention_reference` - a fixed bank of ``K`` box filters applied depth-wise
  (materialises a ``K``-times larger tensor); the test oracle.
* :func:`focal_attention` - the custom op ``lightsr::focal_attention``. On CPU in float32 with
  channels-last inputs (the models' CPU layout) it runs the native kernel (``native/focal_attention.c``, compiled on first use, :mod:`lightsr.ops._native`):
  forward and backward each one pass over every row / column, nothing padded or copied. Otherwise
  (other devices and dtypes, no C compiler, ``LIGHTSR_NATIVE=0``) PyTorch: box sums once per
  distinct tap length (built by doubling: the 4-pixel sums from the 2-pixel sums), then one
  in-place multiply-add of a shifted view per tap on cache-sized row strips; no ``K``-times
  tensor; hand-written backward. float16/bfloat16 accumulate in float32. Any device.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from lightsr.ops import _native
from lightsr.ops import triton as _triton
from lightsr.ops._common import acc_dtype, define_op, exporting, like as _like, memory_format_of, needs_grad, strip_rows

__all__ = [
    "build_kernel_map",
    "focal_attention",
    "focal_attention_composite",
    "focal_attention_reference",
    "patch_size_of",
]

Tap = tuple[int, int]  # (start, length)


def build_kernel_map(strides: Sequence[int] = (1, 2, 4), steps: Sequence[int] = (3, 2, 1)) -> list[Tap]:
    """Tap table ``[(start, len), ...]`` in kernel-channel order, for the paper's stride/step notation.

    One side of the window holds ``steps[i]`` taps of length ``strides[i]`` each, laid end to end
    after the centre tap ``(0, 1)``; the other side mirrors it. LAMNet's default
    (stride [1, 2, 4], step [3, 2, 1]) gives 13 taps over a 23-pixel window::

        (-8,4) (-6,2) (-4,2) (-3,1) (-2,1) (-1,1) (0,1) (1,1) (2,1) (3,1) (4,2) (6,2) (8,4)

    (The official constructor takes ``kernel_loc`` = 1 + cumulative steps, e.g. [4, 6, 7].)
    """
    if len(strides) != len(steps) or not strides:
        raise ValueError("strides and steps must be non-empty and of equal length")
    if any(int(s) < 1 for s in strides) or any(int(n) < 1 for n in steps):
        raise ValueError("strides and steps must be positive integers")
    side: list[Tap] = []
    pos = 1
    for stride, step in zip(strides, steps):
        for _ in range(int(step)):
            side.append((pos, int(stride)))
            pos += int(stride)
    left = [(-s, n) for s, n in reversed(side)]
    return left + [(0, 1)] + side


def patch_size_of(kernel_map: Sequence[Tap]) -> int:
    """Width of the window covered by the taps (23 for LAMNet)."""
    reach = max(abs(s) + n - 1 for s, n in kernel_map)
    return 2 * reach + 1


def _first_offset(start: int, length: int) -> int:
    """Smallest offset a tap covers (negative taps walk outwards)."""
    return start if start >= 0 else start - length + 1


def _first_offsets(starts, lengths) -> list[int]:
    return [_first_offset(s, n) for s, n in zip(starts, lengths)]


def _check(x: torch.Tensor, kernel: torch.Tensor, n_taps: int) -> tuple[int, int]:
    if x.dim() != 4 or kernel.dim() != 4:
        raise ValueError("focal_attention expects x (B, C, H, W) and kernel (B, G*K, H, W)")
    b, c, h, w = x.shape
    if kernel.shape[0] != b or kernel.shape[2:] != (h, w) or kernel.shape[1] % n_taps:
        raise ValueError(f"kernel shape {tuple(kernel.shape)} does not fit x {tuple(x.shape)} with {n_taps} taps")
    groups = kernel.shape[1] // n_taps
    if c % groups:
        raise ValueError(f"{c} channels cannot be split into {groups} kernel groups")
    return groups, c // groups


def _filter_bank(kernel_map: Sequence[Tap], dtype, device) -> torch.Tensor:
    p = patch_size_of(kernel_map)
    bank = torch.zeros(len(kernel_map), p, dtype=torch.float64)
    for t, (start, length) in enumerate(kernel_map):
        lo = _first_offset(start, length)
        bank[t, lo + p // 2 : lo + p // 2 + length] = 1.0 / length
    return bank.to(device=device, dtype=dtype)


def _activate(kernel: torch.Tensor, activation: str | None) -> torch.Tensor:
    if activation is None:
        return kernel
    if activation == "tanh":
        return torch.tanh(kernel)
    raise ValueError(f"activation must be None or 'tanh', got {activation!r}")


def focal_attention_reference(
    x: torch.Tensor, kernel: torch.Tensor, kernel_map: Sequence[Tap], dim: int = -1, activation: str | None = None
) -> torch.Tensor:
    """Reference FSA along ``dim`` (-1: horizontal / width, -2: vertical / height).

    ``activation="tanh"``: ``kernel`` holds logits and the coefficients are ``tanh(kernel)``
    (LAMNet's kernel predictors end in tanh; the fast op fuses it)."""
    kernel = _activate(kernel, activation)
    n_taps = len(kernel_map)
    groups, per_group = _check(x, kernel, n_taps)
    b, c, h, w = x.shape
    p = patch_size_of(kernel_map)
    bank = _filter_bank(kernel_map, x.dtype, x.device)  # (K, P)
    if dim in (-1, 3):
        weight, padding = bank.view(n_taps, 1, 1, p), (0, p // 2)
    elif dim in (-2, 2):
        weight, padding = bank.view(n_taps, 1, p, 1), (p // 2, 0)
    else:
        raise ValueError("dim must be -1 (horizontal) or -2 (vertical)")
    weight = weight.repeat(c, 1, 1, 1)  # output channel = c*K + t
    taps = F.conv2d(x, weight, padding=padding, groups=c)  # (B, C*K, H, W)
    taps = taps.view(b, groups, per_group, n_taps, h, w)
    return (taps * kernel.view(b, groups, 1, n_taps, h, w)).sum(dim=3).view(b, c, h, w)



def focal_attention_composite(
    x: torch.Tensor, kernel: torch.Tensor, kernel_map: Sequence[Tap], dim: int = -1, activation: str | None = None
) -> torch.Tensor:
    """Plain-aten composite (one average-pool per distinct tap length, shifted multiply-adds).

    What exporters (ONNX, ``torch.export``) record in place of the custom op: static shapes and
    ops every exporter knows. Slower than :func:`focal_attention` in eager mode.
    """
    kernel = _activate(kernel, activation)
    n_taps = len(kernel_map)
    groups, per_group = _check(x, kernel, n_taps)
    axis = _axis(dim)
    b, c, h, w = x.shape
    half = patch_size_of(kernel_map) // 2
    if axis == -1:
        xp = F.pad(x, (half, half, 0, 0))
        size, pool = w, (lambda t, n: F.avg_pool2d(t, (1, n), stride=1))
    else:
        xp = F.pad(x, (0, 0, half, half))
        size, pool = h, (lambda t, n: F.avg_pool2d(t, (n, 1), stride=1))
    sources = {}
    for n in sorted({n for _, n in kernel_map}):
        src = xp if n == 1 else pool(xp, n)
        sources[n] = src.reshape(b, groups, per_group, *src.shape[-2:])
    kv = kernel.reshape(b, groups, n_taps, 1, h, w)
    out = None
    for t, (start, length) in enumerate(kernel_map):
        term = _shift(sources[length], axis, _first_offset(start, length) + half, size) * kv[:, :, t]
        out = term if out is None else out + term
    return out.reshape(b, c, h, w)


# --- fast implementation -------------------------------------------------------------------
# Everything runs on flat planes: the input is copied once into a zero-padded NCHW buffer (this
# copy also converts a channels-last input), each (batch, channel) plane is flattened, and every
# tap becomes one in-place multiply-add of two *contiguous* 1-D ranges:
#
# * horizontal: planes of rows padded to Wp = W + P - 1; tap offset o moves the read by o
#   elements. Outputs are computed on the padded row grid (the P - 1 extra columns per row are
#   garbage and cropped at the end); the per-pixel kernel is copied onto the same grid.
# * vertical: padded by P // 2 rows; tap offset o moves the read by o * W elements.
#
# With contiguous ranges the element-wise kernels run long vectorised loops even for the 48-pixel
# training patches (a 2-D shifted view would give loops of one row). Rows are processed in strips
# of about 2 MiB so that the accumulator stays in cache.


def _axis(dim: int) -> int:
    if dim in (-1, 3):
        return -1
    if dim in (-2, 2):
        return -2
    raise ValueError("dim must be -1 (horizontal) or -2 (vertical)")


def _shift(t: torch.Tensor, axis: int, start: int, length: int) -> torch.Tensor:
    return t[..., start : start + length] if axis == -1 else t[..., start : start + length, :]


class _Geometry:
    """Flat-plane layout of one FSA call (see the comment above)."""

    def __init__(self, h: int, w: int, taps, axis: int):
        self.h, self.w, self.axis = h, w, axis
        self.half = patch_size_of(taps) // 2
        if axis == -1:
            self.row = w + 2 * self.half  # row length of the padded planes and of the canvas
            self.step = 1  # flat distance between neighbours along the filtered axis
            self.padded = h * self.row
            self.length = h * self.row - 2 * self.half  # canvas positions computed
        else:
            self.row = w
            self.step = w
            self.padded = (h + 2 * self.half) * w
            self.length = h * w
        self.canvas = h * self.row
        self.taps = [(_first_offset(s, n) + self.half, n) for s, n in taps]

    def canvas_view(self, t: torch.Tensor) -> torch.Tensor:
        """(..., canvas) -> (..., h, w) view of the valid outputs."""
        return t.view(*t.shape[:-1], self.h, self.row)[..., : self.w]


def _to_canvas(t: torch.Tensor, g: _Geometry, dtype, copy: bool = False) -> torch.Tensor:
    """(B, C, H, W) in any layout -> (B, C, canvas) contiguous, zeros in the garbage columns.

    ``copy=True`` always returns new memory (a custom op may not return a view of its input)."""
    b, c = t.shape[:2]
    if g.axis == -2:
        if copy:
            out = torch.empty(b, c, g.h, g.w, dtype=dtype, device=t.device)
            out.copy_(t)
            return out.view(b, c, g.canvas)
        return t.to(dtype).contiguous().reshape(b, c, g.canvas)
    out = torch.empty(b, c, g.h, g.row, dtype=dtype, device=t.device)
    out[..., g.w :].zero_()
    out[..., : g.w].copy_(t)
    return out.view(b, c, g.canvas)


def _pad_input(x: torch.Tensor, g: _Geometry, dtype) -> torch.Tensor:
    """(B, C, H, W) -> zero-padded flat planes (B, C, padded), one copy from any layout."""
    b, c, h, w = x.shape
    if g.axis == -1:
        xp = torch.empty(b, c, h, g.row, dtype=dtype, device=x.device)
        xp[..., : g.half].zero_()
        xp[..., g.half + w :].zero_()
        xp[..., g.half : g.half + w].copy_(x)
    else:
        xp = torch.empty(b, c, h + 2 * g.half, w, dtype=dtype, device=x.device)
        xp[..., : g.half, :].zero_()
        xp[..., g.half + h :, :].zero_()
        xp[..., g.half : g.half + h, :].copy_(x)
    return xp.view(b, c, g.padded)


def _box_means(xp: torch.Tensor, lengths, g: _Geometry) -> dict[int, torch.Tensor]:
    """{n: mean of n consecutive samples along the filtered axis} on flat padded planes.

    ``means[n][..., i]`` averages positions i, i + step, ..., i + (n - 1) step. Sums are built by
    doubling where possible (sum4 = sum2 + shifted sum2), else from shifted single samples.
    """
    sums = {1: xp}
    for n in sorted(set(lengths)):
        if n in sums:
            continue
        count = g.padded - (n - 1) * g.step
        split = [k for k in sums if k < n and (n - k) in sums]
        if split:
            m = max(split)
            sums[n] = sums[m][..., :count] + sums[n - m][..., m * g.step : m * g.step + count]
        else:
            total = xp[..., :count].clone()
            for i in range(1, n):
                total += xp[..., i * g.step : i * g.step + count]
            sums[n] = total
    return {n: (sums[n] if n == 1 else sums[n].mul_(1.0 / n)) for n in set(lengths)}


def _strips(g: _Geometry, elements_per_position: int, x: torch.Tensor):
    """Flat [i0, i1) ranges of whole canvas rows, about 2 MiB of output each on CPU."""
    rows = strip_rows(x, g.h, elements_per_position * g.row)
    for r0 in range(0, g.h, rows):
        i0, i1 = r0 * g.row, min(g.length, (r0 + rows) * g.row)
        if i0 < i1:
            yield i0, i1


def _forward_impl(
    x: torch.Tensor, kernel: torch.Tensor, starts: list[int], lengths: list[int], dim: int, act: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (output, padded input, kernel on the canvas); the last two are kept for backward.

    The native path returns two empty tensors instead: its backward reads ``x`` and ``kernel``.
    ``act=1``: ``kernel`` holds logits, the coefficients are ``tanh(kernel)``."""
    taps = list(zip(starts, lengths))
    n_taps = len(taps)
    groups, per_group = _check(x, kernel, n_taps)
    if _native_dtype(x, kernel):
        y = _native.fsa_forward(x, kernel, _first_offsets(starts, lengths), lengths, _axis(dim), act)
        return y.contiguous(memory_format=memory_format_of(x)), x.new_empty(0), x.new_empty(0)
    if act:
        kernel = torch.tanh(kernel)  # kept on the canvas below: the backward's tanh' = 1 - kc^2
    b, c, h, w = x.shape
    g = _Geometry(h, w, taps, _axis(dim))
    acc = acc_dtype(x.dtype)
    xp = _pad_input(x, g, acc)
    kc = _to_canvas(kernel, g, acc, copy=True)  # (B, G*K, canvas), saved for the backward
    means = {n: m.view(b, groups, per_group, -1) for n, m in _box_means(xp, lengths, g).items()}
    kv = kc.view(b, groups, n_taps, 1, g.canvas)
    out = torch.zeros(b, groups, per_group, g.canvas, dtype=acc, device=x.device)
    for i0, i1 in _strips(g, b * c, x):
        o = out[..., i0:i1]
        for t, (off, n) in enumerate(g.taps):
            src = means[n][..., off * g.step + i0 : off * g.step + i1]
            if t == 0:
                torch.mul(src, kv[:, :, t, :, i0:i1], out=o)
            else:
                o.addcmul_(src, kv[:, :, t, :, i0:i1])
    y = g.canvas_view(out.view(b, c, g.canvas)).to(x.dtype).contiguous(memory_format=memory_format_of(x))
    return y, xp, kc


def _native_dtype(x: torch.Tensor, kernel: torch.Tensor) -> bool:
    """The native forward takes these tensors: float32, or bfloat16 when no gradient is needed (its
    backward is float32-only; :func:`focal_attention` converts bf16 tensors that need one)."""
    return _use_native(x, kernel) or (_use_native(x, kernel, torch.bfloat16) and not needs_grad(x, kernel))


def _use_native(x: torch.Tensor, kernel: torch.Tensor, dtype: torch.dtype = torch.float32) -> bool:
    """The native kernel takes float32 CPU tensors whose channels are adjacent in memory (channels-last,
    or a channel slice of it: the layout the models use on CPU), when it could be built. NCHW inputs
    stay on the PyTorch path, which works on whole planes: converting them for the native kernel
    costs more than it saves at inference sizes (benchmarks/ops_speed.py)."""
    return (x.device.type == "cpu" and x.dtype == dtype and kernel.dtype == dtype
            and x.dim() == 4 and (x.stride(1) == 1 or x.shape[1] == 1) and _native.available())


def _backward_impl(
    grad: torch.Tensor, xp: torch.Tensor, kc: torch.Tensor, starts: list[int], lengths: list[int], dim: int, act: int,
    x_channels_last: bool, kernel_channels_last: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad input, grad kernel) from the saved padded input and canvas kernel, or (native path,
    4-D ``xp`` / ``kc``) from the op's own inputs ``x`` and ``kernel``."""
    if xp.dim() == 4:
        gx, gk = _native.fsa_backward(grad, xp, kc, _first_offsets(starts, lengths), lengths, _axis(dim), act)
        fmt = torch.channels_last if x_channels_last else torch.contiguous_format
        kfmt = torch.channels_last if kernel_channels_last else torch.contiguous_format
        return gx.to(grad.dtype).contiguous(memory_format=fmt), gk.to(grad.dtype).contiguous(memory_format=kfmt)
    taps = list(zip(starts, lengths))
    n_taps = len(taps)
    b, c, h, w = grad.shape
    g = _Geometry(h, w, taps, _axis(dim))
    groups = kc.shape[1] // n_taps
    per_group = c // groups
    acc = xp.dtype
    gc = _to_canvas(grad, g, acc).view(b, groups, per_group, g.canvas)  # zeros on garbage columns
    kv = kc.view(b, groups, n_taps, 1, g.canvas)
    means = {n: m.view(b, groups, per_group, -1) for n, m in _box_means(xp, lengths, g).items()}
    gmeans = {n: torch.zeros_like(m) for n, m in means.items()}
    gk = torch.empty(b, groups, n_taps, g.canvas, dtype=acc, device=grad.device)
    gk[..., g.length :].zero_()
    for i0, i1 in _strips(g, b * c, grad):
        gs = gc[..., i0:i1]
        tmp = torch.empty(b, groups, per_group, i1 - i0, dtype=acc, device=grad.device)
        for t, (off, n) in enumerate(g.taps):
            a = off * g.step
            gmeans[n][..., a + i0 : a + i1].addcmul_(gs, kv[:, :, t, :, i0:i1])
            torch.mul(gs, means[n][..., a + i0 : a + i1], out=tmp)
            torch.sum(tmp, dim=2, out=gk[:, :, t, i0:i1])
    if act:  # gradient of the logits: tanh' = 1 - tanh^2 (kc holds the activated coefficients)
        gk.view(b, groups * n_taps, g.canvas).mul_(1.0 - kc * kc)
    gxp = gmeans.pop(1) if 1 in gmeans else torch.zeros_like(xp).view(b, groups, per_group, -1)
    for n, gm in gmeans.items():  # adjoint of the box mean: spread each value over its n samples
        gm.mul_(1.0 / n)
        count = gm.shape[-1]
        for i in range(n):
            gxp[..., i * g.step : i * g.step + count].add_(gm)
    gxp = gxp.reshape(b, c, -1)
    if g.axis == -1:
        gx = gxp.view(b, c, h, g.row)[..., g.half : g.half + w]
    else:
        gx = gxp.view(b, c, h + 2 * g.half, w)[..., g.half : g.half + h, :]
    fmt = torch.channels_last if x_channels_last else torch.contiguous_format
    kfmt = torch.channels_last if kernel_channels_last else torch.contiguous_format
    gx = gx.to(grad.dtype).contiguous(memory_format=fmt)
    gkk = g.canvas_view(gk.view(b, groups * n_taps, g.canvas)).to(grad.dtype).contiguous(memory_format=kfmt)
    return gx, gkk


def _fwd_fake(x, kernel, starts, lengths, dim, act):
    _check(x, kernel, len(starts))
    b, c, h, w = x.shape
    if _native_dtype(x, kernel):
        return _like(x), x.new_empty(0), x.new_empty(0)
    g = _Geometry(h, w, list(zip(starts, lengths)), _axis(dim))
    acc = acc_dtype(x.dtype)
    return _like(x), x.new_empty(b, c, g.padded, dtype=acc), x.new_empty(b, kernel.shape[1], g.canvas, dtype=acc)


def _bwd_fake(grad, xp, kc, starts, lengths, dim, act, x_channels_last, kernel_channels_last):
    b, c, h, w = grad.shape
    gx = torch.empty(grad.shape, dtype=grad.dtype, device=grad.device,
                     memory_format=torch.channels_last if x_channels_last else torch.contiguous_format)
    gk = torch.empty((b, kc.shape[1], h, w), dtype=grad.dtype, device=grad.device,
                     memory_format=torch.channels_last if kernel_channels_last else torch.contiguous_format)
    return gx, gk


_backward_op = define_op("focal_attention_backward", _backward_impl, _bwd_fake)


def _setup_context(ctx, inputs, output):
    x, kernel, starts, lengths, dim, act = inputs
    _, xp, kc = output
    ctx.mark_non_differentiable(xp, kc)
    if xp.dim() == 1:  # native path (empty placeholders): its backward reads the inputs themselves
        xp, kc = x, kernel
    ctx.save_for_backward(xp, kc)
    ctx.meta = (list(starts), list(lengths), dim, act, memory_format_of(x) == torch.channels_last,
                memory_format_of(kernel) == torch.channels_last)


def _backward(ctx, grad, _grad_xp, _grad_kc):
    xp, kc = ctx.saved_tensors
    starts, lengths, dim, act, x_cl, k_cl = ctx.meta
    if grad is None:
        return None, None, None, None, None, None
    gx, gk = _backward_op(grad, xp, kc, starts, lengths, dim, act, x_cl, k_cl)
    need = ctx.needs_input_grad
    return (gx if need[0] else None), (gk if need[1] else None), None, None, None, None


_focal_attention_op = define_op("focal_attention", _forward_impl, _fwd_fake, _setup_context, _backward)


def focal_attention(
    x: torch.Tensor, kernel: torch.Tensor, kernel_map: Sequence[Tap], dim: int = -1, activation: str | None = None
) -> torch.Tensor:
    """Fast FSA along ``dim`` (custom op ``lightsr::focal_attention``); same semantics as the reference.

    ``activation="tanh"``: ``kernel`` holds logits; the native kernel applies tanh itself (an
    8-wide rational approximation, max abs error 3.3e-7, faster than ``torch.tanh`` on this CPU, and
    no tensor of activated coefficients), otherwise ``torch.tanh`` runs first. While an exporter traces the model (ONNX,
    ``torch.export``) :func:`focal_attention_composite` is used.
    """
    if exporting():
        return focal_attention_composite(x, kernel, kernel_map, dim, activation)
    if _triton.wants(x, kernel):  # CUDA: one Triton kernel per pass, tanh fused
        return _triton.focal_attention(x, kernel, kernel_map, dim, activation)
    starts = [int(s) for s, _ in kernel_map]
    lengths = [int(n) for _, n in kernel_map]
    if not starts or min(lengths) < 1:
        raise ValueError("kernel_map must hold (start, length >= 1) taps")
    dtype = x.dtype
    if dtype == torch.bfloat16 and _use_native(x, kernel, torch.bfloat16) and needs_grad(x, kernel):
        # bf16 training (CPU autocast): the float32 native kernel and its backward on converted copies
        # beat the PyTorch path; without a gradient the native kernel reads and writes bf16 itself
        x, kernel = x.float(), kernel.float()
    act = int(activation == "tanh" and _native_dtype(x, kernel) and _native.vector_tanh())
    if not act:
        kernel = _activate(kernel, activation)
    return _focal_attention_op(x, kernel, starts, lengths, int(dim), act)[0].to(dtype)
