"""The native channels-last LayerNorm (inference, and float32 training) against the float64 formula:
channel counts below, at and between vector widths, 1x1 and odd sizes, batch > 1, threads; and where
it must step aside."""
from __future__ import annotations

import pytest
import torch

from lightsr.ops import (
    _layer_norm_native,
    _native,
    layer_norm_2d,
    layer_norm_2d_reference,
    layer_norm_2d_residual,
    layer_norm_2d_residual_reference,
)

needs_native = pytest.mark.skipif(not _native.available(), reason=f"native kernels not built: {_native.build_error()}")


def _case(b, c, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(b, c, h, w, generator=g) * 3 + 1).contiguous(memory_format=torch.channels_last)
    return x, torch.randn(c, generator=g), torch.randn(c, generator=g)


@needs_native
@pytest.mark.parametrize("b,c,h,w", [(1, 1, 1, 1), (1, 3, 1, 1), (2, 8, 5, 3), (1, 48, 9, 13), (3, 90, 7, 11),
                                     (2, 64, 16, 16), (1, 13, 2, 31)])
def test_native_matches_the_formula(b, c, h, w):
    x, weight, bias = _case(b, c, h, w)
    assert _layer_norm_native.usable(x, weight, bias)
    with torch.no_grad():
        out = layer_norm_2d(x, weight, bias, 1e-5)
    ref = layer_norm_2d_reference(x.double(), weight.double(), bias.double(), 1e-5)
    assert out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out.double(), ref, atol=2e-5, rtol=1e-5)


@needs_native
def test_native_equals_aten_and_is_thread_independent(outputs_per_thread_count):
    x, weight, bias = _case(2, 48, 17, 23, seed=1)
    outs = outputs_per_thread_count(lambda: layer_norm_2d(x, weight, bias))
    assert torch.equal(outs[0], outs[1])
    with _native.use_native(False), torch.no_grad():
        aten = layer_norm_2d(x, weight, bias)
    torch.testing.assert_close(outs[0], aten, atol=1e-5, rtol=1e-5)


def test_training_and_other_layouts_take_aten(monkeypatch):
    """A gradient, an NCHW tensor, a channel slice or bfloat16: never the native inference forward."""
    def boom(*a, **k):
        raise AssertionError("native LayerNorm used")

    monkeypatch.setattr(_layer_norm_native, "layer_norm_rows", boom)
    x, weight, bias = _case(1, 16, 6, 7, seed=2)
    weight.requires_grad_(True)
    out = layer_norm_2d(x, weight, bias)
    out.sum().backward()
    assert weight.grad is not None
    with torch.no_grad():
        layer_norm_2d(x.contiguous(), weight, bias)
        layer_norm_2d(torch.randn(1, 32, 6, 7).contiguous(memory_format=torch.channels_last)[:, :16], weight, bias)
        layer_norm_2d(x.bfloat16(), weight.bfloat16(), bias.bfloat16())


@needs_native
@pytest.mark.parametrize("b,c,h,w", [(1, 1, 1, 1), (2, 8, 5, 3), (1, 48, 9, 13), (3, 90, 7, 11), (1, 13, 2, 31)])
def test_native_bf16_rows_match_aten_mixed_precision(b, c, h, w):
    """bfloat16 rows with float32 weight and bias (what autocast hands the norm): float32 arithmetic,
    the result rounded once to bfloat16, as aten's mixed-precision kernel (at most one bf16 step apart)."""
    x, weight, bias = _case(b, c, h, w, seed=3)
    x = x.bfloat16()
    assert _layer_norm_native.usable(x, weight, bias)
    with torch.no_grad():
        out = layer_norm_2d(x, weight, bias, 1e-5)
        with _native.use_native(False):
            aten = layer_norm_2d(x, weight, bias, 1e-5)
    ref = layer_norm_2d_reference(x.double(), weight.double(), bias.double(), 1e-5)
    assert out.dtype == aten.dtype == torch.bfloat16 and out.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=2**-8)  # one rounding of the exact value
    torch.testing.assert_close(out, aten, atol=1e-5, rtol=2**-7)


@needs_native
@pytest.mark.parametrize("b,c,h,w", [(1, 1, 1, 1), (2, 8, 5, 3), (1, 64, 9, 13), (1, 13, 2, 31)])
def test_native_float32_rows_to_bf16_under_autocast(b, c, h, w):
    """Under CPU bf16 autocast a float32 map (LAMNet's residual stream) is normalised straight into
    bfloat16 rows: bit-identical to the float32 result rounded; outside autocast float32 as before."""
    x, weight, bias = _case(b, c, h, w, seed=4)
    with torch.no_grad():
        plain = layer_norm_2d(x, weight, bias, 1e-5)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto = layer_norm_2d(x, weight, bias, 1e-5)
    assert plain.dtype == torch.float32 and auto.dtype == torch.bfloat16
    assert auto.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(auto, plain.bfloat16())


