"""Fast ops against their reference implementations: values and gradients, odd sizes, batch > 1."""
from __future__ import annotations

import pytest
import torch

from lightsr.ops import (
    build_kernel_map,
    depthwise_conv2d,
    depthwise_conv2d_reference,
    dynamic_dwconv,
    dynamic_dwconv_fused,
    dynamic_dwconv_fused_reference,
    dynamic_dwconv_reference,
    focal_attention,
    focal_attention_reference,
    layer_norm_2d,
    layer_norm_2d_reference,
    patch_size_of,
    preferred_memory_format,
    tlc,
    tlc_reference,
    tlc_windows,
)

SIZES = [(1, 1), (1, 23), (17, 23), (40, 31), (8, 8)]


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def _compare(fast, ref, inputs, tol=1e-5):
    """Outputs and gradients (w.r.t. every input) of fast and reference agree."""
    xs_f = [x.clone().requires_grad_(True) for x in inputs]
    xs_r = [x.clone().requires_grad_(True) for x in inputs]
    out_f, out_r = fast(*xs_f), ref(*xs_r)
    assert out_f.shape == out_r.shape
    assert _rel_err(out_f, out_r) < tol
    g = torch.randn_like(out_r)
    grads_f = torch.autograd.grad(out_f, xs_f, g)
    grads_r = torch.autograd.grad(out_r, xs_r, g)
    for gf, gr in zip(grads_f, grads_r):
        assert _rel_err(gf, gr) < tol


# --- dynamic depth-wise convolution ------------------------------------------------------
@pytest.mark.parametrize("h,w", SIZES)
@pytest.mark.parametrize("b,c,groups,k", [(1, 12, 2, 7), (2, 48, 8, 7), (3, 6, 6, 3), (2, 4, 1, 5)])
def test_dynamic_dwconv_matches_reference(b, c, groups, k, h, w):
    x = torch.randn(b, c, h, w, dtype=torch.float64)
    wt = torch.randn(b, groups * k * k, h, w, dtype=torch.float64)
    _compare(lambda a, bb: dynamic_dwconv(a, bb, k), lambda a, bb: dynamic_dwconv_reference(a, bb, k), [x, wt])


def test_dynamic_dwconv_float32_tolerance():
    x = torch.randn(2, 48, 19, 29)
    wt = torch.randn(2, 8 * 49, 19, 29)
    _compare(lambda a, b: dynamic_dwconv(a, b, 7), lambda a, b: dynamic_dwconv_reference(a, b, 7), [x, wt])


def test_dynamic_dwconv_semantics_by_hand():
    """One pixel, one tap: out[c, h, w] = W[g(c), tap, h, w] * x[c, h + i - 3, w + j - 3]."""
    k, c, groups = 7, 4, 2
    x = torch.randn(1, c, 9, 9, dtype=torch.float64)
    wt = torch.zeros(1, groups * k * k, 9, 9, dtype=torch.float64)
    wt[0, 1 * 49 + 2 * 7 + 5, 4, 4] = 2.0  # group 1 (channels 2, 3), tap (i=2, j=5) at pixel (4, 4)
    out = dynamic_dwconv(x, wt, k)
    expected = torch.zeros_like(out)
    expected[0, 2:, 4, 4] = 2.0 * x[0, 2:, 4 + 2 - 3, 4 + 5 - 3]
    assert torch.equal(out, expected)


def test_dynamic_dwconv_rejects_bad_shapes():
    with pytest.raises(ValueError):
        dynamic_dwconv(torch.randn(1, 5, 4, 4), torch.randn(1, 2 * 49, 4, 4), 7)  # 5 ch, 2 groups


# --- focal separable attention -------------------------------------------------------------
def test_kernel_map_matches_official_table():
    taps = build_kernel_map((1, 2, 4), (3, 2, 1))
    assert taps == [(-8, 4), (-6, 2), (-4, 2), (-3, 1), (-2, 1), (-1, 1), (0, 1),
                    (1, 1), (2, 1), (3, 1), (4, 2), (6, 2), (8, 4)]
    assert patch_size_of(taps) == 23
    assert patch_size_of(build_kernel_map((1, 2), (3, 3))) == 19  # Table 4, second row
    assert patch_size_of(build_kernel_map((1,), (6,))) == 13  # Table 4, third row
    assert all(len(build_kernel_map(s, n)) == 13 for s, n in [((1, 2), (3, 3)), ((1,), (6,))])


