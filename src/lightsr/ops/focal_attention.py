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
* :func:`focal_attention` - the custom op ``lightsr::focal_attention``: box sums once per
  distinct tap length (built by doubling: the 4-pixel sums from the 2-pixel sums), then one
  in-place multiply-add of a shifted view per tap on cache-sized row strips; no ``K``-times
  tensor; hand-written backward. float16/bfloat16 accumulate in float32. Any device.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from lightsr.ops._common import acc_dtype, define_op, exporting, like as _like, memory_format_of, strip_rows

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


def focal_attention_reference(
    x: torch.Tensor, kernel: torch.Tensor, kernel_map: Sequence[Tap], dim: int = -1
) -> torch.Tensor:
    """Reference FSA along ``dim`` (-1: horizontal / width, -2: vertical / height)."""
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
    x: torch.Tensor, kernel: torch.Tensor, kernel_map: Sequence[Tap], dim: int = -1
) -> torch.Tensor:
    """Plain-aten composite (one average-pool per distinct tap length, shifted multiply-adds).

    What exporters (ONNX, ``torch.export``) record in place of the custom op: static shapes and
    ops every exporter knows. Slower than :func:`focal_attention` in eager mode.
    """
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


def _axis(dim: int) -> int:
    if dim in (-1, 3):
        return -1
    if dim in (-2, 2):
        return -2
    raise ValueError("dim must be -1 (horizontal) or -2 (vertical)")


def _shift(t: torch.Tensor, axis: int, start: int, length: int) -> torch.Tensor:
    return t[..., start : start + length] if axis == -1 else t[..., start : start + length, :]


def _tap_view(src: torch.Tensor, axis: int, offset: int, r0: int, r1: int, width: int) -> torch.Tensor:
    """Rows r0:r1 of the output read ``src`` shifted by ``offset`` along ``axis``."""
    if axis == -1:
        return src[..., r0:r1, offset : offset + width]
    return src[..., r0 + offset : r1 + offset, :]


def _box_means(xp: torch.Tensor, lengths, axis: int, size: int, half: int) -> dict[int, torch.Tensor]:
    """{n: mean of n consecutive samples starting at each position} along ``axis`` of padded ``xp``.

    ``means[n]`` has ``size + 2 * half - n + 1`` positions. Sums are built by doubling where
    possible (sum4 = sum2 + shifted sum2), otherwise by adding shifted sums of smaller lengths.
    """
    full = size + 2 * half
    sums = {1: xp}
    for n in sorted(set(lengths)):
        if n in sums:
            continue
        count = full - n + 1
        split = [k for k in sums if k < n and (n - k) in sums]
        if split:
            m = max(split)
            sums[n] = _shift(sums[m], axis, 0, count) + _shift(sums[n - m], axis, m, count)
        else:  # no doubling available: add the n shifted samples
            total = _shift(xp, axis, 0, count).clone()
            for i in range(1, n):
                total += _shift(xp, axis, i, count)
            sums[n] = total
    return {n: (sums[n] if n == 1 else sums[n] * (1.0 / n)) for n in set(lengths)}


def _taps(starts, lengths):
    return [(_first_offset(s, n), n) for s, n in zip(starts, lengths)]


def _forward_impl(x: torch.Tensor, kernel: torch.Tensor, starts: list[int], lengths: list[int], dim: int) -> torch.Tensor:
    taps = list(zip(starts, lengths))
    n_taps = len(taps)
    groups, per_group = _check(x, kernel, n_taps)
    axis = _axis(dim)
    b, c, h, w = x.shape
    half = patch_size_of(taps) // 2
    size = w if axis == -1 else h
    acc = acc_dtype(x.dtype)
    xp = F.pad(x.to(dtype=acc, memory_format=torch.contiguous_format), (half, half, 0, 0) if axis == -1 else (0, 0, half, half))
    means = {n: m.view(b, groups, per_group, *m.shape[-2:]) for n, m in _box_means(xp, lengths, axis, size, half).items()}
    kv = kernel.to(dtype=acc, memory_format=torch.contiguous_format).view(b, groups, n_taps, 1, h, w)
    out = torch.empty(b, groups, per_group, h, w, dtype=acc, device=x.device)
    rows = strip_rows(x, h, b * c * w)
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        o = out[..., r0:r1, :]
        for t, (lo, n) in enumerate(_taps(starts, lengths)):
            src = _tap_view(means[n], axis, lo + half, r0, r1, w)
            if t == 0:
                torch.mul(src, kv[:, :, t, :, r0:r1], out=o)
            else:
                o.addcmul_(src, kv[:, :, t, :, r0:r1])
    return out.view(b, c, h, w).to(dtype=x.dtype, memory_format=memory_format_of(x))