def _train(fn, x, weight, bias, gy):
    leaves = [t.detach().clone().requires_grad_(True) for t in (x, weight, bias)]
    y = fn(*leaves, 1e-5)
    y.backward(gy)
    return [y.detach()] + [t.grad for t in leaves]


@needs_native
@pytest.mark.parametrize("b,c,h,w", [(1, 1, 1, 1), (1, 3, 1, 1), (2, 8, 5, 3), (1, 48, 9, 13), (3, 90, 7, 11),
                                     (2, 64, 16, 16), (1, 13, 2, 31), (2, 48, 23, 29)])
def test_native_training_matches_the_formula(b, c, h, w, monkeypatch):
    """Values and the x, weight and bias gradients, rows in one band and across bands (256 rows each)."""
    calls = []
    apply = _layer_norm_native.TrainedLayerNorm.apply
    monkeypatch.setattr(_layer_norm_native.TrainedLayerNorm, "apply", lambda *a: calls.append(1) or apply(*a))
    x, weight, bias = _case(b, c, h, w, seed=3)
    weight, bias = weight.view(1, c, 1, 1), bias.view(1, c, 1, 1)  # LAMNet's parameter shape
    gy = torch.randn(b, c, h, w)
    got = _train(layer_norm_2d, x, weight, bias, gy)
    want = _train(layer_norm_2d_reference, x.double(), weight.double(), bias.double(), gy.double())
    assert calls
    assert got[0].is_contiguous(memory_format=torch.channels_last) and got[2].shape == weight.shape
    for a, r in zip(got, want):
        torch.testing.assert_close(a.double(), r, atol=1e-4 * max(1.0, r.abs().max().item()), rtol=1e-4)


@needs_native
def test_native_training_is_thread_independent():
    x, weight, bias = _case(2, 48, 17, 23, seed=4)
    gy = torch.randn_like(x)
    threads, outs = torch.get_num_threads(), []
    try:
        for n in (1, 3):
            torch.set_num_threads(n)
            outs.append(_train(layer_norm_2d, x, weight, bias, gy))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(*outs))


def test_autocast_and_bfloat16_training_keep_aten(monkeypatch):
    monkeypatch.setattr(_layer_norm_native.TrainedLayerNorm, "apply", lambda *a: (_ for _ in ()).throw(AssertionError))
    x, weight, bias = _case(1, 16, 6, 7, seed=5)
    weight.requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        layer_norm_2d(x, weight, bias).float().sum().backward()
    layer_norm_2d(x.bfloat16(), weight, bias).float().sum().backward()
    assert weight.grad is not None


def _train_pair(fn, x, weight, bias, gy, gr, use=(True, True)):
    """Outputs and gradients of a pre-norm pair: loss = <gy, y> + <gr, residual * 3> (each term when used)."""
    leaves = [t.detach().clone().requires_grad_(True) for t in (x, weight, bias)]
    y, r = fn(*leaves, 1e-5)
    loss = 0
    if use[0]:
        loss = loss + (y * gy).sum()
    if use[1]:
        loss = loss + (r * 3 * gr).sum()
    loss.backward()
    return [y.detach(), r.detach()] + [t.grad for t in leaves]


@needs_native
@pytest.mark.parametrize("b,c,h,w", [(1, 1, 1, 1), (2, 8, 5, 3), (3, 90, 7, 11), (2, 48, 23, 29)])
@pytest.mark.parametrize("use", [(True, True), (True, False), (False, True)])
def test_native_pre_norm_pair_matches_the_formula(b, c, h, w, use, monkeypatch):
    """``layer_norm_2d_residual``: (LN(x), x) with x's gradient from both outputs summed in the norm's
    native backward; either output left unused (its gradient None: no zero map)."""
    calls = []
    apply = _layer_norm_native.TrainedLayerNormResidual.apply
    monkeypatch.setattr(_layer_norm_native.TrainedLayerNormResidual, "apply", lambda *a: calls.append(1) or apply(*a))
    x, weight, bias = _case(b, c, h, w, seed=6)
    gy, gr = torch.randn(b, c, h, w), torch.randn(b, c, h, w)
    got = _train_pair(layer_norm_2d_residual, x, weight, bias, gy, gr, use)
    want = _train_pair(layer_norm_2d_residual_reference, x.double(), weight.double(), bias.double(), gy.double(),
                       gr.double(), use)
    assert calls
    assert torch.equal(got[1], x)
    for a, r in zip(got, want):
        if r is None:
            assert a is None or not a.any()
            continue
        torch.testing.assert_close(a.double(), r, atol=1e-4 * max(1.0, r.abs().max().item()), rtol=1e-4)


def test_pre_norm_pair_off_the_native_path_returns_x_itself():
    x, weight, bias = _case(1, 16, 6, 7, seed=7)
    with torch.no_grad():
        y, r = layer_norm_2d_residual(x, weight, bias)
    assert r is x
    torch.testing.assert_close(y, layer_norm_2d(x, weight, bias))