def _fsa_by_hand(x, kernel, taps, dim):
    """Direct loops over the definition (count-include-pad box means)."""
    b, c, h, w = x.shape
    n = len(taps)
    per_group = c // (kernel.shape[1] // n)
    out = torch.zeros_like(x)
    size = w if dim == -1 else h
    for t, (start, length) in enumerate(taps):
        sign = 1 if start >= 0 else -1
        acc = torch.zeros_like(x)
        for i in range(length):
            off = start + i * sign
            shifted = torch.zeros_like(x)
            lo, hi = max(0, -off), min(size, size - off)
            if lo < hi:
                if dim == -1:
                    shifted[..., lo:hi] = x[..., lo + off:hi + off]
                else:
                    shifted[..., lo:hi, :] = x[..., lo + off:hi + off, :]
            acc += shifted
        kt = kernel[:, t::n].repeat_interleave(per_group, dim=1)
        out += kt * acc / length
    return out


@pytest.mark.parametrize("dim", [-1, -2])
def test_focal_attention_reference_matches_definition(dim):
    taps = build_kernel_map()
    x = torch.randn(2, 8, 13, 27, dtype=torch.float64)
    k = torch.randn(2, 4 * len(taps), 13, 27, dtype=torch.float64)
    assert torch.allclose(focal_attention_reference(x, k, taps, dim), _fsa_by_hand(x, k, taps, dim))


@pytest.mark.parametrize("h,w", SIZES)
@pytest.mark.parametrize("dim", [-1, -2])
@pytest.mark.parametrize("strides,steps", [((1, 2, 4), (3, 2, 1)), ((1, 2), (3, 3)), ((1,), (6,))])
def test_focal_attention_matches_reference(h, w, dim, strides, steps):
    taps = build_kernel_map(strides, steps)
    x = torch.randn(2, 32, h, w, dtype=torch.float64)
    k = torch.randn(2, 4 * len(taps), h, w, dtype=torch.float64)
    _compare(lambda a, b: focal_attention(a, b, taps, dim), lambda a, b: focal_attention_reference(a, b, taps, dim), [x, k])


def test_focal_attention_float32_tolerance():
    taps = build_kernel_map()
    x, k = torch.randn(2, 32, 21, 30), torch.randn(2, 52, 21, 30)
    _compare(lambda a, b: focal_attention(a, b, taps, -1), lambda a, b: focal_attention_reference(a, b, taps, -1), [x, k])


# --- test-time local converter ------------------------------------------------------------
def test_tlc_windows_layout():
    # 100 px with k=48: 3 windows, step ceil(52/2)=26 -> 0, 26, then flush 52
    assert [w[0] for w in tlc_windows(100, 10, 48)] == [0, 26, 52]
    assert tlc_windows(30, 20, 48) == ((0, 0, 30, 20),)  # clipped to the image: one window
    wins = tlc_windows(97, 130, 48)
    cover = torch.zeros(97, 130)
    for i, j, kh, kw in wins:
        assert (kh, kw) == (48, 48) and i + kh <= 97 and j + kw <= 130
        cover[i:i + kh, j:j + kw] += 1
    assert cover.min() >= 1


def _toy_global(x):  # depends on global statistics, like the channel attention
    return x * x.mean(dim=(2, 3), keepdim=True) + x.flip(1)


@pytest.mark.parametrize("b,h,w,k", [(1, 1, 1, 48), (2, 50, 97, 48), (3, 96, 96, 48), (2, 71, 33, 24)])
def test_tlc_batched_matches_reference(b, h, w, k):
    x = torch.randn(b, 6, h, w, dtype=torch.float64)
    _compare(lambda a: tlc(_toy_global, a, k), lambda a: tlc_reference(_toy_global, a, k), [x])


