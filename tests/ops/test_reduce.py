"""spatial_mean (the squeeze of LGUN's SE gate) and channel_mean (LAMNet's IEM) against their references."""
import pytest
import torch

from lightsr.ops import channel_mean, channel_mean_reference, spatial_mean, spatial_mean_reference


MEANS = {  # fast, reference, the reduced dims
    "spatial": (spatial_mean, spatial_mean_reference, (2, 3)),
    "channel": (channel_mean, channel_mean_reference, (1,)),
}


@pytest.mark.parametrize("which", sorted(MEANS))
@pytest.mark.parametrize("shape", [(1, 128, 1, 1), (2, 16, 7, 9), (3, 5, 13, 4), (1, 32, 1, 1)])
@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_means_match_reference(which, shape, layout, dtype):
    fast, reference, dims = MEANS[which]
    torch.manual_seed(0)
    x = (torch.randn(shape) + 0.5).to(dtype).contiguous(memory_format=layout)
    got, want = fast(x), reference(x)
    exact = x.double().mean(dim=dims, keepdim=True)
    assert got.shape == want.shape == exact.shape and got.dtype == want.dtype
    tol = 1e-6 if dtype == torch.float32 else 2 ** -8  # bfloat16: one rounding of the result either way
    assert torch.allclose(got.double(), exact, rtol=tol, atol=tol)
    assert torch.allclose(want.double(), exact, rtol=tol, atol=tol)


@pytest.mark.parametrize("which", sorted(MEANS))
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mean_gradients_match_reference(which, dtype):
    """The same gradient as aten's mean (bf16 channels-last takes the product, float32 aten)."""
    fast, reference, _ = MEANS[which]
    x = torch.randn(2, 8, 5, 6, dtype=dtype).contiguous(memory_format=torch.channels_last)
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    for t, fn in ((a, fast), (b, reference)):
        out = fn(t)
        (out * torch.arange(float(out.numel())).view(out.shape)).sum().backward()
    tol = 1e-6 if dtype == torch.float32 else 2 ** -8
    assert torch.allclose(a.grad.float(), b.grad.float(), rtol=tol, atol=1e-6)


@pytest.mark.parametrize("which", sorted(MEANS))
@pytest.mark.parametrize("shape", [(1, 3, 1, 1), (3, 7, 5, 9)])
def test_mean_gradient_is_a_broadcast_view(which, shape):
    """The input's gradient is ``g / N`` broadcast (zero strides over the averaged axes: nothing of
    the map's size is written); added onto the map's other gradient it stays channels-last."""
    fast, reference, dims = MEANS[which]
    x = torch.randn(shape).contiguous(memory_format=torch.channels_last).requires_grad_()
    (grad,) = torch.autograd.grad(fast(x), x, torch.randn(fast(x).shape))
    assert all(grad.stride(d) == 0 for d in dims if shape[d] > 1)
    y = x.detach().clone().requires_grad_()
    for t, fn in ((x, fast), (y, reference)):
        (fn(t) * 3).sum().backward()
        (t * t).sum().backward()  # a second consumer of the map
    assert torch.allclose(x.grad, y.grad, rtol=1e-6, atol=1e-6)
    assert x.grad.is_contiguous(memory_format=torch.channels_last)


def test_lgun_se_gate_matches_the_reference_mean():
    from lightsr.models.lgun import SqueezeExcitation

    se = SqueezeExcitation(16).to(torch.bfloat16)
    x = torch.randn(1, 16, 9, 11, dtype=torch.bfloat16).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        want = torch.sigmoid(se.fc2(torch.relu(se.fc1(spatial_mean_reference(x)))))
        assert torch.allclose(se.gate(x).float(), want.float(), atol=2 ** -7)


def test_lamnet_information_exchange_bf16_matches_float32():
    from lightsr.models.lamnet import information_exchange

    torch.manual_seed(2)
    xc, xs = (torch.randn(2, 8, 6, 7).bfloat16().contiguous(memory_format=torch.channels_last) for _ in range(2))
    with torch.no_grad():
        got = information_exchange(xc, xs)
        want = information_exchange(xc.float().contiguous(), xs.float().contiguous())  # the NCHW einsum path
    for g, w in zip(got, want):
        assert g.dtype == torch.bfloat16 and torch.allclose(g.float(), w, rtol=2 ** -6, atol=2 ** -6)
