"""lightsr on a CUDA GPU: correctness of every fast op and model there, precision, and speed.

The CPU test suite cannot reach the CUDA code paths (CI has no GPU), so this script is what a
GPU lease runs (benchmarks/gpu_session.sh) and what a user with a GPU can run to check an install.
Sections (each prints a markdown table; ``--json`` keeps every number):

``--ops``        every fast op on the GPU in float32 / bfloat16 / float16 against its reference in
                 float64 on the CPU: output and every input gradient, odd sizes (1x1, 17x23,
                 40x31), batch 1 and 2. Relative error = max |fast - ref| / max |ref|. TF32 is
                 switched off here so that float32 is held to float32 accuracy.
``--triton``     the same for every Triton kernel (lightsr.ops.triton), where triton can run
                 (a CUDA device, or TRITON_INTERPRET=1 on the CPU: the dry run).
``--models``     the six models and the two peers at x4 with random weights: GPU float32 (fast
                 ops) against CPU float32, GPU reference ops against GPU fast ops, the training
                 gradients on the GPU against the CPU's (batch 2, odd sizes, TLC windows included),
                 and with the Triton kernels where they can run.
``--precision``  shipped weights on Set5 (needs --data): Y-PSNR of the fp32 / bf16 / fp16 outputs
                 of :class:`lightsr.Upscaler` on the GPU (``--cpu-baseline``: and on the CPU in fp32;
                 the model cards hold the CPU numbers).
``--infer-speed`` inference of a 320x180 -> 1280x720 x4 frame per model and precision (weights and
                 input in that dtype), today's ops (cudnn.benchmark on, and off) / Triton / Triton
                 replayed from a CUDA graph
                 (lightsr.train.graph_step): median ms, GMACs and MAC throughput relative to IMDN's
                 in the same precision and run.
``--train-table`` the training step (forward, L1, backward, Adam) per model with the reference ops,
                 today's ops, Triton, and Triton with the step captured in a CUDA graph: median ms,
                 speed-up over today's ops, and kernel launches and GPU kernels per step (profiler).
``--profile-train`` kernel launches and CPU vs GPU time of two training steps (launch-bound or not).
``--train-speed`` one training step (forward, L1, backward, Adam) per model, fp32 (TF32 on,
                 PyTorch's default for convolutions) against bf16 autocast, interleaved medians.

    python benchmarks/cuda_check.py --ops --triton --models --precision --data ../shared/datasets/benchmark
    python benchmarks/cuda_check.py --infer-speed --models-list all
    python benchmarks/cuda_check.py --train-table --train-batch 16 --train-patch 48 --models-list all
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lightsr.bench import environment, format_environment, interleaved_timings
from lightsr.models import create_model
from lightsr.models.dlgsanet import SparseGSA
from lightsr import ops
from lightsr.ops import triton as triton_ops
from lightsr.train.graph_step import GraphedForward, GraphedStep, fixed_shape_tuning

OURS = ["dlgsanet_tiny", "dlgsanet_light", "dlgsanet", "lgun", "lamnet", "lamnet_large"]
PEERS = ["imdn", "pan"]
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# relative-error bounds per dtype: float32 (TF32 off) must match to float32 rounding; the reduced
# precisions are held to a few units of their own rounding (bf16 has 8 mantissa bits, fp16 11)
TOL = {"float32": 1e-4, "bfloat16": 6e-2, "float16": 1e-2}
SIZES = [(1, 1, 1), (2, 17, 23), (1, 40, 31)]


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|; positions where both are NaN count as equal (a faithful op may
    reproduce its reference's overflow), a NaN in one only is NaN."""
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    both = a.isnan() & b.isnan()
    a, b = a.masked_fill(both, 0.0), b.masked_fill(both, 0.0)
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-12)).item()