def test_tlc_is_identity_for_local_functions():
    x = torch.randn(2, 3, 70, 55, dtype=torch.float64)
    assert torch.allclose(tlc(lambda t: 2 * t + 1, x, 32), 2 * x + 1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_ops_run_in_reduced_precision(dtype):
    if dtype == torch.float16:
        try:
            torch.nn.functional.avg_pool2d(torch.ones(1, 1, 2, 2, dtype=dtype), (1, 2), stride=1)
        except RuntimeError:
            pytest.skip("float16 pooling not supported on this CPU build")
    x = torch.randn(1, 48, 12, 15)
    wt = torch.randn(1, 8 * 49, 12, 15)
    ref = dynamic_dwconv_reference(x, wt, 7)
    out = dynamic_dwconv(x.to(dtype), wt.to(dtype), 7).float()
    assert ((out - ref).abs().max() / ref.abs().max()) < 0.05
    taps = build_kernel_map()
    x2, k2 = torch.randn(1, 32, 12, 15), torch.randn(1, 52, 12, 15)
    ref = focal_attention_reference(x2, k2, taps, -2)
    out = focal_attention(x2.to(dtype), k2.to(dtype), taps, -2).float()
    assert ((out - ref).abs().max() / ref.abs().max()) < 0.05


# --- fused dynamic conv (kernel-generating 1x1 conv inside the op) ---------------------------
@pytest.mark.parametrize("b,c,groups,k,ch,h,w", [(1, 12, 2, 7, 3, 17, 23), (2, 48, 8, 7, 12, 9, 31), (3, 6, 6, 3, 2, 1, 5)])
@pytest.mark.parametrize("bias", [True, False])
def test_dynamic_dwconv_fused_matches_reference(b, c, groups, k, ch, h, w, bias):
    x = torch.randn(b, c, h, w, dtype=torch.float64)
    hidden = torch.randn(b, ch, h, w, dtype=torch.float64)
    cw = torch.randn(groups * k * k, ch, 1, 1, dtype=torch.float64)
    inputs = [x, hidden, cw] + ([torch.randn(groups * k * k, dtype=torch.float64)] if bias else [])

    def fast(*a):
        return dynamic_dwconv_fused(a[0], a[1], a[2], a[3] if bias else None, k)

    def ref(*a):
        return dynamic_dwconv_fused_reference(a[0], a[1], a[2], a[3] if bias else None, k)

    _compare(fast, ref, inputs)


def test_dynamic_dwconv_fused_small_strips(monkeypatch):
    """Many strips (one row each) give the same values and gradients as one strip."""
    import lightsr.ops._common as common

    x, hid = torch.randn(2, 12, 11, 9, dtype=torch.float64), torch.randn(2, 3, 11, 9, dtype=torch.float64)
    cw, cb = torch.randn(98, 3, 1, 1, dtype=torch.float64), torch.randn(98, dtype=torch.float64)
    monkeypatch.setattr(common, "_STRIP_ELEMENTS", 1)
    _compare(lambda *a: dynamic_dwconv_fused(*a, 7), lambda *a: dynamic_dwconv_fused_reference(*a, 7), [x, hid, cw, cb])
    _compare(lambda a, b: dynamic_dwconv(a, b, 7), lambda a, b: dynamic_dwconv_reference(a, b, 7),
             [x, torch.randn(2, 98, 11, 9, dtype=torch.float64)])
    taps = build_kernel_map()
    k2 = torch.randn(2, 2 * 13, 11, 9, dtype=torch.float64)
    for dim in (-1, -2):
        _compare(lambda a, b: focal_attention(a, b, taps, dim), lambda a, b: focal_attention_reference(a, b, taps, dim), [x, k2])


@pytest.mark.parametrize("b,h,w", [(1, 1, 1), (4, 3, 2), (8, 9, 11), (3, 1, 17)])
def test_dynamic_dwconv_batch_side_by_side(b, h, w):
    """The batch shares one padded canvas: images must not leak into their neighbours (values and
    gradients equal the reference, also for images narrower than the kernel), and other images
    beside one change nothing of its output (up to the summation order of the 1x1 products)."""
    x = torch.randn(b, 12, h, w, dtype=torch.float64)
    hid, cw, cb = torch.randn(b, 3, h, w, dtype=torch.float64), torch.randn(98, 3, 1, 1, dtype=torch.float64), torch.randn(98, dtype=torch.float64)
    _compare(lambda *a: dynamic_dwconv_fused(*a, 7), lambda *a: dynamic_dwconv_fused_reference(*a, 7), [x, hid, cw, cb])
    _compare(lambda a, c: dynamic_dwconv(a, c, 7), lambda a, c: dynamic_dwconv_reference(a, c, 7),
             [x, torch.randn(b, 98, h, w, dtype=torch.float64)])
    alone = dynamic_dwconv_fused(x[:1], hid[:1], cw, cb, 7)
    together = dynamic_dwconv_fused(torch.cat([x[:1], 10 * x]), torch.cat([hid[:1], hid]), cw, cb, 7)
    torch.testing.assert_close(alone[0], together[0], rtol=1e-12, atol=1e-12)


def test_dynamic_dwconv_gradients_keep_the_input_layout():
    """Gradients come back in the memory format of the inputs they belong to (a channels-last
    model gets channels-last gradients: mixed-layout convolution backwards are 2x slower)."""
    cl = torch.channels_last
    x = torch.randn(3, 12, 9, 10).contiguous(memory_format=cl).requires_grad_(True)
    hid = torch.randn(3, 3, 9, 10).contiguous(memory_format=cl).requires_grad_(True)
    wt = torch.randn(3, 98, 9, 10).contiguous(memory_format=cl).requires_grad_(True)
    cw = torch.randn(98, 3, 1, 1, requires_grad=True)
    gx, gh = torch.autograd.grad(dynamic_dwconv_fused(x, hid, cw, None, 7).sum(), [x, hid])
    assert gx.is_contiguous(memory_format=cl) and gh.is_contiguous(memory_format=cl)
    gx, gw = torch.autograd.grad(dynamic_dwconv(x, wt, 7).sum(), [x, wt])
    assert gx.is_contiguous(memory_format=cl) and gw.is_contiguous(memory_format=cl)
    x_nchw = x.detach().contiguous().requires_grad_(True)
    (gx,) = torch.autograd.grad(dynamic_dwconv(x_nchw, wt.detach().contiguous(), 7).sum(), [x_nchw])
    assert gx.is_contiguous()


def test_dynamic_dwconv_fused_rejects_bad_shapes():
    x = torch.randn(1, 12, 5, 5)
    with pytest.raises(ValueError):
        dynamic_dwconv_fused(x, torch.randn(1, 3, 5, 6), torch.randn(98, 3, 1, 1), None, 7)  # size mismatch
    with pytest.raises(ValueError):
        dynamic_dwconv_fused(x, torch.randn(1, 3, 5, 5), torch.randn(98, 3, 3, 3), None, 7)  # not 1x1
    with pytest.raises(ValueError):
        dynamic_dwconv_fused(x, torch.randn(1, 3, 5, 5), torch.randn(5 * 49, 3, 1, 1), None, 7)  # 12 % 5


def test_focal_attention_general_tap_lengths():
    """Tap lengths that cannot be built by doubling (3, 5) and an asymmetric map."""
    taps = [(-4, 3), (-1, 1), (0, 1), (1, 3), (4, 5)]
    x = torch.randn(2, 8, 13, 17, dtype=torch.float64)
    k = torch.randn(2, 2 * len(taps), 13, 17, dtype=torch.float64)
    for dim in (-1, -2):
        assert torch.allclose(focal_attention_reference(x, k, taps, dim), _fsa_by_hand(x, k, taps, dim))
        _compare(lambda a, b: focal_attention(a, b, taps, dim), lambda a, b: focal_attention_reference(a, b, taps, dim), [x, k])


# --- layouts, registration, meta ------------------------------------------------------------
def test_ops_accept_channels_last_and_keep_the_layout():
    cl = torch.channels_last
    x = torch.randn(2, 12, 9, 10).contiguous(memory_format=cl)
    wt = torch.randn(2, 2 * 49, 9, 10).contiguous(memory_format=cl)
    out = dynamic_dwconv(x, wt, 7)
    assert out.is_contiguous(memory_format=cl)
    assert torch.allclose(out, dynamic_dwconv_reference(x.contiguous(), wt.contiguous(), 7), atol=1e-5)
    hid, cw = torch.randn(2, 3, 9, 10).contiguous(memory_format=cl), torch.randn(98, 3, 1, 1)
    out = dynamic_dwconv_fused(x, hid, cw, None, 7)
    assert out.is_contiguous(memory_format=cl)
    assert torch.allclose(out, dynamic_dwconv_fused_reference(x, hid, cw, None, 7), atol=1e-5)
    taps = build_kernel_map()
    x2 = torch.randn(1, 64, 9, 10).contiguous(memory_format=cl)[:, 32:]  # channel slice, as in LAMNet
    k2 = torch.randn(1, 52, 9, 10)
    out = focal_attention(x2, k2, taps, -2)
    assert out.is_contiguous(memory_format=cl)
    assert torch.allclose(out, focal_attention_reference(x2.contiguous(), k2, taps, -2), atol=1e-5)


def test_custom_ops_pass_opcheck():
    """Schema, fake (meta) kernel and autograd registration of every custom op are consistent."""
    from torch.library import opcheck

    x, wt = torch.randn(1, 12, 6, 7, dtype=torch.float64), torch.randn(1, 98, 6, 7, dtype=torch.float64)
    hid, cw, cb = torch.randn(1, 3, 6, 7, dtype=torch.float64), torch.randn(98, 3, 1, 1, dtype=torch.float64), torch.randn(98, dtype=torch.float64)
    x2, k2 = torch.randn(1, 8, 6, 7, dtype=torch.float64), torch.randn(1, 26, 6, 7, dtype=torch.float64)
    taps = build_kernel_map()
    starts, lengths = [s for s, _ in taps], [n for _, n in taps]
    for t in (x, wt, hid, cw, cb, x2, k2):
        t.requires_grad_(True)
    cases = [
        (torch.ops.lightsr.dynamic_dwconv.default, (x, wt, 7)),
        (torch.ops.lightsr.dynamic_dwconv_fused.default, (x, hid, cw, cb, 7)),
        (torch.ops.lightsr.focal_attention.default, (x2, k2, starts, lengths, -1, 0)),
        (torch.ops.lightsr.focal_attention.default, (x2, k2, starts, lengths, -2, 0)),
        (torch.ops.lightsr.focal_attention.default, (x2, k2, starts, lengths, -2, 1)),  # tanh of the logits inside
    ]
    for op, args in cases:
        opcheck(op, args, test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))
    # the backward ops, whose outputs follow the inputs' memory format: fake and real strides agree
    cl = torch.channels_last
    xb, gb = torch.randn(2, 12, 6, 7).contiguous(memory_format=cl), torch.randn(2, 12, 6, 7).contiguous(memory_format=cl)
    hb, wb = torch.randn(2, 3, 6, 7).contiguous(memory_format=cl), torch.randn(2, 98, 6, 7).contiguous(memory_format=cl)
    backward_cases = [
        (torch.ops.lightsr.dynamic_dwconv_fused_backward.default, (gb, xb, hb, torch.randn(98, 3, 1, 1), torch.randn(98), 7)),
        (torch.ops.lightsr.dynamic_dwconv_grad_input.default, (gb, wb, 7)),
        (torch.ops.lightsr.dynamic_dwconv_grad_weight.default, (gb, xb, 7, 2)),
    ]
    for op, args in backward_cases:
        for layout in (cl, torch.contiguous_format):
            args = tuple(a.contiguous(memory_format=layout) if isinstance(a, torch.Tensor) and a.dim() == 4 and a.shape[-1] > 1 else a for a in args)
            opcheck(op, args, test_utils=("test_schema", "test_faketensor"))


