"""The native CPU kernels in context: thread scaling per model, and the kernels against their aten forms.

``--models``: each model's forward at 320x180 -> x4 on 1 and on 2 threads, interleaved, with the
ratio (IMDN, a plain conv net, as the yardstick: its aten/oneDNN operators scale close to 2x);
``--profile`` adds the torch profiler's self time per operator at 1 and 2 threads (the native
kernels are ctypes calls: the gap between the wall time and the profiled total is mostly theirs).
Runs on an older tree too (``PYTHONPATH=<tree>/src``): only ``create_model`` is used.

``--kernels``: at 1 thread, interleaved medians of the native 3x3 depth-wise convolution at the
models' channel counts (GMAC/s), DLGSANet's fused dynamic 7x7 convolution (kernels made from the
hidden values and applied, GMAC/s of both), ``scale_gelu`` against ``F.gelu(x * s)``, the q/k norms
of the channel attention as ``vector_norm`` against product + sum, and the channels-last LayerNorm
and SparseGSA's TLC channel attention against the same ops with the native library off.

    python benchmarks/native_speed.py --models imdn dlgsanet_tiny lgun lamnet [--profile]
    python benchmarks/native_speed.py --kernels
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch


def _median_ms(fn, repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def thread_table(names, repeats: int, profile: bool) -> None:
    from lightsr.models import create_model

    x = torch.rand(1, 3, 180, 320).contiguous(memory_format=torch.channels_last)
    models = {n: create_model(n, 4).eval() for n in names}
    times = {(n, t): [] for n in names for t in (1, 2)}
    with torch.inference_mode():
        for n in names:  # warm-up (native library build, lazy initialisation)
            models[n](x)
        for _ in range(repeats):
            for n in names:
                for t in (1, 2):
                    torch.set_num_threads(t)
                    t0 = time.perf_counter()
                    models[n](x)
                    times[(n, t)].append(time.perf_counter() - t0)
    print("| model | 1 thread ms | 2 threads ms | 2 vs 1 |\n|---|---|---|---|")
    for n in names:
        a, b = (statistics.median(times[(n, t)]) * 1e3 for t in (1, 2))
        print(f"| {n} | {a:.0f} | {b:.0f} | {a / b:.2f}x |")
    if profile:
        for n in names:
            _profile(n, models[n], x)


def _profile(name, model, x) -> None:
    from torch.profiler import ProfilerActivity, profile

    self_ms = {}
    for t in (1, 2):
        torch.set_num_threads(t)
        with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU]) as prof:
            model(x)
        self_ms[t] = {e.key: e.self_cpu_time_total / 1e3 for e in prof.key_averages()}
    print(f"\n{name}: profiled self time {sum(self_ms[1].values()):.0f} ms (1 thread), "
          f"{sum(self_ms[2].values()):.0f} ms (2 threads)\n\n| operator | 1 thread ms | 2 threads ms | 2 vs 1 |\n|---|---|---|---|")
    for key in sorted(self_ms[1], key=lambda k: -self_ms[1][k])[:12]:
        a, b = self_ms[1][key], self_ms[2].get(key, 0.0)
        print(f"| {key} | {a:.0f} | {b:.0f} | {a / b if b else float('nan'):.2f}x |")


def kernels(repeats: int) -> None:
    from lightsr.ops import depthwise_conv2d, scale_gelu, scale_gelu_reference

    torch.set_num_threads(1)
    cl = torch.channels_last
    print("| kernel | shape | ms | GMAC/s or aten ms | ratio |\n|---|---|---|---|---|")
    with torch.inference_mode():
        for c in (192, 144, 128, 48, 16):
            x = torch.randn(1, c, 180, 320).contiguous(memory_format=cl)
            w = torch.randn(c, 1, 3, 3)
            ms = _median_ms(lambda: depthwise_conv2d(x, w, None, (1, 1)), repeats)
            print(f"| native depth-wise 3x3 | {c}x180x320 | {ms:.1f} | {c * 9 * 180 * 320 / ms / 1e6:.1f} GMAC/s | |")
        _gate_rows(repeats)
        _dw_native_vs_onednn_rows(repeats)
        _dynamic_rows(repeats)
        x = torch.randn(1, 128, 180, 320).contiguous(memory_format=cl)
        s = torch.rand(1, 128, 1, 1)
        a = _median_ms(lambda: scale_gelu(x, s), repeats)
        b = _median_ms(lambda: scale_gelu_reference(x, s), repeats)
        print(f"| scale_gelu vs F.gelu(x * s) | 128x180x320 | {a:.1f} | {b:.1f} | {b / a:.2f}x |")
        _native_vs_aten_rows(repeats)
        qk = torch.randn(1, 57600, 192)[..., :128]
        a = _median_ms(lambda: (qk * qk).sum(dim=1).clamp_min(1e-24).sqrt(), repeats)
        b = _median_ms(lambda: torch.linalg.vector_norm(qk, dim=1), repeats)
        print(f"| q/k norms: product + sum vs vector_norm | 57600 px x 128 of 192 ch | {a:.1f} | {b:.1f} | {b / a:.2f}x |")


def _dw_native_vs_onednn_rows(repeats: int) -> None:
    """Plain depth-wise convolutions at inference, the models' shapes (DLGSANet's q/k/v 3x3 and 7x7
    kernel generator, LGUN's large-kernel sequences on 16 channels, LAMNet's 1x23 and 23x1 strip kernels
    on a channel slice): the native kernel against oneDNN's (aten's grouped convolution) on the same
    channels-last input, float32 and bfloat16, interleaved; the last column is what
    ``depthwise_conv2d`` runs here (``depthwise_conv.onednn_preferred``)."""
    import torch.nn.functional as F

    from lightsr.ops import _depthwise_native
    from lightsr.ops.depthwise_conv import onednn_preferred

    shapes = ((12, (7, 7), 1), (16, (3, 3), 1), (16, (5, 5), 2), (16, (7, 7), 1), (16, (9, 9), 2), (32, (1, 23), 1),
              (32, (23, 1), 1),
              (48, (3, 3), 1), (144, (3, 3), 1), (192, (3, 3), 1), (270, (3, 3), 1))
    for dtype in (torch.float32, torch.bfloat16):
        for c, (kh, kw), dil in shapes:
            x = torch.randn(1, 2 * c, 180, 320).contiguous(memory_format=torch.channels_last).to(dtype)[:, c:]
            if kh == kw:  # a dense map (the strip kernel reads a channel slice, as in LAMNet)
                x = x.contiguous(memory_format=torch.channels_last)
            w = torch.randn(c, 1, kh, kw)
            pad = (dil * (kh // 2), dil * (kw // 2))
            native, onednn = [], []
            for _ in range(repeats):  # interleaved
                native.append(_median_ms(lambda: _depthwise_native.forward(x, w, None, pad, (dil, dil), 0, False), 1))
                onednn.append(_median_ms(lambda: F.conv2d(x, w.to(dtype), None, padding=pad, dilation=dil, groups=c), 1))
            a, b = statistics.median(native), statistics.median(onednn)
            pick = "oneDNN" if onednn_preferred(x, w, pad, (dil, dil)) else "native"
            print(f"| depth-wise {kh}x{kw}{f' dilation {dil}' if dil > 1 else ''}, {str(dtype)[6:]}: native vs oneDNN "
                  f"(runs: {pick}) | {c}x180x320 | {a:.1f} | {b:.1f} | {b / a:.2f}x |")


def _gate_rows(repeats: int) -> None:
    """The gated feed-forward networks' 3x3 + GELU gate against the plain 3x3 on the same 192 channels
    (float32 and bfloat16 storage): what the gate's GELU costs on top of the convolution."""
    from lightsr.ops import depthwise_conv2d, gated_depthwise_conv2d

    w = torch.randn(192, 1, 3, 3)
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.randn(1, 192, 180, 320).contiguous(memory_format=torch.channels_last).to(dtype)
        gated, plain = [], []
        for _ in range(repeats):  # interleaved
            gated.append(_median_ms(lambda: gated_depthwise_conv2d(x, w, None, (1, 1), "gelu"), 1))
            plain.append(_median_ms(lambda: depthwise_conv2d(x, w, None, (1, 1)), 1))
        a, b = statistics.median(gated), statistics.median(plain)
        print(f"| native depth-wise 3x3 + GELU gate ({str(dtype)[6:]}) vs the plain 3x3 | 192x180x320 | {a:.1f} | "
              f"{b:.1f} (plain) | {a / b:.2f}x |")


