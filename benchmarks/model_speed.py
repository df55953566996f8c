"""Whole models: fast ops vs reference ops, the peer baselines, and the distance to the MAC floor.

On the same input and machine, in one run:

1. this machine's multiply-accumulate rate, measured with a large float32 matrix product (the
   best case for the arithmetic units: a dense GEMM) once at the start, and again inside every
   model's interleaved timing loop (the floor of each model uses the rate measured alongside
   it, under the same machine load);
2. per model, eval-mode inference at the 1280x720-output LR size (320x180 at x4): the fast path
   (custom ops, channels-last on CPU) against the reference path (``use_reference_ops()``:
   plain-formula ops, NCHW), timed interleaved, with the largest output difference; the peer
   baselines (IMDN, PAN: plain convolutions, nothing to switch) timed the same way;
3. per model, the MAC floor = MACs / measured rate, and latency / floor;
4. ``--train``: one training step (forward + L1 loss + backward; batch 16, LR patch 48x48) fast
   vs reference, with the largest relative gradient difference;
5. ``--profile``: the torch profiler on one fast forward; the operators with the largest share
   of the time (the largest remaining cost per model) and the share of lightsr's custom ops
   (their whole time, aten calls inside included); ``--profile-train``: the same for one fast
   training step, with the bound on the training speed-up that even infinitely fast custom ops
   could not beat: reference step / (fast step x (1 - custom-op share)), from un-profiled
   interleaved timings (the profiler inflates the reference step's many large temporaries);
6. ``--compile``: ``torch.compile`` of the fast model against eager (compile time printed; a
   failure is reported and skipped);
7. ``--op-times``: one fast training step with every operator call timed on its own: a
   ``TorchDispatchMode`` (marked ``lightsr_transparent``, so lightsr's ops take the same fast
   paths as without it) times each aten call, and each native C kernel call (every one goes
   through ``lightsr.ops._native.run_rows``) is timed as ``native:<entry point>``. Unlike the
   profiler, which adds a fixed cost to every call and so inflates the many small element-wise
   calls of small training patches, this leaves each call's cost as it is; the sum is within a
   few percent of an untimed step. Grouped by operator and by operator + input shapes / strides
   (mixed memory layouts show up there; native calls show their row count).
   ``--op-times-upscale fp32|bf16``: the same for one ``Upscaler(tile=0, precision=...)`` call on a
   uint8 image of ``--size`` (the user path of ``lightsr upscale``; bf16 under CPU autocast).
8. ``--ffn-bands fp32|bf16``: the same ``Upscaler`` call with the gated FFNs on the whole map and in
   bands of rows (``lightsr.models.blocks``: maps over ``WHOLE_PIXELS`` run in bands), interleaved.

    python benchmarks/model_speed.py --threads 1 --train                 # dlgsanet_light, lamnet + peers
    python benchmarks/model_speed.py --threads 1 --models all --no-reference --profile
    python benchmarks/model_speed.py --threads 1 --models lamnet dlgsanet_light --no-inference --profile-train
    python benchmarks/model_speed.py --threads 1 --models lamnet --no-inference --train --rusage --peers
    python benchmarks/model_speed.py --threads 1 --models lamnet --no-inference --train --rusage --peers --malloc-tuning
    python benchmarks/model_speed.py --threads 1 --models dlgsanet_tiny --no-inference --op-times --train-batch 8 --train-patch 32
    python benchmarks/model_speed.py --threads 1 --models dlgsanet_tiny lamnet --no-inference --malloc-tuning --op-times-upscale bf16
    python benchmarks/model_speed.py --threads 1 --models all --no-inference --malloc-tuning --ffn-bands fp32 --size 360 640 --scale 2
"""
from __future__ import annotations

import argparse
import copy
import sys
import time
from collections import defaultdict

import torch
import torch.nn.functional as F

from lightsr.bench import environment, format_environment, interleaved_timings, load_average, matmul_rate
from lightsr.complexity import count_model_macs
from lightsr.models import create_model, get_spec, list_models
from lightsr.ops import use_reference_ops
from lightsr.ops import _native
from lightsr.ops._native import use_native

