"""The native (C) focal attention against the reference op: values and gradients in float32, odd
sizes, batch > 1, every group width path, layouts, threads; building, caching and falling back."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from lightsr.ops import _native, build_kernel_map, focal_attention, focal_attention_reference

needs_native = pytest.mark.skipif(not _native.available(), reason=f"native kernel not built: {_native.build_error()}")

SIZES = [(1, 1), (1, 23), (17, 23), (40, 31), (8, 8), (48, 48)]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-12)).item()


def _cl(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last)


def _check_against_reference(x, k, taps, dim, tol=2e-6, activation=None):
    """Native (float32, channels-last x: the layout that takes the native kernel) forward and both
    gradients vs the float64 reference op."""
    x64, k64 = x.detach().double().requires_grad_(True), k.detach().double().requires_grad_(True)
    ref = focal_attention_reference(x64, k64, taps, dim, activation)
    g = torch.randn(ref.shape, dtype=torch.float64)
    ref.backward(g)
    xf, kf = x.detach().clone(memory_format=torch.preserve_format), k.detach().clone(memory_format=torch.preserve_format)
    xf.requires_grad_(True), kf.requires_grad_(True)
    out = focal_attention(xf, kf, taps, dim, activation)
    out.backward(g.float())
    assert out.dtype == torch.float32 and out.shape == ref.shape
    assert _rel(out, ref) < tol
    assert _rel(xf.grad, x64.grad) < tol
    assert _rel(kf.grad, k64.grad) < tol
    return out, xf.grad, kf.grad


@needs_native
@pytest.mark.parametrize("h,w", SIZES)
@pytest.mark.parametrize("dim", [-1, -2])
@pytest.mark.parametrize("c,groups", [(32, 4), (16, 2), (32, 2), (9, 3), (8, 1)])  # 8-wide x 4 / x G, 16-wide, generic
def test_native_matches_reference(h, w, dim, c, groups):
    taps = build_kernel_map()
    x = _cl(torch.randn(2, c, h, w))
    k = torch.randn(2, groups * len(taps), h, w)  # NCHW kernel: converted inside
    _check_against_reference(x, k, taps, dim)


@needs_native
@pytest.mark.parametrize("h,w", [(1, 1), (17, 23), (48, 48)])
@pytest.mark.parametrize("c,groups", [(32, 4), (16, 1), (9, 3)])
def test_native_fused_tanh_matches_reference(h, w, c, groups):
    """activation='tanh': the kernel holds logits (LAMNet's predictors end in tanh); the native
    kernel applies tanh itself (vectorised tanhf where libmvec exists) and returns the logits'
    gradient. Logits up to +-12 cover tanh's saturated range."""
    taps = build_kernel_map()
    x = _cl(torch.randn(2, c, h, w))
    k = _cl(torch.randn(2, groups * len(taps), h, w) * 4)
    for dim in (-1, -2):
        _check_against_reference(x, k, taps, dim, tol=1e-5, activation="tanh")  # 1 - tanh^2 near saturation: float32 cancellation


@needs_native
def test_native_tanh_saturates_and_keeps_nan():
    """Logits beyond the rational fit's clamp (+-9), infinities and a NaN: tanh is +-1 outside, NaN
    stays NaN (only the outputs whose taps read it)."""
    taps = build_kernel_map()
    x = _cl(torch.randn(1, 32, 3, 40))
    k = _cl(torch.randn(1, 4 * len(taps), 3, 40) * 30)
    k[0, :, 0, 5] = float("inf")
    k[0, :, 1, 6] = float("-inf")
    k[0, 3, 2, 7] = float("nan")
    with torch.no_grad():
        out = focal_attention(x, k, taps, -1, "tanh")
        ref = focal_attention_reference(x.double(), torch.tanh(k.double()), taps, -1)
    nan = ref.isnan()
    assert nan.any() and torch.equal(out.isnan(), nan)
    assert _rel(out[~nan], ref[~nan]) < 1e-5


def test_tanh_activation_on_every_path():
    """The PyTorch path (native off) and float64 (never native) apply the same tanh."""
    taps = build_kernel_map()
    x, k = torch.randn(2, 8, 7, 9, dtype=torch.float64), torch.randn(2, 26, 7, 9, dtype=torch.float64) * 3
    for dim in (-1, -2):
        _check_against_reference(_cl(x.float()), k.float(), taps, dim, tol=1e-5, activation="tanh")
        with _native.use_native(False):
            _check_against_reference(x.float(), k.float(), taps, dim, tol=1e-5, activation="tanh")
        ref = focal_attention_reference(x, torch.tanh(k), taps, dim)
        assert torch.allclose(focal_attention(x, k, taps, dim, "tanh"), ref, atol=1e-12)
    with pytest.raises(ValueError):
        focal_attention(x, k, taps, -1, "relu")


@needs_native
def test_without_vector_tanh_the_wrapper_applies_torch_tanh(monkeypatch):
    """A library built without libmvec (scalar tanhf would be slower than torch.tanh): the wrapper
    applies torch.tanh and calls the kernel without the activation; same results."""
    taps = build_kernel_map()
    x, k = _cl(torch.randn(2, 32, 9, 12)), _cl(torch.randn(2, 52, 9, 12) * 3)
    fused = focal_attention(x, k, taps, -2, "tanh")
    monkeypatch.setitem(_native._state, "vector_tanh", False)
    calls = []
    real = _native.fsa_forward
    monkeypatch.setattr(_native, "fsa_forward", lambda *a: calls.append(a[-1]) or real(*a))
    plain = focal_attention(x, k, taps, -2, "tanh")
    assert calls == [0]
    assert torch.allclose(fused, plain, atol=1e-6)


@needs_native
@pytest.mark.parametrize("taps", [build_kernel_map((1, 2), (3, 3)), build_kernel_map((1,), (6,)),
                                  [(-4, 3), (-1, 1), (0, 1), (1, 3), (4, 5)], [(0, 2), (1, 2)],
                                  [(2, 1), (3, 4)], [(-3, 2), (-5, 3)], [(-2, 6), (5, 8)],
                                  [(t, 1) for t in range(-4, 4)], [(t, 1) for t in range(-8, 9)]])
def test_native_general_taps(taps):
    """Other tap tables of the paper's Table 4, lengths not built by doubling, overlapping taps, windows
    that leave out the pixel itself (all taps on one side), lines shorter than the taps; 8 and 17 taps
    (the backward reduces the kernel gradient eight taps at a time)."""
    for dim in (-1, -2):
        for h, w in ((11, 26), (1, 1), (2, 3)):
            _check_against_reference(_cl(torch.randn(3, 16, h, w)), _cl(torch.randn(3, 2 * len(taps), h, w)), taps, dim)


@needs_native
def test_native_equals_pytorch_path_and_keeps_layouts():
    """The same numbers as the PyTorch implementation, channel slices of channels-last tensors (as in
    LAMNet) and NCHW inputs alike; outputs and gradients come back in the inputs' layouts."""
    taps = build_kernel_map()
    cl = torch.channels_last
    base = torch.randn(3, 64, 13, 21).contiguous(memory_format=cl)
    for x, k in [(base[:, 32:], torch.randn(3, 52, 13, 21).contiguous(memory_format=cl)),
                 (torch.randn(3, 32, 13, 21), torch.randn(3, 52, 13, 21))]:
        for dim in (-1, -2):
            out, gx, gk = _check_against_reference(x, k, taps, dim)
            with _native.use_native(False):
                xs, ks = x.clone().requires_grad_(True), k.clone().requires_grad_(True)
                slow = focal_attention(xs, ks, taps, dim)
            torch.autograd.grad(slow, [xs, ks], torch.ones_like(slow))
            assert torch.allclose(out, slow, rtol=1e-5, atol=1e-5)
            layout = cl if x.stride(1) == 1 else torch.contiguous_format
            assert out.is_contiguous(memory_format=layout) and gx.is_contiguous(memory_format=layout)
            assert gk.is_contiguous(memory_format=cl if k.stride(1) == 1 else torch.contiguous_format)


@needs_native
def test_nchw_inputs_stay_on_the_pytorch_path(monkeypatch):
    """Only channels-last inputs (the models' CPU layout) take the native kernel."""
    taps = build_kernel_map()
    calls = []
    real = _native.fsa_forward
    monkeypatch.setattr(_native, "fsa_forward", lambda *a: calls.append(1) or real(*a))
    x, k = torch.randn(1, 8, 5, 6), torch.randn(1, 26, 5, 6)
    focal_attention(x, k, taps, -1)
    assert calls == []
    focal_attention(_cl(x), k, taps, -1)
    assert calls == [1]


@needs_native
def test_native_threads_split_lines_identically():
    taps = build_kernel_map()
    x, k = _cl(torch.randn(4, 32, 19, 33)), _cl(torch.randn(4, 52, 19, 33))
    before = torch.get_num_threads()
    try:
        results = []
        for threads in (1, 3):
            torch.set_num_threads(threads)
            xs, ks = x.clone().requires_grad_(True), k.clone().requires_grad_(True)
            out = focal_attention(xs, ks, taps, -2)
            assert out.is_contiguous(memory_format=torch.channels_last)
            out.backward(torch.ones_like(out))
            results.append((out, xs.grad, ks.grad))
    finally:
        torch.set_num_threads(before)
    for a, b in zip(*results):
        assert torch.equal(a, b)  # each line is computed by one thread in the same order


@needs_native
def test_native_path_passes_opcheck_and_saves_no_copies():
    """Fake (meta) kernel, schema and autograd registration agree on the native path too; the
    forward keeps no padded copies (its backward reads the inputs)."""
    from torch.library import opcheck

    taps = build_kernel_map()
    starts, lengths = [s for s, _ in taps], [n for _, n in taps]
    x, k = _cl(torch.randn(2, 8, 6, 7)).requires_grad_(True), _cl(torch.randn(2, 26, 6, 7)).requires_grad_(True)
    for dim in (-1, -2):
        for act in (0, 1):
            opcheck(torch.ops.lightsr.focal_attention.default, (x, k, starts, lengths, dim, act),
                    test_utils=("test_schema", "test_faketensor", "test_autograd_registration"))
            _, xp, kc = torch.ops.lightsr.focal_attention.default(x, k, starts, lengths, dim, act)
            assert xp.numel() == 0 and kc.numel() == 0


def _child(code: str, **env) -> str:
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env={**os.environ, **env})
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