def _native_vs_aten_rows(repeats: int) -> None:
    """The LayerNorm and SparseGSA's TLC channel attention: native kernel against the same op with
    the native library off (aten's layer_norm; the BLAS products per window), interleaved."""
    import torch.nn.functional as F

    from lightsr.ops import _native, layer_norm_2d, tlc_channel_attention

    cl = torch.channels_last
    cases = []
    for c in (48, 64):
        x, w, b = torch.randn(1, c, 180, 320).contiguous(memory_format=cl), torch.randn(c), torch.randn(c)
        cases.append((f"LayerNorm (channels-last) | {c}x180x320", lambda x=x, w=w, b=b: layer_norm_2d(x, w, b)))
        xb = x.to(torch.bfloat16)  # what autocast hands the norm: bfloat16 rows, float32 weights
        cases.append((f"LayerNorm (channels-last, bfloat16 rows) | {c}x180x320",
                      lambda x=xb, w=w, b=b: layer_norm_2d(x, w, b)))
    qkv, temp = torch.randn(1, 144, 180, 320).contiguous(memory_format=cl), torch.ones(6, 1, 1)
    cases.append(("SparseGSA attention, TLC windows of 48 (6 heads of 8) | qkv 144x180x320",
                  lambda: tlc_channel_attention(qkv, 6, temp, F.relu, 48)))
    for label, fn in cases:
        fast, aten = [], []
        for _ in range(repeats):  # interleaved
            fast.append(_median_ms(fn, 1))
            with _native.use_native(False):
                aten.append(_median_ms(fn, 1))
        a, b = statistics.median(fast), statistics.median(aten)
        print(f"| native {label} | {a:.1f} | {b:.1f} (native off) | {b / a:.2f}x |")


