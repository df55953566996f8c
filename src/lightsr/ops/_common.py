"""Helpers shared by the fast ops: row-strip sizing, accumulation dtype, op registration.

The fast ops are pure PyTorch. On CPU they work on horizontal strips of rows so that the
accumulator, the input window and the per-pixel weights of one strip stay in the L2 cache
while the taps are accumulated in place (``addcmul_``): no tensor larger than the output is
ever allocated. On GPUs a single strip (the whole image) is used: there the cost is the number
of kernel launches, not the cache.

Every fast op is registered as a ``torch.library`` custom op (namespace ``lightsr``) with a
fake (meta) implementation and a hand-written backward. That gives three things:

* ``torch.utils.flop_counter.FlopCounterMode`` sees the op as *one* operator, to which
  :mod:`lightsr.complexity` attaches an exact MAC formula (the aten ops inside are not
  counted twice);
* MACs can be counted on the ``meta`` device without computing anything;
* autograd uses the hand-written backward (in-place accumulation, no K*K-times temporaries).
"""
from __future__ import annotations

import os
from typing import Callable

import torch

__all__ = ["strip_rows", "acc_dtype", "define_op", "like", "memory_format_of", "exporting", "HAS_CUSTOM_OP"]

HAS_CUSTOM_OP = hasattr(torch.library, "custom_op")

# Elements of one strip of the output on CPU (tuned on a 1 MiB-L2 EPYC with
# benchmarks/ops_speed.py --sweep-strip; 2**19 float32 = 2 MiB).
_STRIP_ELEMENTS = int(os.environ.get("LIGHTSR_STRIP_ELEMENTS", str(2**19)))


def strip_rows(x: torch.Tensor, rows: int, elements_per_row: int) -> int:
    """Rows per strip: the whole image on accelerators, about ``_STRIP_ELEMENTS`` outputs on CPU."""
    if x.device.type != "cpu" or _STRIP_ELEMENTS <= 0:
        return max(rows, 1)
    return max(1, min(rows, _STRIP_ELEMENTS // max(1, elements_per_row)))


def exporting() -> bool:
    """True while ``torch.jit.trace`` / ``torch.onnx.export`` / ``torch.export`` records the model.

    The fast wrappers then run the reference composite of plain aten ops, which the exporters
    understand (an opaque custom op would block ONNX export); eager execution is unaffected.
    """
    if torch.jit.is_tracing() or torch.jit.is_scripting():
        return True
    onnx = getattr(torch, "onnx", None)
    if onnx is not None and getattr(onnx, "is_in_onnx_export", lambda: False)():
        return True
    compiler = getattr(torch, "compiler", None)
    return bool(compiler is not None and getattr(compiler, "is_exporting", lambda: False)())


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """channels_last when ``x``'s channel axis is the densest one (also for channel slices of a
    channels-last tensor), else contiguous (NCHW)."""
    if x.dim() == 4 and x.shape[1] > 1 and x.stride(1) == 1 and x.stride(3) != 1:
        return torch.channels_last
    return torch.contiguous_format


def like(x: torch.Tensor) -> torch.Tensor:
    """Uninitialised tensor shaped like ``x`` in ``x``'s memory format (what the ops return)."""
    return torch.empty(x.shape, dtype=x.dtype, device=x.device, memory_format=memory_format_of(x))


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """Accumulate float16/bfloat16 in float32 (as cuDNN/oneDNN do); other dtypes as they are."""
    return torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype


def define_op(
    name: str,
    schema_fn: Callable,
    fake_fn: Callable,
    setup_context: Callable | None = None,
    backward: Callable | None = None,
):
    """Register ``schema_fn`` as ``torch.ops.lightsr.<name>`` (a custom op with fake + autograd).

    On torch builds without ``torch.library.custom_op`` (< 2.4) the plain function is returned
    wrapped in an ``autograd.Function`` so that the ops still work (MAC counting of the custom
    ops then needs a newer torch).
    """
    if HAS_CUSTOM_OP:
        op = torch.library.custom_op(f"lightsr::{name}", mutates_args=())(schema_fn)
        op.register_fake(fake_fn)
        if backward is not None:
            op.register_autograd(backward, setup_context=setup_context)
        return op
    if backward is None:  # pragma: no cover - old torch only
        return schema_fn

    class _Fn(torch.autograd.Function):  # pragma: no cover - old torch only
        @staticmethod
        def forward(ctx, *args):
            out = schema_fn(*args)
            setup_context(ctx, args, out)
            return out

        @staticmethod
        def backward(ctx, *grads):
            return backward(ctx, *grads)

    return _Fn.apply
