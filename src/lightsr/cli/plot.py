"""``lightsr plot``: PSNR against MACs, bubble area = parameters (the papers' Figure 1), to PNG."""
from __future__ import annotations

import argparse
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path

EPILOG = """\
inputs (any mix, any number):
  results.json written by `lightsr eval` (one model or Bicubic, several sets): plotted as
      "measured";
  a rows file: a JSON list (or {"rows": [...]}) of objects
      {"model": NAME, "scale": S, "set": SET, "psnr": P,
       "source": "measured" | "paper-reported: <where>",   (default: measured)
       "label": TEXT, "params": N, "gmacs": G}              (all optional)
      NAME is a registered model (`lightsr models`) whose parameters and MACs lightsr computes,
      or any label if "params" and "gmacs" are given. Rows whose source is not "measured" are
      drawn hollow and labelled "(paper)": they are not measured here.

x = GMACs for a 1280x720 output (the papers' convention; lightsr's count, see docs/complexity.md),
y = PSNR (dB) on --set at --scale, bubble area proportional to parameters; Bicubic is a dashed
horizontal line. Needs matplotlib (pip install "lightsr[plot]").

examples:
  lightsr eval --model imdn --weights IMDN_x4.pth --scale 4 --data benchmark --sets Set5
  lightsr plot results/eval/*/results.json docs/paper_psnr_x4.json --set Set5 -o docs/figures/psnr_macs_set5_x4.png
"""


@dataclass
class Point:
    model: str
    label: str
    scale: int
    set: str
    psnr: float
    measured: bool
    source: str
    params: int | None = None
    gmacs: float | None = None


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "plot",
        help="PSNR vs MACs bubble chart (bubble = parameters) from eval results",
        description="Draw PSNR against MACs (1280x720 output) with bubble area = parameters, like the papers' "
        "Figure 1, from `lightsr eval` results.json files and/or documented rows files.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="+", metavar="JSON", help="eval results.json or rows files")
    p.add_argument("-o", "--output", required=True, metavar="PNG", help="image to write (atomically)")
    p.add_argument("--set", default="Set5", help="benchmark set on the y axis (default: Set5)")
    p.add_argument("--scale", type=int, default=4, help="scale (default: 4)")
    p.add_argument("--title", help="figure title (default: PSNR vs MACs, <set> x<scale>)")
    p.add_argument("--exclude", nargs="+", default=[], metavar="NAME", help="leave these models out")
    p.add_argument("--dpi", type=int, default=150)
    p.add_argument("--overwrite", action="store_true", help="replace an existing output file")
    return p


def _is_measured(source: str) -> bool:
    return source.strip().lower() == "measured"


def load_points(paths, set_name: str, scale: int) -> tuple[list[Point], list[str]]:
    """Points for ``set_name`` at ``scale`` from eval results and rows files; also a list of problems."""
    points, problems = [], []
    for path in paths:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            problems.append(f"{path}: cannot read JSON ({exc})")
            continue
        if isinstance(data, dict) and "sets" in data and "model" in data:  # lightsr eval results.json
            if int(data.get("scale", 0)) != scale:
                continue
            entry = data["sets"].get(set_name)
            if entry is None or entry.get("psnr") is None:
                problems.append(f"{path}: no {set_name} result")
                continue
            name = str(data["model"])
            points.append(Point(name, name, scale, set_name, float(entry["psnr"]), True, "measured"))
            continue
        rows = data.get("rows") if isinstance(data, dict) else data
        if not isinstance(rows, list):
            problems.append(f"{path}: neither an eval results.json nor a list of rows")
            continue
        for i, row in enumerate(rows):
            try:
                if int(row["scale"]) != scale or str(row["set"]) != set_name:
                    continue
                source = str(row.get("source", "measured"))
                points.append(Point(
                    str(row["model"]), str(row.get("label", row["model"])), scale, set_name, float(row["psnr"]),
                    _is_measured(source), source,
                    int(row["params"]) if row.get("params") is not None else None,
                    float(row["gmacs"]) if row.get("gmacs") is not None else None,
                ))
            except (KeyError, TypeError, ValueError) as exc:
                problems.append(f"{path}: row {i}: {exc!r}")
    return points, problems


