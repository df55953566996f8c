"""Quality per hour of training: the shipped weights' Set5 validation PSNR against cumulative wall time.

Reads the stages of every model card (the ``--run docs/training_runs/<run>`` lines of
``src/lightsr/pretrained/<model>_x<s>.md``, in training order) and, from each stage's own logs
(``config.yaml``, ``train_log.csv``, ``val_log.csv``), prints:

* per card, every validation point: stage, its scale, iteration, the chain's cumulative wall time
  up to that point (earlier stages included, e.g. the x2 stages under an x4 model) and Set5 PSNR;
* per scale that several chains train at, a time-matched comparison: each chain's best PSNR at
  that scale within the wall time at which the first of them stopped training at it, and the time
  each first reached the lowest of their last PSNRs (a chain whose stages at that scale are a
  prefix of another's, like the x2 stages under the x4 weights, is shown once).

This is what "quality per CPU-second" can be read from without new training. Read it with its
caveats: the wall times are of a shared 2-core machine (the ``device`` column gives the processes;
a GPU stage makes the chain incomparable), and the recipes differ (the model cards give them).

    python benchmarks/quality_per_time.py                       # every card, summaries per scale
    python benchmarks/quality_per_time.py --cards src/lightsr/pretrained/lgun_x4.md src/lightsr/pretrained/lamnet_x4.md
    python benchmarks/quality_per_time.py --chain race_dlgsanet_tiny_x4_scratch=docs/training_runs/race_dlgsanet_tiny_x4_scratch
        # every card and a run that no card lists (the equal-recipe race of docs/training.md)
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))  # also when loaded from a file path (tests)
from model_card import REPO, _card_runs, _csv_rows, _device_of  # noqa: E402  the cards' own readers

CARDS = REPO / "src" / "lightsr" / "pretrained"


@dataclass
class Point:
    run: str
    scale: int
    iteration: int
    hours: float  # cumulative wall time of the chain at this point
    scale_hours: float  # the part of it spent in stages of this point's scale
    psnr: float


def card_runs(card: Path) -> list[Path]:
    """The card's training stages, in order (``--run`` lines, relative to the repository)."""
    return _card_runs(card.read_text())


def _elapsed_at(train_rows: list[dict], iteration: int) -> float:
    """Seconds into the run at ``iteration``: the last logged row at or before it (the logger
    writes a row every ``print_freq`` iterations, and the validations fall on those)."""
    before = [float(r["elapsed_s"]) for r in train_rows if int(r["iter"]) <= iteration]
    return before[-1] if before else 0.0


def chain_points(runs: list[Path]) -> tuple[list[Point], list[tuple[str, str, float]]]:
    """Every validation point of the chain with its cumulative hours, and (run, device, hours) per stage."""
    points, stages, offset, per_scale = [], [], 0.0, {}
    for run in runs:
        cfg = yaml.safe_load((run / "config.yaml").read_text()) if (run / "config.yaml").is_file() else {}
        scale = int((cfg or {}).get("scale") or 0)
        train = _csv_rows(run / "train_log.csv")
        for v in _csv_rows(run / "val_log.csv"):
            if v.get("dataset", "Set5") != "Set5":
                continue
            it, done = int(v["iter"]), _elapsed_at(train, int(v["iter"]))
            points.append(Point(run.name, scale, it, (offset + done) / 3600,
                                (per_scale.get(scale, 0.0) + done) / 3600, float(v["psnr"])))
        total = float(train[-1]["elapsed_s"]) if train else 0.0
        offset += total
        per_scale[scale] = per_scale.get(scale, 0.0) + total
        stages.append((run.name, _device_of(run), offset / 3600))
    return points, stages


def _first_reaching(points: list[Point], scale: int, target: float) -> Point | None:
    return next((p for p in points if p.scale == scale and p.psnr >= target), None)


def _best_within(points: list[Point], scale: int, hours: float) -> Point | None:
    inside = [p for p in points if p.scale == scale and p.hours <= hours + 1e-9]
    return max(inside, key=lambda p: p.psnr) if inside else None