_PROBE = (
    "import torch\n"
    "from lightsr.ops import _native, focal_attention, focal_attention_reference, build_kernel_map\n"
    "t = build_kernel_map(); x, k = torch.randn(1, 5, 6, 8).permute(0, 3, 1, 2), torch.randn(1, 26, 5, 6)\n"
    "ok = torch.allclose(focal_attention(x, k, t, -1), focal_attention_reference(x, k, t, -1), atol=1e-5)\n"
    "print(_native.available(), ok, _native.library_path(), _native.build_error())\n"
)


def test_disabled_or_without_compiler_falls_back_to_pytorch(tmp_path):
    """LIGHTSR_NATIVE=0, or no C compiler on PATH: the PyTorch implementation, same results."""
    assert _child(_PROBE, LIGHTSR_NATIVE="0", LIGHTSR_CACHE=str(tmp_path)).startswith("False True None None")
    out = _child(_PROBE, PATH="", CC="", LIGHTSR_CACHE=str(tmp_path / "c"))
    assert out.startswith("False True None RuntimeError: no C compiler"), out
    assert not (tmp_path / "c" / "native").exists() or not list((tmp_path / "c" / "native").glob("*.so"))


@needs_native
def test_library_is_built_once_into_the_cache(tmp_path):
    first = _child(_PROBE, LIGHTSR_CACHE=str(tmp_path))
    assert first.startswith("True True ")
    built = sorted((tmp_path / "native").iterdir())
    assert len(built) == 1 and built[0].name.startswith("lightsr_native-") and built[0].suffix == ".so"
    mtime = built[0].stat().st_mtime_ns
    assert _child(_PROBE, LIGHTSR_CACHE=str(tmp_path)).startswith("True True ")
    assert sorted((tmp_path / "native").iterdir()) == built and built[0].stat().st_mtime_ns == mtime


