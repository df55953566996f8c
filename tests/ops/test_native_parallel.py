"""``run_rows``: the parts of a native call in an OpenMP region of ``parallel.c`` (on torch's own
OpenMP threads) or on Python threads (a library built without OpenMP) give the same numbers, for
every family of entry points: depth-wise forward / gate / weight gradient, the dynamic convolution
(canvas loops and the fused forward), the focal attention."""
from __future__ import annotations

import ctypes

import pytest
import torch

from lightsr.ops import _native, depthwise_conv2d, gated_depthwise_conv2d
from lightsr.ops.dynamic_dwconv import dynamic_dwconv, dynamic_dwconv_fused

needs_native = pytest.mark.skipif(not _native.available(), reason=f"native kernels not built: {_native.build_error()}")


@pytest.fixture
def three_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(3)  # three parts (more than this machine's cores: the split itself is tested)
    yield
    torch.set_num_threads(before)


def _all_families(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)  # the Conv2d initialisation below
    cl = torch.channels_last
    x = torch.randn(2, 6, 13, 11, generator=g).contiguous(memory_format=cl).requires_grad_(True)
    w = torch.randn(6, 1, 3, 3, generator=g, requires_grad=True)
    y = gated_depthwise_conv2d(x, w, None, (1, 1), "gelu") + 0
    z = depthwise_conv2d(x, w, None, (1, 1))
    (y.square().sum() + z.sum()).backward()
    out = [y.detach(), z.detach(), x.grad, w.grad]
    xf = torch.randn(1, 8, 9, 14, generator=g).contiguous(memory_format=cl)
    hf = torch.randn(1, 4, 9, 14, generator=g).contiguous(memory_format=cl)
    conv = torch.nn.Conv2d(4, 2 * 9, 1)
    with torch.no_grad():
        out.append(dynamic_dwconv_fused(xf, hf, conv.weight, conv.bias, 3))
    xs = torch.randn(2, 4, 10, 12, generator=g).requires_grad_(True)
    ks = torch.randn(2, 2 * 9, 10, 12, generator=g).requires_grad_(True)
    o = dynamic_dwconv(xs, ks, 3)
    o.square().sum().backward()
    out += [o.detach(), xs.grad, ks.grad]
    if _native.available():
        a = torch.randn(2, 6, 9, 10, generator=g)
        k = torch.randn(2, 6 * 3, 9, 10, generator=g)
        out.append(_native.fsa_forward(a, k, [-1, 0, 1], [1, 1, 1], -1))
        out += list(_native.fsa_backward(torch.randn(2, 6, 9, 10, generator=g), a, k, [-1, 0, 1], [1, 1, 1], -1))
    return out


@needs_native
def test_openmp_and_python_threads_agree(three_threads, monkeypatch):
    with_omp = _all_families()
    monkeypatch.setitem(_native._state, "openmp", False)
    with_pool = _all_families()
    for a, b in zip(with_omp, with_pool):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)  # weight gradients: partial sums per part


@needs_native
def test_openmp_driver_built_where_torch_uses_openmp():
    if _native._torch_uses_openmp():
        assert _native._state["openmp"], "the library was built without -fopenmp although torch uses OpenMP"


def test_words():
    assert _native._word(None) == 0 and _native._word(7) == 7
    buf = (ctypes.c_longlong * 2)(1, 2)
    assert _native._word(buf) == ctypes.addressof(buf)
    assert _native._word(ctypes.c_void_p(1234)) == 1234
    with pytest.raises(TypeError):
        _native._word(1.5)
