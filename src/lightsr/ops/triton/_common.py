"""What the Triton kernels share: the tanh they fuse, launch sizes, argument checks.

Imported only when triton is installed (the package face, :mod:`lightsr.ops.triton`, imports the
kernel modules lazily).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

__all__ = ["DTYPES", "check_dtypes", "next_pow2", "tanh"]

DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def check_dtypes(*tensors: torch.Tensor | None) -> None:
    for t in tensors:
        if t is not None and t.dtype not in DTYPES:
            raise TypeError(f"the Triton kernels take float32 / bfloat16 / float16 tensors, got {t.dtype}")


def next_pow2(n: int, at_least: int = 16) -> int:
    """Smallest power of two >= max(n, at_least) (tile sides; ``tl.dot`` needs 16 or more)."""
    return max(at_least, triton.next_power_of_2(int(n)))


@triton.jit
def tanh(x):
    """tanh in float32 through exp (``tl`` has no tanh on every backend), exact to rounding."""
    e = tl.exp(-2.0 * tl.abs(x))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(x < 0, -t, t)
