"""The copy-free channel attention against the official formula: values and gradients (q, k, v and
the temperature), heads, batch > 1, odd sizes, channels-last and NCHW, the activations the models use;
the native inference kernels (heads of 8 channels) on the whole map and on TLC windows."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightsr.ops import (
    _attention_native,
    _native,
    channel_attention,
    channel_attention_reference,
    tlc_channel_attention,
    tlc_channel_attention_reference,
)


def _rel(a, b) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12)).item()


def _topk_softmax(attn):  # the shape of LGUN's top-k selection (one ratio)
    k = max(1, attn.shape[-1] // 2)
    idx = attn.topk(k, dim=-1).indices
    return torch.full_like(attn, float("-inf")).scatter(-1, idx, attn.gather(-1, idx)).softmax(-1)


@pytest.mark.parametrize("b,c,heads,h,w", [(1, 48, 6, 1, 1), (2, 48, 6, 7, 9), (3, 12, 1, 5, 17), (2, 64, 1, 6, 6)])
@pytest.mark.parametrize("act", [F.relu, lambda a: a.softmax(-1), torch.sigmoid, _topk_softmax])
@pytest.mark.parametrize("layout", ["channels_last", "nchw"])
def test_channel_attention_matches_reference(b, c, heads, h, w, act, layout):
    qkv = torch.randn(b, 3 * c, h, w)
    if layout == "channels_last":
        qkv = qkv.contiguous(memory_format=torch.channels_last)
    temp = torch.rand(heads, 1, 1) + 0.5
    g = torch.randn(b, c, h, w, dtype=torch.float64)
    outs = []
    for fn, dtype in ((channel_attention, torch.float32), (channel_attention_reference, torch.float64)):
        x = qkv.detach().to(dtype).requires_grad_(True)
        t = temp.detach().to(dtype).requires_grad_(True)
        y = fn(x, heads, t, act)
        y.backward(g.to(dtype))
        outs.append((y.detach(), x.grad, t.grad, y))
    (y, gx, gt, raw), (yr, gxr, gtr, _) = outs
    assert _rel(y, yr) < 1e-5 and _rel(gx, gxr) < 1e-4 and _rel(gt, gtr) < 1e-4
    if layout == "channels_last" and c > 1:
        assert raw.is_contiguous(memory_format=torch.channels_last)


def test_channel_attention_rejects_bad_shapes():
    with pytest.raises(ValueError, match="heads"):
        channel_attention(torch.randn(1, 3 * 10, 4, 4), 3, torch.ones(3, 1, 1), F.relu)


# --- the native kernels (heads of 8 channels, inference): whole map and TLC windows -------------------

needs_native = pytest.mark.skipif(not _native.available(), reason=f"native kernels not built: {_native.build_error()}")


def _qkv(b, heads, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3 * 8 * heads, h, w, generator=g).contiguous(memory_format=torch.channels_last)


@needs_native
@pytest.mark.parametrize("b,heads,h,w,kernel", [(1, 6, 1, 1, 48), (2, 6, 7, 9, 48), (1, 6, 37, 50, 16),
                                                (2, 2, 20, 33, (8, 12)), (3, 1, 16, 16, 16), (1, 6, 48, 97, 48)])
@pytest.mark.parametrize("act", [F.relu, _topk_softmax])
def test_native_tlc_attention_matches_reference(b, heads, h, w, kernel, act):
    """1x1, one window, windows overlapping on both axes (odd sizes), rectangular windows, batch > 1."""
    qkv, temp = _qkv(b, heads, h, w), torch.rand(heads, 1, 1) + 0.5
    assert _attention_native.usable(qkv, heads)
    with torch.no_grad():
        out = tlc_channel_attention(qkv, heads, temp, act, kernel)
        ref = tlc_channel_attention_reference(qkv.double(), heads, temp.double(), act, kernel)
    assert out.shape == ref.shape and out.is_contiguous(memory_format=torch.channels_last)
    assert _rel(out, ref) < 1e-5


@needs_native
@pytest.mark.parametrize("b,heads,h,w", [(1, 6, 1, 1), (2, 6, 7, 9), (1, 1, 13, 5)])
def test_native_whole_map_attention_matches_reference(b, heads, h, w):
    qkv, temp = _qkv(b, heads, h, w, seed=1), torch.rand(heads, 1, 1) + 0.5
    with torch.no_grad():
        out = channel_attention(qkv, heads, temp, F.relu)
        with _native.use_native(False):
            blas = channel_attention(qkv, heads, temp, F.relu)
    ref = channel_attention_reference(qkv.double(), heads, temp.double(), F.relu)
    assert _rel(out, ref) < 1e-5 and _rel(blas, ref) < 1e-5


@needs_native
def test_native_attention_is_thread_independent_and_takes_bfloat16(outputs_per_thread_count):
    qkv, temp = _qkv(2, 6, 40, 57, seed=2), torch.rand(6, 1, 1) + 0.5
    outs = outputs_per_thread_count(lambda: tlc_channel_attention(qkv, 6, temp, F.relu, 16))
    assert torch.equal(outs[0], outs[1])
    with torch.no_grad():
        half = tlc_channel_attention(qkv.bfloat16(), 6, temp, F.relu, 16)
    assert half.dtype == torch.bfloat16 and _rel(half, outs[0]) < 2e-2


def test_training_takes_the_differentiable_path(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("native attention used with a gradient")

    monkeypatch.setattr(_attention_native, "attention", boom)
    qkv = _qkv(1, 6, 20, 30).requires_grad_(True)
    out = tlc_channel_attention(qkv, 6, torch.ones(6, 1, 1), F.relu, 16)
    out.sum().backward()
    assert qkv.grad is not None and torch.isfinite(qkv.grad).all()


@needs_native
@pytest.mark.parametrize("b,heads,h,w,kernel", [(1, 6, 1, 1, 48), (2, 6, 7, 9, 48), (1, 2, 37, 50, 16), (2, 3, 20, 33, (8, 12))])
@pytest.mark.parametrize("act", [F.relu, _topk_softmax])
def test_native_bfloat16_kernels_read_bfloat16_bit_identically(b, heads, h, w, kernel, act, monkeypatch):
    """bf16 qkv goes to the bf16-storage kernels (no float32 copy): the same maps and output as the
    float32 kernels on the widened qkv, rounded once (whole map and TLC windows)."""
    qkv, temp = _qkv(b, heads, h, w, seed=3).bfloat16(), torch.rand(heads, 1, 1) + 0.5
    seen = []
    real = _attention_native.attention
    monkeypatch.setattr(_attention_native, "attention", lambda q, *a: seen.append(q.dtype) or real(q, *a))
    with torch.no_grad():
        for run in (lambda t: tlc_channel_attention(t, heads, temp, act, kernel),
                    lambda t: channel_attention(t, heads, temp, act)):
            seen.clear()
            out, expected = run(qkv), run(qkv.float()).bfloat16()
            assert seen == [torch.bfloat16, torch.float32]
            assert out.dtype == torch.bfloat16 and out.is_contiguous(memory_format=torch.channels_last)
            assert torch.equal(out, expected)


def _dp_supported() -> bool:
    lib = _native.library() if _native.available() else None
    return lib is not None and bool(lib.lightsr_ca_dp_supported())


needs_dp = pytest.mark.skipif(not _dp_supported(), reason="no AVX512-BF16 on this CPU (or native kernels not built)")


def _wide_qkv(b, c, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 3 * c, h, w, generator=g).bfloat16().contiguous(memory_format=torch.channels_last)


@needs_dp
@pytest.mark.parametrize("b,c,heads,h,w", [(1, 64, 1, 1, 1), (2, 64, 1, 7, 9), (1, 64, 2, 13, 5), (3, 48, 1, 4, 67),
                                           (1, 128, 4, 3, 130), (2, 96, 2, 5, 3), (1, 64, 1, 40, 31), (1, 64, 4, 6, 7)])
@pytest.mark.parametrize("act", [F.relu, lambda a: a.softmax(-1), _topk_softmax])
def test_bfloat16_dot_product_kernels_match_float32_path(b, c, heads, h, w, act, monkeypatch):
    """bf16 qkv with wide heads goes to the AVX512-BF16 kernels: within one bf16 rounding of the float32
    path on the same (widened) values with the maps rounded to bf16 (as the kernel takes them),
    channels-last bf16 out; within two of the float64 reference."""
    qkv, temp = _wide_qkv(b, c, h, w, seed=c + h), torch.rand(heads, 1, 1) + 0.5
    calls = []
    real = _attention_native.attention_dp
    monkeypatch.setattr(_attention_native, "attention_dp", lambda *a: calls.append(1) or real(*a))
    with torch.no_grad():
        out = channel_attention(qkv, heads, temp, act)
        expected = channel_attention(qkv.float(), heads, temp, lambda a: act(a).bfloat16().float())
    assert calls == [1]
    assert out.dtype == torch.bfloat16 and out.is_contiguous(memory_format=torch.channels_last)
    assert _rel(out, expected) < 2 ** -8
    ref = channel_attention_reference(qkv.double(), heads, temp.double(), act)
    assert _rel(out, ref) < 2 ** -7


@needs_dp
def test_bfloat16_dot_product_kernels_are_thread_independent(outputs_per_thread_count):
    qkv, temp = _wide_qkv(2, 64, 37, 45, seed=5), torch.ones(1, 1, 1)
    outs = outputs_per_thread_count(lambda: channel_attention(qkv, 1, temp, _topk_softmax))
    assert torch.equal(outs[0], outs[1])


def test_wide_heads_with_gradients_or_float32_skip_the_dot_product_kernels(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("bf16 dot-product attention used")

    monkeypatch.setattr(_attention_native, "attention_dp", boom)
    qkv = _wide_qkv(1, 64, 6, 7).requires_grad_(True)
    out = channel_attention(qkv, 1, torch.ones(1, 1, 1), F.relu)
    out.float().sum().backward()
    assert torch.isfinite(qkv.grad.float()).all()
    with torch.no_grad():
        channel_attention(qkv.detach().float(), 1, torch.ones(1, 1, 1), F.relu)
        channel_attention(_wide_qkv(1, 40, 6, 7), 1, torch.ones(1, 1, 1), F.relu)  # d = 40: not a multiple of 16


def test_training_trains_on_the_two_product_backwards(monkeypatch):
    """With gradients, channel-last input runs the two autograd functions (their backwards one product
    each); an all-zero channel keeps finite gradients, and a parameter inside ``act`` (LGUN's top-k stage
    weights) gets its gradient, all as the float64 reference."""
    import importlib

    module = importlib.import_module("lightsr.ops.channel_attention")

    calls = []
    for name in ("_GramsAndSquares", "_AppliedAttention"):
        cls = getattr(module, name)
        monkeypatch.setattr(cls, "apply", (lambda f, n: lambda *a: calls.append(n) or f(*a))(cls.apply, name))
    qkv = torch.randn(2, 3 * 16, 5, 7, dtype=torch.float64)
    qkv[:, 3] = 0  # an all-zero q channel
    weight = torch.tensor(0.7, dtype=torch.float64)
    grads = []
    for fn in (channel_attention, channel_attention_reference):
        x = qkv.contiguous(memory_format=torch.channels_last).requires_grad_(True)
        w = weight.clone().requires_grad_(True)
        t = torch.full((2, 1, 1), 1.3, dtype=torch.float64, requires_grad=True)
        fn(x, 2, t, lambda a: _topk_softmax(a) * w).square().sum().backward()
        grads.append((x.grad, t.grad, w.grad))
    assert calls == ["_GramsAndSquares", "_AppliedAttention"]
    assert torch.isfinite(grads[0][0]).all()
    for a, b in zip(*grads):
        assert _rel(a, b) < 1e-10


def test_training_with_only_the_temperature_trainable():
    qkv = torch.randn(1, 3 * 8, 4, 4).contiguous(memory_format=torch.channels_last)
    t = torch.ones(1, 1, 1, requires_grad=True)
    channel_attention(qkv, 1, t, F.relu).sum().backward()
    tr = torch.ones(1, 1, 1, requires_grad=True)
    channel_attention_reference(qkv, 1, tr, F.relu).sum().backward()
    assert _rel(t.grad, tr.grad) < 1e-4