OURS = ["dlgsanet_tiny", "dlgsanet_light", "dlgsanet", "lgun", "lamnet", "lamnet_large"]


def _models(requested):
    if requested == ["all"]:
        return OURS
    for n in requested:
        get_spec(n)
    return requested


_N = 2048
_A, _B, _C = (torch.randn(_N, _N) for _ in range(3))


def _matmul():
    torch.mm(_A, _B, out=_C)


def _rate(t) -> float:
    return _N**3 / t.median


def _run(model, x, reference):
    def fn():
        with use_reference_ops(reference):
            return model(x)
    return fn


def _inference(names, peers, args, rate, rows):
    h, w = args.size
    x = torch.rand(1, 3, h, w, generator=torch.Generator().manual_seed(0))
    print(f"\n## Inference: batch 1, {w}x{h} input, x{args.scale}, float32, eval mode, {args.repeats} interleaved runs\n")
    cols = ("| model | GMACs | fast median ms | fast p90 ms | reference median ms | reference p90 ms | speed-up | "
            "max abs diff | GMAC/s (matmul) | MAC floor ms | fast / floor |")
    print(cols)
    print("|" + "---|" * (cols.count("|") - 1))
    for name in names + peers:
        peer = get_spec(name).peer
        model = create_model(name, args.scale).eval()
        macs = count_model_macs(name, args.scale, (h, w)).macs
        variants = {"fast": _run(model, x, False), "matmul": _matmul}
        diff = None
        with torch.inference_mode():
            if not (peer or args.no_reference):
                diff = (variants["fast"]() - _run(model, x, True)()).abs().max().item()
                variants["reference"] = _run(model, x, True)
            t = interleaved_timings(variants, warmup=args.warmup, repeats=args.repeats)
        floor = macs / _rate(t["matmul"])
        f, r = t["fast"], t.get("reference")
        row = {"model": name, "macs": macs, "fast": f, "reference": r, "diff": diff, "floor": floor,
               "rate": _rate(t["matmul"])}
        rows.append(row)
        ref_cells = f"{r.median * 1e3:.0f} | {r.p90 * 1e3:.0f} | {r.median / f.median:.2f}x" if r else "- | - | -"
        label = f"{name} (peer)" if peer else name
        print(f"| {label} | {macs / 1e9:.2f} | {f.median * 1e3:.0f} | {f.p90 * 1e3:.0f} | {ref_cells} | "
              f"{'-' if diff is None else f'{diff:.1e}'} | {_rate(t['matmul']) / 1e9:.1f} | {floor * 1e3:.0f} | "
              f"{f.median / floor:.2f} |", flush=True)
        del model


def _step_factory(model, x, y):
    """``step(reference)`` -> a function running one training step (forward + L1 + backward) of that path."""
    def step(reference):
        def fn():
            model.zero_grad(set_to_none=True)
            with use_reference_ops(reference):
                F.l1_loss(model(x), y).backward()
        return fn
    return step


def _print_native_ab(ab) -> None:
    """The ``--native-ab`` table: (model, fast native, fast PyTorch FSA, reference) timings."""
    if not ab:
        return
    print("\n### The same steps with the native focal-attention kernel off (pure-PyTorch fast path, "
          "LIGHTSR_NATIVE=0), timed in the same interleaved loop\n")
    print("| model | fast, native FSA: median ms | fast, PyTorch FSA: median ms | native gain | "
          "reference median ms | speed-up vs reference: native / PyTorch FSA |")
    print("|---|---|---|---|---|---|")
    for name, f, fp, r in ab:
        print(f"| {name} | {f.median * 1e3:.0f} | {fp.median * 1e3:.0f} | {fp.median / f.median:.2f}x | "
              f"{r.median * 1e3:.0f} | {r.median / f.median:.2f}x / {r.median / fp.median:.2f}x |")


def _without_native(fn):
    """``fn`` with the native focal-attention kernel off: the pure-PyTorch fast path."""
    def run():
        with use_native(False):
            return fn()
    return run


