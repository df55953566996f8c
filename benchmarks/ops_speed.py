"""Fast vs reference implementations of lightsr's custom operators, side by side in one run.

Shapes are those of the x4 models at the 1280x720-output LR size (320x180): DLGSANet-light's
dynamic depth-wise conv (48 channels, 8 kernel groups, 7x7; alone and fused with its 1x1 kernel
generator 12 -> 392), LAMNet's focal separable attention (32 channels, 4 groups, 13 taps,
horizontal and vertical; NCHW inputs take the PyTorch implementation, channels-last slices as in
LAMNet the native C kernel, also timed with it switched off), the channels-first LayerNorm (48 channels, NCHW and channels-last
input) and DLGSANet's TLC windows (48-pixel windows over the 144-channel qkv map).

Every repetition times each variant once, in alternating order (a load change hits both);
medians, p90s and the speed-ups are printed, with the largest output difference (absolute, and
relative to the largest output: inputs are N(0, 1), so a 49-tap sum is ~7 in magnitude). ``--backward``
adds forward + backward timings at the training shape (batch 16, 48x48): the depth-wise convs, the
dynamic convolution, the focal attention, the LayerNorm, LAMNet's IEM and SparseGSA's channel attention.

    python benchmarks/ops_speed.py [--threads 1] [--repeats 7] [--backward]
    python benchmarks/ops_speed.py --sweep-strip      # tune the CPU strip size
    python benchmarks/ops_speed.py --tlc-chunks       # windows per TLC call
    python benchmarks/ops_speed.py --threads 1 --backward --only focal_attention
    python benchmarks/ops_speed.py --threads 1 --products   # 1x1 products: MKL's GEMM vs oneDNN

``--products``: the inference 1x1 products (``lightsr.ops.pointwise``) through MKL's GEMM
(``F.linear``) against oneDNN's inner product (``mkldnn::_linear_pointwise``, what lightsr uses
at inference) on the models' shapes, in float32 and bfloat16; then whole models through
``Upscaler`` (320x180 -> x4, random weights) with the one and the other, interleaved.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

import torch

from lightsr.bench import environment, format_environment, interleaved_timings, load_average
from lightsr.models.dlgsanet import SparseGSA
from lightsr.ops import (
    build_kernel_map,
    channel_attention,
    channel_attention_reference,
    depthwise_conv2d,
    depthwise_conv2d_reference,
    dynamic_dwconv,
    dynamic_dwconv_fused,
    dynamic_dwconv_fused_reference,
    dynamic_dwconv_reference,
    focal_attention,
    focal_attention_reference,
    information_exchange,
    information_exchange_concat,
    information_exchange_reference,
    layer_norm_2d,
    layer_norm_2d_reference,
    layer_norm_2d_residual,
    layer_norm_2d_residual_reference,
    tlc,
    tlc_reference,
)

common = importlib.import_module("lightsr.ops._common")
tlc_module = importlib.import_module("lightsr.ops.tlc")
_elementwise_native = importlib.import_module("lightsr.ops._elementwise_native")
native = importlib.import_module("lightsr.ops._native")


def _inputs(b, h, w, seed=0):
    g = torch.Generator().manual_seed(seed)

    def r(*shape):
        return torch.randn(*shape, generator=g)

    taps = build_kernel_map()
    return {
        "x48": r(b, 48, h, w), "w392": r(b, 392, h, w), "h12": r(b, 12, h, w),
        "cw": r(392, 12, 1, 1) * 0.3, "cb": r(392) * 0.1,
        "x32": r(b, 32, h, w), "k52": torch.tanh(r(b, 52, h, w)), "taps": taps,
        "ln_w": r(48), "ln_b": r(48), "qkv": r(b, 144, h, w),
        "dw_h": r(32, 1, 1, 23) * 0.2, "dw_v": r(32, 1, 23, 1) * 0.2, "dw_b": r(32),
    }


def _cases(d):
    cl = d["x48"].contiguous(memory_format=torch.channels_last)
    gsa = SparseGSA(48).eval()
    qkv_cl = d["qkv"].contiguous(memory_format=torch.channels_last)
    # LAMNet's FSA input: the second half of proj_in's channels-last output (a strided slice)
    x32_slice = torch.cat([d["x32"], d["x32"]], 1).contiguous(memory_format=torch.channels_last)[:, 32:]
    k52_cl = d["k52"].contiguous(memory_format=torch.channels_last)
    return {
        "dynamic_dwconv 7x7 (48 ch, 8 groups)": (
            lambda: dynamic_dwconv(d["x48"], d["w392"], 7), lambda: dynamic_dwconv_reference(d["x48"], d["w392"], 7)),
        "dynamic_dwconv + 1x1 kernel conv 12->392 (fused)": (
            lambda: dynamic_dwconv_fused(d["x48"], d["h12"], d["cw"], d["cb"], 7),
            lambda: dynamic_dwconv_fused_reference(d["x48"], d["h12"], d["cw"], d["cb"], 7)),
        "focal_attention horizontal (32 ch, 13 taps, NCHW: PyTorch path)": (
            lambda: focal_attention(d["x32"], d["k52"], d["taps"], -1),
            lambda: focal_attention_reference(d["x32"], d["k52"], d["taps"], -1)),
        "focal_attention vertical (32 ch, 13 taps, NCHW: PyTorch path)": (
            lambda: focal_attention(d["x32"], d["k52"], d["taps"], -2),
            lambda: focal_attention_reference(d["x32"], d["k52"], d["taps"], -2)),
        "focal_attention horizontal, channels-last slice (as in LAMNet: native kernel)": (
            lambda: focal_attention(x32_slice, k52_cl, d["taps"], -1),
            lambda: focal_attention_reference(x32_slice, k52_cl, d["taps"], -1)),
        "focal_attention vertical, channels-last slice (as in LAMNet: native kernel)": (
            lambda: focal_attention(x32_slice, k52_cl, d["taps"], -2),
            lambda: focal_attention_reference(x32_slice, k52_cl, d["taps"], -2)),
        "focal_attention horizontal, channels-last slice, PyTorch path (LIGHTSR_NATIVE=0)": (
            _pytorch_path(lambda: focal_attention(x32_slice, k52_cl, d["taps"], -1)),
            lambda: focal_attention_reference(x32_slice, k52_cl, d["taps"], -1)),
        "focal_attention vertical, channels-last slice, PyTorch path (LIGHTSR_NATIVE=0)": (
            _pytorch_path(lambda: focal_attention(x32_slice, k52_cl, d["taps"], -2)),
            lambda: focal_attention_reference(x32_slice, k52_cl, d["taps"], -2)),
        "layer_norm_2d (48 ch, NCHW input)": (
            lambda: layer_norm_2d(d["x48"], d["ln_w"], d["ln_b"]), lambda: layer_norm_2d_reference(d["x48"], d["ln_w"], d["ln_b"])),
        "layer_norm_2d (48 ch, channels-last input)": (
            lambda: layer_norm_2d(cl, d["ln_w"], d["ln_b"]), lambda: layer_norm_2d_reference(cl, d["ln_w"], d["ln_b"])),
        "tlc, SparseGSA attention in 48-px windows": (
            lambda: tlc(gsa.attend, qkv_cl, 48), lambda: tlc_reference(gsa.attend, qkv_cl, 48)),
    }


def _pytorch_path(fn):
    """``fn`` with the native focal-attention kernel switched off (the pure-PyTorch fast path)."""
    def run():
        with native.use_native(False):
            return fn()
    return run


def _backward_cases(d):
    """Forward + backward w.r.t. every input."""

    def fb(fn, *inputs):
        def run():
            xs = [t.detach().requires_grad_(True) for t in inputs]
            out = fn(*xs)
            grads = torch.autograd.grad(out, xs, d["gout"][: out.shape[0], : out.shape[1]])
            return grads[0]
        return run

    taps = d["taps"]
    x32_cl = d["x32"].contiguous(memory_format=torch.channels_last)
    # LAMNet's input to the 1x23 conv: the second half of proj_in's channels-last output (a strided slice)
    x32_slice = torch.cat([d["x32"], d["x32"]], 1).contiguous(memory_format=torch.channels_last)[:, 32:]
    k52_cl = d["k52"].contiguous(memory_format=torch.channels_last)
    x48_cl = d["x48"].contiguous(memory_format=torch.channels_last)
    qkv_cl = d["qkv"].contiguous(memory_format=torch.channels_last)
    halves = [d["x32"][:, i:i + 16].contiguous(memory_format=torch.channels_last) for i in (0, 16)]
    g128 = torch.cat([d["x32"]] * 4, 1).permute(0, 2, 3, 1).reshape(-1, 128).contiguous()
    d.setdefault("temp6", torch.rand(6, 1, 1) + 0.5)

    def dw(op, pad):  # weight first: the difference column then compares the weight gradients
        return lambda w, a, b: op(a, w, b, pad)

    return {
        "depth-wise conv 1x23 (LAMNet h_kernel, 32 ch, channels-last) fwd+bwd, weight grad compared": (
            fb(dw(depthwise_conv2d, (0, 11)), d["dw_h"], x32_cl, d["dw_b"]),
            fb(dw(depthwise_conv2d_reference, (0, 11)), d["dw_h"], x32_cl, d["dw_b"])),
        "depth-wise conv 1x23 on a channel slice of a channels-last tensor (as in LAMNet) fwd+bwd, weight grad compared": (
            fb(dw(depthwise_conv2d, (0, 11)), d["dw_h"], x32_slice, d["dw_b"]),
            fb(dw(depthwise_conv2d_reference, (0, 11)), d["dw_h"], x32_slice, d["dw_b"])),
        "depth-wise conv 23x1 (LAMNet v_kernel, 32 ch, channels-last) fwd+bwd, weight grad compared": (
            fb(dw(depthwise_conv2d, (11, 0)), d["dw_v"], x32_cl, d["dw_b"]),
            fb(dw(depthwise_conv2d_reference, (11, 0)), d["dw_v"], x32_cl, d["dw_b"])),
        "dynamic_dwconv fwd+bwd": (
            fb(lambda a, b: dynamic_dwconv(a, b, 7), d["x48"], d["w392"]),
            fb(lambda a, b: dynamic_dwconv_reference(a, b, 7), d["x48"], d["w392"])),
        "dynamic_dwconv fused fwd+bwd": (
            fb(lambda a, b, c, e: dynamic_dwconv_fused(a, b, c, e, 7), d["x48"], d["h12"], d["cw"], d["cb"]),
            fb(lambda a, b, c, e: dynamic_dwconv_fused_reference(a, b, c, e, 7), d["x48"], d["h12"], d["cw"], d["cb"])),
        "focal_attention horizontal fwd+bwd (NCHW: PyTorch path)": (
            fb(lambda a, b: focal_attention(a, b, taps, -1), d["x32"], d["k52"]),
            fb(lambda a, b: focal_attention_reference(a, b, taps, -1), d["x32"], d["k52"])),
        "layer_norm_2d (48 ch, channels-last) fwd+bwd": (
            fb(lambda a, w, b: layer_norm_2d(a, w, b), x48_cl, d["ln_w"], d["ln_b"]),
            fb(lambda a, w, b: layer_norm_2d_reference(a, w, b), x48_cl, d["ln_w"], d["ln_b"])),
        "information_exchange (LAMNet's IEM, 2 x 16 ch, channels-last), concatenated by torch.cat, fwd+bwd": (
            fb(lambda a, b: torch.cat(information_exchange(a, b), 1), *halves),
            fb(lambda a, b: torch.cat(information_exchange_reference(a, b), 1), *halves)),
        "information_exchange_concat (the same, written side by side as proj_out reads it in training) fwd+bwd": (
            fb(information_exchange_concat, *halves),
            fb(lambda a, b: torch.cat(information_exchange_reference(a, b), 1), *halves)),
        "layer_norm_2d_residual (48 ch, channels-last; LN(x) + x as a pre-norm block uses both) fwd+bwd": (
            fb(lambda a, w, b: sum(layer_norm_2d_residual(a, w, b)), x48_cl, d["ln_w"], d["ln_b"]),
            fb(lambda a, w, b: sum(layer_norm_2d_residual_reference(a, w, b)), x48_cl, d["ln_w"], d["ln_b"])),
        "column sum of a (36864, 128) output gradient (a 1x1 conv's bias gradient): native vs aten sum(0)": (
            lambda: _elementwise_native.column_sum(g128), lambda: g128.sum(0)),
        "channel_attention (SparseGSA, 48 ch, 6 heads, channels-last) fwd+bwd": (
            fb(lambda q, t: channel_attention(q, 6, t, torch.relu), qkv_cl, d["temp6"]),
            fb(lambda q, t: channel_attention_reference(q, 6, t, torch.relu), qkv_cl, d["temp6"])),
        "focal_attention vertical fwd+bwd (NCHW: PyTorch path)": (
            fb(lambda a, b: focal_attention(a, b, taps, -2), d["x32"], d["k52"]),
            fb(lambda a, b: focal_attention_reference(a, b, taps, -2), d["x32"], d["k52"])),
        "focal_attention h + v fwd+bwd on channels-last slices (as in LAMNet's ULM)": (
            fb(lambda a, b: focal_attention(focal_attention(a, b, taps, -1), b, taps, -2), x32_slice, k52_cl),
            fb(lambda a, b: focal_attention_reference(focal_attention_reference(a, b, taps, -1), b, taps, -2), x32_slice, k52_cl)),
        "focal_attention h + v fwd+bwd on channels-last slices, PyTorch path (LIGHTSR_NATIVE=0)": (
            _pytorch_path(fb(lambda a, b: focal_attention(focal_attention(a, b, taps, -1), b, taps, -2), x32_slice, k52_cl)),
            fb(lambda a, b: focal_attention_reference(focal_attention_reference(a, b, taps, -1), b, taps, -2), x32_slice, k52_cl)),
    }


def _compare(cases, repeats, warmup):
    print("| op | fast median ms | fast p90 ms | reference median ms | reference p90 ms | speed-up | max abs diff | max rel diff |")
    print("|---|---|---|---|---|---|---|---|")
    worst = 0.0
    for name, (fast, ref) in cases.items():
        with torch.no_grad() if "bwd" not in name else torch.enable_grad():
            a, b = fast(), ref()
            diff = (a - b).abs().max().item()
            rel = diff / b.abs().max().item()
        worst = max(worst, rel)
        t = interleaved_timings({"fast": fast, "ref": ref}, warmup=warmup, repeats=repeats)
        f, r = t["fast"], t["ref"]
        print(f"| {name} | {f.median * 1e3:.1f} | {f.p90 * 1e3:.1f} | {r.median * 1e3:.1f} | {r.p90 * 1e3:.1f} | "
              f"{r.median / f.median:.1f}x | {diff:.1e} | {rel:.1e} |", flush=True)
    return worst


def _sweep_strip(d, repeats):
    sizes = [2**k for k in range(15, 23)]
    variants = {}
    for s in sizes:
        def run(s=s):
            common._STRIP_ELEMENTS = s
            dynamic_dwconv(d["x48"], d["w392"], 7)
            dynamic_dwconv_fused(d["x48"], d["h12"], d["cw"], d["cb"], 7)
            focal_attention(d["x32"], d["k52"], d["taps"], -1)
            focal_attention(d["x32"], d["k52"], d["taps"], -2)
        variants[f"2^{s.bit_length() - 1}"] = run
    default = common._STRIP_ELEMENTS
    with torch.no_grad():
        t = interleaved_timings(variants, warmup=1, repeats=repeats)
    common._STRIP_ELEMENTS = default
    print("| strip elements | dyn conv + fused + FSA h + FSA v, median ms |")
    print("|---|---|")
    for k, v in t.items():
        print(f"| {k} | {v.median * 1e3:.1f} |")


def _tlc_chunks(d, repeats):
    gsa = SparseGSA(48).eval()
    qkv = d["qkv"].contiguous(memory_format=torch.channels_last)
    window = 144 * 48 * 48
    variants = {}
    for n in (1, 2, 4, 8, 16, 28):
        def run(n=n):
            tlc_module._CHUNK_ELEMENTS = n * window
            tlc(gsa.attend, qkv, 48)
        variants[f"{n} window(s) per call"] = run
    variants["reference (one window per call, no cache)"] = lambda: tlc_reference(gsa.attend, qkv, 48)
    default = tlc_module._CHUNK_ELEMENTS
    with torch.no_grad():
        t = interleaved_timings(variants, warmup=1, repeats=repeats)
    tlc_module._CHUNK_ELEMENTS = default
    print("| TLC windows per call | median ms |")
    print("|---|---|")
    for k, v in t.items():
        print(f"| {k} | {v.median * 1e3:.1f} |")


PRODUCT_SHAPES = [  # (pixels, C_in, C_out): whole 320x180 maps and the FFNs' bands of rows
    (57600, 48, 144), (57600, 48, 48), (8640, 48, 192), (8000, 96, 48),
    (57600, 32, 52), (57600, 64, 64), (8640, 64, 128), (8000, 128, 64), (57600, 128, 64)]


def _products(repeats):
    """MKL's GEMM against oneDNN's inner product: the models' 1x1 shapes, then whole models."""
    from lightsr.ops import pointwise

    onednn = pointwise._ONEDNN
    if onednn is None:
        print("this torch has no mkldnn::_linear_pointwise: lightsr's products run on F.linear")
        return
    print("| dtype | pixels x C_in -> C_out | MKL GEMM ms | oneDNN ms | MKL / oneDNN |\n|---|---|---|---|---|")
    for dtype in (torch.float32, torch.bfloat16):
        for m, k, n in PRODUCT_SHAPES:
            x, w, b = torch.randn(m, k, dtype=dtype), torch.randn(n, k, dtype=dtype), torch.randn(n, dtype=dtype)
            with torch.no_grad():
                t = interleaved_timings({"mkl": lambda: torch.nn.functional.linear(x, w, b),
                                         "onednn": lambda: onednn(x, w, b, "none", [], "")}, repeats=repeats)
            print(f"| {str(dtype)[6:]} | {m} x {k} -> {n} | {t['mkl'].median * 1e3:.2f} | "
                  f"{t['onednn'].median * 1e3:.2f} | {t['mkl'].median / t['onednn'].median:.2f} |", flush=True)
    _residual_products(onednn, repeats)
    _products_in_models(onednn, repeats)


