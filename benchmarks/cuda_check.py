"""lightsr on a CUDA GPU: correctness of every fast op and model there, precision, and speed.

The CPU test suite cannot reach the CUDA code paths (CI has no GPU), so this script is what a
GPU lease runs (benchmarks/gpu_session.sh) and what a user with a GPU can run to check an install.
Sections (each prints a markdown table; ``--json`` keeps every number):

``--ops``        every fast op on the GPU in float32 / bfloat16 / float16 against its reference in
                 float64 on the CPU: output and every input gradient, odd sizes (1x1, 17x23,
                 40x31), batch 1 and 2. Relative error = max |fast - ref| / max |ref|. TF32 is
                 switched off here so that float32 is held to float32 accuracy.
``--models``     the six models and the two peers at x4 with random weights: GPU float32 (fast
                 ops) against CPU float32, GPU reference ops against GPU fast ops, and the training
                 gradients on the GPU against the CPU's (batch 2, odd sizes, TLC windows included).
``--precision``  shipped weights on Set5 (needs --data): Y-PSNR of the fp32 / bf16 / fp16 outputs
                 of :class:`lightsr.Upscaler` on the GPU (``--cpu-baseline``: and on the CPU in fp32;
                 the model cards hold the CPU numbers).
``--profile-train`` kernel launches and CPU vs GPU time of two training steps (launch-bound or not).
``--train-speed`` one training step (forward, L1, backward, Adam) per model, fp32 (TF32 on,
                 PyTorch's default for convolutions) against bf16 autocast, interleaved medians.

    python benchmarks/cuda_check.py --ops --models --precision --data ../shared/datasets/benchmark
    python benchmarks/cuda_check.py --train-speed --train-batch 16 --train-patch 48 --models-list all
"""
from __future__ import annotations

import argparse
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