def _op_cases(b, h, w, g, impl=ops):
    """name -> (fast fn, reference fn, inputs, same_precision): fns take the inputs positionally.

    ``impl``: where the fast functions come from: :mod:`lightsr.ops`, or :mod:`lightsr.ops.triton`
    (which has no depth-wise convolution and TLC of its own: those cases are left out).
    ``same_precision``: the reference runs in the fast op's dtype and device (TLC only windows a
    function: its reference is the same function on the whole image, and SparseGSA's ReLU on
    attention scores makes its gradient jump with any rounding, so float64 is no yardstick)."""
    def r(*shape, s=1.0):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * s

    taps = ops.build_kernel_map()
    gsa = SparseGSA(48)
    cases = {
        "dynamic_dwconv 7x7": (lambda x, k: impl.dynamic_dwconv(x, k, 7), lambda x, k: ops.dynamic_dwconv_reference(x, k, 7),
                               [r(b, 48, h, w), r(b, 392, h, w, s=0.3)], False),
        "dynamic_dwconv_fused": (lambda x, hd, cw, cb: impl.dynamic_dwconv_fused(x, hd, cw, cb, 7),
                                 lambda x, hd, cw, cb: ops.dynamic_dwconv_fused_reference(x, hd, cw, cb, 7),
                                 [r(b, 48, h, w), r(b, 12, h, w), r(392, 12, 1, 1, s=0.3), r(392, s=0.1)], False),
        "layer_norm_2d": (lambda x, wt, bs: impl.layer_norm_2d(x, wt, bs), ops.layer_norm_2d_reference,
                          [r(b, 48, h, w), r(48), r(48)], False),
    }
    if impl is ops:
        cases.update(_aten_backed_cases(b, h, w, r, gsa))
    for dim, name in ((-1, "horizontal"), (-2, "vertical")):
        for act in (None, "tanh"):
            cases[f"focal_attention {name}{' tanh' if act else ''}"] = (
                lambda x, k, d=dim, a=act: impl.focal_attention(x, k, taps, d, a),
                lambda x, k, d=dim, a=act: ops.focal_attention_reference(x, k, taps, d, a),
                [r(b, 32, h, w), r(b, 52, h, w) if act else torch.tanh(r(b, 52, h, w))], False)
    return cases


def _aten_backed_cases(b, h, w, r, gsa):
    """The ops that only lightsr.ops has (depth-wise convolution around aten, TLC windows)."""
    return {
        "depthwise_conv2d 1x23": (lambda x, wt, bs: ops.depthwise_conv2d(x, wt, bs, (0, 11)),
                                  lambda x, wt, bs: ops.depthwise_conv2d_reference(x, wt, bs, (0, 11)),
                                  [r(b, 32, h, w), r(32, 1, 1, 23, s=0.2), r(32)], False),
        "depthwise_conv2d 23x1": (lambda x, wt, bs: ops.depthwise_conv2d(x, wt, bs, (11, 0)),
                                  lambda x, wt, bs: ops.depthwise_conv2d_reference(x, wt, bs, (11, 0)),
                                  [r(b, 32, h, w), r(32, 1, 23, 1, s=0.2), r(32)], False),
        # TLC windows of 8 pixels: several windows (and a remainder) on the odd sizes
        "tlc (SparseGSA, 8-px windows)": (lambda q: ops.tlc(gsa.to(q.device, q.dtype).attend, q, 8),
                                          lambda q: ops.tlc_reference(gsa.to(q.device, q.dtype).attend, q, 8),
                                          [r(b, 144, h, w)], True),
    }


def _fwd_bwd(fn, inputs, gout_seed):
    xs = [t.detach().requires_grad_(True) for t in inputs]
    with torch.enable_grad():
        out = fn(*xs)
        g = torch.Generator().manual_seed(gout_seed)
        gout = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.device, out.dtype)
        grads = torch.autograd.grad(out, xs, gout, allow_unused=True)
    return out, grads