RESIDUAL_SHAPES = [  # (pixels, C_in, C_out) of products added onto a residual stream at inference
    (14400, 180, 90), (14400, 90, 90), (57600, 180, 90), (57600, 90, 90), (57600, 128, 64), (57600, 64, 64),
    (57600, 96, 48), (57600, 192, 48)]


def _residual_products(onednn, repeats):
    """``residual += x @ w.T + b`` in place (the blocks' projections at inference): MKL's ``addmm_``
    accumulating onto the residual and the bias added after it (lightsr before 2026-12-06g), against
    oneDNN's product with the bias and then ``add_`` (now). Both first restore the residual (a copy)."""
    print("\n| dtype | residual += pixels x C_in -> C_out | MKL addmm_ + bias ms | oneDNN + add_ ms | speed-up |"
          "\n|---|---|---|---|---|")
    for dtype in (torch.float32, torch.bfloat16):
        for m, k, n in RESIDUAL_SHAPES:
            x, w, b = torch.randn(m, k, dtype=dtype), torch.randn(n, k, dtype=dtype), torch.randn(n, dtype=dtype)
            r, out = torch.randn(m, n, dtype=dtype), torch.empty(m, n, dtype=dtype)

            def mkl():
                out.copy_(r).addmm_(x, w.t()).add_(b)

            def dnn():
                out.copy_(r).add_(onednn(x, w, b, "none", [], ""))
            with torch.no_grad():
                t = interleaved_timings({"mkl": mkl, "onednn": dnn}, repeats=repeats)
            print(f"| {str(dtype)[6:]} | {m} x {k} -> {n} | {t['mkl'].median * 1e3:.2f} | "
                  f"{t['onednn'].median * 1e3:.2f} | {t['mkl'].median / t['onednn'].median:.2f}x |", flush=True)


