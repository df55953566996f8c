"""Custom operators of the three architectures, each with a plain reference implementation.

=========================  ===============================  ==================================
operator                   fast (used by the models)        reference (test oracle)
=========================  ===============================  ==================================
dynamic depth-wise conv    :func:`dynamic_dwconv`           :func:`dynamic_dwconv_reference`
focal separable attention  :func:`focal_attention`          :func:`focal_attention_reference`
test-time local converter  :func:`tlc`                      :func:`tlc_reference`
=========================  ===============================  ==================================

All are pure PyTorch (no CuPy, no compiled extension), run on CPU and CUDA, in float32,
bfloat16 and float16, and support autograd. :func:`use_reference_ops` switches every model to
the reference versions (used by the benchmarks to time fast against reference in one run).
"""
from __future__ import annotations

import contextlib

from lightsr.ops.dynamic_dwconv import dynamic_dwconv, dynamic_dwconv_reference
from lightsr.ops.focal_attention import (
    build_kernel_map,
    focal_attention,
    focal_attention_reference,
    patch_size_of,
)
from lightsr.ops.tlc import tlc, tlc_reference, tlc_windows

__all__ = [
    "build_kernel_map",
    "dynamic_dwconv",
    "dynamic_dwconv_reference",
    "focal_attention",
    "focal_attention_reference",
    "get_op",
    "patch_size_of",
    "tlc",
    "tlc_reference",
    "tlc_windows",
    "use_reference_ops",
]

_FAST = {"dynamic_dwconv": dynamic_dwconv, "focal_attention": focal_attention, "tlc": tlc}
_REFERENCE = {
    "dynamic_dwconv": dynamic_dwconv_reference,
    "focal_attention": focal_attention_reference,
    "tlc": tlc_reference,
}
_state = {"reference": False}


def get_op(name: str):
    """The implementation of op ``name`` currently selected (fast unless inside :func:`use_reference_ops`)."""
    return (_REFERENCE if _state["reference"] else _FAST)[name]


@contextlib.contextmanager
def use_reference_ops(enabled: bool = True):
    """Context manager: models call the reference ops instead of the fast ones while active."""
    previous = _state["reference"]
    _state["reference"] = enabled
    try:
        yield
    finally:
        _state["reference"] = previous
