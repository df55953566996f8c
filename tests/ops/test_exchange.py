"""LAMNet's information exchange (IEM): the channels-last fast path, its float32 training function and the
native concatenated form against the formula (float64), values and gradients, odd sizes, batch > 1;
NCHW runs the formula."""
from __future__ import annotations

import importlib

import pytest
import torch

from lightsr.ops import (
    _exchange_native,
    _native,
    information_exchange,
    information_exchange_concat,
    information_exchange_concat_reference,
    information_exchange_reference,
)

exchange = importlib.import_module("lightsr.ops.exchange")


def _maps(b, c, h, w, dtype=torch.float32):
    torch.manual_seed(b * 100 + c * 10 + h + w)
    return [torch.randn(b, c, h, w, dtype=dtype).contiguous(memory_format=torch.channels_last) for _ in range(2)]


def _forward_backward(fn, maps, grads):
    leaves = [t.detach().clone().requires_grad_(True) for t in maps]
    outs = fn(*leaves)
    torch.autograd.backward(outs, grads)
    return [o.detach() for o in outs] + [t.grad for t in leaves]


@pytest.mark.parametrize("b,c,h,w", [(1, 1, 1, 1), (2, 8, 5, 7), (3, 32, 13, 9), (1, 32, 48, 48)])
def test_training_path_matches_the_formula(b, c, h, w, monkeypatch):
    calls = []
    apply = exchange._TrainedExchange.apply
    monkeypatch.setattr(exchange._TrainedExchange, "apply", lambda *a: calls.append(1) or apply(*a))
    maps = _maps(b, c, h, w)
    grads = [torch.randn(b, c, h, w) for _ in range(2)]
    got = _forward_backward(information_exchange, maps, grads)
    want = _forward_backward(information_exchange_reference, [t.double() for t in maps], [g.double() for g in grads])
    assert calls, "float32 training on channels-last maps takes the written-out gradients"
    for a, r in zip(got, want):
        torch.testing.assert_close(a.double(), r, rtol=1e-4, atol=1e-5)
    assert all(t.is_contiguous(memory_format=torch.channels_last) for t in got if t.shape[1] > 1)


def test_inference_and_nchw_match_the_formula():
    xc, xs = _maps(2, 16, 6, 11)
    want = information_exchange_reference(xc.double(), xs.double())
    for args in ((xc, xs), (xc.contiguous(), xs.contiguous())):
        for a, r in zip(information_exchange(*args), want):
            torch.testing.assert_close(a.double(), r, rtol=1e-5, atol=1e-6)


def test_autocast_training_keeps_autograd():
    xc, xs = (t.requires_grad_(True) for t in _maps(2, 8, 5, 5))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = information_exchange(xc, xs)
    assert all(o.grad_fn is not None and "TrainedExchange" not in type(o.grad_fn).__name__ for o in out)
    sum(o.float().sum() for o in out).backward()
    assert torch.isfinite(xc.grad).all() and torch.isfinite(xs.grad).all()


needs_native = pytest.mark.skipif(not _native.available(), reason=f"native kernels not built: {_native.build_error()}")


def _channel_slices(b, c, h, w):
    """x_c and x_s as channel slices of one channels-last map (pixel rows 2c apart: strided rows)."""
    torch.manual_seed(b + c + h + w)
    both = torch.randn(b, 2 * c, h, w).contiguous(memory_format=torch.channels_last)
    return [both[:, :c], both[:, c:]]


@needs_native
@pytest.mark.parametrize("b,c,h,w", [(1, 8, 1, 1), (2, 8, 5, 7), (3, 32, 13, 9), (2, 32, 48, 48), (1, 16, 1, 23)])
@pytest.mark.parametrize("layout", ["channels_last", "channel_slices"])
def test_native_concat_matches_the_formula(b, c, h, w, layout, monkeypatch):
    """The native IEM (both branches side by side, proj_out's input) against the formula in float64:
    values and both input gradients, 1x1 and odd maps, batch > 1, dense and strided pixel rows."""
    calls = []
    apply = _exchange_native.TrainedExchangeConcat.apply
    monkeypatch.setattr(_exchange_native.TrainedExchangeConcat, "apply", lambda *a: calls.append(1) or apply(*a))
    maps = _maps(b, c, h, w) if layout == "channels_last" else _channel_slices(b, c, h, w)
    grad = torch.randn(b, 2 * c, h, w)
    got = _forward_backward(lambda *m: (information_exchange_concat(*m),), maps, [grad])
    want = _forward_backward(lambda *m: (information_exchange_concat_reference(*m),), [t.double() for t in maps],
                             [grad.double()])
    assert calls
    assert got[0].is_contiguous(memory_format=torch.channels_last)
    for a, r in zip(got, want):
        torch.testing.assert_close(a.double(), r, rtol=1e-4, atol=1e-5)


@needs_native
def test_native_concat_is_thread_independent():
    maps = _maps(4, 32, 9, 10)
    grad = torch.randn(4, 64, 9, 10)
    threads, outs = torch.get_num_threads(), []
    try:
        for n in (1, 3):
            torch.set_num_threads(n)
            outs.append(_forward_backward(lambda *m: (information_exchange_concat(*m),), maps, [grad]))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(a, b) for a, b in zip(*outs))


def test_concat_off_the_native_path_matches_the_formula():
    """Channels not a multiple of 8, NCHW or bfloat16 maps: the exchange and a concatenation."""
    for maps in (_maps(2, 6, 5, 4), [t.contiguous() for t in _maps(1, 8, 3, 3)], _maps(1, 8, 3, 3, torch.bfloat16)):
        assert not _exchange_native.usable(*maps)
        got = information_exchange_concat(*maps)
        want = information_exchange_concat_reference(*[t.double() for t in maps])
        tol = 2e-2 if maps[0].dtype == torch.bfloat16 else 1e-5
        torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol)
