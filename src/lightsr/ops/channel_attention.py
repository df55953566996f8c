"""Transposed ("channel") self-attention of DLGSANet's SparseGSA and LGUN's DGSA.

Per image and head, with q, k, v the head's ``d`` channels over all ``N`` pixels:

    A   = act( (q / |q|)^T (k / |k|) * temperature )     (d x d; |.| the L2 norm over the pixels)
    out = A v                                             (d channels per pixel)

* :func:`channel_attention_reference` - the formula as the official code writes it: q, k, v as
  (B, heads, d, N) rows (an NCHW copy), ``F.normalize`` and two batched products.
* :func:`channel_attention` - at inference on dense channels-last float32 CPU input with heads of 8
  channels (DLGSANet's tiny and light): the native kernels of ``native/channel_attention.c``
  (Gram matrices and sums of squares in one pass, ``A v`` straight into the output). On bfloat16
  input with heads of 16 to 64 channels (LGUN's DGSA under autocast) and a CPU with AVX512-BF16:
  those of ``native/channel_attention_dp.c`` (bfloat16 dot products with float32 sums; the maps
  stay float32 as below and are rounded to bfloat16 for ``A v``). Otherwise,
  on channels-last input, the same numbers without any layout copy:
  q, k, v stay (B, N, 3C) pixel rows; the norms come from one product and sum and divide the small
  d x d Gram matrix instead of the (d, N) rows; each head's Gram matrix is one product reading the
  rows in place; the heads' maps are placed on the diagonal of one C x C matrix so that ``A v``
  for all heads is a single product whose output already is channels-last (C x C instead of
  heads x d x d multiply-adds per pixel there: one product instead of ``heads`` strided ones).
  NCHW input runs the reference.

* :func:`tlc_channel_attention` - the attention on the overlapping windows of the test-time local
  converter, averaged (:func:`tlc_channel_attention_reference`: :func:`~lightsr.ops.tlc.tlc_reference`
  around the reference). Where the native kernels apply, all windows go through them in two calls
  (no window copies, no canvas pass per window; SparseGSA's attention at 320x180: 12.8 ms against
  63.7 ms with the native library off, ``python benchmarks/native_speed.py --kernels``); otherwise
  :func:`~lightsr.ops.tlc.tlc` around :func:`channel_attention`.

``act`` maps the (B, heads, d, d) logits to the attention (ReLU in SparseGSA, top-k softmax mixtures
in DGSA); it is applied to the same tensor in both paths.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from lightsr.ops import _attention_native
from lightsr.ops._common import exporting, needs_grad, plain_tensors
from lightsr.ops.tlc import inverse_coverage, tlc, tlc_reference, tlc_windows

__all__ = ["channel_attention", "channel_attention_reference", "tlc_channel_attention",
           "tlc_channel_attention_reference"]

Activation = Callable[[torch.Tensor], torch.Tensor]


def _check(qkv: torch.Tensor, heads: int) -> tuple[int, int]:
    if qkv.dim() != 4 or qkv.shape[1] % 3 or (qkv.shape[1] // 3) % heads:
        raise ValueError(f"qkv must be (B, 3C, H, W) with C a multiple of {heads} heads, got {tuple(qkv.shape)}")
    c = qkv.shape[1] // 3
    return c, c // heads


def channel_attention_reference(qkv: torch.Tensor, heads: int, temperature: torch.Tensor, act: Activation) -> torch.Tensor:
    """(B, 3C, H, W) -> (B, C, H, W): the official formula (NCHW)."""
    c, d = _check(qkv, heads)
    b, _, h, w = qkv.shape
    q, k, v = qkv.reshape(b, 3, heads, d, h * w).unbind(1)
    q = F.normalize(q, dim=-1)
    k = F.normalize(k, dim=-1)
    attn = act((q @ k.transpose(-2, -1)) * temperature)
    return (attn @ v).reshape(b, c, h, w)


def _head_grams(q: torch.Tensor, k: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, C) pixel rows of q and k -> (B, heads, d, d): every head's q_h^T k_h in one batched
    product of per-head views (q and k are gathered per head once). Inference; training takes
    :func:`_head_blocks` (the diagonal blocks of one C x C product, whose backward is one product:
    faster there, slower than this in a scratch timing at DLGSANet's 90 channels in 6 heads)."""
    b, n, c = q.shape
    d = c // heads
    return torch.matmul(q.view(b, n, heads, d).permute(0, 2, 3, 1), k.view(b, n, heads, d).transpose(1, 2))


