"""``lightsr bench``: parameters, MACs, latency and peak memory of every model, as papers report them."""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import NamedTuple

EPILOG = """\
what is measured (per model and scale):
  params     all parameters
  GMACs      multiply-accumulates for a 1280x720 output (LR 640x360 / 427x240 / 320x180 at
             x2 / x3 / x4), counted with torch's FlopCounterMode plus exact formulas for
             lightsr's custom ops; "custom=0" is the same count with the custom ops' own
             arithmetic left out, as the papers' tracer-based counters saw them
             (docs/complexity.md compares both with every paper's number)
  NTIRE      (--ntire) GMACs for a 256x256 input, the NTIRE efficient-SR convention
  latency    eval mode, batch 1, random input of the LR size above, inference_mode, warm-up,
             then repeated runs; median and p90 in milliseconds. DLGSANet is timed with its
             test-time local converter (TLC) on and off, interleaved run by run
  peak MB    CPU: growth of the peak resident memory (RSS) during one forward, in a fresh
             process (peak mark reset after a warm-up);
             CUDA: max_memory_allocated above what was allocated before the forward

examples:
  lightsr bench --scales 4                          all models at x4 (docs/bench_x4.md)
  lightsr bench --models lamnet dlgsanet_light --scales 2 3 4 --threads 1
  lightsr bench --no-latency --ntire --json macs.json   parameters and MACs only (seconds)
  lightsr bench --models lamnet --scales 2 --lr-size 256 256   another input size
  lightsr bench --device cuda --dtype float16 --repeats 50
"""

_DTYPES = ("float32", "float16", "bfloat16")


