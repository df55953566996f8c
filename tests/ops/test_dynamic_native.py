"""The native loops of the dynamic depth-wise convolution (canvas apply / gradients, the
channels-last forward and backward) against the float64 reference and the pure-PyTorch path: odd
sizes, batch > 1, group widths below, at and above one vector, bfloat16 inputs, threads."""
from __future__ import annotations

import pytest
import torch

import importlib

from lightsr.ops import _dynamic_native, _native, dynamic_dwconv_fused, dynamic_dwconv_fused_reference

dyn_module = importlib.import_module("lightsr.ops.dynamic_dwconv")

needs_native = pytest.mark.skipif(not _native.available(), reason=f"native kernels not built: {_native.build_error()}")


def _rel(a, b) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12)).item()


def _case(b, c, groups, k, ch, h, w, dtype=torch.float32):
    cl = torch.channels_last
    x = torch.randn(b, c, h, w).contiguous(memory_format=cl).to(dtype)
    hidden = torch.randn(b, ch, h, w).contiguous(memory_format=cl).to(dtype)
    weight = torch.randn(groups * k * k, ch, 1, 1) * 0.3
    bias = torch.randn(groups * k * k) * 0.1
    return x, hidden, weight, bias


# (batch, channels, groups, K, hidden, H, W): 1x1; tiny/light's 8 groups of 6 (interior pixels in pairs,
# the last pixels one at a time: their last vector would read past the tensor); groups wider than a
# vector; the full model's 15 groups (pairs apply groups in chunks of 4: 4, 4, 4, 3); odd widths
CASES = [(1, 48, 8, 7, 12, 1, 1), (2, 48, 8, 7, 12, 9, 13), (3, 20, 2, 5, 4, 6, 17), (2, 9, 3, 3, 5, 11, 7),
         (1, 16, 1, 7, 3, 3, 40), (2, 90, 15, 7, 22, 8, 21), (1, 12, 2, 3, 4, 5, 12), (2, 24, 4, 5, 6, 7, 16)]


@needs_native
@pytest.mark.parametrize("b,c,groups,k,ch,h,w", CASES)
def test_native_forward_and_gradients_match_reference(b, c, groups, k, ch, h, w):
    x, hidden, weight, bias = _case(b, c, groups, k, ch, h, w)
    assert _dynamic_native.usable_channels_last(x, hidden)
    leaves64 = [t.double().requires_grad_(True) for t in (x, hidden, weight, bias)]
    ref = dynamic_dwconv_fused_reference(*leaves64, k)
    g = torch.randn(ref.shape, dtype=torch.float64)
    ref.backward(g)
    leaves = [t.clone().requires_grad_(True) for t in (x, hidden, weight, bias)]
    out = dynamic_dwconv_fused(*leaves, k)
    out.backward(g.float())
    assert _rel(out, ref) < 2e-6
    for a, r in zip(leaves, leaves64):
        assert _rel(a.grad, r.grad) < 2e-6
    with torch.no_grad():
        assert _rel(dynamic_dwconv_fused(x, hidden, weight, bias, k), ref) < 2e-6


@needs_native
@pytest.mark.parametrize("b,c,groups,k,ch,h,w", CASES[1:3])
def test_native_equals_pytorch_path(b, c, groups, k, ch, h, w):
    x, hidden, weight, bias = _case(b, c, groups, k, ch, h, w)
    with torch.no_grad():
        fast = dynamic_dwconv_fused(x, hidden, weight, bias, k)
        with _native.use_native(False):
            plain = dynamic_dwconv_fused(x, hidden, weight, bias, k)
    assert _rel(fast, plain) < 1e-6


@needs_native
def test_native_bfloat16_inputs():
    x, hidden, weight, bias = _case(2, 48, 8, 7, 12, 10, 11, torch.bfloat16)
    with torch.no_grad():
        out = dynamic_dwconv_fused(x, hidden, weight, bias, 7)
        ref = dynamic_dwconv_fused_reference(x.double(), hidden.double(), weight.double(), bias.double(), 7)
    assert out.dtype == torch.bfloat16 and _rel(out, ref) < 1e-2


@needs_native
def test_native_threads_are_identical(outputs_per_thread_count):
    x, hidden, weight, bias = _case(2, 48, 8, 7, 12, 17, 9)
    outs = outputs_per_thread_count(lambda: dynamic_dwconv_fused(x, hidden, weight, bias, 7))
    assert torch.equal(outs[0], outs[1])