def print_chain(name: str, points: list[Point], stages: list[tuple[str, str, float]]) -> None:
    print(f"\n## {name}\n")
    print("stages: " + "; ".join(f"`{r}` ({d}, to {h:.2f} h)" for r, d, h in stages) + "\n")
    print("| stage | scale | iteration | cumulative wall h | of which at this scale | Set5 PSNR |")
    print("|---|---|---|---|---|---|")
    for p in points:
        print(f"| {p.run} | x{p.scale} | {p.iteration} | {p.hours:.2f} | {p.scale_hours:.2f} | {p.psnr:.2f} |")


def segments_at(scale: int, chains: dict[str, list[Point]]) -> dict[str, list[Point]]:
    """Each chain's points at ``scale``, less those that only repeat a prefix of another chain's
    (the x2 stages that the x3 and x4 weights start from are the x2 weights' own first stages)."""
    segs = {n: [p for p in pts if p.scale == scale] for n, pts in chains.items()}
    runs = {n: tuple(dict.fromkeys(p.run for p in pts)) for n, pts in segs.items() if pts}
    keep = {}
    for n, r in sorted(runs.items(), key=lambda kv: -len(kv[1])):
        if not any(k[: len(r)] == r for k in keep.values()):
            keep[n] = r
    return {n: segs[n] for n in chains if n in keep}


def print_comparison(scale: int, segs: dict[str, list[Point]]) -> None:
    """Time-matched comparison of the chains' points at ``scale``."""
    ends = {n: pts[-1].hours for n, pts in segs.items()}
    finals = {n: pts[-1].psnr for n, pts in segs.items()}
    horizon, target = min(ends.values()), min(finals.values())
    print(f"\n## x{scale}: time-matched (horizon {horizon:.2f} h = the earliest last x{scale} point; "
          f"target {target:.2f} dB = the lowest last x{scale} Set5)\n")
    print(f"| weights | wall h at the last x{scale} point | last x{scale} Set5 | best x{scale} Set5 within "
          f"{horizon:.2f} h | first point at >= {target:.2f} dB: wall h (of which at x{scale}) |")
    print("|---|---|---|---|---|")
    for n, pts in segs.items():
        best = _best_within(pts, scale, horizon)
        first = _first_reaching(pts, scale, target)
        best_s = f"{best.psnr:.2f} (`{best.run}` @{best.iteration})" if best else f"- (no x{scale} point yet)"
        first_s = f"{first.hours:.2f} h ({first.scale_hours:.2f} h), {first.psnr:.2f} dB" if first else "-"
        print(f"| {n} | {ends[n]:.2f} | {finals[n]:.2f} | {best_s} | {first_s} |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cards", nargs="+", type=Path, default=None,
                    help="model cards to read (default: every src/lightsr/pretrained/*.md)")
    ap.add_argument("--chain", action="append", default=[], metavar="NAME=RUN[,RUN...]",
                    help="a chain of run folders not (yet) in a card, in training order, e.g. a race "
                         "from scratch: race=docs/training_runs/race_dlgsanet_tiny_x4_scratch (repeatable; added to the cards)")
    args = ap.parse_args(argv)
    cards = args.cards if args.cards is not None else sorted(CARDS.glob("*.md"))
    named = [(c.stem, card_runs(c), str(c)) for c in cards]
    for item in args.chain:
        name, sep, runs = item.partition("=")
        if not sep or not runs:
            ap.error(f"--chain {item!r}: expected NAME=RUN[,RUN...]")
        named.append((name, [Path(r) for r in runs.split(",")], f"--chain {name}"))
    chains: dict[str, list[Point]] = {}
    shown = sys.argv[1:] if argv is None else argv
    print("command: python benchmarks/quality_per_time.py" + "".join(" " + a for a in shown))
    for name, runs, source in named:
        missing = [r for r in runs if not (r / "val_log.csv").is_file()]
        if not runs or missing:
            print(f"{source}: skipped ({'no --run lines' if not runs else f'no val_log.csv in {missing[0]}'})")
            continue
        points, stages = chain_points(runs)
        print_chain(name, points, stages)
        chains[name] = points
    for scale in sorted({p.scale for pts in chains.values() for p in pts}):
        segs = segments_at(scale, chains)
        if len(segs) > 1:
            print_comparison(scale, segs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
