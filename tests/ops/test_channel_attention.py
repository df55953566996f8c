"""The copy-free channel attention against the official formula: values and gradients (q, k, v and
the temperature), heads, batch > 1, odd sizes, channels-last and NCHW, the activations the models use."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from lightsr.ops import channel_attention, channel_attention_reference


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
