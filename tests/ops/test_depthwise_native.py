"""The native depth-wise convolution (with and without the fused FFN gates) and the 1x1 convolution
as a matrix product, against their references: values and every gradient, odd sizes (1x1, sizes
that are no multiple of anything), batch > 1, channel counts with and without a vector tail,
channel slices, dilation, threads, bfloat16 storage and CPU bf16 autocast."""
from __future__ import annotations

import pytest
import torch

from lightsr.ops import (
    _native,
    depthwise_conv2d,
    depthwise_conv2d_reference,
    gated_depthwise_conv2d,
    gated_depthwise_conv2d_reference,
    pointwise_conv,
    pointwise_conv_reference,
)
from lightsr.ops import _depthwise_native

needs_native = pytest.mark.skipif(not _native.available(), reason=f"native kernels not built: {_native.build_error()}")

SIZES = [(1, 1), (1, 23), (7, 9), (17, 30), (3, 101)]  # 101 columns: two 48-column chunks of the 3x3 kernel and a rest


@pytest.fixture(autouse=True)
def _native_not_onednn(monkeypatch):
    """These tests are about the native kernel: at inference on AVX-512 CPUs ``depthwise_conv2d``
    hands some shapes to oneDNN (tested in test_onednn_preference_*)."""
    from lightsr.ops import depthwise_conv

    monkeypatch.setattr(depthwise_conv, "onednn_preferred", lambda *a: False)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12)).item()


def _input(b, c, h, w, layout="channels_last"):
    if layout == "channel_slice":  # the second half of a channels-last tensor's channels (LAMNet's chunk)
        return torch.randn(b, 2 * c, h, w).contiguous(memory_format=torch.channels_last)[:, c:]
    return torch.randn(b, c, h, w).contiguous(memory_format=torch.channels_last)


def _grads(fn, tensors, g):
    leaves = [t.detach().clone(memory_format=torch.preserve_format).requires_grad_(True) for t in tensors]
    out = fn(*leaves)
    out.backward(g.to(out.dtype))
    return out.detach(), [t.grad for t in leaves]


def _compare(fast, ref, tensors, tol=1e-5):
    """fast vs the float64 reference: output and the gradient of every tensor."""
    with torch.no_grad():
        shape = ref(*[t.double() for t in tensors]).shape
    g = torch.randn(shape, dtype=torch.float64)
    out_r, grads_r = _grads(ref, [t.double() for t in tensors], g)
    out_f, grads_f = _grads(fast, tensors, g)
    assert out_f.shape == out_r.shape and _rel(out_f, out_r) < tol
    for a, b in zip(grads_f, grads_r):
        assert _rel(a, b) < tol
    return out_f


@needs_native
@pytest.mark.parametrize("h,w", SIZES)
@pytest.mark.parametrize("b,c,kernel,dilation", [(2, 12, (7, 7), (1, 1)), (3, 40, (3, 3), (1, 1)),
                                                  (1, 32, (1, 23), (1, 1)), (2, 32, (23, 1), (1, 1)),
                                                  (2, 16, (5, 5), (2, 2)), (1, 5, (3, 3), (1, 1)),
                                                  (1, 20, (9, 9), (2, 2)), (2, 40, (1, 7), (1, 1)), (2, 36, (5, 3), (1, 1))])
