"""LAMNet's information exchange (IEM): the channels-last fast path and its float32 training function
against the formula (float64), values and gradients, odd sizes, batch > 1; NCHW runs the formula."""
from __future__ import annotations

import importlib

import pytest
import torch

from lightsr.ops import information_exchange, information_exchange_reference

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