def fill_complexity(points: list[Point]) -> list[str]:
    """Parameters and GMACs (1280x720 output) of registered models; problems for the rest."""
    from lightsr.complexity import count_model_macs
    from lightsr.models import list_models

    known = set(list_models())
    cache: dict[tuple[str, int], tuple[int, float]] = {}
    problems = []
    for p in points:
        if p.model.lower() == "bicubic":
            continue
        if p.params is not None and p.gmacs is not None:
            continue
        if p.model not in known:
            problems.append(f"{p.label}: not a registered model and no params/gmacs given; skipped")
            continue
        key = (p.model, p.scale)
        if key not in cache:
            r = count_model_macs(p.model, p.scale)
            cache[key] = (r.params, r.macs / 1e9)
        params, gmacs = cache[key]
        p.params = p.params if p.params is not None else params
        p.gmacs = p.gmacs if p.gmacs is not None else gmacs
    return problems


def _place_labels(ax, fig, items) -> None:
    """Greedy label placement: for each bubble try a few offsets, keep the first whose text box
    overlaps no bubble and no earlier label (in display coordinates)."""
    renderer = fig.canvas.get_renderer()
    taken = []  # display-space boxes of placed labels and of the bubbles
    for x, y, r, _text in items:
        cx, cy = ax.transData.transform((x, y))
        rp = r * fig.dpi / 72.0  # radius in pixels
        taken.append((cx - rp, cy - rp, cx + rp, cy + rp))
    for x, y, r, text in items:
        cands = [(0, r + 4, "center", "bottom"), (0, -r - 4, "center", "top"), (r + 4, 0, "left", "center"),
                 (-r - 4, 0, "right", "center"), (r + 2, r + 2, "left", "bottom"), (-r - 2, r + 2, "right", "bottom"),
                 (r + 2, -r - 2, "left", "top"), (-r - 2, -r - 2, "right", "top"), (0, r + 26, "center", "bottom"),
                 (0, -r - 26, "center", "top")]
        best = None
        for dx, dy, ha, va in cands:
            ann = ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), ha=ha, va=va, fontsize=7.5)
            bb = ann.get_window_extent(renderer)
            box = (bb.x0, bb.y0, bb.x1, bb.y1)
            clash = any(not (box[2] < t[0] or box[0] > t[2] or box[3] < t[1] or box[1] > t[3]) for t in taken)
            inside = ax.get_window_extent(renderer)
            outside = box[0] < inside.x0 or box[2] > inside.x1 or box[1] < inside.y0 or box[3] > inside.y1
            if not clash and not outside:
                best = box
                break
            ann.remove()
        if best is None:  # everything clashes: first candidate anyway
            dx, dy, ha, va = cands[0]
            ann = ax.annotate(text, (x, y), textcoords="offset points", xytext=(dx, dy), ha=ha, va=va, fontsize=7.5)
            bb = ann.get_window_extent(renderer)
            best = (bb.x0, bb.y0, bb.x1, bb.y1)
        taken.append(best)


