"""Paper ablation switches are constructor options; each builds, runs and changes what it should."""
from __future__ import annotations

import pytest
import torch

from lightsr.models import count_parameters, create_model
from lightsr.models.dlgsanet import SparseGSA, collect_attention_sparsity
from lightsr.models.lamnet import information_exchange
from lightsr.models.lgun import DGSA, MLHA


def _params(name, scale=2, **opt):
    with torch.device("meta"):
        return count_parameters(create_model(name, scale, **opt))


def _runs(name, scale=2, **opt):
    m = create_model(name, scale, **opt).eval()
    with torch.no_grad():
        y = m(torch.rand(2, 3, 14, 19))
    assert y.shape == (2, 3, 14 * scale, 19 * scale) and torch.isfinite(y).all()
    return m


# --- DLGSANet: Tables 3, 5, 6 ---------------------------------------------------------------
@pytest.mark.parametrize("act", ["relu", "softmax", "sigmoid", "gelu"])
def test_dlgsanet_attention_activations(act):
    m = _runs("dlgsanet_tiny", attention_activation=act)
    assert all(a.activation == act for a in m.modules() if isinstance(a, SparseGSA))
    assert _params("dlgsanet_tiny", attention_activation=act) == 565_710  # parameter-free switch


def test_dlgsanet_softmax_rows_sum_to_one_and_relu_is_sparse():
    gsa = SparseGSA(12, num_heads=2, activation="softmax", tlc=False)
    qkv = torch.randn(1, 36, 9, 9)
    q, k, _ = qkv.reshape(1, 3, 2, 6, 81).unbind(1)
    attn = gsa._activate((torch.nn.functional.normalize(q, dim=-1) @ torch.nn.functional.normalize(k, dim=-1).transpose(-2, -1)))
    assert torch.allclose(attn.sum(-1), torch.ones(1, 2, 6))
    relu = SparseGSA(12, num_heads=2, activation="relu", tlc=False)
    with collect_attention_sparsity(relu) as log:
        relu.attend(qkv)
    share = torch.cat(log)
    assert share.shape == (2,) and (share > 0).all() and (share < 1).all()


@pytest.mark.parametrize("hdtb", ["local_global", "local_local", "global_global"])
def test_dlgsanet_hdtb_compositions(hdtb):
    m = _runs("dlgsanet_tiny", hdtb=hdtb)
    n_attn = sum(isinstance(a, SparseGSA) for a in m.modules())
    assert n_attn == {"local_global": 9, "local_local": 0, "global_global": 18}[hdtb]


def test_dlgsanet_tlc_switch_and_batched_equivalence():
    m = create_model("dlgsanet_tiny", 4).eval()
    x = torch.rand(2, 3, 60, 53)
    with torch.no_grad():
        assert m.tlc_enabled  # on by default, as the official test configs
        on = m(x)
        per_image = torch.cat([m(x[i:i + 1]) for i in range(2)])
        m.set_tlc(False)
        assert not m.tlc_enabled
        off = m(x)
        m.set_tlc(True, kernel=128)  # window larger than the image: TLC = global attention
        big = m(x)
    assert torch.allclose(on, per_image, atol=1e-5)  # batch > 1 supported in the TLC path
    assert not torch.allclose(on, off, atol=1e-4)  # 60x53 > 48: TLC changes the result
    assert torch.allclose(big, off, atol=1e-5)
    # train mode never uses TLC
    m.train().set_tlc(True, kernel=48)
    with torch.no_grad():
        assert torch.allclose(m(x), off, atol=1e-5)


def test_dlgsanet_tlc_defaults_per_scale():
    for scale, k in [(2, 96), (3, 72), (4, 48)]:
        m = create_model("dlgsanet_light", scale)
        assert {a.tlc_kernel for a in m.modules() if isinstance(a, SparseGSA)} == {k}
    m = create_model("dlgsanet_light", 4, tlc=False, tlc_kernel=64)
    assert all(not a.tlc and a.tlc_kernel == 64 for a in m.modules() if isinstance(a, SparseGSA))


# --- LAMNet: Table 4 -------------------------------------------------------------------------
@pytest.mark.parametrize("strides,steps,params", [
    ((1, 2, 4), (3, 2, 1), 828_364),  # paper 828K, window 23
    ((1, 2), (3, 3), 822_220),  # paper 822K, window 19
    ((1,), (6,), 813_004),  # paper 813K, window 13
])
def test_lamnet_fsa_window_settings(strides, steps, params):
    assert _params("lamnet", fsa_strides=strides, fsa_steps=steps) == params
    _runs("lamnet", fsa_strides=strides, fsa_steps=steps)