def _op_cases(b, h, w, g):
    """name -> (fast fn, reference fn, inputs, same_precision): fns take the inputs positionally.

    ``same_precision``: the reference runs in the fast op's dtype and device (TLC only windows a
    function: its reference is the same function on the whole image, and SparseGSA's ReLU on
    attention scores makes its gradient jump with any rounding, so float64 is no yardstick)."""
    def r(*shape, s=1.0):
        return torch.randn(*shape, generator=g, dtype=torch.float64) * s

    taps = ops.build_kernel_map()
    gsa = SparseGSA(48)
    cases = {
        "dynamic_dwconv 7x7": (lambda x, k: ops.dynamic_dwconv(x, k, 7), lambda x, k: ops.dynamic_dwconv_reference(x, k, 7),
                               [r(b, 48, h, w), r(b, 392, h, w, s=0.3)], False),
        "dynamic_dwconv_fused": (lambda x, hd, cw, cb: ops.dynamic_dwconv_fused(x, hd, cw, cb, 7),
                                 lambda x, hd, cw, cb: ops.dynamic_dwconv_fused_reference(x, hd, cw, cb, 7),
                                 [r(b, 48, h, w), r(b, 12, h, w), r(392, 12, 1, 1, s=0.3), r(392, s=0.1)], False),
        "layer_norm_2d": (ops.layer_norm_2d, ops.layer_norm_2d_reference, [r(b, 48, h, w), r(48), r(48)], False),
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
    for dim, name in ((-1, "horizontal"), (-2, "vertical")):
        for act in (None, "tanh"):
            cases[f"focal_attention {name}{' tanh' if act else ''}"] = (
                lambda x, k, d=dim, a=act: ops.focal_attention(x, k, taps, d, a),
                lambda x, k, d=dim, a=act: ops.focal_attention_reference(x, k, taps, d, a),
                [r(b, 32, h, w), r(b, 52, h, w) if act else torch.tanh(r(b, 52, h, w))], False)
    return cases


def _fwd_bwd(fn, inputs, gout_seed):
    xs = [t.detach().requires_grad_(True) for t in inputs]
    with torch.enable_grad():
        out = fn(*xs)
        g = torch.Generator().manual_seed(gout_seed)
        gout = torch.randn(out.shape, generator=g, dtype=torch.float64).to(out.device, out.dtype)
        grads = torch.autograd.grad(out, xs, gout, allow_unused=True)
    return out, grads


def check_ops(device, results, dtypes=tuple(DTYPES)) -> int:
    print("\n## Fast ops on the GPU vs the float64 CPU reference (relative error: output / worst input gradient;"
          " TLC: vs its reference in the same dtype on the GPU)\n")
    print("| op | size (b,h,w) | " + " | ".join(dtypes) + " |")
    print("|---|---|" + "---|" * len(dtypes))
    failures = 0
    for b, h, w in SIZES:
        for name, (fast, ref, inputs, same) in _op_cases(b, h, w, torch.Generator().manual_seed(b * 1000 + h * 31 + w)).items():
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
                    results.append({"op": name, "size": [b, h, w], "dtype": dname, "out_rel": e_out,
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


def check_models(device, names, results) -> int:
    print("\n## Models at x4, random weights: GPU float32 vs CPU, reference ops vs fast ops, training gradients\n")
    print("| model | input | GPU vs CPU max abs | GPU ref vs fast max abs | grad rel L2 GPU vs CPU | status |")
    print("|---|---|---|---|---|---|")
    failures = 0
    for name in names:
        torch.manual_seed(0)
        cpu_model = create_model(name, 4)
        gpu_model = create_model(name, 4)
        gpu_model.load_state_dict(cpu_model.state_dict())
        gpu_model.to(device)
        for shape in ((2, 3, 23, 37), (1, 3, 56, 72)):  # 56x72 > the x4 TLC window (48): windows used
            x = torch.rand(*shape, generator=torch.Generator().manual_seed(1))
            try:
                cpu_model.eval(), gpu_model.eval()
                with torch.inference_mode():
                    y_cpu = cpu_model(x)
                    y_gpu = gpu_model(x.to(device)).cpu()
                    with ops.use_reference_ops():
                        y_ref = gpu_model(x.to(device)).cpu()
                d_cpu, d_ref = (y_gpu - y_cpu).abs().max().item(), (y_gpu - y_ref).abs().max().item()
                grad_err = float("nan")
                if shape[0] == 2:  # training gradients, batch 2
                    cpu_model.train(), gpu_model.train()
                    for m, xx in ((cpu_model, x), (gpu_model, x.to(device))):
                        m.zero_grad(set_to_none=True)
                        m(xx).square().mean().backward()
                    gc, gg = _grads(cpu_model), _grads(gpu_model)
                    grad_err = ((gg - gc).norm() / gc.norm().clamp_min(1e-30)).item()
                ok = d_cpu < 1e-3 and d_ref < 1e-3 and (math.isnan(grad_err) or grad_err < 1e-3)
                failures += not ok
                results.append({"model": name, "shape": list(shape), "gpu_vs_cpu": d_cpu, "ref_vs_fast": d_ref,
                                "grad_rel_l2": grad_err, "ok": ok})
                print(f"| {name} | {'x'.join(map(str, shape))} | {d_cpu:.1e} | {d_ref:.1e} | "
                      f"{'-' if math.isnan(grad_err) else f'{grad_err:.1e}'} | {'ok' if ok else '**FAIL**'} |", flush=True)
            except Exception as exc:
                failures += 1
                results.append({"model": name, "shape": list(shape), "error": repr(exc)})
                print(f"| {name} | {'x'.join(map(str, shape))} | **ERROR** {type(exc).__name__}: "
                      f"{str(exc).splitlines()[0][:100]} | | | |", flush=True)
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


def train_speed(device, names, batch, patch, repeats, results) -> None:
    print(f"\n## Training step on the GPU: batch {batch}, LR patch {patch}, x4, forward + L1 + backward + Adam\n")
    print("| model | fp32 median ms | bf16 autocast median ms | bf16 speed-up | fp32 samples/s | peak MiB (fp32) |")
    print("|---|---|---|---|---|---|")
    for name in names:
        torch.manual_seed(0)
        model = create_model(name, 4).to(device).train()
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        g = torch.Generator().manual_seed(0)
        x = torch.rand(batch, 3, patch, patch, generator=g).to(device)
        y = torch.rand(batch, 3, 4 * patch, 4 * patch, generator=g).to(device)

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
        launches = sum(e.count for e in ev if e.key == "cudaLaunchKernel") // 2
        cpu_ms = sum(e.self_cpu_time_total for e in ev) / 1e3
        gpu_ms = sum(getattr(e, "self_device_time_total", 0) for e in ev if e.device_type.name == "CUDA") / 1e3
        print(f"| {name} | {launches:,} | {cpu_ms:.0f} | {gpu_ms:.0f} |", flush=True)
        del model, opt


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--ops", action="store_true")
    ap.add_argument("--models", action="store_true")
    ap.add_argument("--precision", action="store_true")
    ap.add_argument("--train-speed", action="store_true")
    ap.add_argument("--profile-train", action="store_true",
                    help="kernel launches and CPU/GPU time of two training steps per model (torch profiler)")
    ap.add_argument("--dtypes", nargs="+", default=list(DTYPES), choices=list(DTYPES),
                    help="--ops: precisions to check (the bounds are set for CUDA's kernels; the CPU's bfloat16 "
                         "LayerNorm gradient, for one, is less exact)")
    ap.add_argument("--models-list", nargs="+", default=["all"], help="models for --models / --train-speed")
    ap.add_argument("--weights", nargs="+", default=["dlgsanet_tiny:4", "dlgsanet_tiny:2", "lgun:4"],
                    help="shipped model:scale pairs for --precision")
    ap.add_argument("--data", type=Path, help="benchmark folder holding Set5 (for --precision)")
    ap.add_argument("--cpu-baseline", action="store_true", help="--precision: also run each on the CPU in fp32")
    ap.add_argument("--train-batch", type=int, default=16)
    ap.add_argument("--train-patch", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to check (run on a machine with a GPU, or --device cpu for a dry run)")
        return 2
    print(format_environment(environment(device)))
    names = OURS + PEERS if args.models_list == ["all"] else args.models_list
    out, failures = {"environment": environment(device)}, 0
    tf32 = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = False  # correctness: float32 means float32
    if args.ops:
        out["ops"] = []
        failures += check_ops(device, out["ops"], args.dtypes)
    if args.models:
        out["models"] = []
        failures += check_models(device, names, out["models"])
    torch.backends.cudnn.allow_tf32 = tf32
    if args.precision:
        if args.data is None:
            ap.error("--precision needs --data")
        out["precision"] = []
        check_precision(device, args.data, args.weights, out["precision"], args.cpu_baseline)
    if args.train_speed:
        out["train_speed"] = []
        train_speed(device, [n for n in names if n not in PEERS] if args.models_list == ["all"] else names,
                    args.train_batch, args.train_patch, args.repeats, out["train_speed"])
    if args.profile_train:
        profile_train(device, [n for n in names if n not in PEERS] if args.models_list == ["all"] else names,
                      args.train_batch, args.train_patch)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1, default=str))
    print(f"\ncorrectness failures: {failures}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
