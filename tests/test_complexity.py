"""MAC counting: hand-computed counts on toy modules, every custom op, TLC windows, top-k attention,
and the registered models against the numbers printed in the papers."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from lightsr.complexity import (
    HD_LR_SIZES,
    PAPER_MACS,
    count_macs,
    count_model_macs,
    lr_size_for_hd,
)
from lightsr.models.dlgsanet import SparseGSA
from lightsr.models.lgun import DGSA
from lightsr.ops import (
    build_kernel_map,
    dynamic_dwconv,
    dynamic_dwconv_fused,
    focal_attention,
    tlc_windows,
)


class _Fn(nn.Module):
    def __init__(self, fn, *params):
        super().__init__()
        self.fn = fn
        self.p = nn.ParameterList(params)

    def forward(self, x):
        return self.fn(x, *self.p)


@pytest.mark.parametrize("device", ["meta", "cpu"])
def test_plain_layers(device):
    assert count_macs(nn.Conv2d(3, 8, 3, padding=1), (1, 3, 10, 12), device=device).macs == 8 * 3 * 9 * 10 * 12
    dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
    assert count_macs(dw, (2, 8, 10, 12), device=device).macs == 8 * 9 * 2 * 10 * 12
    lin = nn.Linear(16, 32)
    assert count_macs(lin, (4, 16), device=device).macs == 4 * 16 * 32
    mm = _Fn(lambda x, w: x @ w, nn.Parameter(torch.randn(2, 7, 3)))
    report = count_macs(mm, (2, 5, 7), device=device)
    assert report.macs == 2 * 5 * 7 * 3 and report.by_op == {"matmul": 210}


def test_grouped_conv_backward_counts_groups():
    """torch's own formula counts a depth-wise conv's backward ``groups`` times too high."""
    x = (1, 8, 10, 12)
    for conv in (nn.Conv2d(8, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Conv2d(8, 16, (1, 5), padding=(0, 2), groups=4)):
        fwd = count_macs(conv, x).macs
        train = count_macs(nn.Sequential(nn.Conv2d(8, 8, 1), conv), x, backward=True)
        first = 8 * 8 * 10 * 12
        # forward of both; backward: grad weight of the 1x1, grad input + grad weight of ``conv``
        assert train.by_op == {"conv": first + fwd, "conv_backward": first + 2 * fwd}


def test_bias_norm_activation_are_not_counted():
    m = nn.Sequential(nn.Conv2d(4, 4, 1, bias=True), nn.GroupNorm(1, 4), nn.GELU(), nn.Softmax(dim=1))
    assert count_macs(m, (1, 4, 5, 5)).macs == 4 * 4 * 25


def test_dynamic_dwconv_formula():
    b, c, h, w, k = 2, 12, 6, 7, 7
    m = _Fn(lambda x, wt: dynamic_dwconv(x, wt, k), nn.Parameter(torch.randn(b, 2 * k * k, h, w)))
    report = count_macs(m, (b, c, h, w))
    assert report.macs == k * k * b * c * h * w
    assert report.custom_macs == report.macs and report.tracer_visible_macs == 0


def test_dynamic_dwconv_fused_formula():
    b, c, h, w, k, ch = 2, 12, 6, 7, 7, 3
    m = _Fn(
        lambda x, hid, cw, cb: dynamic_dwconv_fused(x, hid, cw, cb, k),
        nn.Parameter(torch.randn(b, ch, h, w)),
        nn.Parameter(torch.randn(2 * k * k, ch, 1, 1)),
        nn.Parameter(torch.randn(2 * k * k)),
    )
    report = count_macs(m, (b, c, h, w))
    apply, kernel_conv = k * k * b * c * h * w, b * h * w * ch * 2 * k * k
    assert report.by_op == {"dynamic_dwconv": apply, "dynamic_dwconv_kernel_conv": kernel_conv}
    assert report.macs == apply + kernel_conv
    assert report.tracer_visible_macs == kernel_conv  # the 1x1 conv is a plain conv in the official code


def test_focal_attention_formula():
    taps = build_kernel_map()
    m = _Fn(lambda x, k: focal_attention(focal_attention(x, k, taps, -1), k, taps, -2), nn.Parameter(torch.randn(1, 52, 5, 9)))
    report = count_macs(m, (1, 32, 5, 9))
    assert report.by_op == {"focal_attention": 2 * 13 * 32 * 5 * 9}


def test_custom_op_backward_formulas():
    """Training counts: grad input and grad weight each cost one apply; the fused op also
    recomputes its kernels and back-propagates through the 1x1 (3 convs)."""
    b, c, h, w, k, ch = 1, 12, 5, 6, 7, 3
    x = torch.randn(b, c, h, w, requires_grad=True)
    wt = torch.randn(b, 2 * k * k, h, w, requires_grad=True)
    counter = FlopCounterMode(display=False)
    with counter:
        dynamic_dwconv(x, wt, k).sum().backward()
    assert counter.get_total_flops() // 2 == 3 * k * k * b * c * h * w
    hid, cw = torch.randn(b, ch, h, w, requires_grad=True), torch.randn(2 * k * k, ch, 1, 1, requires_grad=True)
    counter = FlopCounterMode(display=False)
    with counter:
        dynamic_dwconv_fused(x, hid, cw, None, k).sum().backward()
    conv = b * h * w * ch * 2 * k * k
    assert counter.get_total_flops() // 2 == 3 * k * k * b * c * h * w + 4 * conv
    taps = build_kernel_map()
    x2, k2 = torch.randn(1, 8, 5, 6, requires_grad=True), torch.randn(1, 26, 5, 6, requires_grad=True)
    counter = FlopCounterMode(display=False)
    with counter:
        focal_attention(x2, k2, taps, -1).sum().backward()
    assert counter.get_total_flops() // 2 == 3 * 13 * 8 * 5 * 6


def test_tlc_windows_count_their_attention_matmuls():
    dim, heads, h, w, kernel = 12, 6, 20, 30, 8
    m = SparseGSA(dim, heads, tlc=True, tlc_kernel=kernel).eval()
    convs = dim * 3 * dim * h * w + 3 * dim * 9 * h * w + dim * dim * h * w
    per_window = 2 * heads * (dim // heads) ** 2 * kernel * kernel  # q k^T and attn v
    n_windows = len(tlc_windows(h, w, kernel))
    assert n_windows == 12
    report = count_macs(m, (1, dim, h, w))
    assert report.by_op == {"conv": convs, "matmul": n_windows * per_window}
    m.tlc = False
    assert count_macs(m, (1, dim, h, w)).by_op["matmul"] == 2 * heads * (dim // heads) ** 2 * h * w


def test_topk_attention_counts_two_matmuls():
    """Top-k selection and the three softmaxes are not MACs; the fused map multiplies v once."""
    dim, h, w = 8, 6, 7
    m = DGSA(dim, num_heads=1).eval()
    convs = dim * 3 * dim * h * w + 3 * dim * 9 * h * w + dim * dim * h * w
    report = count_macs(m, (1, dim, h, w))
    assert report.by_op == {"conv": convs, "matmul": 2 * dim * dim * h * w}


def test_meta_count_leaves_the_model_untouched():
    m = nn.Conv2d(3, 4, 3)
    before = m.weight.detach().clone()
    count_macs(m, (1, 3, 8, 8))
    assert m.weight.device.type == "cpu" and torch.equal(m.weight, before)


def test_hd_sizes():
    assert {s: lr_size_for_hd(s) for s in (2, 3, 4)} == HD_LR_SIZES
    assert lr_size_for_hd(4) == (180, 320)


# --- models against the papers ----------------------------------------------------------------
@pytest.mark.parametrize("name,scale", sorted(PAPER_MACS))
def test_models_within_five_percent_of_the_paper_as_their_counters_count(name, scale):
    """With the custom ops counted as 0 (what the papers' tracer-based counters could see), every
    model is within 5% of every number its paper (or the LAMNet paper's comparison table) prints."""
    report = count_model_macs(name, scale)
    for gmacs, source in PAPER_MACS[(name, scale)]:
        gap = report.tracer_visible_macs / 1e9 / gmacs - 1
        assert abs(gap) < 0.05, (name, scale, source, report.tracer_visible_macs / 1e9, gmacs)


def test_lamnet_matches_its_paper_to_the_printed_digits_without_fsa():
    """LAMNet's paper used fvcore, which counts its CUDA FSA op as 0 (conventions 2e)."""
    report = count_model_macs("lamnet", 4)
    assert round(report.tracer_visible_macs / 1e9, 1) == 47.5
    assert report.by_op["focal_attention"] == 24 * 2 * 13 * 32 * 180 * 320


def test_dlgsanet_dynamic_conv_is_what_its_paper_left_out():
    report = count_model_macs("dlgsanet_tiny", 3)
    assert report.by_op["dynamic_dwconv"] == 9 * 49 * 48 * 240 * 427  # 9 MHDLSA layers
    assert report.macs / 1e9 / 56.8 - 1 > 0.05 > report.tracer_visible_macs / 1e9 / 56.8 - 1


def test_training_step_count_is_about_three_times_the_forward():
    fwd = count_model_macs("lamnet", 4, (48, 48), batch=2)
    train = count_model_macs("lamnet", 4, (48, 48), batch=2, backward=True)
    # backward = grad input + grad weight (the first conv needs no grad input)
    assert 2.8 < train.macs / fwd.macs < 3.0