def _block_diagonal(attn: torch.Tensor) -> torch.Tensor:
    """(B, heads, d, d) -> (B, C, C) with the heads' maps on the diagonal."""
    b, heads, d, _ = attn.shape
    full = attn.new_zeros(b, heads * d, heads * d)
    full.view(b, heads, d, heads, d).diagonal(dim1=1, dim2=3).copy_(attn.permute(0, 2, 3, 1))
    return full


def channel_attention(qkv: torch.Tensor, heads: int, temperature: torch.Tensor, act: Activation) -> torch.Tensor:
    """The reference's result; pixel rows and three BLAS products on channels-last input (the
    output is channels-last)."""
    c, d = _check(qkv, heads)
    if qkv.shape[1] > 1 and qkv.stride(1) != 1 or exporting() or qkv.device.type == "meta":
        return channel_attention_reference(qkv, heads, temperature, act)
    native = _native_input(qkv, heads, temperature)
    if native is not None:
        h, w = qkv.shape[2:]
        return _attention_native.attention(native, heads, temperature, act, ((0, 0, h, w),), None).to(qkv.dtype)
    if _dp_input(qkv, heads, temperature):
        return _attention_native.attention_dp(qkv, heads, temperature, act)
    if qkv.dtype in (torch.bfloat16, torch.float16) or torch.is_autocast_enabled(qkv.device.type):
        # reduced precision (CPU autocast): the maps in float32 - top-k selections and ReLU sparsity
        # flip on bf16-rounded logits (LGUN's Set5 PSNR moved by 0.02 dB); a copy of q, k, v
        with torch.autocast(qkv.device.type, enabled=False):
            return _attention_rows(qkv.float(), heads, temperature.float(), act).to(qkv.dtype)
    return _attention_rows(qkv, heads, temperature, act)


def _attention_rows(qkv: torch.Tensor, heads: int, temperature: torch.Tensor, act: Activation) -> torch.Tensor:
    if needs_grad(qkv, temperature):
        return _trained_attention_rows(qkv, heads, temperature, act)
    b, c3, h, w = qkv.shape
    c, d = c3 // 3, c3 // 3 // heads
    rows = qkv.permute(0, 2, 3, 1).reshape(b, h * w, 3 * c)  # a view for a dense channels-last tensor
    q, k, v = rows.split(c, dim=2)
    qk = rows[..., : 2 * c]
    # (B, 2C): |q|, |k| = max(sqrt(sum of squares), 1e-12) as F.normalize; the product and a sum over
    # the pixels is 4-6x faster than vector_norm's strided reduction, and clamping before the root
    # keeps the gradient of an all-zero channel finite
    norms = (qk * qk).sum(dim=1).clamp_min(1e-24).sqrt()
    qn, kn = norms[:, :c].view(b, heads, d, 1), norms[:, c:].view(b, heads, 1, d)
    gram = _head_grams(q, k, heads)  # (B, heads, d, d)
    attn = act(gram / (qn * kn) * temperature)
    out = v @ _block_diagonal(attn).transpose(1, 2)  # (B, N, C): every head's A v
    return out.view(b, h, w, c).permute(0, 3, 1, 2)


def _trained_attention_rows(qkv: torch.Tensor, heads: int, temperature: torch.Tensor, act: Activation) -> torch.Tensor:
    """:func:`_attention_rows` for training: the two passes over the pixels (the Gram matrices with the
    sums of squares, and ``A v``) are autograd functions whose backwards are one product each
    (:class:`_GramsAndSquares`, :class:`_AppliedAttention`); the small d x d maps between them (norms,
    temperature, ``act`` with any parameters it has) train by plain autograd."""
    b, c3, h, w = qkv.shape
    c, d = c3 // 3, c3 // 3 // heads
    qk, v = qkv.permute(0, 2, 3, 1).reshape(b, h * w, 3 * c).split([2 * c, c], dim=2)  # backward: one cat
    gram, squares = _GramsAndSquares.apply(qk, heads)
    norms = squares.clamp_min(1e-24).sqrt()  # as F.normalize; the clamp keeps a zero channel's gradient finite
    qn, kn = norms[:, :c].view(b, heads, d, 1), norms[:, c:].view(b, heads, 1, d)
    attn = act(gram / (qn * kn) * temperature)
    return _AppliedAttention.apply(attn, v).view(b, h, w, c).permute(0, 3, 1, 2)


