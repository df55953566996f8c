"""The native bfloat16-onto-float32 add (LAMNet's stream under CPU autocast) against aten."""
import pytest
import torch

from lightsr.ops import _elementwise_native, _native

needs_native = pytest.mark.skipif(not _native.available(), reason=f"native kernels not built: {_native.build_error()}")


@needs_native
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (2, 64, 7, 9), (1, 3, 5, 3), (1, 64, 180, 320)])
@pytest.mark.parametrize("in_place", [True, False])
def test_add_bf16_into_f32_matches_aten(shape, in_place, outputs_per_thread_count):
    torch.manual_seed(0)
    r = torch.randn(shape).contiguous(memory_format=torch.channels_last)
    y = torch.randn(shape).bfloat16().contiguous(memory_format=torch.channels_last)
    if shape == (1, 3, 5, 3):
        y[0, 1, 2, 1] = float("nan")
    want = r + y.float()

    def run():
        res = r.clone()
        out = res if in_place else torch.empty_like(res)
        assert _elementwise_native.add_bf16_into_f32(res, y, out) is out
        return out

    outs = outputs_per_thread_count(run)
    assert torch.allclose(outs[0], outs[1], rtol=0, atol=0, equal_nan=True)
    assert torch.allclose(outs[0], want, rtol=0, atol=0, equal_nan=True)
    assert outs[0].is_contiguous(memory_format=torch.channels_last)


def test_add_bf16_into_f32_declines_what_it_does_not_take():
    r = torch.randn(1, 4, 3, 3)
    y = torch.randn(1, 4, 3, 3).bfloat16()
    assert _elementwise_native.add_bf16_into_f32(r, y.contiguous(memory_format=torch.channels_last), r) is None  # layouts
    assert _elementwise_native.add_bf16_into_f32(r, y.float(), r) is None  # dtype
    assert _elementwise_native.add_bf16_into_f32(r[..., :2], y[..., :2], r[..., :2]) is None  # not dense


def _slices(shape, seed):
    g = torch.Generator().manual_seed(seed)
    b, c, h, w = shape
    full = torch.randn(b, 4 * c, h, w, generator=g).bfloat16().contiguous(memory_format=torch.channels_last)
    dense = torch.randn(shape, generator=g).bfloat16().contiguous(memory_format=torch.channels_last)
    return full.chunk(4, dim=1)[1], dense


@needs_native
@pytest.mark.parametrize("shape", [(1, 1, 1, 1), (1, 16, 7, 9), (2, 17, 5, 3), (3, 8, 1, 40)])
def test_add_maps_is_aten_bit_for_bit(shape, outputs_per_thread_count):
    from lightsr.ops import add_maps, add_maps_reference

    sl, dense = _slices(shape, sum(shape))
    for a, b in ((sl, dense), (dense, sl), (dense, dense), (sl, sl)):
        outs = outputs_per_thread_count(lambda: add_maps(a, b))
        want = add_maps_reference(a, b)
        assert torch.equal(outs[0], want) and torch.equal(outs[1], want)
        assert outs[0].is_contiguous(memory_format=torch.channels_last) and outs[0].dtype == torch.bfloat16


def test_add_maps_falls_back_where_the_kernel_does_not_apply(monkeypatch):
    from lightsr.ops import add_maps

    calls = []
    real = _elementwise_native.add_bf16
    monkeypatch.setattr(_elementwise_native, "add_bf16", lambda *a: calls.append(1) or real(*a))
    x = torch.randn(1, 4, 5, 6)
    assert torch.equal(add_maps(x, x), x + x)  # float32: aten
    xb = x.bfloat16()  # NCHW bf16: the kernel declines
    assert torch.equal(add_maps(xb, xb), xb + xb)
    g = x.bfloat16().contiguous(memory_format=torch.channels_last).requires_grad_(True)
    out = add_maps(g, g)  # a gradient: aten
    out.float().sum().backward()
    assert torch.equal(g.grad, torch.full_like(g, 2.0))
    assert len(calls) == 1  # only the NCHW bf16 call reached (and was declined by) the native wrapper


@needs_native
@pytest.mark.parametrize("n,c", [(1, 1), (1, 8), (3, 5), (7, 13), (18432, 52), (18432, 64), (4097, 128), (100, 512)])
def test_column_sum_matches_float64(n, c, outputs_per_thread_count):
    """Column sums (a 1x1 convolution's bias gradient): odd row counts (the two-row step's tail),
    channel counts off the 8-lane vectors, the widest the kernel takes; 1 and 3 threads."""
    torch.manual_seed(0)
    rows = torch.randn(n, c)
    outs = outputs_per_thread_count(lambda: _elementwise_native.column_sum(rows))
    want = rows.double().sum(0)
    for out in outs:
        assert out.shape == (c,) and out.dtype == torch.float32
        assert (out.double() - want).abs().max() <= 1e-5 * max(1.0, n ** 0.5)


def test_column_sum_declines_what_it_does_not_take():
    assert _elementwise_native.column_sum(torch.randn(4, 513)) is None  # wider than the kernel's SUM_MAX
    assert _elementwise_native.column_sum(torch.randn(8, 4)[::2]) is None  # rows not dense
    assert _elementwise_native.column_sum(torch.randn(4, 4).double()) is None
    assert _elementwise_native.column_sum(torch.randn(0, 4)) is None
    assert _elementwise_native.column_sum(torch.randn(2, 3, 4)) is None


@needs_native
def test_pointwise_bias_gradient_takes_the_column_sum(monkeypatch):
    """The 1x1 convolution's training product hands its bias gradient to the native column sum, and it
    equals the reference's."""
    from lightsr.ops import pointwise

    calls = []
    real = _elementwise_native.column_sum
    monkeypatch.setattr(_elementwise_native, "column_sum", lambda g: calls.append(g.shape) or real(g))
    torch.manual_seed(0)
    x = torch.randn(2, 16, 5, 7).contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(24, 16, 1, 1, requires_grad=True), torch.randn(24, requires_grad=True)
    g = torch.randn(2, 24, 5, 7)
    pointwise.pointwise_conv(x, w, b).backward(g)
    w2, b2 = w.detach().clone().requires_grad_(), b.detach().clone().requires_grad_()
    pointwise.pointwise_conv_reference(x, w2, b2).backward(g)
    if pointwise._ONEDNN is not None:
        assert calls == [(70, 24)]
    assert torch.allclose(b.grad, b2.grad, atol=1e-5) and torch.allclose(w.grad, w2.grad, atol=1e-4)