def check_ops(device, results, dtypes=tuple(DTYPES), impl=ops, sizes=SIZES) -> int:
    what = "Triton kernels" if impl is not ops else "Fast ops"
    print(f"\n## {what} on {device.type} vs the float64 CPU reference (relative error: output / worst input gradient;"
          " TLC: vs its reference in the same dtype on the GPU)\n")
    print("| op | size (b,h,w) | " + " | ".join(dtypes) + " |")
    print("|---|---|" + "---|" * len(dtypes))
    failures = 0
    for b, h, w in sizes:
        for name, (fast, ref, inputs, same) in _op_cases(b, h, w, torch.Generator().manual_seed(b * 1000 + h * 31 + w),
                                                         impl).items():
            ref_out, ref_grads = _fwd_bwd(ref, inputs, 7)
            cells = []
            for dname in dtypes:
                dtype = DTYPES[dname]
                try:
                    cast = [t.to(device, dtype) for t in inputs]
                    if same:
                        ref_out, ref_grads = _fwd_bwd(ref, cast, 7)
                    out, grads = _fwd_bwd(fast, cast, 7)
                    e_out = _rel(out, ref_out)
                    e_grad = max((_rel(gd, gr) for gd, gr in zip(grads, ref_grads) if gr is not None), default=0.0)
                    ok = math.isfinite(e_out) and math.isfinite(e_grad) and max(e_out, e_grad) <= TOL[dname]
                    failures += not ok
                    cells.append(f"{e_out:.1e} / {e_grad:.1e}{'' if ok else ' **FAIL**'}")
                    results.append({"op": name, "impl": what, "size": [b, h, w], "dtype": dname, "out_rel": e_out,
                                    "grad_rel": e_grad, "ok": ok})
                except Exception as exc:  # a crash on the GPU is the finding: report it, go on
                    failures += 1
                    cells.append(f"**ERROR** {type(exc).__name__}: {str(exc).splitlines()[0][:80]}")
                    results.append({"op": name, "size": [b, h, w], "dtype": dname, "error": repr(exc)})
            print(f"| {name} | {b},{h},{w} | " + " | ".join(cells) + " |", flush=True)
    print(f"\nbounds: {TOL}; failures: {failures}")
    return failures


def _grads(model) -> torch.Tensor:
    return torch.cat([p.grad.detach().double().flatten().cpu() for p in model.parameters() if p.grad is not None])


def triton_ready(device) -> bool:
    """The Triton kernels can run on ``device``: CUDA, or the CPU under TRITON_INTERPRET=1 (dry run)."""
    return triton_ops.available() and (device.type == "cuda" or triton_ops.interpreting())


TRITON_OPS = ("dynamic_dwconv", "dynamic_dwconv_fused", "focal_attention", "layer_norm_2d")


def _prefer_triton(name: str, fallback):
    kernel = getattr(triton_ops, name)

    def call(x, *args, **kwargs):
        if x.dtype in DTYPES.values() and (x.is_cuda or triton_ops.interpreting()):
            return kernel(x, *args, **kwargs)
        return fallback(x, *args, **kwargs)
    return call


@contextlib.contextmanager
def ops_variant(variant: str):
    """Which implementation the models' ops use inside the block: ``reference``, ``ops`` (today's
    fast ops, Triton off) or ``triton`` (the Triton kernels where they exist, today's ops for the
    rest). ``triton`` also swaps the entries of the op table the models read (``lightsr.ops._FAST``),
    so that it works whether or not lightsr.ops dispatches to Triton itself."""
    if variant == "reference":
        with ops.use_reference_ops(), triton_ops.use_triton(False):
            yield
        return
    if variant == "ops":
        with ops.use_reference_ops(False), triton_ops.use_triton(False):
            yield
        return
    table = getattr(ops, "_FAST", None)
    saved = dict(table) if table is not None else {}
    if table is not None:
        table.update({n: _prefer_triton(n, saved[n]) for n in TRITON_OPS if n in saved})
    try:
        with ops.use_reference_ops(False), triton_ops.use_triton(True):
            yield
    finally:
        if table is not None:
            table.update(saved)


def dispatch_wired(device) -> bool:
    """Whether lightsr.ops itself picks the Triton kernels for ``device`` (the models' default path)."""
    if not triton_ready(device):
        return False
    from lightsr.ops.triton import dynamic_conv

    calls, original = [], dynamic_conv._forward
    dynamic_conv._forward = lambda *a: (calls.append(1), original(*a))[1]
    try:
        x = torch.rand(1, 6, 3, 3, device=device)
        ops.dynamic_dwconv_fused(x, x[:, :3], torch.rand(9, 3, 1, 1, device=device), None, 3)
    finally:
        dynamic_conv._forward = original
    return bool(calls)


def _grads(model) -> torch.Tensor:
    return torch.cat([p.grad.detach().double().flatten().cpu() for p in model.parameters() if p.grad is not None])


