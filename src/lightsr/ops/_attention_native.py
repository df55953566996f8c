"""ctypes glue of ``native/channel_attention.c``: the channel attention of heads of 8 channels at
inference, on the whole map or on TLC windows with their average (see the C file); float32, or
bfloat16 storage (CPU autocast) with float32 arithmetic. And of ``native/channel_attention_dp.c``:
wider heads (16 to 64 channels) on bfloat16 storage with the AVX512-BF16 dot products
(:func:`attention_dp`, where :func:`dp_usable`)."""
from __future__ import annotations

import ctypes
from typing import Callable, Sequence

import torch

from lightsr.ops import _native

__all__ = ["NATIVE_SIGNATURES", "attention", "attention_dp", "dp_usable", "usable"]


class _Geom(ctypes.Structure):
    _fields_ = [(name, ctypes.c_longlong) for name in ("B", "H", "W", "C", "nwin")]


class _DpGeom(ctypes.Structure):
    _fields_ = [(name, ctypes.c_longlong) for name in ("B", "H", "W", "C", "d", "R")]


_p, _i64 = ctypes.c_void_p, ctypes.c_longlong
NATIVE_SIGNATURES = {
    "lightsr_ca_dp_supported": [],
    "lightsr_ca_gram_dp_bf16": [_p, _p, _p, ctypes.POINTER(_DpGeom), _i64, _i64],
    "lightsr_ca_apply_dp_bf16": [_p, _p, _p, ctypes.POINTER(_DpGeom), _i64, _i64],
    **{f"lightsr_ca_gram_d8_{s}": [_p, _p, _p, _p, ctypes.POINTER(_Geom), _i64, _i64] for s in ("f32", "bf16")},
    **{f"lightsr_ca_apply_d8_{s}": [_p, _p, _p, _p, _p, ctypes.POINTER(_Geom), _i64, _i64] for s in ("f32", "bf16")},
}
_SUFFIX = {torch.float32: "f32", torch.bfloat16: "bf16"}


def usable(qkv: torch.Tensor, heads: int) -> bool:
    """float32 or bfloat16 CPU (B, 3C, H, W) dense channels-last, heads of 8 channels, and the library built."""
    return (qkv.device.type == "cpu" and qkv.dtype in _SUFFIX and qkv.dim() == 4 and qkv.numel() > 0
            and qkv.shape[1] == 3 * 8 * heads and qkv.permute(0, 2, 3, 1).is_contiguous()
            and _native.library() is not None)


def _ptr(t: torch.Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr())


def attention(qkv: torch.Tensor, heads: int, temperature: torch.Tensor, act: Callable[[torch.Tensor], torch.Tensor],
              windows: Sequence[tuple[int, int, int, int]], inverse_coverage: torch.Tensor | None) -> torch.Tensor:
    """(B, 3C, H, W) -> (B, C, H, W) channels-last in qkv's dtype (the Gram matrices, maps and sums in
    float32 either way): each window's attention, averaged where windows
    overlap (``inverse_coverage``: (H, W) or broadcastable to it; None for a single whole-map window).
    ``act`` gets the logits of all windows at once, window-major (task n * B + b), as the PyTorch TLC
    path stacks them."""
    b, c3, h, w = qkv.shape
    c, nwin = c3 // 3, len(windows)
    lib = _native.library()
    wins = torch.tensor(windows, dtype=torch.int64).reshape(-1).contiguous()
    geom = _Geom(b, h, w, c, nwin)
    tasks = nwin * b
    gram = torch.empty(tasks, heads, 8, 8)
    ss = torch.empty(tasks, 2 * c)
    args = (_ptr(qkv), _ptr(wins), _ptr(gram), _ptr(ss), geom)
    sfx = _SUFFIX[qkv.dtype]
    _native.run_rows(getattr(lib, f"lightsr_ca_gram_d8_{sfx}"), lambda _, t0, t1: (*args, t0, t1), tasks, min_rows=1)
    norms = ss.clamp_min(1e-24).sqrt()  # as channel_attention: |q|, |k| = max(L2 norm, 1e-12)
    qn, kn = norms[:, :c].view(tasks, heads, 8, 1), norms[:, c:].view(tasks, heads, 1, 8)
    attn = act(gram / (qn * kn) * temperature.float())
    at = attn.float().transpose(-1, -2).contiguous()
    cov = (torch.ones(h, w) if inverse_coverage is None else inverse_coverage.float().expand(1, 1, h, w)
           .reshape(h, w).contiguous())
    out = torch.empty((b, c, h, w), dtype=qkv.dtype, memory_format=torch.channels_last)
    args = (_ptr(qkv), _ptr(wins), _ptr(at), _ptr(cov), _ptr(out), geom)
    codes = _native.run_rows(getattr(lib, f"lightsr_ca_apply_d8_{sfx}"), lambda _, r0, r1: (*args, r0, r1), b * h, min_rows=1)
    if any(codes):
        raise MemoryError("channel attention: cannot allocate the native kernel's row buffer")
    return out


