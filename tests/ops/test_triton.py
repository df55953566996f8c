"""The Triton kernels of lightsr.ops.triton against the reference ops, on the CPU under triton's
interpreter (``TRITON_INTERPRET=1``): output and every input gradient, float32 / bfloat16 / float16,
odd sizes (1x1, pixel counts that are not multiples of the kernels' blocks), batch > 1.

triton picks the interpreter when it is imported (its own ``tl`` functions are jit functions too)
and when each kernel is defined. So:

* when this module is imported before triton (the usual case: collection comes before any test
  imports ``torch._dynamo``, which imports triton) and there is no CUDA device, the variable is set
  to import triton and the kernel modules, then removed, and set again while this module's tests
  run (the interpreter reads it then too): other tests (and their subprocesses) never see it;
* otherwise (triton already imported for real, or a GPU machine, whose compiled Triton must stay
  intact) one test runs this file again in a subprocess with the variable set.
"""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lightsr import ops

pytestmark = pytest.mark.triton
KERNEL_MODULES = ("_common", "dynamic_conv", "focal", "norm")  # _common first: the others import from it
IN_PROCESS = (os.environ.get("TRITON_INTERPRET") == "1"
              or ("triton" not in sys.modules and not torch.cuda.is_available()))


def _import_interpreted() -> bool:
    """Import triton and the kernel modules with TRITON_INTERPRET=1, then restore the environment."""
    previous = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        importlib.import_module("triton")
        for name in KERNEL_MODULES:
            importlib.import_module(f"lightsr.ops.triton.{name}")
        return True
    except ImportError:
        return False
    finally:
        if previous is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = previous


HAS_TRITON = _import_interpreted() if IN_PROCESS else importlib.util.find_spec("triton") is not None
if not HAS_TRITON:
    pytest.skip("needs triton (pip install 'lightsr[triton]')", allow_module_level=True)

# relative error (max |kernel - reference| / max |reference|) against float64 on the same rounded
# inputs: what remains is the output rounding of each dtype and the float32 accumulation
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}
DTYPES = list(TOL)


@pytest.fixture(scope="module")
def lt():
    if not IN_PROCESS:
        pytest.skip("triton was imported before the interpreter could be chosen: test_in_subprocess runs these")
    import lightsr.ops.triton as lt

    mp = pytest.MonkeyPatch()
    mp.setenv("TRITON_INTERPRET", "1")  # the interpreter reads it while running kernels too
    yield lt
    mp.undo()


@pytest.mark.skipif(IN_PROCESS, reason="the kernels are tested in this process")
def test_in_subprocess():
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    repo = Path(__file__).resolve().parents[2]
    r = subprocess.run([sys.executable, "-m", "pytest", str(Path(__file__).resolve()), "-q", "-p", "no:cacheprovider"],
                       cwd=repo, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]


def _grads(fn, inputs, gout=None):
    xs = [t.detach().requires_grad_(True) for t in inputs]
    out = fn(*xs)
    if gout is None:
        gout = torch.randn(out.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64).to(out.dtype)
    return out, torch.autograd.grad(out, xs, gout), gout


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a.double() - b.double()).abs().max() / b.double().abs().max().clamp_min(1e-30)).item()


def assert_matches(fast, reference, inputs, dtype):
    """fast(*inputs in dtype) vs reference(*the same rounded inputs in float64): output and every
    input gradient (the same rounded output gradient), each in its input's dtype and shape."""
    cast = [t.to(dtype) for t in inputs]
    out, grads, gout = _grads(fast, cast)
    ref_out, ref_grads, _ = _grads(reference, [t.double() for t in cast], gout.double())
    assert out.dtype == dtype and out.shape == ref_out.shape
    errors = [_rel(out, ref_out)]
    for g, rg, x in zip(grads, ref_grads, cast):
        assert g.dtype == x.dtype and g.shape == x.shape
        errors.append(_rel(g, rg))
    assert max(errors) <= TOL[dtype], f"relative errors (output, gradients) {errors} over {TOL[dtype]}"