def _products_in_models(onednn, repeats):
    import numpy as np

    import lightsr
    from lightsr.ops import pointwise

    img = (np.random.default_rng(0).random((180, 320, 3)) * 255).astype(np.uint8)
    print("\n| model, Upscaler(tile=0), 320x180 -> x4 | precision | MKL GEMM ms | oneDNN ms | MKL / oneDNN |\n|---|---|---|---|---|")
    for name in ("dlgsanet_tiny", "lgun", "lamnet"):
        for precision in ("fp32", "bf16"):
            up = lightsr.Upscaler(lightsr.create_model(name, scale=4).eval(), scale=4, tile=0, precision=precision,
                                  device="cpu")

            def run(use):
                def go():
                    pointwise._ONEDNN = use
                    up(img)
                return go
            t = interleaved_timings({"mkl": run(None), "onednn": run(onednn)}, repeats=repeats)
            pointwise._ONEDNN = onednn
            print(f"| {name} | {precision} | {t['mkl'].median * 1e3:.0f} | {t['onednn'].median * 1e3:.0f} | "
                  f"{t['mkl'].median / t['onednn'].median:.2f} |", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--repeats", type=int, default=7, help="timed repetitions per variant (default 7)")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--size", nargs=2, type=int, default=(180, 320), metavar=("H", "W"), help="map size (default 180 320)")
    ap.add_argument("--backward", action="store_true", help="also time forward + backward at batch 16, 48x48")
    ap.add_argument("--sweep-strip", action="store_true", help="time the CPU strip sizes instead")
    ap.add_argument("--tlc-chunks", action="store_true", help="time TLC windows per call instead")
    ap.add_argument("--products", action="store_true", help="1x1 products: MKL's GEMM vs oneDNN, then whole models")
    ap.add_argument("--only", metavar="TEXT", help="only the rows whose name contains TEXT (e.g. focal_attention)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print("command: python benchmarks/ops_speed.py " + " ".join(sys.argv[1:] if argv is None else argv))
    print(format_environment(environment()))
    h, w = args.size
    d = _inputs(1, h, w)
    print(f"\nforward at batch 1, {h}x{w}, float32, {args.repeats} interleaved repetitions\n")
    if args.products:
        _products(args.repeats)
    elif args.sweep_strip:
        _sweep_strip(d, args.repeats)
    elif args.tlc_chunks:
        _tlc_chunks(d, args.repeats)
    else:
        pick = (lambda cases: {k: v for k, v in cases.items() if args.only in k}) if args.only else (lambda cases: cases)
        worst = _compare(pick(_cases(d)), args.repeats, args.warmup)
        if args.backward:
            t = _inputs(16, 48, 48, seed=1)
            t["gout"] = torch.randn(16, 48, 48, 48)
            print("\nforward + backward (gradients w.r.t. every input) at batch 16, 48x48\n")
            worst = max(worst, _compare(pick(_backward_cases(t)), args.repeats, args.warmup))
        print(f"\nlargest output difference fast vs reference, relative to the largest output: {worst:.1e}")
    print(f"load average at the end (1/5/15 min): {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
