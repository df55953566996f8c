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

In plain eager execution :func:`define_op`'s wrapper skips the custom op and calls the same
implementation (and backward) directly: see its docstring.
"""
from __future__ import annotations

import os
from typing import Callable

import torch

__all__ = ["autocast_dtype", "needs_grad", "plain_tensors", "strip_rows", "acc_dtype", "define_op", "like", "memory_format_of", "exporting", "HAS_CUSTOM_OP",
           "observed"]

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


_PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)  # subclasses (fake, functional, ...) take the custom op


def observed() -> bool:
    """A dispatch mode or torch-function mode is active that must see aten / custom ops (the MAC
    counter, fake-tensor tracing, ...). Modes marked ``lightsr_transparent = True`` (the upscaler's
    memory probe, which only counts the tensors allocated) do not count: under them the fast paths
    run as they would without, and are measured as such."""
    if torch._C._is_torch_function_mode_enabled():
        return True
    if not torch._C._len_torch_dispatch_stack():
        return False
    from torch.utils._python_dispatch import _get_current_dispatch_mode_stack

    return not all(getattr(m, "lightsr_transparent", False) for m in _get_current_dispatch_mode_stack())


def _plain_eager(args) -> bool:
    """True when a call can skip the custom-op machinery: eager mode, no dispatch mode active (such as
    ``FlopCounterMode`` or fake-tensor tracing), no profiler (profiles name the ``lightsr::`` ops), not
    compiling, and only plain tensors on a real device."""
    if observed():
        return False
    if torch.autograd._profiler_enabled():
        return False
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and compiler.is_compiling():
        return False
    for a in args:
        if isinstance(a, torch.Tensor) and (type(a) not in _PLAIN_TENSORS or a.device.type == "meta"):
            return False
    return True


def _autograd_function(name: str, forward: Callable, setup_context: Callable, backward: Callable):
    """The same forward / setup_context / backward as an ``autograd.Function`` (its ``apply``)."""
    attrs = {"forward": staticmethod(forward), "setup_context": staticmethod(setup_context),
             "backward": staticmethod(backward)}
    return type(f"{name}_function", (torch.autograd.Function,), attrs).apply


def define_op(
    name: str,
    schema_fn: Callable,
    fake_fn: Callable,
    setup_context: Callable | None = None,
    backward: Callable | None = None,
):
    """``torch.ops.lightsr.<name>``: ``schema_fn`` registered as a custom op with fake + autograd.

    The returned function calls the custom op whenever something looks at operators: a dispatch
    mode (``FlopCounterMode``, fake / meta tensors, tracing), the profiler or ``torch.compile``. In plain eager
    execution it calls the same implementation directly (through an ``autograd.Function`` with the
    same backward when gradients are needed): the same numbers, without the custom op's first-call
    cost (it imports ``torch._dynamo``: about 2 s of every ``lightsr upscale``) and its per-call overhead.
    ``call.custom_op`` is the registered op.

    On torch builds without ``torch.library.custom_op`` (< 2.4) only the direct path exists (MAC
    counting of the custom ops then needs a newer torch).
    """
    direct = schema_fn if backward is None else _autograd_function(name, schema_fn, setup_context, backward)
    if not HAS_CUSTOM_OP:  # pragma: no cover - old torch only
        return direct
    op = torch.library.custom_op(f"lightsr::{name}", mutates_args=())(schema_fn)
    op.register_fake(fake_fn)
    if backward is not None:
        op.register_autograd(backward, setup_context=setup_context)

    def call(*args):
        if _plain_eager(args) and (
            backward is not None  # autograd handled by the Function
            or not torch.is_grad_enabled()
            or not any(isinstance(a, torch.Tensor) and a.requires_grad for a in args)
        ):
            return direct(*args)
        return op(*args)

    call.__name__ = call.__qualname__ = name
    call.__doc__ = schema_fn.__doc__
    call.custom_op = op
    return call


def plain_tensors(*tensors) -> bool:
    """Plain tensors / parameters (no subclass, no fake tensor) and nothing observing the ops: a
    native kernel may read their memory directly."""
    if observed():
        return False
    return all(type(t) in (torch.Tensor, torch.nn.Parameter) for t in tensors)


def needs_grad(*tensors) -> bool:
    """Autograd would record an op on these tensors (``None`` entries are skipped)."""
    return torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in tensors)


def autocast_dtype(device_type: str) -> torch.dtype | None:
    """The autocast dtype active for ``device_type``, or None (also for devices without autocast: meta)."""
    try:
        return torch.get_autocast_dtype(device_type) if torch.is_autocast_enabled(device_type) else None
    except RuntimeError:
        return None