def _head_blocks(a: torch.Tensor, b: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, C) rows of a and b -> (B, heads, d, d) every head's a_h^T b_h: the diagonal blocks of one
    C x C product (reading the rows in place; per-head products first copy them head-major)."""
    n, c = a.shape[0], a.shape[2]
    d = c // heads
    return torch.bmm(a.transpose(1, 2), b).view(n, heads, d, heads, d).diagonal(dim1=1, dim2=3).permute(0, 3, 1, 2)


class _GramsAndSquares(torch.autograd.Function):
    """(B, N, 2C) rows of [q | k] -> (every head's q_h^T k_h (B, heads, d, d), every channel's sum of
    squares over the pixels (B, 2C)). Backward: with G the gram gradient on the block diagonal and S the
    squares' gradient, ``[g_q | g_k] = [q | k] @ [[2 diag(S_q), G], [G^T, 2 diag(S_k)]]``, one product."""

    @staticmethod
    def forward(ctx, qk, heads):
        c = qk.shape[2] // 2
        ctx.save_for_backward(qk)
        return _head_blocks(qk[..., :c], qk[..., c:], heads), (qk * qk).sum(dim=1)

    @staticmethod
    @once_differentiable
    def backward(ctx, g_gram, g_squares):
        (qk,) = ctx.saved_tensors
        b, _, c2 = qk.shape
        c = c2 // 2
        m = qk.new_zeros(b, c2, c2)
        if g_gram is not None:
            blocks = _block_diagonal(g_gram)
            m[:, :c, c:] = blocks
            m[:, c:, :c] = blocks.transpose(1, 2)
        if g_squares is not None:
            m.diagonal(dim1=1, dim2=2).copy_(2 * g_squares)
        return torch.bmm(qk, m), None


class _AppliedAttention(torch.autograd.Function):
    """(attn (B, heads, d, d), v rows (B, N, C)) -> every head's ``A v`` (B, N, C), one product with the
    maps on the diagonal of a C x C matrix. Backward: ``g_v = g @ Bd(A)``, ``g_A`` the diagonal blocks of
    ``g^T v``."""

    @staticmethod
    def forward(ctx, attn, v):
        full = _block_diagonal(attn)
        ctx.save_for_backward(full, v)
        ctx.heads = attn.shape[1]
        return torch.bmm(v, full.transpose(1, 2))

    @staticmethod
    @once_differentiable
    def backward(ctx, g):
        full, v = ctx.saved_tensors
        g = g.contiguous()
        g_attn = _head_blocks(g, v, ctx.heads) if ctx.needs_input_grad[0] else None
        return g_attn, torch.bmm(g, full) if ctx.needs_input_grad[1] else None


def _native_input(qkv: torch.Tensor, heads: int, temperature: torch.Tensor) -> torch.Tensor | None:
    """The qkv the native kernels take at inference (float32, or bfloat16 read as it is: the maps are
    float32 either way), else None."""
    if (qkv.device.type != "cpu" or needs_grad(qkv, temperature) or exporting()
            or not plain_tensors(qkv, temperature)):
        return None
    return qkv if _attention_native.usable(qkv, heads) else None


def _dp_input(qkv: torch.Tensor, heads: int, temperature: torch.Tensor) -> bool:
    """Whether the AVX512-BF16 kernels take this bfloat16 qkv at inference (wide heads)."""
    return (qkv.device.type == "cpu" and qkv.dtype == torch.bfloat16 and not needs_grad(qkv, temperature)
            and not exporting() and plain_tensors(qkv, temperature) and _attention_native.dp_usable(qkv, heads))


def tlc_channel_attention_reference(qkv: torch.Tensor, heads: int, temperature: torch.Tensor, act: Activation,
                                    kernel: int | tuple[int, int]) -> torch.Tensor:
    """The reference attention on each TLC window, averaged where windows overlap (test oracle)."""
    return tlc_reference(lambda t: channel_attention_reference(t, heads, temperature, act), qkv, kernel)


def tlc_channel_attention(qkv: torch.Tensor, heads: int, temperature: torch.Tensor, act: Activation,
                          kernel: int | tuple[int, int]) -> torch.Tensor:
    """The reference's result: all windows through the native kernels where they apply, else the
    batched TLC around :func:`channel_attention`."""
    _check(qkv, heads)
    native = _native_input(qkv, heads, temperature)
    if native is None:
        return tlc(lambda t: channel_attention(t, heads, temperature, act), qkv, kernel)
    kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
    h, w = qkv.shape[2:]
    windows = tlc_windows(h, w, kh, kw)
    cov = None if len(windows) == 1 else inverse_coverage(h, w, kh, kw, qkv.device, torch.float32)
    return _attention_native.attention(native, heads, temperature, act, windows, cov).to(qkv.dtype)