def _outputs_and_grads(model, x, variant, with_grads):
    """Eval output (CPU float32) and, if asked, the training gradients of mean(model(x)^2)."""
    with ops_variant(variant):
        model.eval()
        with torch.inference_mode():
            y = model(x).float().cpu()
        if not with_grads:
            return y, None
        model.train()
        model.zero_grad(set_to_none=True)
        model(x).square().mean().backward()
        return y, _grads(model)


def _model_row(cpu_model, gpu_model, x, device, triton: bool) -> dict:
    with_grads = x.shape[0] == 2  # training gradients at batch 2
    y_cpu, g_cpu = _outputs_and_grads(cpu_model, x, "ops", with_grads)
    y_gpu, g_gpu = _outputs_and_grads(gpu_model, x.to(device), "ops", with_grads)
    y_ref, _ = _outputs_and_grads(gpu_model, x.to(device), "reference", False)

    def grad_rel(g):
        return ((g - g_cpu).norm() / g_cpu.norm().clamp_min(1e-30)).item() if with_grads else float("nan")

    row = {"gpu_vs_cpu": (y_gpu - y_cpu).abs().max().item(), "ref_vs_fast": (y_gpu - y_ref).abs().max().item(),
           "grad_rel_l2": grad_rel(g_gpu), "triton_vs_cpu": float("nan"), "triton_grad_rel_l2": float("nan")}
    if triton:
        y_tri, g_tri = _outputs_and_grads(gpu_model, x.to(device), "triton", with_grads)
        row.update(triton_vs_cpu=(y_tri - y_cpu).abs().max().item(), triton_grad_rel_l2=grad_rel(g_tri))
    row["ok"] = all(math.isnan(v) or v < 1e-3 for k, v in row.items())
    return row


def _cell(v: float) -> str:
    return "-" if math.isnan(v) else f"{v:.1e}"


def check_models(device, names, results, shapes=((2, 3, 23, 37), (1, 3, 56, 72))) -> int:
    triton = triton_ready(device)
    print("\n## Models at x4, random weights: GPU float32 vs CPU, reference ops vs fast ops, training gradients"
          f"{', and with the Triton kernels' if triton else ' (Triton kernels: not available here)'}\n")
    print("| model | input | GPU vs CPU max abs | GPU ref vs fast max abs | grad rel L2 GPU vs CPU | "
          "Triton vs CPU max abs | Triton grad rel L2 vs CPU | status |")
    print("|---|---|---|---|---|---|---|---|")
    failures = 0
    for name in names:
        torch.manual_seed(0)
        cpu_model = create_model(name, 4)
        gpu_model = create_model(name, 4)
        gpu_model.load_state_dict(cpu_model.state_dict())
        gpu_model.to(device)
        for shape in shapes:  # 56x72 > the x4 TLC window (48): windows used
            x = torch.rand(*shape, generator=torch.Generator().manual_seed(1))
            label = "x".join(map(str, shape))
            try:
                row = _model_row(cpu_model, gpu_model, x, device, triton)
            except Exception as exc:
                failures += 1
                results.append({"model": name, "shape": list(shape), "error": repr(exc)})
                print(f"| {name} | {label} | **ERROR** {type(exc).__name__}: {str(exc).splitlines()[0][:100]} | | | | | |",
                      flush=True)
                continue
            failures += not row["ok"]
            results.append({"model": name, "shape": list(shape), **row})
            cells = [row[k] for k in ("gpu_vs_cpu", "ref_vs_fast", "grad_rel_l2", "triton_vs_cpu", "triton_grad_rel_l2")]
            print(f"| {name} | {label} | " + " | ".join(map(_cell, cells)) + f" | {'ok' if row['ok'] else '**FAIL**'} |",
                  flush=True)
        del cpu_model, gpu_model
    print(f"\nbound: 1e-3 (outputs are ~[0, 1]; TF32 off); failures: {failures}")
    return failures