def _randn(*shape, scale=1.0, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * scale


# sizes (batch, height, width): 1x1; a pixel count below one block (64); one over it, not a multiple
SIZES = [(1, 1, 1), (2, 5, 7), (2, 9, 11)]
CASES = [(s, torch.float32) for s in SIZES] + [((2, 9, 11), torch.bfloat16), ((2, 5, 7), torch.float16)]


def _case_id(v) -> str:
    return "x".join(map(str, v)) if isinstance(v, tuple) else str(v).replace("torch.", "")


@pytest.mark.parametrize("size,dtype", CASES, ids=_case_id)
@pytest.mark.parametrize("kernel_size", [3, 7])
def test_dynamic_dwconv_fused(lt, size, dtype, kernel_size):
    b, h, w = size
    k, groups, hidden = kernel_size, 2, 3  # 12 channels in 2 groups of 6; 3 hidden channels (not a power of 2)
    inputs = [_randn(b, 12, h, w), _randn(b, hidden, h, w, seed=1),
              _randn(groups * k * k, hidden, 1, 1, scale=0.3, seed=2), _randn(groups * k * k, scale=0.1, seed=3)]
    assert_matches(lambda x, hd, cw, cb: lt.dynamic_dwconv_fused(x, hd, cw, cb, k),
                   lambda x, hd, cw, cb: ops.dynamic_dwconv_fused_reference(x, hd, cw, cb, k), inputs, dtype)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_dynamic_dwconv_fused_without_bias(lt, dtype):
    inputs = [_randn(2, 12, 9, 11), _randn(2, 4, 9, 11, seed=1), _randn(18, 4, 1, 1, scale=0.3, seed=2)]
    assert_matches(lambda x, hd, cw: lt.dynamic_dwconv_fused(x, hd, cw, None, 3),
                   lambda x, hd, cw: ops.dynamic_dwconv_fused_reference(x, hd, cw, None, 3), inputs, dtype)


@pytest.mark.parametrize("size,dtype", CASES, ids=_case_id)
def test_dynamic_dwconv(lt, size, dtype):
    b, h, w = size
    inputs = [_randn(b, 12, h, w), _randn(b, 2 * 9, h, w, scale=0.3, seed=1)]
    assert_matches(lambda x, wt: lt.dynamic_dwconv(x, wt, 3),
                   lambda x, wt: ops.dynamic_dwconv_reference(x, wt, 3), inputs, dtype)


@pytest.mark.parametrize("size,dtype", CASES, ids=_case_id)
@pytest.mark.parametrize("dim", [-1, -2], ids=["horizontal", "vertical"])
@pytest.mark.parametrize("activation", [None, "tanh"])
def test_focal_attention(lt, size, dtype, dim, activation):
    b, h, w = size
    taps = ops.build_kernel_map()  # LAMNet's 13 taps over 23 pixels: wider than every test image
    inputs = [_randn(b, 6, h, w), _randn(b, 2 * len(taps), h, w, seed=1)]  # 2 groups of 3 channels
    assert_matches(lambda x, k: lt.focal_attention(x, k, taps, dim, activation),
                   lambda x, k: ops.focal_attention_reference(x, k, taps, dim, activation), inputs, dtype)


def test_focal_attention_other_tap_tables(lt):
    """Any (start, length) table: one tap, overlapping taps, a tap that skips pixels."""
    for taps in ([(0, 1)], [(-2, 3), (0, 2), (1, 3)], [(-3, 1), (2, 2)]):
        inputs = [_randn(2, 4, 5, 6), _randn(2, 2 * len(taps), 5, 6, seed=1)]
        for dim in (-1, -2):
            assert_matches(lambda x, k: lt.focal_attention(x, k, taps, dim, "tanh"),
                           lambda x, k: ops.focal_attention_reference(x, k, taps, dim, "tanh"), inputs, torch.float32)


@pytest.mark.parametrize("size,dtype", CASES, ids=_case_id)
@pytest.mark.parametrize("channels", [5, 48])
def test_layer_norm_2d(lt, size, dtype, channels):
    b, h, w = size
    inputs = [_randn(b, channels, h, w, scale=3.0) + 1.0, _randn(channels, seed=1), _randn(channels, seed=2)]
    assert_matches(lt.layer_norm_2d, ops.layer_norm_2d_reference, inputs, dtype)


def test_layer_norm_2d_parameter_shapes(lt):
    """LAMNet's (1, C, 1, 1) parameters: gradients come back in that shape."""
    inputs = [_randn(2, 8, 3, 5), _randn(1, 8, 1, 1, seed=1), _randn(1, 8, 1, 1, seed=2)]
    assert_matches(lt.layer_norm_2d, ops.layer_norm_2d_reference, inputs, torch.float32)


def test_layouts_and_views(lt):
    """Channels-last tensors and channel slices (LAMNet's chunks) give the NCHW results; outputs
    and gradients keep the layout of what they belong to."""
    taps = ops.build_kernel_map()
    x = _randn(2, 12, 9, 11).float()
    k = _randn(2, 2 * len(taps), 9, 11, seed=1).float()
    cl = x.contiguous(memory_format=torch.channels_last)
    y = lt.focal_attention(cl, k, taps, -1, "tanh")
    assert y.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(y, lt.focal_attention(x, k, taps, -1, "tanh"), rtol=0, atol=0)
    both = torch.cat([x, x.flip(1)], dim=1).contiguous(memory_format=torch.channels_last)
    half = both[:, 12:]  # a channel slice: neither NCHW- nor channels-last-contiguous
    torch.testing.assert_close(lt.focal_attention(half, k, taps, -2), lt.focal_attention(x.flip(1), k, taps, -2))
    hid, cw = _randn(2, 3, 9, 11, seed=2).float(), _randn(2 * 49, 3, 1, 1, seed=3).float()
    xs = cl.detach().requires_grad_(True)
    out = lt.dynamic_dwconv_fused(xs, hid, cw, None, 7)
    out.sum().backward()
    assert xs.grad.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(out, lt.dynamic_dwconv_fused(x, hid, cw, None, 7))


def test_expanded_gradient(lt):
    """A stride-0 output gradient (``out.sum().backward()``) is read through its strides."""
    x = _randn(2, 12, 5, 7).float().requires_grad_(True)
    hid, cw = _randn(2, 3, 5, 7, seed=2).float(), _randn(18, 3, 1, 1, seed=3).float()
    lt.dynamic_dwconv_fused(x, hid, cw, None, 3).sum().backward()
    xr = x.detach().double().requires_grad_(True)
    ops.dynamic_dwconv_fused_reference(xr, hid.double(), cw.double(), None, 3).sum().backward()
    assert _rel(x.grad, xr.grad) < 1e-5


def test_bad_arguments(lt):
    x = torch.randn(2, 12, 5, 7)
    with pytest.raises(ValueError, match="kernel"):
        lt.dynamic_dwconv(x, torch.randn(2, 17, 5, 7), 3)
    with pytest.raises(ValueError, match="odd"):
        lt.dynamic_dwconv(x, torch.randn(2, 16, 5, 7), 4)
    with pytest.raises(ValueError, match="1x1"):
        lt.dynamic_dwconv_fused(x, torch.randn(2, 3, 5, 7), torch.randn(18, 4, 1, 1), None, 3)
    with pytest.raises(ValueError, match="dim"):
        lt.focal_attention(x, torch.randn(2, 1, 5, 7), [(0, 1)], dim=1)
    with pytest.raises(ValueError, match="activation"):
        lt.focal_attention(x, torch.randn(2, 1, 5, 7), [(0, 1)], activation="relu")
    with pytest.raises(ValueError, match="split"):
        lt.focal_attention(x, torch.randn(2, 5, 5, 7), [(0, 1)])
    with pytest.raises(ValueError, match="12 values"):
        lt.layer_norm_2d(x, torch.ones(11), torch.zeros(12))
    with pytest.raises(TypeError, match="float32"):
        lt.layer_norm_2d(x.double(), torch.ones(12), torch.zeros(12))


def test_dispatch_switches(lt):
    """available() under the interpreter; wants() only for CUDA tensors, off inside use_triton(False)."""
    assert lt.interpreting() and lt.available()
    x = torch.randn(1, 2, 3, 3)
    assert not lt.wants(x)  # CPU tensors keep the CPU ops even here
    with lt.use_triton(False):
        assert not lt.enabled() and not lt.wants(x)
    assert lt.enabled()
    with pytest.raises(AttributeError):
        lt.no_such_kernel