def _precision(choice: str, device) -> str:
    """``auto``: bf16 on CPUs with native bf16, else fp32 (random weights: only the speed is measured)."""
    if choice != "auto":
        return choice
    from lightsr.inference.policy import native_bf16

    return "bf16" if device.type == "cpu" and native_bf16() else "fp32"


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "bench",
        help="parameters, MACs, latency and peak memory per model and scale",
        description="Benchmark models the way lightweight-SR papers report them: parameters, MACs for a "
        "1280x720 output, latency (median / p90) and peak memory, with the environment they were measured in.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--models", nargs="+", metavar="NAME", help="models to run (default: all registered, peers last)")
    p.add_argument("--scales", nargs="+", type=int, default=[2, 3, 4], metavar="S", help="scales (default: 2 3 4)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: cpu)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                   help="autocast precision of the latency runs, as `lightsr upscale` runs them (default auto: bf16 "
                        "on CPUs with native bf16 - AVX512-BF16 / AMX - else fp32; fp32 on GPUs)")
    p.add_argument("--dtype", default="float32", choices=_DTYPES,
                   help="cast the model and input to this dtype instead (with --precision fp32; default: float32)")
    p.add_argument("--threads", type=int, metavar="N",
                   help="torch intra-op threads (default: the cores not already busy, from the load average)")
    p.add_argument("--repeats", type=int, metavar="N", help="timed runs per configuration (default: as many as fit "
                   "in --time-budget, at least 3, at most 50)")
    p.add_argument("--warmup", type=int, default=1, metavar="N", help="untimed runs first (default: 1; 10 on CUDA)")
    p.add_argument("--time-budget", type=float, default=30.0, metavar="S",
                   help="seconds of timed runs per model and scale when --repeats is not given (default: 30)")
    p.add_argument("--lr-size", nargs=2, type=int, metavar=("H", "W"),
                   help="time and count at this LR input size instead of the 1280x720-output one")
    p.add_argument("--ntire", action="store_true", help="also count MACs for a 256x256 input (NTIRE convention)")
    p.add_argument("--no-latency", action="store_true", help="skip timing (parameters and MACs only)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    p.add_argument("--reference-ops", action="store_true", help="time the plain reference ops instead of the fast ones")
    p.add_argument("--json", metavar="FILE", help="also write all results and the environment as JSON")
    return p


def _model_list(requested):
    from lightsr.models import get_spec, list_models

    if requested:
        for name in requested:
            get_spec(name)  # raises with the list of valid names
        return list(requested)
    ours = [n for n in list_models() if not get_spec(n).peer]
    return ours + [n for n in list_models() if get_spec(n).peer]


def _write_json(path: Path, payload: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(payload, f, indent=2)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fmt(v, spec: str = ".1f") -> str:
    return "-" if v is None else format(v, spec)


class _Setup(NamedTuple):
    """What every measurement of one ``lightsr bench`` call shares."""

    models: list
    device: object
    dtype: object
    precision: str
    autocast: object  # torch.bfloat16 / torch.float16, or None for no autocast
    warmup: int


def _validate(args: argparse.Namespace) -> _Setup | str:
    """The run's settings, or the one-line reason they cannot run."""
    import torch

    try:
        models = _model_list(args.models)
    except KeyError as exc:
        return exc.args[0]
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        return "--device cuda requested but CUDA is not available"
    dtype = getattr(torch, args.dtype)
    precision = _precision(args.precision, device)
    if precision != "fp32" and dtype != torch.float32:
        return "--dtype casts the model; use it with --precision fp32"
    autocast = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    warmup = args.warmup if not (device.type == "cuda" and args.warmup == 1) else 10
    return _Setup(models, device, dtype, precision, autocast, warmup)


def _print_header(args: argparse.Namespace, setup: _Setup) -> None:
    kind = f"{setup.precision} (autocast)" if setup.autocast else args.dtype
    runs = "%d runs" % args.repeats if args.repeats else "runs: as many as fit in %gs (3-50)" % args.time_budget
    print(f"protocol: eval, batch 1, {kind}, {'reference' if args.reference_ops else 'fast'} ops, "
          f"warm-up {setup.warmup}, {runs}, alternatives interleaved\n")
    cols = ["model", "scale", "params", "LR input", "GMACs", "GMACs custom=0"]
    if args.ntire:
        cols.append("GMACs NTIRE 256²")
    if not args.no_latency:
        cols += ["variant", "median ms", "p90 ms", "runs"]
        if not args.no_memory:
            cols.append("peak MB")
    print("| " + " | ".join(cols) + " |")
    print("|" + "|".join("---" for _ in cols) + "|")


def _count(args: argparse.Namespace, name: str, scale: int, lr: tuple) -> tuple[dict, list]:
    """Parameters and MACs: the row's JSON fields and its first table cells."""
    from lightsr.complexity import NTIRE_LR_SIZE, count_model_macs

    hd = count_model_macs(name, scale, lr)
    ntire = count_model_macs(name, scale, NTIRE_LR_SIZE) if args.ntire else None
    base = {
        "model": name, "scale": scale, "params": hd.params, "lr_size": list(lr),
        "macs": hd.macs, "macs_custom_ops_zero": hd.tracer_visible_macs, "macs_by_op": hd.by_op,
        "macs_ntire": ntire.macs if ntire else None,
    }
    cells = [name, f"x{scale}", f"{hd.params:,}", f"{lr[1]}x{lr[0]}", f"{hd.macs / 1e9:.2f}",
             f"{hd.tracer_visible_macs / 1e9:.2f}"]
    if args.ntire:
        cells.append(f"{ntire.macs / 1e9:.2f}")
    return base, cells


def _time(args: argparse.Namespace, setup: _Setup, name: str, scale: int, lr: tuple) -> tuple[dict, dict]:
    """Interleaved latency of the model's variants (DLGSANet: TLC on / off): ({variant: tlc}, {variant: timing})."""
    import torch

    from lightsr.bench import interleaved_timings
    from lightsr.models import create_model
    from lightsr.ops import use_reference_ops

    device, autocast = setup.device, setup.autocast
    model = create_model(name, scale).eval().to(device=device, dtype=setup.dtype)
    x = torch.rand(1, 3, *lr, device=device, dtype=setup.dtype)
    variants = {"TLC on": True, "TLC off": False} if hasattr(model, "set_tlc") else {"-": None}
    if autocast is not None and device.type == "cpu":
        x = x.contiguous(memory_format=torch.channels_last)  # as the upscaler runs reduced precision
        model = model.to(memory_format=torch.channels_last)

    def make(tlc):
        def fn():
            if tlc is not None:
                model.set_tlc(tlc)
            with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                return model(x)
        return fn

    with use_reference_ops(args.reference_ops), torch.inference_mode():
        timings = interleaved_timings({v: make(t) for v, t in variants.items()}, device=device,
                                      warmup=setup.warmup, repeats=args.repeats, time_budget=args.time_budget)
    return variants, timings


def _memory(args: argparse.Namespace, setup: _Setup, name: str, scale: int, lr: tuple, tlc) -> dict | None:
    from lightsr.bench import peak_memory

    try:
        return peak_memory(name, scale, lr, device=setup.device, dtype=args.dtype, threads=args.threads,
                           tlc=tlc, reference_ops=args.reference_ops)
    except Exception as exc:
        print(f"lightsr bench: {name} x{scale}: memory probe failed: {exc}", file=sys.stderr)
        return None


def _bench_one(args: argparse.Namespace, setup: _Setup, name: str, scale: int) -> tuple[list, int]:
    """Measure one model at one scale, printing its table lines: (JSON rows, failures)."""
    from lightsr.complexity import lr_size_for_hd

    lr = tuple(args.lr_size) if args.lr_size else lr_size_for_hd(scale)
    try:
        base, cells = _count(args, name, scale, lr)
    except Exception as exc:  # one clear line per failure, carry on
        print(f"lightsr bench: {name} x{scale}: MAC count failed: {exc}", file=sys.stderr)
        return [], 1
    if args.no_latency:
        print("| " + " | ".join(cells) + " |", flush=True)
        return [base], 0
    try:
        variants, timings = _time(args, setup, name, scale, lr)
    except Exception as exc:
        print(f"lightsr bench: {name} x{scale}: timing failed: {type(exc).__name__}: "
              f"{str(exc).splitlines()[0][:200]}", file=sys.stderr)
        return [], 1
    rows, failures = [], 0
    for variant, tlc in variants.items():
        t = timings[variant]
        mem = None if args.no_memory else _memory(args, setup, name, scale, lr, tlc)
        failures += int(not args.no_memory and mem is None)
        rows.append({**base, "variant": variant, "tlc": tlc, "latency": t.to_dict(),
                     "peak_bytes": mem["peak_bytes"] if mem else None,
                     "memory_method": mem["method"] if mem else None})
        line = cells + [variant, f"{t.median * 1e3:.1f}", f"{t.p90 * 1e3:.1f}", str(t.n)]
        if not args.no_memory:
            line.append(_fmt(mem["peak_bytes"] / 2**20 if mem else None, ".0f"))
        print("| " + " | ".join(line) + " |", flush=True)
    return rows, failures


def _summary(args: argparse.Namespace, setup: _Setup, env: dict, rows: list) -> None:
    from lightsr.bench import load_average

    load_end = load_average()
    print(f"\nload average at the end (1/5/15 min): {load_end}")
    if args.json:
        payload = {"command": ["lightsr", "bench", *sys.argv[2:]] if sys.argv[1:2] == ["bench"] else sys.argv,
                   "environment": env, "load_average_end": load_end, "dtype": args.dtype,
                   "precision": setup.precision, "device": str(setup.device),
                   "reference_ops": args.reference_ops, "rows": rows}
        _write_json(Path(args.json), payload)
        print(f"wrote {args.json}")


def run(args: argparse.Namespace) -> int:
    from lightsr.bench import environment, format_environment
    from lightsr.cli.upscale import setup_cpu
    from lightsr.models import get_spec

    setup = _validate(args)
    if isinstance(setup, str):
        print(f"lightsr bench: {setup}", file=sys.stderr)
        return 2
    setup_cpu(args.threads)
    env = environment(setup.device)
    print(format_environment(env))
    _print_header(args, setup)
    rows, failures = [], 0
    for name in setup.models:
        spec = get_spec(name)
        for scale in args.scales:
            if scale not in spec.scales:
                print(f"lightsr bench: {name} has no x{scale} (scales {spec.scales}); skipped", file=sys.stderr)
                continue
            new_rows, new_failures = _bench_one(args, setup, name, scale)
            rows += new_rows
            failures += new_failures
    _summary(args, setup, env, rows)
    return 1 if failures else 0