def check_precision(device, data: Path, weights: list[str], results, cpu_baseline: bool) -> None:
    from lightsr.data.benchmark import find_benchmark
    from lightsr.inference import Upscaler
    from lightsr.metrics import psnr

    print("\n## Shipped weights on Set5: Y-PSNR (dB) of the Upscaler's output per device and precision\n")
    runs = [("cpu", "fp32")] * cpu_baseline + [(device.type, p) for p in ("fp32", "bf16", "fp16")]
    print("| weights | " + " | ".join(f"{d} {p}" for d, p in runs) + " | max |fp16 - fp32| (uint8) |")
    print("|---|" + "---|" * (len(runs) + 1))
    for spec in weights:
        model, scale = spec.split(":")
        scale = int(scale)
        samples = list(find_benchmark(data, "Set5", scale))  # HR cropped to LR x scale, as lightsr eval
        cells, outs = [], {}
        for dev, prec in runs:
            up = Upscaler(model, scale, device=dev, precision=prec, tile=0, warn=lambda m: print("  warning:", m))
            vals = []
            for smp in samples:
                sr = outs[(dev, prec, smp.name)] = up.upscale_pixels(smp.lr)
                vals.append(psnr(sr, smp.hr, crop_border=scale, y_channel=True))
            cells.append(f"{np.mean(vals):.3f}")
            results.append({"weights": spec, "device": dev, "precision": prec, "set5_psnr_y": float(np.mean(vals))})
        diff = max(int(np.abs(outs[(device.type, "fp16", smp.name)].astype(int)
                              - outs[(device.type, "fp32", smp.name)].astype(int)).max()) for smp in samples)
        print(f"| {spec} | " + " | ".join(cells) + f" | {diff} |", flush=True)


LAUNCH_CALLS = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx", "cudaGraphLaunch")