@pytest.mark.parametrize("layout", ["channels_last", "channel_slice"])
def test_depthwise_native_matches_reference(b, c, kernel, dilation, h, w, layout):
    pad = (dilation[0] * (kernel[0] - 1) // 2, dilation[1] * (kernel[1] - 1) // 2)
    x, wt, bias = _input(b, c, h, w, layout), torch.randn(c, 1, *kernel), torch.randn(c)
    assert _depthwise_native.supported(x, wt, pad, dilation)
    out = _compare(lambda x, w, b: depthwise_conv2d(x, w, b, pad, dilation),
                   lambda x, w, b: depthwise_conv2d_reference(x, w, b, pad, dilation), [x, wt, bias])
    assert out.is_contiguous(memory_format=torch.channels_last)


@needs_native
@pytest.mark.parametrize("h,w", SIZES)
@pytest.mark.parametrize("b,c", [(2, 192), (3, 24), (1, 10)])
@pytest.mark.parametrize("gate", ["gelu", "dual"])
@pytest.mark.parametrize("bias", [True, False])
def test_gated_native_matches_reference(b, c, h, w, gate, bias):
    x, wt = _input(b, c, h, w), torch.randn(c, 1, 3, 3) * 0.3
    tensors = [x, wt] + ([torch.randn(c)] if bias else [])

    def fast(x, w, b=None):
        return gated_depthwise_conv2d(x, w, b, (1, 1), gate)

    def ref(x, w, b=None):
        return gated_depthwise_conv2d_reference(x, w, b, (1, 1), gate)

    out = _compare(fast, ref, tensors)
    assert out.shape[1] == (c // 2 if gate == "gelu" else c)
    with torch.no_grad():  # inference: the pre-gate output is not kept, same values
        assert torch.equal(fast(*tensors), out)


@needs_native
@pytest.mark.parametrize("gate", ["gelu", "dual"])
@pytest.mark.parametrize("c", [2, 20, 96])
def test_gate_backward_over_the_whole_float_range(gate, c):
    """The vectorised GELU derivative (rational erf, polynomial exp) against float64 autograd for values
    from -30 to 30 (past both clamps) and in the vector lanes and the scalar tail alike."""
    from lightsr.ops.depthwise_conv import apply_gate

    n = 4096
    d = (torch.linspace(-30, 30, n * c).view(1, n, c)[:, torch.randperm(n)].view(1, 64, n // 64, c)
         .permute(0, 3, 1, 2).contiguous(memory_format=torch.channels_last))
    gy = torch.randn(1, c // 2 if gate == "gelu" else c, 64, n // 64).contiguous(memory_format=torch.channels_last)
    gd = _depthwise_native.gate_backward(gy, d, _depthwise_native.GATES[gate])
    d64 = d.double().requires_grad_(True)
    apply_gate(d64, gate).backward(gy.double())
    torch.testing.assert_close(gd.double(), d64.grad, rtol=1e-5, atol=1e-6 * d64.grad.abs().max().item())


@needs_native
def test_depthwise_native_threads_are_bit_identical():
    x, wt, bias = _input(2, 24, 33, 17), torch.randn(24, 1, 3, 3), torch.randn(24)
    threads = torch.get_num_threads()
    try:
        outs = []
        for n in (1, 3):
            torch.set_num_threads(n)
            outs.append(_grads(lambda x, w, b: gated_depthwise_conv2d(x, w, b, (1, 1), "gelu"), [x, wt, bias],
                               torch.ones(2, 12, 33, 17)))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(outs[0][0], outs[1][0]) and torch.equal(outs[0][1][0], outs[1][1][0])
    # weight gradients are sums of per-thread partial sums: equal up to rounding
    assert _rel(outs[0][1][1], outs[1][1][1]) < 1e-6


@needs_native
@pytest.mark.parametrize("gate,k,dil", [(None, 3, 1), ("gelu", 3, 1), ("dual", 3, 1), (None, 5, 2), (None, 7, 1)])
def test_depthwise_native_bfloat16(gate, k, dil):
    """bfloat16 storage, float32 arithmetic: within bfloat16 rounding of the float32 result, and
    under CPU bf16 autocast a float32 input is read as bfloat16 (the 3 x 3 kernel and the generic one)."""
    x, wt, bias = _input(2, 16, 9, 37), torch.randn(16, 1, k, k) * 0.3, torch.randn(16)
    pad = (dil * (k // 2),) * 2

    def run(x):
        if gate is None:
            return depthwise_conv2d(x, wt, bias, pad, (dil, dil))
        return gated_depthwise_conv2d(x, wt, bias, pad, gate)

    with torch.no_grad():
        ref = run(x.bfloat16().float())
        out = run(x.bfloat16())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto = run(x)
    assert out.dtype == torch.bfloat16 and auto.dtype == torch.bfloat16
    assert _rel(out.float(), ref) < 1e-2 and torch.equal(out, auto)


@needs_native
@pytest.mark.parametrize("kernel,dil", [((1, 23), 1), ((23, 1), 1), ((9, 9), 2), ((7, 7), 1), ((5, 3), 2)])
@pytest.mark.parametrize("b,c,h,w", [(1, 16, 1, 1), (2, 12, 5, 40), (1, 32, 13, 9)])
@pytest.mark.parametrize("layout", ["channels_last", "channel_slice"])
def test_depthwise_native_bfloat16_taps_equal_float32_kernel(kernel, dil, b, c, h, w, layout):
    """bfloat16 storage with the generic taps (strip kernels, dilation, borders, channel slices): bit
    for bit the float32 kernel's result on the widened input, rounded once."""
    x = _input(b, c, h, w, layout).bfloat16()
    wt, bias = torch.randn(c, 1, *kernel) * 0.3, torch.randn(c)
    pad = (dil * (kernel[0] // 2), dil * (kernel[1] // 2))
    with torch.no_grad():
        ref = depthwise_conv2d(x.float(), wt, bias, pad, (dil, dil))
        out = depthwise_conv2d(x, wt, bias, pad, (dil, dil))
    assert out.dtype == torch.bfloat16 and torch.equal(out, ref.bfloat16())
    assert _rel(ref, depthwise_conv2d_reference(x.float(), wt, bias, pad, (dil, dil))) < 1e-5


@needs_native
def test_depthwise_native_backward_under_bf16_autocast():
    x = _input(2, 16, 8, 8).requires_grad_(True)
    wt, bias = torch.randn(16, 1, 3, 3, requires_grad=True), torch.randn(16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = gated_depthwise_conv2d(x, wt, bias, (1, 1), "dual")
    y.float().sum().backward()
    assert x.grad.dtype == torch.float32 and wt.grad.dtype == torch.float32 and bias.grad is not None
    ref = gated_depthwise_conv2d_reference(x.detach(), wt.detach().requires_grad_(True), bias.detach(), (1, 1), "dual")
    assert torch.isfinite(wt.grad).all() and ref.shape == y.shape


def test_nchw_and_no_native_take_aten(monkeypatch):
    """NCHW tensors, and LIGHTSR_NATIVE=0 (use_native(False)), run aten: same values."""
    x, wt, bias = torch.randn(2, 8, 6, 7), torch.randn(8, 1, 3, 3), torch.randn(8)
    assert not _depthwise_native.supported(x, wt, (1, 1), (1, 1))
    ref = gated_depthwise_conv2d_reference(x, wt, bias, (1, 1), "gelu")
    assert torch.allclose(gated_depthwise_conv2d(x, wt, bias, (1, 1), "gelu"), ref, atol=1e-6)
    with _native.use_native(False):
        xc = x.contiguous(memory_format=torch.channels_last)
        assert not _depthwise_native.supported(xc, wt, (1, 1), (1, 1))
        assert torch.allclose(gated_depthwise_conv2d(xc, wt, bias, (1, 1), "gelu"), ref, atol=1e-6)


def test_gated_rejects_bad_arguments():
    x, wt = torch.randn(1, 6, 4, 4), torch.randn(6, 1, 3, 3)
    with pytest.raises(ValueError, match="gate"):
        gated_depthwise_conv2d(x, wt, None, (1, 1), "relu")
    with pytest.raises(ValueError, match="even"):
        gated_depthwise_conv2d(torch.randn(1, 5, 4, 4), torch.randn(5, 1, 3, 3), None, (1, 1), "gelu")


@pytest.mark.parametrize("h,w", SIZES)
@pytest.mark.parametrize("b,cin,cout", [(1, 48, 192), (3, 7, 5)])
@pytest.mark.parametrize("bias,residual,scale", [(True, False, False), (False, True, False), (True, True, True)])
def test_pointwise_matches_reference(b, cin, cout, h, w, bias, residual, scale):
    tensors = [_input(b, cin, h, w), torch.randn(cout, cin, 1, 1)]
    names = ["x", "w"]
    if bias:
        tensors.append(torch.randn(cout)), names.append("b")
    if residual:
        tensors.append(_input(b, cout, h, w)), names.append("residual")
    if scale:
        tensors.append(torch.randn(1, cout, 1, 1)), names.append("scale")

    def call(fn):
        def run(x, w, *rest):
            kwargs = {"bias" if n == "b" else n: v for n, v in zip(names[2:], rest)}
            return fn(x, w, **kwargs)
        return run

    out = _compare(call(pointwise_conv), call(pointwise_conv_reference), tensors)
    assert out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("b,cin,cout,h,w", [(1, 48, 192, 1, 1), (3, 7, 5, 5, 9)])
@pytest.mark.parametrize("bias,residual,channel_slice", [(True, False, False), (False, True, True), (True, True, False)])
def test_pointwise_float32_training_takes_onednn(b, cin, cout, h, w, bias, residual, channel_slice, monkeypatch):
    """With a gradient needed (float32, outside autocast) the product runs through oneDNN's inner
    product (forward and input gradient) where torch has it: the reference's values and gradients."""
    from lightsr.ops import pointwise as pw

    if pw._ONEDNN is None:
        pytest.skip("this torch has no mkldnn::_linear_pointwise")
    calls = []
    real = pw._OneDnnProduct.apply
    monkeypatch.setattr(pw._OneDnnProduct, "apply", lambda *a: calls.append(1) or real(*a))
    full = _input(b, 2 * cin if channel_slice else cin, h, w)
    tensors = [full, torch.randn(cout, cin, 1, 1)] + ([torch.randn(cout)] if bias else [])
    tensors += [_input(b, cout, h, w)] if residual else []

    def call(fn):
        def run(x, wt, *rest):
            rest = list(rest)
            kw = {"bias": rest.pop(0) if bias else None, "residual": rest.pop(0) if residual else None}
            return fn(x[:, :cin] if channel_slice else x, wt, **kw)
        return run

    _compare(call(pointwise_conv), call(pointwise_conv_reference), tensors)
    assert calls


def test_pointwise_on_nchw_and_meta_uses_the_convolution():
    x, wt = torch.randn(2, 4, 3, 5), torch.randn(6, 4, 1, 1)
    assert torch.allclose(pointwise_conv(x, wt), pointwise_conv_reference(x, wt), atol=1e-6)
    y = pointwise_conv(x.to("meta"), wt.to("meta"))
    assert y.device.type == "meta" and y.shape == (2, 6, 3, 5)


def test_pointwise_under_bf16_autocast_keeps_the_residual_in_float32():
    x, wt, res = _input(1, 8, 4, 4), torch.randn(8, 8, 1, 1), _input(1, 8, 4, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = pointwise_conv(x, wt, residual=res)
    assert y.dtype == torch.float32
    assert _rel(y, pointwise_conv_reference(x, wt, residual=res)) < 2e-2


@needs_native
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 5, 7, 3), (3, 17, 1, 9), (1, 128, 13, 30)])
@pytest.mark.parametrize("layout", ["channels_last", "channel_slice"])
def test_scale_gelu_native_matches_reference(shape, layout):
    """LGUN's SE scale + GELU in one native pass: float32 within 1e-6, bfloat16 storage within its rounding;
    in float32 training the native backward: both gradients as the reference's (float64 oracle)."""
    from lightsr.ops import scale_gelu, scale_gelu_reference

    b, c, h, w = shape
    x = _input(b, c, h, w, layout)
    s = torch.rand(b, c, 1, 1) * 2
    y = scale_gelu(x, s)
    assert y.is_contiguous(memory_format=torch.channels_last) and y.dtype == x.dtype
    torch.testing.assert_close(y, scale_gelu_reference(x, s), rtol=1e-6, atol=1e-6)
    xb = x.to(torch.bfloat16)
    ref = scale_gelu_reference(xb.float(), s).to(torch.bfloat16)  # the same values rounded once
    torch.testing.assert_close(scale_gelu(xb, s).float(), ref.float(), rtol=0, atol=ref.float().abs().max().item() / 128)
    g = torch.randn(b, c, h, w)
    (out, grads), (ref_out, ref_grads) = (_grads(f, [x, s], g) for f in (scale_gelu, scale_gelu_reference))
    torch.testing.assert_close(out, ref_out)
    for a, r in zip(grads, ref_grads):
        torch.testing.assert_close(a, r)
    _compare(scale_gelu, scale_gelu_reference, [x, s])


@needs_native
def test_scale_gelu_trains_on_the_native_backward(monkeypatch, outputs_per_thread_count):
    """float32 with a gradient: the autograd function (not aten's mul / gelu); its gradients do not
    depend on the thread count (per-row sums added in row order)."""
    from lightsr.ops import _depthwise_native, scale_gelu

    calls = []
    real = _depthwise_native.scale_gelu_backward
    monkeypatch.setattr(_depthwise_native, "scale_gelu_backward", lambda *a: calls.append(1) or real(*a))
    x, s, g = _input(2, 24, 9, 7), torch.rand(2, 24, 1, 1), torch.randn(2, 24, 9, 7)
    _grads(scale_gelu, [x, s], g)
    assert calls == [1]
    outs = outputs_per_thread_count(lambda: real(g, x, s))
    assert all(torch.equal(a, b) for a, b in zip(*outs))


@pytest.mark.parametrize("b, rows", [(1, (0, 5)), (1, (3, 7)), (2, (2, 6))])
@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("scale", [False, True])
def test_pointwise_into_a_band_of_rows(b, rows, bias, scale, monkeypatch):
    """``pointwise_conv(..., out=band)``: a band of rows of a channels-last image receives exactly
    the result (in place by addmm where the band's rows are dense, batch 1, with or without a
    per-channel scale; copied otherwise)."""
    from lightsr.ops import pointwise as pw

    copied = []
    real = pw.pointwise_conv
    monkeypatch.setattr(pw, "pointwise_conv", lambda *a, **k: copied.append(1) or real(*a, **k))
    torch.manual_seed(1)
    x = _input(b, 6, 7, 9)
    weight = torch.randn(5, 6, 1, 1)
    bvec = torch.randn(5) if bias else None
    svec = torch.rand(5) if scale else None
    residual = _input(b, 5, 7, 9)
    r0, r1 = rows
    out = torch.full((b, 5, 7, 9), float("nan")).contiguous(memory_format=torch.channels_last)
    band = out[:, :, r0:r1]
    res = pointwise_conv(x[:, :, r0:r1], weight, bvec, residual[:, :, r0:r1], svec, out=band)
    assert res.data_ptr() == band.data_ptr()
    assert bool(copied) == (b > 1), "batch 1 must take the in-place product"
    expected = pointwise_conv_reference(x[:, :, r0:r1], weight, bvec, residual[:, :, r0:r1], svec)
    torch.testing.assert_close(band, expected, rtol=1e-5, atol=1e-5)
    ref_out = torch.empty_like(out)[:, :, r0:r1]  # the reference op takes out= too (use_reference_ops)
    assert pointwise_conv_reference(x[:, :, r0:r1], weight, bvec, residual[:, :, r0:r1], svec, out=ref_out) is ref_out
    torch.testing.assert_close(ref_out, expected, rtol=0, atol=0)
    assert out[:, :, :r0].isnan().all() and out[:, :, r1:].isnan().all()  # nothing outside the band
    # the same numbers as without out= (the direct path is the same product)
    torch.testing.assert_close(band, pointwise_conv(x[:, :, r0:r1], weight, bvec, residual[:, :, r0:r1], svec),
                               rtol=0, atol=0)


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("scale", [False, True])
@pytest.mark.parametrize("band", [False, True])
def test_pointwise_accumulates_into_its_residual(bias, scale, band, monkeypatch):
    """``out=residual`` (the residual stream written in place at inference): the product accumulates
    into the residual's rows with no copy of it; the values are the reference's."""
    from lightsr.ops import pointwise as pw

    copied = []
    real = pw.pointwise_conv
    monkeypatch.setattr(pw, "pointwise_conv", lambda *a, **k: copied.append(1) or real(*a, **k))
    torch.manual_seed(2)
    x, residual = _input(1, 6, 7, 9), _input(1, 5, 7, 9)
    weight, bvec, svec = torch.randn(5, 6, 1, 1), torch.randn(5) if bias else None, torch.rand(5) if scale else None
    expected = pointwise_conv_reference(x, weight, bvec, residual, svec)
    if band:  # two different view objects of the same band (as the FFN strips pass them)
        res = pointwise_conv(x[:, :, 2:5], weight, bvec, residual[:, :, 2:5], svec, out=residual[:, :, 2:5])
        expected = torch.cat([residual[:, :, :2], expected[:, :, 2:5], residual[:, :, 5:]], dim=2)
    else:
        res = pointwise_conv(x, weight, bvec, residual, svec, out=residual)
    assert not copied and res.data_ptr() == residual[:, :, 2 if band else 0:].data_ptr()
    torch.testing.assert_close(residual, expected, rtol=1e-5, atol=1e-5)


def test_pointwise_into_its_residual_with_autograd_stays_differentiable():
    torch.manual_seed(3)
    x = _input(1, 6, 5, 4).requires_grad_(True)
    residual = (_input(1, 5, 5, 4) * 1.0).requires_grad_(False) + 0 * x.sum()  # a non-leaf in the graph
    weight = torch.randn(5, 6, 1, 1, requires_grad=True)
    expected = pointwise_conv_reference(x, weight, None, residual.detach(), None)
    out = pointwise_conv(x, weight, None, residual, None, out=residual)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)
    out.sum().backward()
    assert x.grad is not None and weight.grad is not None



@pytest.mark.parametrize("residual_dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("bias", [False, True])
def test_pointwise_into_its_residual_under_bf16_autocast(residual_dtype, bias, monkeypatch):
    """Under CPU bf16 autocast at inference: a bf16 residual stream takes the product in place in bf16
    (no separate product and copy); a float32 stream gets the bf16 product added in one pass. Both
    within bf16 rounding of the float32 reference, and nothing outside the band is touched."""
    from lightsr.ops import pointwise as pw

    copied = []
    real = pw.pointwise_conv
    monkeypatch.setattr(pw, "pointwise_conv", lambda *a, **k: copied.append(1) or real(*a, **k))
    torch.manual_seed(4)
    x, residual = _input(1, 16, 9, 11).to(torch.bfloat16), _input(1, 8, 9, 11).to(residual_dtype)
    weight, bvec, svec = torch.randn(8, 16, 1, 1), torch.randn(8) if bias else None, torch.rand(8)
    expected = pointwise_conv_reference(x.float(), weight, bvec, residual.float(), svec)
    before = residual.clone()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        res = pointwise_conv(x[:, :, 2:7], weight, bvec, residual[:, :, 2:7], svec, out=residual[:, :, 2:7])
    assert res.dtype == residual_dtype and res.data_ptr() == residual[:, :, 2:].data_ptr()
    assert bool(copied) == (residual_dtype == torch.float32), "a bf16 stream must take the product in place"
    torch.testing.assert_close(residual[:, :, 2:7].float(), expected[:, :, 2:7], rtol=2e-2, atol=2e-2 * 4)
    assert torch.equal(residual[:, :, :2], before[:, :, :2]) and torch.equal(residual[:, :, 7:], before[:, :, 7:])


@pytest.mark.parametrize("rows,cin,cout", [(0, 8, 4), (1, 3, 5), (37, 48, 192), (300, 96, 48)])
def test_pointwise_onednn_product_equals_the_blas_one(rows, cin, cout):
    """The inference product through oneDNN (where torch has it) against ``F.linear``: float32 within
    1e-5 (relative), bfloat16 within its rounding, strided rows (a channel slice) included; with a
    gradient needed ``F.linear`` runs (autograd through it)."""
    from lightsr.ops import pointwise as pw

    torch.manual_seed(5)
    wide = torch.randn(rows, 2 * cin)
    for x in (wide[:, :cin], wide[:, cin:].contiguous()):
        w, b = torch.randn(cout, cin), torch.randn(cout)
        ref = torch.nn.functional.linear(x.double(), w.double(), b.double())
        with torch.no_grad():
            y = pw._linear(x, w, b)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                yb = pw._linear(x, w, b)
        assert y.shape == (rows, cout) and y.dtype == torch.float32 and yb.dtype == torch.bfloat16
        scale = ref.abs().max().clamp_min(1.0).item() if rows else 1.0
        torch.testing.assert_close(y.double(), ref, rtol=0, atol=1e-5 * scale)
        torch.testing.assert_close(yb.double(), ref, rtol=0, atol=2e-2 * scale)
    wg = torch.randn(cout, cin, requires_grad=True)
    pw._linear(wide[:, :cin], wg, None).sum().backward()
    assert wg.grad is not None


@needs_native
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_native_gelu_gate_is_the_exact_gelu(dtype):
    """The gate's GELU (a rational erf in the native kernel) against the float64 erf GELU over
    [-8, 8] and beyond: within 1e-6 (relative to max(1, |x|)) in float32, within one rounding in
    bfloat16; NaN stays NaN. An identity kernel makes the output GELU(x1) * x2 with x2 = 1."""
    n = 4099  # not a multiple of the vector width (the scalar tail too)
    v = torch.cat([torch.linspace(-8, 8, n - 3), torch.tensor([-40.0, 40.0, float("nan")])])
    x = torch.cat([v.view(1, 1, 1, n), torch.ones(1, 1, 1, n)], dim=1).contiguous(memory_format=torch.channels_last)
    w = torch.zeros(2, 1, 3, 3)
    w[:, 0, 1, 1] = 1.0
    with torch.no_grad():
        y = gated_depthwise_conv2d(x.to(dtype), w, None, (1, 1), "gelu").float().view(-1)
    ref = torch.nn.functional.gelu(v.to(dtype).double()).view(-1)
    assert y[-1].isnan() and not y[:-2].isnan().any()  # (the NaN's left neighbour: 0 * NaN in its 3x3 sum)
    tol = 1e-6 if dtype == torch.float32 else 2**-8
    err = (y[:-2].double() - ref[:-2]).abs() / ref[:-2].abs().clamp_min(1.0)
    assert err.max().item() <= tol


def test_pointwise_product_falls_back_where_onednn_refuses(monkeypatch):
    """Where torch's oneDNN product raises (its bf16 path on a CPU without AVX-512, say), the product
    is F.linear's, and oneDNN is not asked again for that dtype."""
    from lightsr.ops import pointwise as pw

    calls = []

    def refuse(*args):
        calls.append(1)
        raise RuntimeError("mkldnn_linear: bf16 path needs the cpu support avx512bw, avx512vl and avx512dq")

    monkeypatch.setattr(pw, "_ONEDNN", refuse)
    monkeypatch.setattr(pw, "_ONEDNN_FAILED", set())
    x, w = torch.randn(37, 16), torch.randn(8, 16)
    ref = torch.nn.functional.linear(x, w)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        for _ in range(2):
            y = pw._linear(x, w, None)
            assert y.dtype == torch.bfloat16
            torch.testing.assert_close(y.float(), ref, rtol=2e-2, atol=5e-2)
    assert len(calls) == 1 and pw._ONEDNN_FAILED == {torch.bfloat16}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("c,kernel,dilation,h,w", [(16, (3, 3), 1, 7, 9), (16, (5, 5), 2, 17, 30), (12, (7, 7), 1, 1, 23),
                                                   (32, (23, 1), 1, 3, 101), (144, (3, 3), 1, 9, 13),
                                                   (16, (9, 9), 2, 17, 30), (32, (1, 23), 1, 7, 9), (270, (3, 3), 1, 5, 6)])
def test_onednn_preference_routes_and_matches(dtype, c, kernel, dilation, h, w, monkeypatch):
    """At inference on an AVX-512 CPU the measured oneDNN shapes go to aten (weights cast to the
    input's dtype), the rest (9x9 dilated, bf16 1 x K, many channels, float32 3x3 and K x 1) to the native kernel;
    both within rounding of the reference. With a gradient, or without AVX-512: native."""
    import torch.nn.functional as F

    from lightsr.ops import depthwise_conv

    monkeypatch.undo()  # the real preference (the autouse fixture turned it off)
    monkeypatch.setattr(depthwise_conv._native, "cpu_capability", lambda: "AVX512")
    x = _input(2, c, h, w).to(dtype)
    wt, bias = torch.randn(c, 1, *kernel) * 0.3, torch.randn(c)
    pad = (dilation * (kernel[0] - 1) // 2, dilation * (kernel[1] - 1) // 2)
    ref = depthwise_conv2d_reference(x.double(), wt.double(), bias.double(), pad, (dilation, dilation))
    calls = []
    real = F.conv2d
    monkeypatch.setattr(depthwise_conv.F, "conv2d", lambda *a, **k: calls.append(1) or real(*a, **k))
    with torch.no_grad():
        out = depthwise_conv2d(x, wt, bias, pad, (dilation, dilation))
    float32_column = dtype == torch.float32 and kernel[1] == 1 and kernel[0] >= 5  # the native column kernel
    expect_onednn = (dilation == 1 or kernel[0] * dilation < 14) and not (dtype == torch.bfloat16 and kernel[0] == 1) \
        and c <= (192 if dtype == torch.bfloat16 else 144) and (dtype == torch.bfloat16 or kernel != (3, 3) or c <= 32) \
        and not float32_column
    assert bool(calls) == expect_onednn
    assert out.dtype == dtype and _rel(out, ref) < (1e-5 if dtype == torch.float32 else 2e-2)
    calls.clear()
    depthwise_conv2d(x.requires_grad_(True), wt, bias, pad, (dilation, dilation))
    assert not calls  # training: the native kernel and its backward
    monkeypatch.setattr(depthwise_conv._native, "cpu_capability", lambda: "AVX2")
    with torch.no_grad():
        depthwise_conv2d(x, wt, bias, pad, (dilation, dilation))
    assert not calls
