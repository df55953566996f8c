"""Triton kernels of the focal separable attention (LAMNet's LSAM), horizontal and vertical.

Same contract as :func:`lightsr.ops.focal_attention` (formula in :mod:`lightsr.ops.focal_attention`):
tap ``t`` contributes ``k[g*K + t] * mean(x over its len_t pixels)`` along one axis, zeros outside
the image counted in the mean; ``activation="tanh"`` applies tanh to the kernel logits inside the
kernel (and its derivative in the backward).

The tap table becomes a list of *entries* ``(offset o, tap t, 1 / len_t)``, one per pixel a tap
covers (23 for LAMNet's 13 taps), kept on the device per kernel map. Then

    out[c, p] = sum_e x[c, p + o_e] * k[t_e, p] / len_e                        (forward)
    dx[c, q]  = sum_e dy[c, q - o_e] * k[t_e, q - o_e] / len_e                 (gather, no atomics)
    dk[t, p]  = sum_{e: t_e = t} (1 / len_e) sum_{c in group} dy[c, p] x[c, p + o_e]   (entries -> taps:
                one small matrix product)

One program per (block of pixels, image, kernel group): the group's coefficients are loaded once
as an (entries, BLOCK) tile and used for each of its channels; forward and backward are one
launch each. float32 accumulation; float32 / bfloat16 / float16 inputs in any memory layout.
"""
from __future__ import annotations

from typing import Sequence

import torch
import triton
import triton.language as tl

from lightsr.ops.triton._common import check_dtypes, next_pow2, tanh

__all__ = ["focal_attention"]

BLOCK = 64  # pixels per program
SIZES = ["H", "W", "G", "CG", "NT", "E"]  # compiled as plain integers (strides are specialised)


@triton.jit
def _entries(off_ptr, tap_ptr, inv_ptr, E, E_PAD: tl.constexpr):
    e = tl.arange(0, E_PAD)
    em = e < E
    off = tl.load(off_ptr + e, mask=em, other=0)
    tap = tl.load(tap_ptr + e, mask=em, other=0)
    inv = tl.load(inv_ptr + e, mask=em, other=0.0)
    return em, off, tap, inv


@triton.jit
def _shifted(h, w, off, H, W, VERTICAL: tl.constexpr):
    """(rows, cols, inside) of the pixels (h, w) moved by ``off`` along the filtered axis."""
    if VERTICAL:
        hs = h[None, :] + off[:, None]
        ws = w[None, :] + 0 * off[:, None]
        inside = (hs >= 0) & (hs < H)
    else:
        hs = h[None, :] + 0 * off[:, None]
        ws = w[None, :] + off[:, None]
        inside = (ws >= 0) & (ws < W)
    return hs, ws, inside


@triton.jit(do_not_specialize=SIZES)
def _fwd_kernel(x_ptr, k_ptr, off_ptr, tap_ptr, inv_ptr, out_ptr, H, W, G, CG, NT, E,
                sx_b, sx_c, sx_h, sx_w, sk_b, sk_c, sk_h, sk_w, so_b, so_c, so_h, so_w,
                E_PAD: tl.constexpr, BLOCK: tl.constexpr, VERTICAL: tl.constexpr, ACT: tl.constexpr):
    b = tl.program_id(1) // G
    g = tl.program_id(1) % G
    b64 = b.to(tl.int64)
    p = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    pm = p < H * W
    h = p // W
    w = p % W
    em, off, tap, inv = _entries(off_ptr, tap_ptr, inv_ptr, E, E_PAD)
    km = em[:, None] & pm[None, :]
    kv = tl.load(k_ptr + b64 * sk_b + (g * NT + tap)[:, None] * sk_c + h[None, :] * sk_h + w[None, :] * sk_w,
                 mask=km, other=0.0).to(tl.float32)
    if ACT:
        kv = tanh(kv)
    coef = kv * inv[:, None]
    hs, ws, inside = _shifted(h, w, off, H, W, VERTICAL)
    m = km & inside
    xb = x_ptr + b64 * sx_b + hs * sx_h + ws * sx_w
    ob = out_ptr + b64 * so_b + h * so_h + w * so_w
    for cc in range(CG):
        c = g * CG + cc
        xv = tl.load(xb + c * sx_c, mask=m, other=0.0).to(tl.float32)
        tl.store(ob + c * so_c, tl.sum(xv * coef, axis=0).to(out_ptr.dtype.element_ty), mask=pm)