def _train(names, args, rate):
    b, p = args.train_batch, args.train_patch
    g = torch.Generator().manual_seed(1)
    print(f"\n## Training step: forward + L1 loss + backward, batch {b}, LR patch {p}x{p}, {args.repeats} interleaved runs\n")
    cols = ("| model | GMACs (fwd+bwd) | fast median ms | fast p90 ms | reference median ms | reference p90 ms | "
            "speed-up | grad diff: relative L2 (worst parameter: max abs diff / max abs grad) | GMAC/s (matmul) | "
            "MAC floor ms | fast / floor |")
    print(cols)
    print("|" + "---|" * (cols.count("|") - 1))
    usage, ab = [], []
    for name in names:
        model = create_model(name, args.scale).train()
        x = torch.rand(b, 3, p, p, generator=g)
        y = torch.rand(b, 3, p * args.scale, p * args.scale, generator=g)
        macs = count_model_macs(name, args.scale, (p, p), batch=b, backward=True).macs

        step = _step_factory(model, x, y)

        # Gradients compared for one fixed output gradient: the L1 loss's own, sign(out - y) / N, taken
        # from the reference output. (Backpropagating each path's own L1 loss would compare sign()
        # of outputs that differ by ~1e-6: among ~1.8M pixels a few flip, and each flip moves the
        # whole-gradient norm by ~1e-3, which says nothing about the ops.)
        with torch.no_grad(), use_reference_ops(True):
            grad_out = torch.sign(model(x) - y) / y.numel()

        def grads(reference):
            model.zero_grad(set_to_none=True)
            with use_reference_ops(reference):
                model(x).backward(grad_out)
            return [q.grad.clone() for q in model.parameters()]

        fast_grads, ref_grads = grads(False), grads(True)
        # relative L2 difference of the whole gradient, and the worst parameter (max |diff| / max |grad|)
        l2 = (torch.sqrt(sum(((a - r) ** 2).sum() for a, r in zip(fast_grads, ref_grads)))
              / torch.sqrt(sum((r**2).sum() for r in ref_grads))).item()
        per = [(((a - r).abs().max() / r.abs().max().clamp_min(1e-12)).item(), n)
               for a, r, (n, _) in zip(fast_grads, ref_grads, model.named_parameters())]
        worst, worst_name = max(per)
        variants = {"fast": step(False), "reference": step(True), "matmul": _matmul}
        if args.native_ab:
            variants["fast_pytorch"] = _without_native(step(False))
        t = interleaved_timings(variants, warmup=args.warmup, repeats=args.repeats)
        f, r = t["fast"], t["reference"]
        if args.native_ab:
            ab.append((name, f, t["fast_pytorch"], r))
        floor = macs / _rate(t["matmul"])
        print(f"| {name} | {macs / 1e9:.2f} | {f.median * 1e3:.0f} | {f.p90 * 1e3:.0f} | {r.median * 1e3:.0f} | "
              f"{r.p90 * 1e3:.0f} | {r.median / f.median:.2f}x | {l2:.1e} ({worst:.0e}: {worst_name}) | "
              f"{_rate(t['matmul']) / 1e9:.1f} | "
              f"{floor * 1e3:.0f} | {f.median / floor:.2f} |",
              flush=True)
        if args.rusage:
            usage += _usage_rows(name, step)
        del model
    _print_native_ab(ab)
    _print_usage(usage)


def _rusage(fn):
    """(wall s, user CPU s, system CPU s, minor page faults) of one call of ``fn``."""
    import resource

    r0, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    fn()
    wall, r1 = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    return wall, r1.ru_utime - r0.ru_utime, r1.ru_stime - r0.ru_stime, r1.ru_minflt - r0.ru_minflt


def _self_shares(prof):
    """({op name: self CPU time}, total) of a profile: the self times add up to the profiled time."""
    by_name = defaultdict(float)
    for e in prof.key_averages():
        by_name[e.key] += e.self_cpu_time_total
    return by_name, sum(by_name.values())


