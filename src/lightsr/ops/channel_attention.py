"""Transposed ("channel") self-attention of DLGSANet's SparseGSA and LGUN's DGSA.

Per image and head, with q, k, v the head's ``d`` channels over all ``N`` pixels:

    A   = act( (q / |q|)^T (k / |k|) * temperature )     (d x d; |.| the L2 norm over the pixels)
    out = A v                                             (d channels per pixel)

* :func:`channel_attention_reference` - the formula as the official code writes it: q, k, v as
  (B, heads, d, N) rows (an NCHW copy), ``F.normalize`` and two batched products.
* :func:`channel_attention` - on channels-last input, the same numbers without any layout copy:
  q, k, v stay (B, N, 3C) pixel rows; the norms come from one product and sum and divide the small
  d x d Gram matrix instead of the (d, N) rows; each head's Gram matrix is one product reading the
  rows in place; the heads' maps are placed on the diagonal of one C x C matrix so that ``A v``
  for all heads is a single product whose output already is channels-last (C x C instead of
  heads x d x d multiply-adds per pixel there: one product instead of ``heads`` strided ones).
  NCHW input runs the reference.

``act`` maps the (B, heads, d, d) logits to the attention (ReLU in SparseGSA, top-k softmax mixtures
in DGSA); it is applied to the same tensor in both paths.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from lightsr.ops._common import exporting

__all__ = ["channel_attention", "channel_attention_reference"]

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
    if qkv.dtype in (torch.bfloat16, torch.float16) or torch.is_autocast_enabled(qkv.device.type):
        # reduced precision (CPU autocast): the maps in float32 - top-k selections and ReLU sparsity
        # flip on bf16-rounded logits (LGUN's Set5 PSNR moved by 0.02 dB); a copy of q, k, v
        with torch.autocast(qkv.device.type, enabled=False):
            return _attention_rows(qkv.float(), heads, temperature.float(), act).to(qkv.dtype)
    return _attention_rows(qkv, heads, temperature, act)


def _attention_rows(qkv: torch.Tensor, heads: int, temperature: torch.Tensor, act: Activation) -> torch.Tensor:
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
    gram = torch.stack([q[..., i * d:(i + 1) * d].transpose(1, 2) @ k[..., i * d:(i + 1) * d]
                        for i in range(heads)], dim=1)  # (B, heads, d, d)
    attn = act(gram / (qn * kn) * temperature)
    out = v @ _block_diagonal(attn).transpose(1, 2)  # (B, N, C): every head's A v
    return out.view(b, h, w, c).permute(0, 3, 1, 2)