@pytest.mark.parametrize("opt,params", [
    (dict(csm="linear"), 827_980),  # paper 828K
    (dict(csm="none"), 802_636),  # paper 803K
    (dict(iem=False), 828_364),  # paper 828K (parameter-free module)
    (dict(ffn="ffn"), 797_644),  # paper 798K
    (dict(ffn="gdfn"), 730_060),  # paper prints 760K; see docs/models.md
])
def test_lamnet_module_ablations(opt, params):
    assert _params("lamnet", **opt) == params
    _runs("lamnet", **opt)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])  # einsum / the pixel-row products
def test_lamnet_iem_formula(layout):
    torch.manual_seed(1)
    x_c, x_s = torch.randn(2, 4, 3, 5), torch.randn(2, 4, 3, 5)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    a, b = (t.contiguous(memory_format=fmt).requires_grad_(True) for t in (x_c, x_s))
    out_s, out_c = information_exchange(a, b)
    s = x_s.mean(dim=(2, 3))  # (B, C)
    m = torch.sigmoid((s[:, :, None, None] * x_c).sum(1, keepdim=True) / 4)
    t = x_c.mean(dim=1, keepdim=True)
    n = torch.sigmoid((x_s * t).sum(dim=(2, 3), keepdim=True) / 15)
    assert torch.allclose(out_s, m * x_c, atol=1e-6) and torch.allclose(out_c, n * x_s, atol=1e-6)
    (out_s.sum() + out_c.square().sum()).backward()  # differentiable on both paths
    assert torch.isfinite(a.grad).all() and torch.isfinite(b.grad).all()


# --- LGUN: Table 3 -------------------------------------------------------------------------
def test_lgun_structure_default():
    m = create_model("lgun", 4)
    kinds = [type(b.mixer).__name__ for b in m.body]
    assert kinds == ["MLHA"] * 8 + ["DGSA"] * 8


@pytest.mark.parametrize("opt,kinds", [
    (dict(mlha=False), ["DGSA"] * 16),
    (dict(dgsa=False), ["MLHA"] * 16),
    (dict(num_mlha=4), ["MLHA"] * 4 + ["DGSA"] * 12),
])
def test_lgun_mixer_ablations(opt, kinds):
    m = _runs("lgun", **opt)
    assert [type(b.mixer).__name__ for b in m.body] == kinds


def test_lgun_stf_and_lkcs_ablations():
    no_stf = _runs("lgun", stf=False)
    assert not no_stf.body[0].mixer.stf
    same = _runs("lgun", identical_lkcs=True)
    ks = [l.dw.kernel_size[0] for l in same.body[0].mixer.lkcs]
    assert ks == [5, 5, 5]
    ks = [(l.dw.kernel_size[0], l.dw_d.kernel_size[0], l.pw.kernel_size[0]) for l in create_model("lgun", 2).body[0].mixer.lkcs]
    assert ks == [(3, 5, 1), (5, 7, 1), (7, 9, 1)]


def test_mlha_split_transform_fusion_equations():
    torch.manual_seed(0)
    mlha = MLHA(8, ((3, 5, 1), (5, 7, 1), (7, 9, 1)))
    x = torch.randn(1, 8, 11, 12)
    f = mlha.proj_in(x)
    x1, x2, x3, x4 = f.chunk(4, 1)
    y1 = x1
    y2 = mlha.lkcs[0](x2 + y1)
    y3 = mlha.lkcs[1](x3 + y2)
    y4 = mlha.lkcs[2](x4 + y3)
    assert torch.allclose(mlha(x), mlha.proj_out(f * torch.cat([y1, y2, y3, y4], 1)), atol=1e-6)


@pytest.mark.parametrize("ratios", [(), (0.5,), (1 / 2, 2 / 3, 3 / 4), (1 / 2, 2 / 3, 3 / 4, 4 / 5)])
def test_lgun_topk_modes(ratios):
    m = _runs("lgun", topk_ratios=list(ratios))
    dgsa = m.body[-1].mixer
    assert len(dgsa.topk) == len(ratios)
    if ratios == (1 / 2, 2 / 3, 3 / 4):
        assert dgsa.topk == [32, 42, 48] and torch.allclose(dgsa.stage_weights, torch.full((3,), 0.1))


def test_dgsa_topk_keeps_k_entries_per_row():
    dgsa = DGSA(16, num_heads=2, topk_ratios=(0.5,), weight_init=1.0)
    attn = torch.randn(3, 2, 8, 8)
    a = dgsa.attention(attn)
    assert ((a > 0).sum(-1) == 4).all()  # k = 8 * 1/2 nonzero entries per row
    assert torch.allclose(a.sum(-1), torch.ones(3, 2, 8))
    # kept entries are the row's largest
    top = attn.topk(4, dim=-1).indices
    assert torch.equal(torch.sort(top, -1).values, torch.sort(a.topk(4, dim=-1).indices, -1).values)