def draw(points: list[Point], output: Path, title: str, dpi: int = 150) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.lines import Line2D
        from matplotlib.ticker import FuncFormatter, NullFormatter
    except ImportError:
        raise RuntimeError('matplotlib is needed for plots: pip install "lightsr[plot]"') from None

    bicubic = [p for p in points if p.model.lower() == "bicubic"]
    models = [p for p in points if p.model.lower() != "bicubic" and p.gmacs is not None]
    if not models:
        raise ValueError("nothing to plot: no model with PSNR, parameters and MACs")
    fig, ax = plt.subplots(figsize=(8, 5.5))
    pmax = max(p.params for p in models)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    xs, ys = [p.gmacs for p in models], [p.psnr for p in models]
    lo, hi = min(ys), max(ys)
    pad = max(0.15, 0.3 * (hi - lo))
    ax.set_ylim(lo - pad, hi + pad)
    if max(xs) / min(xs) > 4:  # e.g. DLGSANet (282 G) beside the lightweight models (30-60 G)
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    span = max(xs) - min(xs)
    ax.set_xlim(min(xs) - 0.15 * span - 2, max(xs) + 0.15 * span + 2) if ax.get_xscale() == "linear" else \
        ax.set_xlim(min(xs) * 0.8, max(xs) * 1.25)
    items = []
    for i, p in enumerate(sorted(models, key=lambda q: q.gmacs)):
        size = 1800.0 * p.params / pmax  # marker area in points^2, proportional to parameters
        color = colors[i % len(colors)]
        if p.measured:
            ax.scatter(p.gmacs, p.psnr, s=size, color=color, alpha=0.45, edgecolors=color, linewidths=1.5, zorder=3)
        else:
            ax.scatter(p.gmacs, p.psnr, s=size, facecolors="none", edgecolors=color, linewidths=1.5,
                       linestyle="--", zorder=3)
        ax.scatter(p.gmacs, p.psnr, s=4, color=color, zorder=4)
        tag = "" if p.measured else " (paper)"
        items.append((p.gmacs, p.psnr, math.sqrt(size) / 2, f"{p.label}{tag}\n{p.params / 1e3:.0f}K, {p.gmacs:.1f}G"))
    ax.set_xlabel("GMACs for a 1280x720 output (lightsr's count, docs/complexity.md)")
    ax.set_ylabel("PSNR (dB, Y channel)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    notes = []
    for b in bicubic:
        what = "measured" if b.measured else "paper"
        if lo - pad < b.psnr < hi + pad:
            ax.axhline(b.psnr, color="grey", linestyle=":", linewidth=1)
        notes.append(f"Bicubic: {b.psnr:.2f} dB ({what})")
    handles = [
        Line2D([], [], marker="o", linestyle="none", markersize=9, markerfacecolor="tab:blue", alpha=0.5,
               markeredgecolor="tab:blue", label="measured here (real weights)"),
        Line2D([], [], marker="o", linestyle="none", markersize=9, markerfacecolor="none",
               markeredgecolor="tab:blue", label="paper-reported PSNR (not measured here)"),
    ]
    title_extra = ("; " + "; ".join(notes)) if notes else ""
    ax.legend(handles=handles, loc="lower right", fontsize=8, title="bubble area = parameters" + title_extra,
              title_fontsize=8)
    fig.canvas.draw()
    _place_labels(ax, fig, items)
    sources = sorted({p.source.split(":", 1)[-1].strip() for p in models if not p.measured})
    if sources:
        fig.text(0.01, 0.005, "paper-reported: " + "; ".join(sources), fontsize=6, color="grey", wrap=True)
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    try:
        save_figure(fig, output, dpi)
    finally:
        plt.close(fig)


def save_figure(fig, output: Path, dpi: int) -> None:
    """Write a matplotlib figure atomically (a partial file never appears); format from the suffix, PNG if none."""
    from lightsr.inference.io import atomic_output

    fmt = output.suffix[1:].lower() or "png"
    with atomic_output(output, overwrite=True) as f:
        fig.savefig(f, dpi=dpi, format=fmt)


def run(args: argparse.Namespace) -> int:
    output = Path(args.output)
    if output.exists() and not args.overwrite:
        print(f"lightsr plot: {output} exists (use --overwrite to replace it)", file=sys.stderr)
        return 2
    points, problems = load_points(args.inputs, args.set, args.scale)
    points = [p for p in points if p.model not in set(args.exclude) and p.label not in set(args.exclude)]
    problems += fill_complexity(points)
    for msg in problems:
        print(f"lightsr plot: {msg}", file=sys.stderr)
    title = args.title or f"PSNR vs MACs, {args.set} x{args.scale} (bubble area = parameters)"
    try:
        draw(points, output, title, args.dpi)
    except (RuntimeError, ValueError) as exc:
        print(f"lightsr plot: {exc}", file=sys.stderr)
        return 2
    for p in sorted(points, key=lambda q: (q.gmacs or 0)):
        what = "measured" if p.measured else p.source
        extra = "" if p.gmacs is None else f"  {p.params:,} params  {p.gmacs:.2f} GMACs"
        print(f"{p.label:<18} {p.psnr:.2f} dB{extra}  [{what}]")
    print(f"wrote {output}")
    return 1 if problems else 0