def _is_custom(name: str) -> bool:
    # the op itself and the autograd node that calls its backward
    return name.startswith("lightsr::") or name.startswith("GeneratedBackwardFor_lightsr_")


def _custom_op_time(prof) -> float:
    """Whole time (aten calls inside included) of the outermost ``lightsr::`` custom ops and their
    autograd nodes."""
    total = 0.0
    for e in prof.events():
        if not _is_custom(e.name):
            continue
        parent, nested = e.cpu_parent, False
        while parent is not None:
            if _is_custom(parent.name):
                nested = True
                break
            parent = parent.cpu_parent
        if not nested:
            total += e.cpu_time_total
    return total


def _profile_train(names, args):
    """Amdahl's bound of the training step: the share of the fast step spent in lightsr's custom ops
    (from a profile), and what the speed-up over the reference path would be if those ops cost
    nothing. The speed-up and the bound use un-profiled, interleaved timings: the profiler's own
    overhead inflates the reference step (its many large temporaries) far more than the fast one."""
    from torch.profiler import ProfilerActivity, profile

    b, p = args.train_batch, args.train_patch
    g = torch.Generator().manual_seed(1)
    print(f"\n## Where the fast training step goes (forward + L1 + backward, batch {b}, LR patch {p}x{p}); "
          f"bound with free custom ops ({args.repeats} interleaved un-profiled runs)\n")
    print("| model | custom ops share (profiled fast step) | 1st (share) | 2nd (share) | 3rd (share) | "
          "fast median ms | reference median ms | speed-up | bound: reference / (fast x (1 - share)) | "
          "custom ops ms now / allowed for 2x |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    usage = []
    for name in names:
        model = create_model(name, args.scale).train()
        x = torch.rand(b, 3, p, p, generator=g)
        y = torch.rand(b, 3, p * args.scale, p * args.scale, generator=g)

        step = _step_factory(model, x, y)

        step(False)()  # warm-up
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            step(False)()
        by_name, total = _self_shares(prof)
        share = _custom_op_time(prof) / total
        top = sorted(by_name.items(), key=lambda kv: -kv[1])[:3]
        t = interleaved_timings({"fast": step(False), "reference": step(True)}, warmup=args.warmup, repeats=args.repeats)
        fast, ref = t["fast"].median, t["reference"].median
        rest = fast * (1 - share)
        allowed = ref / 2 - rest  # custom-op time at which the step would be exactly 2x faster
        cells = [f"{k} ({v / total:.0%})" for k, v in top]
        print(f"| {name} | {share:.0%} | " + " | ".join(cells) + f" | {fast * 1e3:.0f} | {ref * 1e3:.0f} | "
              f"{ref / fast:.2f}x | {ref / rest:.2f}x | {fast * share * 1e3:.0f} / "
              f"{'none (impossible)' if allowed <= 0 else f'{allowed * 1e3:.0f}'} |", flush=True)
        if args.rusage:
            usage += _usage_rows(name, step)
        del model
    _print_usage(usage)


def _usage_rows(name, step) -> list[tuple]:
    """(model, path, wall, user, system, faults) of one more step of each path (``--rusage``)."""
    return [(name, path, *_rusage(step(reference))) for path, reference in (("fast", False), ("reference", True))]


def _print_usage(usage) -> None:
    if usage:
        print("\n### Page faults and CPU time of one more step each (`getrusage`, this process)\n")
        print("| model | path | wall ms | user CPU ms | system CPU ms | minor page faults |")
        print("|---|---|---|---|---|---|")
        for name, path, wall, user, system, faults in usage:
            print(f"| {name} | {path} | {wall * 1e3:.0f} | {user * 1e3:.0f} | {system * 1e3:.0f} | {faults:,} |")


def _profile(names, args):
    from torch.profiler import ProfilerActivity, profile

    h, w = args.size
    x = torch.rand(1, 3, h, w)
    print(f"\n## Profile of one fast forward ({w}x{h}, x{args.scale}): largest self-CPU-time shares\n")
    print("| model | 1st (share) | 2nd (share) | 3rd (share) | largest single (op, input shapes) | "
          "lightsr custom ops (share, aten calls inside included) |")
    print("|---|---|---|---|---|---|")
    for name in names:
        model = create_model(name, args.scale).eval()
        with torch.inference_mode():
            model(x)
            with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
                model(x)
        by_name, total = _self_shares(prof)
        custom = _custom_op_time(prof)
        top = sorted(by_name.items(), key=lambda kv: -kv[1])[:3]
        shaped = max(prof.key_averages(group_by_input_shape=True), key=lambda e: e.self_cpu_time_total)
        shapes = ", ".join(str(tuple(s)) for s in shaped.input_shapes if s)[:90]
        cells = [f"{k} ({v / total:.0%})" for k, v in top]
        print(f"| {name} | " + " | ".join(cells) + f" | {shaped.key} [{shapes}] x{shaped.count} "
              f"({shaped.self_cpu_time_total / total:.0%}) | {custom / total:.0%} |", flush=True)
        del model


def _op_timer():
    """A ``TorchDispatchMode`` that times every aten call, and every native C kernel call (all go
    through ``lightsr.ops._native.run_rows``) as ``native:<entry point>`` with its row count."""
    from torch.utils._python_dispatch import TorchDispatchMode

    def describe(xs):
        return ", ".join(f"{tuple(a.shape)}{'' if a.dtype == torch.float32 else ' ' + str(a.dtype)[6:]}"
                         f"{'' if a.is_contiguous() else ' CL' if a.dim() == 4 and a.is_contiguous(memory_format=torch.channels_last) else ' strided'}"
                         for a in xs if isinstance(a, torch.Tensor))

    class Timer(TorchDispatchMode):
        lightsr_transparent = True  # the fast paths (native kernels included) run as without the mode

        def __init__(self):
            super().__init__()
            self.calls = defaultdict(lambda: [0, 0.0])

        def record(self, key, t0):
            entry = self.calls[key]
            entry[0] += 1
            entry[1] += time.perf_counter() - t0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            t0 = time.perf_counter()
            out = func(*args, **(kwargs or {}))
            self.record((func.name(), describe(args[:3])), t0)
            return out

        def __enter__(self):
            plain = self.plain_run_rows = _native.run_rows

            def timed(fn, args_of, rows, *a, **k):
                t0 = time.perf_counter()
                out = plain(fn, args_of, rows, *a, **k)
                self.record((f"native:{getattr(fn, '__name__', fn)}", f"{rows} rows"), t0)
                return out

            _native.run_rows = timed
            return super().__enter__()

        def __exit__(self, *exc):
            _native.run_rows = self.plain_run_rows
            return super().__exit__(*exc)

    return Timer()


def _print_op_times(title, timer, plain, repeats, rows):
    total = sum(t for _, t in timer.calls.values())
    by_op = defaultdict(float)
    for (op, _), (_, t) in timer.calls.items():
        by_op[op] += t
    print(f"\n## {title} (sum of the timed calls {total * 1e3:.0f} ms; untimed, median of {repeats}: {plain * 1e3:.0f} ms)\n")
    print("| operator | ms | share |\n|---|---|---|")
    for op, t in sorted(by_op.items(), key=lambda kv: -kv[1])[:rows]:
        print(f"| {op} | {t * 1e3:.1f} | {t / total:.1%} |")
    print("\n| operator | inputs (CL: channels-last) | calls | ms | share |\n|---|---|---|---|---|")
    for (op, shapes), (n, t) in sorted(timer.calls.items(), key=lambda kv: -kv[1][1])[:rows]:
        print(f"| {op} | {shapes} | {n} | {t * 1e3:.1f} | {t / total:.1%} |", flush=True)


def _op_times(names, args):
    """Every operator call of one fast training step timed on its own (see the module docstring)."""
    b, p = args.train_batch, args.train_patch
    g = torch.Generator().manual_seed(1)
    for name in names:
        model = create_model(name, args.scale).train()
        x = torch.rand(b, 3, p, p, generator=g)
        y = torch.rand(b, 3, p * args.scale, p * args.scale, generator=g)
        step = _step_factory(model, x, y)(False)
        plain = interleaved_timings({"step": step}, warmup=args.warmup, repeats=args.repeats)["step"].median
        timer = _op_timer()
        with timer:
            step()
        _print_op_times(f"Operator times of one fast training step: {name}, batch {b}, LR patch {p}x{p}", timer, plain,
                        args.repeats, args.op_rows)
        del model


def _op_times_upscale(names, args):
    """Every operator call of one ``Upscaler(tile=0, precision=...)`` call on a uint8 image of --size."""
    import numpy as np

    from lightsr.inference import Upscaler

    h, w = args.size
    img = (np.random.default_rng(0).random((h, w, 3)) * 255).astype(np.uint8)
    for name in names:
        up = Upscaler(create_model(name, args.scale).eval(), scale=args.scale, tile=0, precision=args.op_times_upscale,
                      device="cpu")
        plain = interleaved_timings({"up": lambda: up(img)}, warmup=args.warmup, repeats=args.repeats)["up"].median
        timer = _op_timer()
        with timer:
            up(img)
        _print_op_times(f"Operator times of one Upscaler call: {name}, {w}x{h} -> x{args.scale}, "
                        f"{args.op_times_upscale}", timer, plain, args.repeats, args.op_rows)


def _ffn_bands(names, args):
    """``Upscaler(tile=0)`` at --size with the gated FFNs on the whole map against bands of
    ``blocks.STRIP_PIXELS`` pixels (``blocks.WHOLE_PIXELS`` switched in the same process, interleaved)."""
    import numpy as np

    from lightsr.inference import Upscaler
    from lightsr.models import blocks

    h, w = args.size
    img = (np.random.default_rng(0).random((h, w, 3)) * 255).astype(np.uint8)
    precision = args.ffn_bands
    print(f"\n## Gated FFNs at inference: whole map vs bands of {blocks.STRIP_PIXELS} pixels "
          f"({w}x{h} -> x{args.scale}, {precision}, Upscaler(tile=0))\n")
    print("| model | whole ms | bands ms | whole / bands speed |\n|---|---|---|---|")
    default = blocks.WHOLE_PIXELS
    try:
        for name in names:
            up = Upscaler(create_model(name, args.scale).eval(), scale=args.scale, tile=0, precision=precision,
                          device="cpu")

            def run(whole_pixels):
                def call():
                    blocks.WHOLE_PIXELS = whole_pixels
                    up(img)
                return call

            t = interleaved_timings({"whole": run(10**12), "bands": run(0)}, warmup=args.warmup, repeats=args.repeats)
            whole, bands = t["whole"].median, t["bands"].median
            print(f"| {name} | {whole * 1e3:.0f} | {bands * 1e3:.0f} | {bands / whole:.2f}x |", flush=True)
    finally:
        blocks.WHOLE_PIXELS = default


def _compile(names, args):
    h, w = args.size
    x = torch.rand(1, 3, h, w)
    print(f"\n## torch.compile (default inductor) vs eager, fast ops ({w}x{h}, x{args.scale})\n")
    print("| model | compile s | eager median ms | compiled median ms | compiled / eager | max abs diff |")
    print("|---|---|---|---|---|---|")
    for name in names:
        model = create_model(name, args.scale).eval()
        try:
            compiled = torch.compile(copy.deepcopy(model))
            with torch.inference_mode():
                t0 = time.perf_counter()
                y = compiled(x)
                ct = time.perf_counter() - t0
                diff = (y - model(x)).abs().max().item()
                t = interleaved_timings({"eager": lambda: model(x), "compiled": lambda: compiled(x)},
                                        warmup=args.warmup, repeats=args.repeats)
        except Exception as exc:  # no compiler toolchain, unsupported op, ...
            print(f"| {name} | failed: {type(exc).__name__}: {str(exc).splitlines()[0][:120]} | | | | |")
            continue
        e, c = t["eager"], t["compiled"]
        print(f"| {name} | {ct:.0f} | {e.median * 1e3:.0f} | {c.median * 1e3:.0f} | {c.median / e.median:.2f} | {diff:.1e} |",
              flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["dlgsanet_light", "lamnet"], help="models, or 'all' for the six")
    ap.add_argument("--peers", nargs="*", default=None, help="peer baselines to time too (default: imdn pan)")
    ap.add_argument("--scale", type=int, default=4)
    ap.add_argument("--size", nargs=2, type=int, default=None, metavar=("H", "W"),
                    help="LR input (default: the 1280x720-output size of --scale)")
    ap.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's choice)")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--no-reference", action="store_true", help="time the fast path only (floors, profile)")
    ap.add_argument("--train", action="store_true", help="also time a training step")
    ap.add_argument("--rusage", action="store_true",
                    help="with --train / --profile-train: user/system CPU time and page faults of one more step per path")
    ap.add_argument("--malloc-tuning", action="store_true",
                    help="apply lightsr.allocator.tune_malloc() first (what `lightsr train` does on CPU): both paths "
                         "then reuse freed memory instead of page-faulting")
    ap.add_argument("--native-ab", action="store_true",
                    help="with --train: also time the fast step with the native focal-attention kernel off")
    ap.add_argument("--train-batch", type=int, default=16)
    ap.add_argument("--train-patch", type=int, default=48)
    ap.add_argument("--profile", action="store_true", help="profile one fast forward per model")
    ap.add_argument("--profile-train", action="store_true",
                    help="profile one fast training step per model: custom-op share, and the speed-up bound if they were free")
    ap.add_argument("--no-inference", action="store_true", help="skip the inference table")
    ap.add_argument("--compile", action="store_true", help="also try torch.compile (slow to compile)")
    ap.add_argument("--op-times", action="store_true",
                    help="time every operator call of one fast training step (largest first, by shapes and layouts)")
    ap.add_argument("--op-rows", type=int, default=14, metavar="N",
                    help="rows of the --op-times / --op-times-upscale tables (default 14)")
    ap.add_argument("--op-times-upscale", choices=["fp32", "bf16"], default=None, metavar="PRECISION",
                    help="time every operator call of one Upscaler(tile=0) call at --size in fp32 or bf16")
    ap.add_argument("--ffn-bands", choices=["fp32", "bf16"], default=None, metavar="PRECISION",
                    help="time Upscaler(tile=0) at --size with the gated FFNs on the whole map vs in bands")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    malloc = "glibc malloc defaults"
    if args.malloc_tuning:
        from lightsr.allocator import tune_malloc

        malloc = "tuned (lightsr.allocator.tune_malloc)" if tune_malloc() else "tuning unavailable (not glibc)"
    from lightsr.complexity import lr_size_for_hd

    args.size = tuple(args.size) if args.size else lr_size_for_hd(args.scale)
    names = _models(args.models)
    peers = [p for p in (args.peers if args.peers is not None else ["imdn", "pan"]) if p in list_models()]
    print("command: python benchmarks/model_speed.py " + " ".join(sys.argv[1:] if argv is None else argv))
    print(format_environment(environment()))
    print(f"malloc: {malloc}")
    rate = matmul_rate()
    print(f"measured multiply-accumulate rate at the start: {rate / 1e9:.1f} GMAC/s (float32 2048x2048 @ 2048x2048, "
          "median of 7); each table also times this product in its interleaved loop (column GMAC/s)")
    rows = []
    if not args.no_inference:
        _inference(names, peers, args, rate, rows)
    if args.train:
        _train(names, args, rate)
    if args.profile:
        _profile(names + peers, args)
    if args.profile_train:
        _profile_train(names, args)
    if args.compile:
        _compile(names, args)
    if args.op_times:
        _op_times(names, args)
    if args.op_times_upscale:
        _op_times_upscale(names, args)
    if args.ffn_bands:
        _ffn_bands(names, args)
    rate_end = matmul_rate()
    print(f"\nmultiply-accumulate rate at the end: {rate_end / 1e9:.1f} GMAC/s; load average (1/5/15 min): {load_average()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