@needs_native
@pytest.mark.parametrize("dim", [-1, -2])
def test_bfloat16_inputs_take_the_native_kernel(dim, monkeypatch):
    """bf16 CPU inputs (LAMNet under CPU autocast) run the float32 native kernel on converted
    copies: bf16 output within bf16 rounding of the reference, gradients flow back as bf16."""
    calls = []
    real = _native.fsa_forward
    monkeypatch.setattr(_native, "fsa_forward", lambda *a, **k: calls.append(1) or real(*a, **k))
    taps = build_kernel_map()
    x = _cl(torch.randn(2, 64, 9, 30))[:, 32:].bfloat16().requires_grad_(True)
    k = _cl(torch.randn(2, 4 * len(taps), 9, 30)).bfloat16().requires_grad_(True)
    y = focal_attention(x, k, taps, dim, "tanh")
    ref = focal_attention_reference(x.detach().double(), k.detach().double(), taps, dim, "tanh")
    assert calls and y.dtype == torch.bfloat16 and _rel(y, ref) < 1e-2
    y.float().sum().backward()
    assert x.grad.dtype == torch.bfloat16 and torch.isfinite(k.grad.float()).all()


@needs_native
@pytest.mark.parametrize("dim", [-1, -2])
@pytest.mark.parametrize("c,groups", [(32, 4), (16, 2), (9, 3)])  # 8-wide x 4, 16-wide, generic
@pytest.mark.parametrize("h,w", [(1, 1), (9, 30), (17, 23)])
@pytest.mark.parametrize("activation", [None, "tanh"])
def test_bfloat16_inference_reads_and_writes_bfloat16(dim, c, groups, h, w, activation, monkeypatch):
    """Without a gradient, bf16 inputs go to the bf16-storage kernel (no float32 copies of the
    tensors): bit-identical to the float32 kernel on the widened inputs, rounded once."""
    taps = build_kernel_map()
    x = _cl(torch.randn(2, 2 * c, h, w)).bfloat16()[:, c:]  # a channel slice, as LAMNet's chunk
    k = _cl(torch.randn(2, groups * len(taps), h, w)).bfloat16()
    with torch.no_grad():
        expected = focal_attention(x.float(), k.float(), taps, dim, activation).bfloat16()
        dtypes = []
        real = _native.fsa_forward
        monkeypatch.setattr(_native, "fsa_forward", lambda x, k, *a: dtypes.append((x.dtype, k.dtype)) or real(x, k, *a))
        y = focal_attention(x, k, taps, dim, activation)
    assert dtypes == [(torch.bfloat16, torch.bfloat16)]  # no float32 copies of x and kernel
    assert y.dtype == torch.bfloat16 and y.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(y, expected)


@needs_native
def test_bfloat16_native_forward_passes_opcheck():
    from torch.library import opcheck

    taps = build_kernel_map()
    starts, lengths = [s for s, _ in taps], [n for _, n in taps]
    x, k = _cl(torch.randn(2, 8, 6, 7)).bfloat16(), _cl(torch.randn(2, 26, 6, 7)).bfloat16()
    with torch.no_grad():
        for dim in (-1, -2):
            opcheck(torch.ops.lightsr.focal_attention.default, (x, k, starts, lengths, dim, 1),
                    test_utils=("test_schema", "test_faketensor"))
            y, xp, kc = torch.ops.lightsr.focal_attention.default(x, k, starts, lengths, dim, 1)
            assert y.dtype == torch.bfloat16 and xp.numel() == 0 and kc.numel() == 0


def test_native_backward_refuses_bfloat16():
    x, k = torch.randn(1, 8, 3, 4).bfloat16(), torch.randn(1, 26, 3, 4).bfloat16()
    with pytest.raises(TypeError, match="float32"):
        _native.fsa_backward(x, x, k, [0] * 13, [1] * 13, -1)