def count_launches(fn, device, steps: int = 2) -> tuple[float, float]:
    """(launch API calls, kernels run on the GPU) per call of ``fn``, from the torch profiler.

    Triton launches through the driver (``cuLaunchKernel``), a CUDA graph replay is one
    ``cudaGraphLaunch`` for all its kernels; NaN on a CPU."""
    if device.type != "cuda":
        return float("nan"), float("nan")
    from torch.profiler import ProfilerActivity, profile

    torch.cuda.synchronize(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            fn()
        torch.cuda.synchronize(device)
    ev = prof.key_averages()
    calls = sum(e.count for e in ev if e.key in LAUNCH_CALLS)
    kernels = sum(e.count for e in ev if e.device_type.name == "CUDA")
    return calls / steps, kernels / steps


def _variants_for(name: str, device) -> list[str]:
    """Inference variants: today's ops, Triton where the model has a kernel for its ops, and the
    better of the two replayed from a CUDA graph (also run eagerly where graphs cannot be used)."""
    triton = triton_ready(device) and name in OURS and name != "lgun"  # LGUN uses no lightsr op with a kernel
    return ["ops", "ops+nobench"] + ["triton"] * triton + [("triton" if triton else "ops") + "+graph"]


def _infer_callable(model, x, variant, device):
    base = variant.split("+")[0]
    if variant.endswith("+graph"):
        graphed = GraphedForward(model, device)

        def run():
            with ops_variant(base):
                return graphed(x)
        run.note = graphed.fallback_reason
        return run

    def run():  # +nobench: cuDNN's heuristics instead of its per-shape benchmark (the sections turn it on)
        with ops_variant(base), fixed_shape_tuning(not variant.endswith("+nobench")), torch.inference_mode():
            return model(x)
    run.note = None
    return run


def infer_speed(device, names, dtypes, lr_size, repeats, results) -> None:
    from lightsr.complexity import count_model_macs

    h, w = lr_size
    print(f"\n## Inference, batch 1, {w}x{h} -> {4 * w}x{4 * h} (x4), weights and input in each precision: median ms\n")
    print("MAC throughput relative to IMDN's in the same precision and run (best variant of each; 1 = as fast per MAC as IMDN)\n")
    print("| model | dtype | GMACs | today's ops ms | same, cudnn.benchmark off | Triton ms | graph ms | best GMAC/s | vs IMDN |")
    print("|---|---|---|---|---|---|---|---|---|")
    order = ["imdn"] + [n for n in names if n != "imdn"]  # IMDN first: the yardstick of every row
    macs = {n: count_model_macs(n, 4, (h, w)).macs / 1e9 for n in order}
    for dname in dtypes:
        imdn_rate = None
        for name in order:
            row = _infer_row(name, device, DTYPES[dname], (h, w), repeats)
            rate = macs[name] / (row["best_ms"] / 1e3) if row.get("best_ms") else float("nan")
            imdn_rate = rate if name == "imdn" else imdn_rate
            ratio = rate / imdn_rate if imdn_rate else float("nan")
            results.append({"model": name, "dtype": dname, "gmacs": macs[name], "gmac_per_s": rate,
                            "vs_imdn": ratio, **row})
            ms = [f"{row[v]:.2f}" if v in row else "-" for v in ("ops", "ops+nobench", "triton", "graph")]
            print(f"| {name} | {dname} | {macs[name]:.3g} | " + " | ".join(ms) + f" | {rate:.3g} | {ratio:.2f} |",
                  flush=True)
            for note in row.get("notes", []):
                print(f"  note ({name}): {note}")


def _infer_row(name, device, dtype, hw, repeats) -> dict:
    torch.manual_seed(0)
    model = create_model(name, 4).eval().to(device=device, dtype=dtype)
    x = torch.rand(1, 3, *hw, device=device, dtype=dtype)
    runs = {v: _infer_callable(model, x, v, device) for v in _variants_for(name, device)}
    row = {"notes": sorted({r.note for r in runs.values() if r.note})}
    try:
        t = interleaved_timings(runs, device=device, warmup=2, repeats=repeats)
    except Exception as exc:  # report and go on with the next model
        row["notes"].append(f"**ERROR** {type(exc).__name__}: {str(exc).splitlines()[0][:120]}")
        return row
    for v, stats in t.items():
        row["graph" if v.endswith("+graph") else v] = stats.median * 1e3
    row["best_ms"] = min(stats.median for v, stats in t.items() if v != "ops+nobench") * 1e3
    return row


TRAIN_VARIANTS = ("reference", "ops", "triton", "triton+graph")


def _train_step(model, opt, x, y, variant, device):
    """One training step (forward, L1, backward, Adam) with the ops of ``variant``."""
    base = variant.split("+")[0]
    graphed = GraphedStep(model, F.l1_loss) if variant.endswith("+graph") else None

    def step():
        with ops_variant(base):
            opt.zero_grad(set_to_none=True)
            if graphed is not None:
                graphed(x, y)
            else:
                F.l1_loss(model(x), y).backward()
            opt.step()
    step.note = graphed.fallback_reason if graphed is not None else None
    return step


def train_table(device, names, batch, patch, repeats, variants, results) -> None:
    variants = [v for v in variants if not v.startswith("triton") or triton_ready(device)]
    print(f"\n## Training step, batch {batch}, LR patch {patch}, x4 (forward, L1, backward, Adam; fp32): median ms\n")
    print(f"lightsr.ops dispatches to Triton by itself: {'yes' if dispatch_wired(device) else 'no'}; "
          f"Triton kernels {'available' if triton_ready(device) else 'not available'} here\n")
    print("| model | " + " | ".join(f"{v} ms" for v in variants) + " | speed-up vs today's ops | "
          + " | ".join(f"launches {v}" for v in variants) + " | GPU kernels per step (last) |")
    print("|---|" + "---|" * (2 * len(variants) + 2))
    for name in names:
        row = _train_row(name, device, batch, patch, repeats, variants)
        results.append({"model": name, "batch": batch, "patch": patch, **row})
        if "error" in row:
            print(f"| {name} | **ERROR** {row['error'][:120]} |", flush=True)
            continue
        best = min(row[f"{v}_ms"] for v in variants)
        cells = [f"{row[f'{v}_ms']:.1f}" for v in variants] + [f"{row['ops_ms'] / best:.2f}x" if "ops" in variants else "-"]
        cells += ["-" if math.isnan(row[f"{v}_launches"]) else f"{row[f'{v}_launches']:,.0f}" for v in variants]
        last = row[f"{variants[-1]}_kernels"]
        cells.append("-" if math.isnan(last) else f"{last:,.0f}")
        print(f"| {name} | " + " | ".join(cells) + " |", flush=True)
        for note in row["notes"]:
            print(f"  note ({name}): {note}")


def _train_setup(name, device, batch, patch):
    """A seeded x4 model in train mode, its Adam, and one random (LR, HR) batch, all on ``device``."""
    torch.manual_seed(0)
    model = create_model(name, 4).to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(batch, 3, patch, patch, generator=g).to(device)
    y = torch.rand(batch, 3, 4 * patch, 4 * patch, generator=g).to(device)
    return model, opt, x, y


def _train_row(name, device, batch, patch, repeats, variants) -> dict:
    model, opt, x, y = _train_setup(name, device, batch, patch)
    steps = {v: _train_step(model, opt, x, y, v, device) for v in variants}
    row = {"notes": sorted({s.note for s in steps.values() if s.note})}
    try:
        t = interleaved_timings(steps, device=device, warmup=1, repeats=repeats)
        for v in variants:
            row[f"{v}_ms"] = t[v].median * 1e3
            row[f"{v}_launches"], row[f"{v}_kernels"] = count_launches(steps[v], device)
    except Exception as exc:
        row["error"] = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
    return row


def train_speed(device, names, batch, patch, repeats, results) -> None:
    print(f"\n## Training step on the GPU: batch {batch}, LR patch {patch}, x4, forward + L1 + backward + Adam\n")
    print("| model | fp32 median ms | bf16 autocast median ms | bf16 speed-up | fp32 samples/s | peak MiB (fp32) |")
    print("|---|---|---|---|---|---|")
    for name in names:
        model, opt, x, y = _train_setup(name, device, batch, patch)

        def step(dtype):
            def fn():
                opt.zero_grad(set_to_none=True)
                with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
                    out = model(x)
                F.l1_loss(out.float(), y).backward()
                opt.step()
            return fn

        try:
            cuda = device.type == "cuda"
            if cuda:
                torch.cuda.reset_peak_memory_stats(device)
            step(None)()
            peak = torch.cuda.max_memory_allocated(device) / 2**20 if cuda else float("nan")
            t = interleaved_timings({"fp32": step(None), "bf16": step(torch.bfloat16)}, device=device,
                                    warmup=3, repeats=repeats)
            f32, b16 = t["fp32"].median, t["bf16"].median
            results.append({"model": name, "batch": batch, "patch": patch, "fp32_ms": f32 * 1e3,
                            "bf16_ms": b16 * 1e3, "peak_mib": peak})
            print(f"| {name} | {f32 * 1e3:.1f} | {b16 * 1e3:.1f} | {f32 / b16:.2f}x | {batch / f32:.0f} | {peak:.0f} |",
                  flush=True)
        except Exception as exc:
            results.append({"model": name, "error": repr(exc)})
            print(f"| {name} | **ERROR** {type(exc).__name__}: {str(exc).splitlines()[0][:100]} | | | | |", flush=True)
        del model, opt


def profile_train(device, names, batch, patch) -> None:
    """Kernel launches and CPU vs GPU time of two training steps (torch profiler): is the step launch-bound?"""
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + [ProfilerActivity.CUDA] * (device.type == "cuda")
    print(f"\n## Profile of two training steps, batch {batch}, LR patch {patch}, x4 (fp32)\n")
    print("| model | kernel launches per step | CPU self ms (2 steps) | GPU self ms (2 steps) |")
    print("|---|---|---|---|")
    for name in names:
        model = create_model(name, 4).to(device).train()
        opt = torch.optim.Adam(model.parameters())
        x = torch.rand(batch, 3, patch, patch, device=device)
        y = torch.rand(batch, 3, 4 * patch, 4 * patch, device=device)

        def step():
            opt.zero_grad()
            F.l1_loss(model(x), y).backward()
            opt.step()

        for _ in range(3):
            step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        with profile(activities=acts) as prof:
            for _ in range(2):
                step()
            if device.type == "cuda":
                torch.cuda.synchronize(device)
        ev = prof.key_averages()
        launches = sum(e.count for e in ev if e.key in LAUNCH_CALLS) // 2
        cpu_ms = sum(e.self_cpu_time_total for e in ev) / 1e3
        gpu_ms = sum(getattr(e, "self_device_time_total", 0) for e in ev if e.device_type.name == "CUDA") / 1e3
        print(f"| {name} | {launches:,} | {cpu_ms:.0f} | {gpu_ms:.0f} |", flush=True)
        del model, opt


def _parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    for flag in ("--ops", "--triton", "--models", "--precision", "--infer-speed", "--train-table", "--train-speed"):
        ap.add_argument(flag, action="store_true")
    ap.add_argument("--profile-train", action="store_true",
                    help="kernel launches and CPU/GPU time of two training steps per model (torch profiler)")
    ap.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES),
                    help="--ops / --triton / --infer-speed: precisions (the --ops bounds are set for CUDA's kernels; "
                         "the CPU's bfloat16 LayerNorm gradient, for one, is less exact)")
    ap.add_argument("--models-list", nargs="+", default=["all"],
                    help="models for --models / --infer-speed / --train-table / --train-speed (all: ours and the peers; "
                         "the training sections leave the peers out)")
    ap.add_argument("--triton-dtypes", nargs="+", choices=list(DTYPES), help="--triton: precisions (default: --dtypes)")
    ap.add_argument("--op-sizes", nargs="+", default=[f"{b}x{h}x{w}" for b, h, w in SIZES],
                    help="--ops / --triton: sizes BxHxW")
    ap.add_argument("--model-shapes", nargs="+", default=["2x23x37", "1x56x72"],
                    help="--models: inputs BxHxW (batch 2: training gradients too)")
    ap.add_argument("--infer-size", nargs=2, type=int, default=[180, 320], metavar=("H", "W"),
                    help="--infer-speed: LR input size (default 180 320: a 1280x720 output at x4)")
    ap.add_argument("--variants", nargs="+", default=list(TRAIN_VARIANTS), choices=list(TRAIN_VARIANTS),
                    help="--train-table: implementations to time")
    ap.add_argument("--weights", nargs="+", default=["dlgsanet_tiny:4", "dlgsanet_tiny:2", "lgun:4"],
                    help="shipped model:scale pairs for --precision")
    ap.add_argument("--data", type=Path, help="benchmark folder holding Set5 (for --precision)")
    ap.add_argument("--cpu-baseline", action="store_true", help="--precision: also run each on the CPU in fp32")
    ap.add_argument("--train-batch", type=int, default=16)
    ap.add_argument("--train-patch", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--json", type=Path)
    return ap


def _correctness(args, device, names, out) -> int:
    failures = 0
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # correctness: float32 means float32
    try:
        sizes = [tuple(map(int, s.split("x"))) for s in args.op_sizes]
        if args.ops:
            failures += check_ops(device, out.setdefault("ops", []), args.dtypes, sizes=sizes)
        if args.triton:
            if triton_ready(device):
                failures += check_ops(device, out.setdefault("triton", []), args.triton_dtypes or args.dtypes,
                                      impl=triton_ops, sizes=sizes)
            else:
                print(f"\n## Triton kernels: not checked (triton {'installed' if triton_ops.available() else 'missing'}, "
                      f"device {device.type}; on a CPU they run under TRITON_INTERPRET=1)")
        if args.models:
            shapes = [(b, 3, h, w) for b, h, w in (map(int, s.split("x")) for s in args.model_shapes)]
            failures += check_models(device, names, out.setdefault("models", []), shapes)
    finally:
        torch.backends.cudnn.allow_tf32 = tf32
    return failures


def _speed(args, device, names, out) -> None:
    trainable = [n for n in names if n not in PEERS] if args.models_list == ["all"] else names
    with fixed_shape_tuning(device.type == "cuda"):  # shapes are fixed in every timed section
        if args.infer_speed:
            infer_speed(device, names, args.dtypes, args.infer_size, args.repeats, out.setdefault("infer_speed", []))
        if args.train_table:
            train_table(device, trainable, args.train_batch, args.train_patch, args.repeats, args.variants,
                        out.setdefault("train_table", []))
        if args.train_speed:
            train_speed(device, trainable, args.train_batch, args.train_patch, args.repeats, out.setdefault("train_speed", []))
        if args.profile_train:
            profile_train(device, trainable, args.train_batch, args.train_patch)


def main(argv=None) -> int:
    ap = _parser()
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to check (run on a machine with a GPU, or --device cpu for a dry run)")
        return 2
    if args.precision and args.data is None:
        ap.error("--precision needs --data")
    print(format_environment(environment(device)))
    names = OURS + PEERS if args.models_list == ["all"] else args.models_list
    out = {"environment": environment(device)}
    failures = _correctness(args, device, names, out)
    if args.precision:
        check_precision(device, args.data, args.weights, out.setdefault("precision", []), args.cpu_baseline)
    _speed(args, device, names, out)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str))
    print(f"\ncorrectness failures: {failures}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