def test_ops_run_on_meta_device():
    x = torch.empty(2, 48, 180, 320, device="meta")
    assert dynamic_dwconv(x, torch.empty(2, 392, 180, 320, device="meta"), 7).shape == x.shape
    out = dynamic_dwconv_fused(x, torch.empty(2, 12, 180, 320, device="meta"), torch.empty(392, 12, 1, 1, device="meta"), None, 7)
    assert out.device.type == "meta" and out.shape == x.shape
    x2 = torch.empty(1, 32, 180, 320, device="meta")
    assert focal_attention(x2, torch.empty(1, 52, 180, 320, device="meta"), build_kernel_map(), -1).shape == x2.shape


def test_reduced_precision_accumulates_in_float32():
    """bf16 inputs: the fast op is closer to the float64 truth than bf16 math would allow for 49 taps."""
    x, wt = torch.randn(1, 12, 16, 16), torch.randn(1, 98, 16, 16)
    truth = dynamic_dwconv_reference(x.double(), wt.double(), 7)
    xb, wb = x.bfloat16(), wt.bfloat16()
    exact_inputs = dynamic_dwconv_reference(xb.double(), wb.double(), 7)
    out = dynamic_dwconv(xb, wb, 7)
    assert out.dtype == torch.bfloat16
    # float32 accumulation: only the final rounding to bf16 (rel. 2^-8) separates it from the exact
    # result on the bf16 inputs (plus float32 rounding, tiny against the largest output)
    tol = exact_inputs.abs() * 2**-8 + 1e-4 * exact_inputs.abs().max()
    assert ((out.double() - exact_inputs).abs() <= tol).all()
    assert _rel_err(out.double(), truth) < 0.05
    xb.requires_grad_(True)
    dynamic_dwconv(xb, wb, 7).float().sum().backward()
    assert xb.grad.dtype == torch.bfloat16 and torch.isfinite(xb.grad.float()).all()


