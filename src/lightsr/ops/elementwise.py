"""The sum of two maps (LGUN's MLHA: a channel slice of its input plus the previous part's output).

* :func:`add_maps_reference` - ``a + b`` (the test oracle).
* :func:`add_maps` - at inference on bfloat16 CPU maps with evenly strided pixels (channels-last maps and
  their channel slices), one native pass into a dense channels-last map (aten's strided bfloat16 add
  took 1.5 ms for a 16 x 180 x 320 slice on a Zen 4 EPYC, the native pass 0.2-0.3 ms); elsewhere the
  reference.
"""
from __future__ import annotations

import torch

from lightsr.ops import _elementwise_native
from lightsr.ops._common import exporting, needs_grad, plain_tensors

__all__ = ["add_maps", "add_maps_reference"]


def add_maps_reference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return a + b


def add_maps(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The reference's result (bit-identical: one float32 add rounded to bfloat16)."""
    if (a.dtype == b.dtype == torch.bfloat16 and not needs_grad(a, b) and not exporting()
            and plain_tensors(a, b)):
        out = _elementwise_native.add_bf16(a, b)
        if out is not None:
            return out
    return add_maps_reference(a, b)