@triton.jit(do_not_specialize=SIZES)
def _bwd_kernel(g_ptr, x_ptr, k_ptr, off_ptr, tap_ptr, inv_ptr, gx_ptr, gk_ptr, H, W, G, CG, NT, E,
                sg_b, sg_c, sg_h, sg_w, sx_b, sx_c, sx_h, sx_w, sk_b, sk_c, sk_h, sk_w,
                sdx_b, sdx_c, sdx_h, sdx_w, sdk_b, sdk_c, sdk_h, sdk_w,
                E_PAD: tl.constexpr, NT_PAD: tl.constexpr, BLOCK: tl.constexpr, VERTICAL: tl.constexpr,
                ACT: tl.constexpr):
    b = tl.program_id(1) // G
    g = tl.program_id(1) % G
    b64 = b.to(tl.int64)
    q = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    qm = q < H * W
    h = q // W
    w = q % W
    em, off, tap, inv = _entries(off_ptr, tap_ptr, inv_ptr, E, E_PAD)
    # coefficients of the pixels whose entry e read q (for dx)
    hs, ws, inside = _shifted(h, w, -off, H, W, VERTICAL)
    src_m = em[:, None] & qm[None, :] & inside
    kv = tl.load(k_ptr + b64 * sk_b + (g * NT + tap)[:, None] * sk_c + hs * sk_h + ws * sk_w,
                 mask=src_m, other=0.0).to(tl.float32)
    if ACT:
        kv = tanh(kv)
    coef = kv * inv[:, None]
    # pixels entry e reads from q (for dk)
    hr, wr, inside_r = _shifted(h, w, off, H, W, VERTICAL)
    read_m = em[:, None] & qm[None, :] & inside_r
    acc = tl.zeros((E_PAD, BLOCK), tl.float32)
    for cc in range(CG):
        c = g * CG + cc
        gq = tl.load(g_ptr + b64 * sg_b + c * sg_c + h * sg_h + w * sg_w, mask=qm, other=0.0).to(tl.float32)
        xv = tl.load(x_ptr + b64 * sx_b + c * sx_c + hr * sx_h + wr * sx_w, mask=read_m, other=0.0).to(tl.float32)
        acc += gq[None, :] * xv
        gs = tl.load(g_ptr + b64 * sg_b + c * sg_c + hs * sg_h + ws * sg_w, mask=src_m, other=0.0).to(tl.float32)
        tl.store(gx_ptr + b64 * sdx_b + c * sdx_c + h * sdx_h + w * sdx_w,
                 tl.sum(gs * coef, axis=0).to(gx_ptr.dtype.element_ty), mask=qm)
    # entries -> taps: dk[t] = sum_{e: t_e = t} acc[e] / len_e, one (taps x entries) product
    ts = tl.arange(0, NT_PAD)
    onehot = tl.where((tap[None, :] == ts[:, None]) & em[None, :], inv[None, :], 0.0)
    gk = tl.dot(onehot, acc, input_precision="ieee")  # (NT_PAD, BLOCK)
    rows = g * NT + ts
    m = (ts < NT)[:, None] & qm[None, :]
    if ACT:
        th = tanh(tl.load(k_ptr + b64 * sk_b + rows[:, None] * sk_c + h[None, :] * sk_h + w[None, :] * sk_w,
                          mask=m, other=0.0).to(tl.float32))
        gk = gk * (1.0 - th * th)
    tl.store(gk_ptr + b64 * sdk_b + rows[:, None] * sdk_c + h[None, :] * sdk_h + w[None, :] * sdk_w,
             gk.to(gk_ptr.dtype.element_ty), mask=m)


# --- launches ---------------------------------------------------------------------------------

_TABLES: dict = {}  # (kernel map, device) -> entry tensors; built before any CUDA-graph capture


def _first_offset(start: int, length: int) -> int:
    return start if start >= 0 else start - length + 1  # negative taps walk outwards


