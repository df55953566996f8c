"""``lightsr plot-log``: training loss and validation PSNR curves of a run, to PNG (needs matplotlib)."""
from __future__ import annotations

import argparse
import csv
import math
import sys
from pathlib import Path

EPILOG = """\
examples:
  lightsr plot-log experiments/dlgsanet_tiny_x2 -o curve.png
  lightsr plot-log experiments/run_a experiments/run_b -o compare.png --labels A B
  lightsr plot-log experiments/run_a/train_log.csv -o loss.png --smooth 0.98 --log-y

Reads train_log.csv (loss per logging window) and, beside it, val_log.csv (one row per validation
and dataset). Needs matplotlib: pip install 'lightsr[plot]'.
"""


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "plot-log",
        help="plot loss and validation-PSNR curves of training runs to PNG",
        description="Plot the training loss (raw and smoothed) and the validation metric of one or more "
        "runs against the iteration.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("runs", nargs="+", help="run folders (experiments/<name>) or their train_log.csv / val_log.csv")
    p.add_argument("-o", "--output", required=True, help="PNG (or PDF/SVG) file to write")
    p.add_argument("--labels", nargs="+", help="legend labels, one per run (default: folder names)")
    p.add_argument("--metric", default="psnr", help="validation column to plot (default psnr)")
    p.add_argument("--dataset", help="validation dataset to plot (default: the first in the log)")
    p.add_argument("--smooth", type=float, default=0.9, help="EMA factor for the smoothed loss, 0 = none (default 0.9)")
    p.add_argument("--log-y", action="store_true", help="logarithmic loss axis")
    p.add_argument("--ref", action="append", default=[], metavar="VALUE[:LABEL]",
                   help="horizontal reference line on the validation plot, e.g. 33.67:bicubic (repeatable)")
    p.add_argument("--title", help="figure title")
    p.add_argument("--dpi", type=int, default=120)
    return p


def _read(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def _files(spec: str) -> tuple[Path, Path, str]:
    p = Path(spec)
    if p.is_dir():
        return p / "train_log.csv", p / "val_log.csv", p.name
    if p.suffix == ".csv":
        base = p.parent
        return base / "train_log.csv", base / "val_log.csv", base.name
    raise FileNotFoundError(f"{spec}: not a run folder or a CSV log")


def _floats(rows, key):
    out = []
    for r in rows:
        try:
            out.append((int(r["iter"]), float(r[key])))
        except (KeyError, TypeError, ValueError):
            continue
    return out


def _parse_refs(refs: list[str]) -> list[tuple[float, str | None]]:
    """``--ref VALUE[:LABEL]`` lines; ValueError names the bad one."""
    out = []
    for ref in refs:
        value, _, label = ref.partition(":")
        try:
            out.append((float(value), label or None))
        except ValueError:
            raise ValueError(f"--ref {ref!r}: expected VALUE[:LABEL]") from None
    return out


def _collect(args: argparse.Namespace) -> list[tuple[str, list, list, str | None]]:
    """(label, loss points, validation points, validation dataset) per run; ValueError for a run with nothing."""
    series = []
    for i, spec in enumerate(args.runs):
        try:
            train_csv, val_csv, name = _files(spec)
        except FileNotFoundError as exc:
            raise ValueError(str(exc)) from None
        loss = _floats(_read(train_csv), "loss")
        val_rows = _read(val_csv)
        datasets = list(dict.fromkeys(r.get("dataset", "") for r in val_rows))
        ds = args.dataset or (datasets[0] if datasets else None)
        val = _floats([r for r in val_rows if r.get("dataset") == ds], args.metric)
        if not loss and not val:
            raise ValueError(f"{spec}: no rows in {train_csv.name} or {val_csv.name}")
        series.append((args.labels[i] if args.labels else name, loss, val, ds))
    return series


def _ema(ys, factor: float) -> list[float]:
    """Debiased EMA (as TensorBoard's smoothing): no lag towards the first value; non-finite values skipped."""
    sm, acc, n = [], 0.0, 0
    for y in ys:
        if math.isfinite(y):
            acc = factor * acc + (1 - factor) * y
            n += 1
        sm.append(acc / (1 - factor ** n) if n else float("nan"))
    return sm


def _plot_loss(ax, label: str, loss: list, color, smooth: float) -> None:
    its, ys = zip(*loss)
    ax.plot(its, ys, color=color, alpha=0.3 if smooth > 0 else 1.0, lw=0.8, label=None if smooth > 0 else label)
    if smooth > 0:
        ax.plot(its, _ema(ys, smooth), color=color, lw=1.6, label=f"{label} (EMA {smooth:g})")


def _plot_val(ax, label: str, val: list, ds: str | None, color, metric: str) -> None:
    its, ys = zip(*val)
    ax.plot(its, ys, "o-", color=color, ms=3, lw=1.2, label=f"{label}: {ds}")
    if metric.lower() != "lpips":  # annotate the best validation (higher is better)
        best = max(range(len(ys)), key=lambda j: ys[j])
        ax.annotate(f"{ys[best]:.2f}", (its[best], ys[best]), textcoords="offset points",
                    xytext=(0, 6), ha="center", fontsize=8, color=color)


def _draw(plt, args: argparse.Namespace, series: list, refs: list):
    has_val = any(s[2] for s in series)
    fig, axes = plt.subplots(1, 2 if has_val else 1, figsize=(11 if has_val else 6, 4), squeeze=False)
    ax_loss = axes[0][0]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for k, (label, loss, val, ds) in enumerate(series):
        if loss:
            _plot_loss(ax_loss, label, loss, colors[k % len(colors)], args.smooth)
        if val:
            _plot_val(axes[0][1], label, val, ds, colors[k % len(colors)], args.metric)
    ax_loss.set_xlabel("iteration")
    ax_loss.set_ylabel("training loss")
    if args.log_y:
        ax_loss.set_yscale("log")
    ax_loss.grid(alpha=0.3)
    ax_loss.legend(fontsize=8)
    if has_val:
        ax = axes[0][1]
        for y, label in refs:
            ax.axhline(y, color="gray", ls="--", lw=1, label=label)
        ax.margins(y=0.12)
        ax.set_xlabel("iteration")
        ax.set_ylabel(f"validation {args.metric} (Y)" if args.metric == "psnr" else f"validation {args.metric}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if args.title:
        fig.suptitle(args.title)
    fig.tight_layout()
    return fig


def run(args: argparse.Namespace) -> int:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("lightsr plot-log: needs matplotlib: pip install 'lightsr[plot]'", file=sys.stderr)
        return 2
    if args.labels and len(args.labels) != len(args.runs):
        print("lightsr plot-log: --labels needs one label per run", file=sys.stderr)
        return 2
    try:
        refs = _parse_refs(args.ref)
        series = _collect(args)
    except ValueError as exc:
        print(f"lightsr plot-log: {exc}", file=sys.stderr)
        return 2
    from lightsr.cli.plot import save_figure

    fig = _draw(plt, args, series, refs)
    try:
        save_figure(fig, Path(args.output), args.dpi)
    finally:
        plt.close(fig)
    print(f"wrote {Path(args.output)}")
    return 0
