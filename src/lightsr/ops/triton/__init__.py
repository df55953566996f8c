"""Triton kernels (forward and backward) of lightsr's custom ops, shaped for GPUs.

==================================  =====================================  =============================
op (same contract as)               Triton function                        launches: forward / backward
==================================  =====================================  =============================
:func:`lightsr.ops.dynamic_dwconv`  :func:`dynamic_dwconv`                 1 / 2
... fused with its 1x1 kernel       :func:`dynamic_dwconv_fused`           1 / 2 + 2 sums
:func:`lightsr.ops.focal_attention` :func:`focal_attention` (h, v, tanh)   1 / 1
:func:`lightsr.ops.layer_norm_2d`   :func:`layer_norm_2d`                  1 / 1 + 2 sums
==================================  =====================================  =============================

Each is a ``torch.autograd.Function`` whose forward and backward launch the kernels; float32,
bfloat16 and float16 inputs, float32 accumulation, any memory layout. The CPU implementations in
:mod:`lightsr.ops` stay the fallback and the reference. ``triton`` is an optional extra
(``pip install "lightsr[triton]"``); this face imports it only when a kernel is first used.

:func:`available` says whether the kernels can run here: triton importable and a CUDA device, or
the Triton interpreter (``TRITON_INTERPRET=1``, set before triton is imported: the kernels then
run on CPU tensors, slowly; the tests use it). :func:`wants` is the dispatch test for a call:
true for CUDA tensors of a supported dtype when the kernels are available, not switched off
(:func:`use_triton` or ``LIGHTSR_TRITON=0``) and no dispatch mode (fake tensors, FLOP counting)
is active.
"""
from __future__ import annotations

import contextlib
import importlib
import importlib.util
import os

import torch

__all__ = [
    "available",
    "dynamic_dwconv",
    "dynamic_dwconv_fused",
    "enabled",
    "focal_attention",
    "interpreting",
    "layer_norm_2d",
    "use_triton",
    "wants",
]

_LAZY = {
    "dynamic_dwconv": "lightsr.ops.triton.dynamic_conv",
    "dynamic_dwconv_fused": "lightsr.ops.triton.dynamic_conv",
    "focal_attention": "lightsr.ops.triton.focal",
    "layer_norm_2d": "lightsr.ops.triton.norm",
}
_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_state = {"enabled": os.environ.get("LIGHTSR_TRITON", "1") != "0", "available": None}


def interpreting() -> bool:
    """True when ``TRITON_INTERPRET=1``: kernels run in triton's interpreter on CPU tensors."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def available() -> bool:
    """triton is installed and the kernels can run: a CUDA device, or the interpreter."""
    if _state["available"] is None:
        _state["available"] = importlib.util.find_spec("triton") is not None
    return _state["available"] and (interpreting() or torch.cuda.is_available())


def enabled() -> bool:
    """Whether the dispatch may pick the kernels (``LIGHTSR_TRITON=0`` or :func:`use_triton` off it)."""
    return _state["enabled"]


@contextlib.contextmanager
def use_triton(on: bool = True):
    """Context manager: switch the Triton dispatch on or off (benchmarks compare both in one run)."""
    previous = _state["enabled"]
    _state["enabled"] = bool(on)
    try:
        yield
    finally:
        _state["enabled"] = previous


_PLAIN = (torch.Tensor, torch.nn.Parameter)


def wants(*tensors: torch.Tensor | None) -> bool:
    """The dispatch test: every given tensor a plain CUDA tensor of a supported dtype, the kernels
    available and enabled, no dispatch mode active (fake tensors, FLOP counters keep the ops)."""
    if not _state["enabled"] or torch._C._len_torch_dispatch_stack():
        return False
    for t in tensors:
        if t is not None and (type(t) not in _PLAIN or not t.is_cuda or t.dtype not in _DTYPES):
            return False
    return available()


def __getattr__(name: str):
    if name in _LAZY:
        if importlib.util.find_spec("triton") is None:
            raise ImportError(f"lightsr.ops.triton.{name} needs triton: pip install 'lightsr[triton]'")
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