def _entry_tables(kernel_map: tuple, device: torch.device):
    key = (kernel_map, str(device))
    if key not in _TABLES:
        entries = [(_first_offset(s, n) + i, t, 1.0 / n) for t, (s, n) in enumerate(kernel_map) for i in range(n)]
        off, tap, inv = zip(*entries)
        _TABLES[key] = (torch.tensor(off, dtype=torch.int32, device=device),
                        torch.tensor(tap, dtype=torch.int32, device=device),
                        torch.tensor(inv, dtype=torch.float32, device=device))
    return _TABLES[key]


def _axis_vertical(dim: int) -> bool:
    if dim in (-1, 3):
        return False
    if dim in (-2, 2):
        return True
    raise ValueError("dim must be -1 (horizontal) or -2 (vertical)")


def _act(activation: str | None) -> bool:
    if activation not in (None, "tanh"):
        raise ValueError(f"activation must be None or 'tanh', got {activation!r}")
    return activation == "tanh"


class _Call:
    """Sizes and entry tables of one call."""

    def __init__(self, x, kernel, kernel_map, dim, activation):
        taps = tuple((int(s), int(n)) for s, n in kernel_map)
        if not taps or min(n for _, n in taps) < 1:
            raise ValueError("kernel_map must hold (start, length >= 1) taps")
        if x.dim() != 4 or kernel.dim() != 4:
            raise ValueError("focal_attention expects x (B, C, H, W) and kernel (B, G*K, H, W)")
        b, c, h, w = x.shape
        nt = len(taps)
        if kernel.shape[0] != b or kernel.shape[2:] != (h, w) or kernel.shape[1] % nt or not kernel.shape[1]:
            raise ValueError(f"kernel shape {tuple(kernel.shape)} does not fit x {tuple(x.shape)} with {nt} taps")
        groups = kernel.shape[1] // nt
        if c % groups:
            raise ValueError(f"{c} channels cannot be split into {groups} kernel groups")
        check_dtypes(x, kernel)
        self.b, self.c, self.h, self.w, self.nt, self.groups = b, c, h, w, nt, groups
        self.tables = _entry_tables(taps, x.device)
        self.entries = self.tables[0].numel()
        self.grid = (triton.cdiv(h * w, BLOCK), b * groups)
        self.consts = dict(E_PAD=next_pow2(self.entries), BLOCK=BLOCK, VERTICAL=_axis_vertical(dim),
                           ACT=_act(activation))

    def sizes(self):
        return (self.h, self.w, self.groups, self.c // self.groups, self.nt, self.entries)


def _forward(x, kernel, call: _Call) -> torch.Tensor:
    out = torch.empty_like(x)
    if out.numel():
        _fwd_kernel[call.grid](x, kernel, *call.tables, out, *call.sizes(),
                               *x.stride(), *kernel.stride(), *out.stride(), **call.consts)
    return out


def _backward(grad, x, kernel, call: _Call):
    gx, gk = torch.empty_like(x), torch.empty_like(kernel)
    if x.numel():
        _bwd_kernel[call.grid](grad, x, kernel, *call.tables, gx, gk, *call.sizes(),
                               *grad.stride(), *x.stride(), *kernel.stride(), *gx.stride(), *gk.stride(),
                               NT_PAD=next_pow2(call.nt), **call.consts)
    return gx, gk


class _FocalAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, kernel, kernel_map, dim, activation):
        call = _Call(x, kernel, kernel_map, dim, activation)
        ctx.save_for_backward(x, kernel)
        ctx.call = call
        return _forward(x, kernel, call)

    @staticmethod
    def backward(ctx, grad):
        x, kernel = ctx.saved_tensors
        gx, gk = _backward(grad, x, kernel, ctx.call)
        need = ctx.needs_input_grad
        return (gx if need[0] else None), (gk if need[1] else None), None, None, None


def focal_attention(
    x: torch.Tensor, kernel: torch.Tensor, kernel_map: Sequence[tuple[int, int]], dim: int = -1,
    activation: str | None = None,
) -> torch.Tensor:
    """Triton :func:`lightsr.ops.focal_attention` along ``dim`` (-1 horizontal, -2 vertical);
    ``activation="tanh"``: ``kernel`` holds logits, tanh is applied inside the kernels."""
    return _FocalAttention.apply(x, kernel, kernel_map, int(dim), activation)