# --- static depth-wise convolution (fast 1 x K weight gradient) ----------------------------
@pytest.mark.parametrize("h,w", SIZES)
@pytest.mark.parametrize("layout", ["nchw", "channels_last", "channel_slice"])
@pytest.mark.parametrize("b,c,kernel,bias", [(1, 8, (1, 23), True), (3, 5, (1, 7), False), (2, 6, (23, 1), True),
                                             (2, 4, (3, 3), True), (1, 3, (1, 1), True)])
def test_depthwise_conv2d_matches_reference(b, c, kernel, bias, h, w, layout):
    """``channel_slice``: the input is the second half of a channels-last tensor's channels (LAMNet's
    ``proj_in(x).chunk(2)``), not dense but taking the fast transposed weight-gradient path too."""
    g = torch.Generator().manual_seed(h * 100 + w)
    x = torch.randn(b, c, h, w, generator=g)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    wt = torch.randn(c, 1, *kernel, generator=g)
    pad = (kernel[0] // 2, kernel[1] // 2)
    inputs = [x, wt] + ([torch.randn(c, generator=g)] if bias else [])

    def call(op):
        if layout == "channel_slice":  # the op sees x as a channel slice of a twice-as-wide tensor
            def sliced(a, ww, *bb):
                wide = torch.cat([torch.zeros_like(a), a], 1).contiguous(memory_format=torch.channels_last)
                view = wide[:, c:]
                assert view.stride(1) == 1 and (h * w == 1 or not view.is_contiguous(memory_format=torch.channels_last))
                return op(view, ww, bb[0] if bb else None, pad)
            return sliced
        return lambda a, ww, *bb: op(a, ww, bb[0] if bb else None, pad)

    _compare(call(depthwise_conv2d), call(depthwise_conv2d_reference), inputs)


def test_depthwise_conv2d_gradcheck_and_layout():
    x = torch.randn(2, 3, 5, 9, dtype=torch.float64).contiguous(memory_format=torch.channels_last).requires_grad_()
    w = torch.randn(3, 1, 1, 5, dtype=torch.float64, requires_grad=True)
    b = torch.randn(3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, ww, bb: depthwise_conv2d(a, ww, bb, (0, 2)), (x, w, b))
    y = depthwise_conv2d(x, w, b, (0, 2))
    y.sum().backward()
    assert y.is_contiguous(memory_format=torch.channels_last) and w.grad.shape == w.shape
    with pytest.raises(ValueError, match="depth-wise"):
        depthwise_conv2d(x, torch.randn(3, 2, 1, 5, dtype=torch.float64), None, (0, 2))


# --- LayerNorm -----------------------------------------------------------------------------
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
def test_layer_norm_2d_matches_reference(layout):
    x = torch.randn(2, 48, 7, 9, dtype=torch.float64) * 3 + 1
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    w, b = torch.randn(48, dtype=torch.float64), torch.randn(1, 48, 1, 1, dtype=torch.float64)
    _compare(lambda a, ww, bb: layer_norm_2d(a, ww, bb), lambda a, ww, bb: layer_norm_2d_reference(a, ww, bb), [x, w, b])
    assert layer_norm_2d(x, w, b).is_contiguous(memory_format=torch.channels_last)


def test_get_op_switches_every_op():
    from lightsr.ops import OPS, get_op, use_reference_ops

    assert set(OPS) >= {"dynamic_dwconv", "dynamic_dwconv_fused", "focal_attention", "tlc", "layer_norm_2d",
                        "depthwise_conv2d"}
    fast = {n: get_op(n) for n in OPS}
    with use_reference_ops():
        ref = {n: get_op(n) for n in OPS}
        assert preferred_memory_format(torch.empty(1, 3, 4, 4)) == torch.contiguous_format
    assert all(fast[n] is not ref[n] and ref[n].__name__.endswith("_reference") for n in OPS)
    assert preferred_memory_format(torch.empty(1, 3, 4, 4)) == torch.channels_last
    assert preferred_memory_format(torch.empty(1, 3, 4, 4, device="meta")) == torch.contiguous_format


@pytest.mark.parametrize("chunk", [1, 10**9])
def test_tlc_chunking_does_not_change_results(monkeypatch, chunk):
    import importlib

    tlc_module = importlib.import_module("lightsr.ops.tlc")
    monkeypatch.setattr(tlc_module, "_CHUNK_ELEMENTS", chunk)
    x = torch.randn(2, 6, 50, 97, dtype=torch.float64)
    _compare(lambda a: tlc(_toy_global, a, 24), lambda a: tlc_reference(_toy_global, a, 24), [x])


def test_composites_match_reference():
    from lightsr.ops import dynamic_dwconv_composite, focal_attention_composite

    x, wt = torch.randn(2, 12, 9, 11, dtype=torch.float64), torch.randn(2, 98, 9, 11, dtype=torch.float64)
    _compare(lambda a, b: dynamic_dwconv_composite(a, b, 7), lambda a, b: dynamic_dwconv_reference(a, b, 7), [x, wt])
    taps = build_kernel_map()
    x2, k2 = torch.randn(2, 8, 9, 30, dtype=torch.float64), torch.randn(2, 26, 9, 30, dtype=torch.float64)
    for dim in (-1, -2):
        _compare(lambda a, b: focal_attention_composite(a, b, taps, dim), lambda a, b: focal_attention_reference(a, b, taps, dim), [x2, k2])


@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::torch.jit.TracerWarning")
def test_tracing_records_plain_aten_ops():
    """Exporters cannot see into custom ops: while tracing, the wrappers record the composites."""
    taps = build_kernel_map()

    def f(x, hid, cw, k):
        y = dynamic_dwconv_fused(x, hid, cw, None, 7)
        return focal_attention(y[:, :8], k, taps, -2)

    args = (torch.randn(1, 12, 9, 10), torch.randn(1, 3, 9, 10), torch.randn(98, 3, 1, 1), torch.randn(1, 26, 9, 10))
    traced = torch.jit.trace(f, args, check_trace=False)
    kinds = {n.kind() for n in traced.graph.nodes()}
    assert not any(k.startswith("lightsr::") for k in kinds), kinds
    assert torch.allclose(traced(*args), f(*args), atol=1e-5)


def test_depthwise_conv2d_1xk_in_bf16_on_cpu_returns():
    """oneDNN's bf16 depth-wise 1x23 conv on channels-last CPU tensors does not return (torch 2.13):
    both the op and its reference compute it in float32. Checked in a child process so that a regression fails, not hangs."""
    import subprocess
    import sys

    code = r"""
import torch
from lightsr.ops import depthwise_conv2d, depthwise_conv2d_reference
torch.set_num_threads(1)
x = torch.randn(1, 8, 40, 40).contiguous(memory_format=torch.channels_last)
w, b = torch.randn(8, 1, 1, 23), torch.randn(8)
ref = depthwise_conv2d(x, w, b, (0, 11))
errs = []
for op in (depthwise_conv2d, depthwise_conv2d_reference):
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = op(x, w, b, (0, 11))
    z = op(x.bfloat16(), w.bfloat16(), b.bfloat16(), (0, 11))
    assert z.dtype == torch.bfloat16
    errs += [(y.float() - ref).abs().max().item(), (z.float() - ref).abs().max().item()]
print(max(errs) / ref.abs().max().item())
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert float(out.stdout) < 2e-2  # bf16 inputs rounded (rel. 2^-8 each)


@pytest.mark.parametrize("kernel", [(23, 1), (3, 3)])
def test_depthwise_conv2d_backward_under_autocast(kernel):
    """Under autocast the op casts its operands itself and saves those: its backward (run outside
    autocast) used to see a bfloat16 input beside the float32 weight and raise. Gradients match the
    reference's (autograd through an autocast F.conv2d) and reach the float32 parameters in float32."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 8, 17, 13, generator=g)
    w = (torch.randn(8, 1, *kernel, generator=g) * 0.2).requires_grad_(True)
    b = torch.randn(8, generator=g).requires_grad_(True)
    pad = (kernel[0] // 2, kernel[1] // 2)
    grads = []
    for op in (depthwise_conv2d, depthwise_conv2d_reference):
        xx = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            y = op(xx.bfloat16() * 1, w, b, pad)  # bf16 activations, float32 parameters, as in a model
        assert y.dtype == torch.bfloat16
        y.float().square().sum().backward()
        assert w.grad.dtype == torch.float32 and b.grad.dtype == torch.float32
        grads.append([t.grad.clone() for t in (xx, w, b)])
        w.grad = b.grad = None
    for fast, ref in zip(*grads):
        assert _rel_err(fast, ref) < 2e-2


class _SeenOps:
    """A pass-through dispatch mode recording the lightsr custom ops it sees (as FlopCounterMode would)."""

    def __new__(cls):
        from torch.utils._python_dispatch import TorchDispatchMode

        class Mode(TorchDispatchMode):
            def __init__(self):
                super().__init__()
                self.lightsr = set()

            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                if func.namespace == "lightsr":
                    self.lightsr.add(func.__name__.split(".")[0])
                return func(*args, **(kwargs or {}))

        return Mode()


def _direct_cases():
    g = torch.Generator().manual_seed(5)
    x, wt = torch.randn(2, 12, 9, 11, generator=g), torch.randn(2, 98, 9, 11, generator=g)
    hid, cw, cb = torch.randn(2, 3, 9, 11, generator=g), torch.randn(98, 3, 1, 1, generator=g), torch.randn(98, generator=g)
    x2, k2 = torch.randn(2, 8, 9, 30, generator=g), torch.randn(2, 26, 9, 30, generator=g)
    taps = build_kernel_map()
    return [
        ("dynamic_dwconv", lambda a, b: dynamic_dwconv(a, b, 7), (x, wt)),
        ("dynamic_dwconv_fused", lambda a, b, c, d: dynamic_dwconv_fused(a, b, c, d, 7), (x, hid, cw, cb)),
        ("focal_attention", lambda a, b: focal_attention(a, b, taps, -1), (x2, k2)),
        ("focal_attention", lambda a, b: focal_attention(a, b, taps, -2), (x2, k2)),
    ]


@pytest.mark.parametrize("case", range(4))
def test_direct_eager_path_equals_the_custom_op(case):
    """In plain eager mode the fast ops call their implementation directly (no custom-op machinery);
    under a dispatch mode they go through the registered custom op. Same values and gradients."""
    name, fn, inputs = _direct_cases()[case]

    def run():
        xs = [t.clone().requires_grad_(True) for t in inputs]
        out = fn(*xs)
        out.backward(torch.linspace(-1, 1, out.numel()).view_as(out))
        return out.detach(), [t.grad for t in xs]

    out_d, grads_d = run()
    with _SeenOps() as mode:
        out_c, grads_c = run()
    assert name in mode.lightsr  # the forward went through the custom op, and so did its backward
    assert any(n.endswith("backward") or "grad" in n for n in mode.lightsr)
    assert torch.equal(out_d, out_c)
    for a, b in zip(grads_d, grads_c):  # the same code; float32 rounding of aten calls under the mode
        assert _rel_err(a, b) < 1e-6


def test_eager_models_do_not_import_dynamo():
    """The custom ops' first call imports torch._dynamo (2-3 s); plain eager inference and training
    steps must not pay it (a fresh process: other tests may have imported it here)."""
    import subprocess
    import sys

    code = (
        "import sys, torch, lightsr\n"
        "for name in ('dlgsanet_tiny', 'lamnet'):\n"
        "    m = lightsr.create_model(name, 2, **({'num_groups': 1, 'num_blocks': 1} if name == 'lamnet' else {}))\n"
        "    with torch.inference_mode():\n"
        "        m.eval()(torch.rand(1, 3, 12, 13))\n"
        "    m.train()(torch.rand(2, 3, 12, 13)).mean().backward()\n"
        "print('torch._dynamo' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_profiles_name_the_custom_ops():
    """Under the torch profiler the fast ops go through the custom op, so profiles (benchmarks/
    model_speed.py --profile, --profile-train) can attribute time to ``lightsr::`` ops."""
    from torch.profiler import ProfilerActivity, profile

    _, fn, inputs = _direct_cases()[2]
    xs = [t.clone().requires_grad_(True) for t in inputs]
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn(*xs).sum().backward()
    names = {e.name for e in prof.events()}
    assert "lightsr::focal_attention" in names and "lightsr::focal_attention_backward" in names