_TASK_PIXELS = 2048  # pixels per partial Gram matrix (whole rows): the split does not follow the thread count


def dp_usable(qkv: torch.Tensor, heads: int) -> bool:
    """bfloat16 CPU (B, 3C, H, W) dense channels-last with heads of 16, 32, 48 or 64 channels, the
    library built and the CPU with AVX512-BF16."""
    if qkv.device.type != "cpu" or qkv.dtype != torch.bfloat16 or qkv.dim() != 4 or qkv.numel() == 0:
        return False
    c = qkv.shape[1] // 3
    if qkv.shape[1] != 3 * c or c % heads or (c // heads) not in (16, 32, 48, 64):
        return False
    lib = _native.library()
    return lib is not None and bool(lib.lightsr_ca_dp_supported()) and qkv.permute(0, 2, 3, 1).is_contiguous()


def _pairs(attn: torch.Tensor) -> torch.Tensor:
    """(B, heads, d, d) float32 maps A -> bfloat16 (B, heads, d / 2, d, 2) with [.., p, c, :] =
    (A[c][2p], A[c][2p + 1]) (the kernel's pairs)."""
    b, heads, d, _ = attn.shape
    return attn.bfloat16().transpose(-1, -2).reshape(b, heads, d // 2, 2, d).transpose(-1, -2).contiguous()


def attention_dp(qkv: torch.Tensor, heads: int, temperature: torch.Tensor,
                 act: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """(B, 3C, H, W) bfloat16 -> (B, C, H, W) bfloat16 channels-last: the Gram matrices and sums of
    squares by bfloat16 dot products in float32, the maps in float32 (as the float32 path: ``act``
    gets the (B, heads, d, d) logits), ``A v`` with A rounded to bfloat16 (as autocast rounds a
    product's inputs) and float32 sums."""
    b, c3, h, w = qkv.shape
    c = c3 // 3
    d = c // heads
    lib = _native.library()
    rows_per_task = -(-_TASK_PIXELS // w)
    nblk = -(-h // rows_per_task)
    geom = _DpGeom(b, h, w, c, d, rows_per_task)
    gram = torch.empty(b, nblk, heads, d, d)
    ss = torch.empty(b, nblk, 2 * c)
    _check(_native.run_rows(lib.lightsr_ca_gram_dp_bf16, lambda _, t0, t1: (_ptr(qkv), _ptr(gram), _ptr(ss), geom,
                                                                           t0, t1), b * nblk, min_rows=1))
    norms = ss.sum(1).clamp_min(1e-24).sqrt()  # as channel_attention: |q|, |k| = max(L2 norm, 1e-12)
    qn, kn = norms[:, :c].view(b, heads, d, 1), norms[:, c:].view(b, heads, 1, d)
    attn = act(gram.sum(1) / (qn * kn) * temperature.float()).float()
    pairs = _pairs(attn)
    out = torch.empty((b, c, h, w), dtype=torch.bfloat16, memory_format=torch.channels_last)
    _check(_native.run_rows(lib.lightsr_ca_apply_dp_bf16, lambda _, r0, r1: (_ptr(qkv), _ptr(pairs), _ptr(out), geom,
                                                                            r0, r1), b * h, min_rows=1))
    return out


def _check(codes: list[int]) -> None:
    if any(codes):
        raise RuntimeError(f"channel attention (AVX512-BF16 kernels) failed with codes {codes}")