def _dynamic_rows(repeats: int) -> None:
    """DLGSANet's MHDLSA kernel: tiny / light (48 channels, 8 groups of 6) and the full model (90, 15 of 6)."""
    from lightsr.ops import get_op

    op = get_op("dynamic_dwconv_fused")
    for c, nh in ((48, 12), (90, 22)):
        g, k = c // 6, 7
        x = torch.randn(1, c, 180, 320).contiguous(memory_format=torch.channels_last)
        hidden = torch.randn(1, nh, 180, 320).contiguous(memory_format=torch.channels_last)
        w, b = torch.randn(g * k * k, nh, 1, 1) * 0.1, torch.randn(g * k * k)
        ms = _median_ms(lambda: op(x, hidden, w, b, k), repeats)
        macs = 180 * 320 * (g * k * k * nh + c * k * k)
        print(f"| dynamic 7x7 (fused: kernels from {nh} hidden + apply) | {c}x180x320 | {ms:.1f} | "
              f"{macs / ms / 1e6:.1f} GMAC/s | |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="*", help="models for the 1 vs 2 thread table")
    ap.add_argument("--profile", action="store_true")
    ap.add_argument("--kernels", action="store_true")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--no-malloc-tuning", action="store_true", help="keep glibc's malloc defaults (the CLI tunes it)")
    args = ap.parse_args(argv)
    if not args.no_malloc_tuning:  # as lightsr upscale / eval / train: freed memory reused, no page faults per call
        from lightsr.allocator import tune_malloc

        tune_malloc()
    print("command: python benchmarks/native_speed.py " + " ".join(sys.argv[1:] if argv is None else argv))
    print(f"torch {torch.__version__}; {torch.backends.cpu.get_cpu_capability()}; malloc tuned: {not args.no_malloc_tuning}\n")
    if args.models:
        thread_table(args.models, args.repeats, args.profile)
    if args.kernels:
        kernels(args.repeats)
    return 0


if __name__ == "__main__":
    sys.exit(main())