def _grad_input_impl(grad: torch.Tensor, kernel: torch.Tensor, starts: list[int], lengths: list[int], dim: int) -> torch.Tensor:
    """Scatter ``k_t * grad`` to the box of every tap (adjoint of the forward)."""
    taps = list(zip(starts, lengths))
    n_taps = len(taps)
    axis = _axis(dim)
    b, c, h, w = grad.shape
    groups = kernel.shape[1] // n_taps
    per_group = c // groups
    half = patch_size_of(taps) // 2
    size = w if axis == -1 else h
    full = size + 2 * half
    acc = acc_dtype(grad.dtype)
    g = grad.to(dtype=acc, memory_format=torch.contiguous_format).view(b, groups, per_group, h, w)
    kv = kernel.to(dtype=acc, memory_format=torch.contiguous_format).view(b, groups, n_taps, 1, h, w)
    padded = (b, groups, per_group, h, full) if axis == -1 else (b, groups, per_group, full, w)
    gmeans = {}
    for n in set(lengths):
        shape = list(padded)
        shape[axis] = full - n + 1
        gmeans[n] = torch.zeros(shape, dtype=acc, device=grad.device)
    rows = strip_rows(grad, h, b * c * w)
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        gs = g[..., r0:r1, :]
        for t, (lo, n) in enumerate(_taps(starts, lengths)):
            _tap_view(gmeans[n], axis, lo + half, r0, r1, w).addcmul_(gs, kv[:, :, t, :, r0:r1])
    gxp = gmeans.pop(1) if 1 in gmeans else torch.zeros(padded, dtype=acc, device=grad.device)
    for n, gm in gmeans.items():  # adjoint of the box mean: spread each value over its n samples
        gm.mul_(1.0 / n)
        for i in range(n):
            _shift(gxp, axis, i, full - n + 1).add_(gm)
    gx = _shift(gxp, axis, half, size)
    return gx.reshape(b, c, h, w).to(grad.dtype)


def _grad_kernel_impl(grad: torch.Tensor, x: torch.Tensor, starts: list[int], lengths: list[int], dim: int, groups: int) -> torch.Tensor:
    """d out / d k[g, t]: sum over the group's channels of grad * (box mean of tap t)."""
    taps = list(zip(starts, lengths))
    n_taps = len(taps)
    axis = _axis(dim)
    b, c, h, w = x.shape
    per_group = c // groups
    half = patch_size_of(taps) // 2
    size = w if axis == -1 else h
    acc = acc_dtype(x.dtype)
    xp = F.pad(x.to(dtype=acc, memory_format=torch.contiguous_format), (half, half, 0, 0) if axis == -1 else (0, 0, half, half))
    means = {n: m.view(b, groups, per_group, *m.shape[-2:]) for n, m in _box_means(xp, lengths, axis, size, half).items()}
    g = grad.to(dtype=acc, memory_format=torch.contiguous_format).view(b, groups, per_group, h, w)
    gk = torch.empty(b, groups, n_taps, h, w, dtype=acc, device=x.device)
    rows = strip_rows(x, h, b * c * w)
    tmp = None
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        gs = g[..., r0:r1, :]
        if tmp is None or tmp.shape[-2] != r1 - r0:
            tmp = torch.empty(b, groups, per_group, r1 - r0, w, dtype=acc, device=x.device)
        for t, (lo, n) in enumerate(_taps(starts, lengths)):
            torch.mul(gs, _tap_view(means[n], axis, lo + half, r0, r1, w), out=tmp)
            torch.sum(tmp, dim=2, out=gk[:, :, t, r0:r1])
    return gk.view(b, groups * n_taps, h, w).to(x.dtype)


def _fwd_fake(x, kernel, starts, lengths, dim):
    _check(x, kernel, len(starts))
    _axis(dim)
    return _like(x)


def _gin_fake(grad, kernel, starts, lengths, dim):
    return grad.new_empty(grad.shape)


def _gk_fake(grad, x, starts, lengths, dim, groups):
    b, _, h, w = x.shape
    return x.new_empty(b, groups * len(starts), h, w)


_grad_input_op = define_op("focal_attention_grad_input", _grad_input_impl, _gin_fake)
_grad_kernel_op = define_op("focal_attention_grad_kernel", _grad_kernel_impl, _gk_fake)


def _setup_context(ctx, inputs, output):
    x, kernel, starts, lengths, dim = inputs
    ctx.save_for_backward(x, kernel)
    ctx.taps = (list(starts), list(lengths), dim)


def _backward(ctx, grad):
    x, kernel = ctx.saved_tensors
    starts, lengths, dim = ctx.taps
    grad_x = _grad_input_op(grad, kernel, starts, lengths, dim) if ctx.needs_input_grad[0] else None
    grad_k = None
    if ctx.needs_input_grad[1]:
        grad_k = _grad_kernel_op(grad, x, starts, lengths, dim, kernel.shape[1] // len(starts))
    return grad_x, grad_k, None, None, None


_focal_attention_op = define_op("focal_attention", _forward_impl, _fwd_fake, _setup_context, _backward)


def focal_attention(
    x: torch.Tensor, kernel: torch.Tensor, kernel_map: Sequence[Tap], dim: int = -1
) -> torch.Tensor:
    """Fast FSA along ``dim`` (custom op ``lightsr::focal_attention``); same semantics as the reference.

    While an exporter traces the model (ONNX, ``torch.export``) :func:`focal_attention_composite` is used.
    """
    if exporting():
        return focal_attention_composite(x, kernel, kernel_map, dim)
    starts = [int(s) for s, _ in kernel_map]
    lengths = [int(n) for _, n in kernel_map]
    if not starts or min(lengths) < 1:
        raise ValueError("kernel_map must hold (start, length >= 1) taps")
    return _focal_attention_op(x, kernel, starts, lengths, int(dim))