@pytest.mark.parametrize("native", [True, False])
@pytest.mark.parametrize("layout", ["channels_last", "nchw"])
def test_under_cpu_bf16_autocast(native, layout):
    """Under autocast the kernel-generating product must stay in the canvas' float32 (a bfloat16
    result read as float32 by the native loop crashed the process)."""
    x, hidden, weight, bias = _case(2, 48, 8, 7, 12, 9, 13)
    if layout == "nchw":
        x, hidden = x.contiguous(), hidden.contiguous()
    with torch.no_grad(), _native.use_native(native):
        ref = dynamic_dwconv_fused(x.bfloat16(), hidden.bfloat16(), weight, bias, 7)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = dynamic_dwconv_fused(x.bfloat16(), hidden.bfloat16(), weight, bias, 7)
    assert out.dtype == torch.bfloat16 and torch.isfinite(out.float()).all()
    assert _rel(out.float(), ref.float()) < 1e-2


def _reference_grads(x, hidden, weight, bias, g, k):
    leaves = [t.double().requires_grad_(True) for t in (x, hidden, weight, bias)]
    dynamic_dwconv_fused_reference(*leaves, k).backward(g.double())
    return [t.grad for t in leaves]


# the training shape (batch 8 of 48 x 48: 24 bands of 16 rows), bands across images, H < one band
BACKWARD_CASES = CASES + [(8, 48, 8, 7, 12, 48, 48), (3, 48, 8, 7, 12, 21, 37), (2, 12, 2, 3, 4, 17, 9)]


@needs_native
@pytest.mark.parametrize("b,c,groups,k,ch,h,w", BACKWARD_CASES)
def test_native_backward_matches_reference(b, c, groups, k, ch, h, w):
    """The channels-last backward (``native/dynamic_dwconv_bwd.c``) itself, with and without a bias."""
    x, hidden, weight, bias = _case(b, c, groups, k, ch, h, w)
    g = torch.randn(x.shape)
    ref = _reference_grads(x, hidden, weight, bias, g, k)
    out = _dynamic_native.fused_backward_channels_last(g, x, hidden, weight, bias, k, groups)
    for a, r in zip(out, ref):
        assert a.dtype == torch.float32 and _rel(a, r) < 2e-6
    assert out[0].is_contiguous(memory_format=torch.channels_last)
    gx, gh, gw, gb = _dynamic_native.fused_backward_channels_last(g, x, hidden, weight, None, k, groups)
    # the kernels' gradient does not depend on the bias; x's does (as with a zero bias)
    assert gb.numel() == 0 and torch.equal(gh, out[1]) and torch.equal(gw, out[2])
    assert _rel(gx, _reference_grads(x, hidden, weight, torch.zeros_like(bias), g, k)[0]) < 2e-6


@needs_native
def test_native_backward_equals_canvas_path(monkeypatch):
    """The op's backward on channels-last tensors takes the native pass; the canvas path (NCHW and
    no-native inputs) gives the same gradients."""
    x, hidden, weight, bias = _case(2, 48, 8, 7, 12, 19, 23)
    g = torch.randn(x.shape).contiguous(memory_format=torch.channels_last)
    calls = []
    real = _dynamic_native.fused_backward_channels_last
    monkeypatch.setattr(_dynamic_native, "fused_backward_channels_last", lambda *a: calls.append(1) or real(*a))
    fast = dyn_module._fused_backward_impl(g, x, hidden, weight, bias, 7)
    assert calls == [1]
    monkeypatch.setattr(_dynamic_native, "usable_channels_last", lambda *a: False)
    canvas = dyn_module._fused_backward_impl(g, x, hidden, weight, bias, 7)
    assert calls == [1]
    for a, r in zip(fast, canvas):
        assert _rel(a, r) < 2e-6


@needs_native
def test_native_backward_threads_are_identical(outputs_per_thread_count):
    """Bands are summed in band order: the same bits on 1 and 3 threads."""
    x, hidden, weight, bias = _case(4, 48, 8, 7, 12, 37, 11)
    g = torch.randn(x.shape)
    outs = outputs_per_thread_count(
        lambda: _dynamic_native.fused_backward_channels_last(g, x, hidden, weight, bias, 7, 8))
    for a, b in zip(*outs):
        assert torch.equal(a, b)


@needs_native
def test_native_backward_under_bf16_autocast():
    """bfloat16 activations: gradients in their dtypes, close to the float64 reference of the same values."""
    x, hidden, weight, bias = _case(2, 48, 8, 7, 12, 9, 13, torch.bfloat16)
    leaves = [t.clone().requires_grad_(True) for t in (x, hidden, weight, bias)]
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = dynamic_dwconv_fused(*leaves, 7)
    g = torch.randn(out.shape)
    out.float().backward(g)
    ref = _reference_grads(x, hidden, weight, bias, g, 7)
    for a, r in zip(leaves, ref):
        assert a.grad.dtype == a.dtype and _rel(a.grad.float(), r) < 1e-2
