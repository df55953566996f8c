"""Write the model card of a weights file: measured PSNR/SSIM next to bicubic and the paper, and how it was trained.

For ``src/lightsr/pretrained/<model>_x<s>.md``. Everything in the card is measured by this script
or read from the training runs' own logs:

* the evaluation of the weights on Set5, Set14, B100, Urban100 and Manga109 (the folders in
  ``--data``; in ``../shared`` Urban100 and Manga109 are subsets, and the card says how many images)
  with ``lightsr.evaluate`` under the ``basicsr`` convention (the papers' own-model convention:
  Y unrounded, border = scale), and the same for bicubic;
* the published numbers of the paper's model (full sets, full-length paper recipe) for comparison;
* from each ``--run`` folder (``lightsr train`` experiment dir, in training order): the config,
  iterations, wall time (``elapsed_s`` of ``train_log.csv``), the hardware line and the best
  validation PSNR.

    python benchmarks/model_card.py --weights src/lightsr/pretrained/dlgsanet_tiny_x4.safetensors \\
        --run experiments/cpu_dlgsanet_tiny_x2 --run experiments/cpu_dlgsanet_tiny_x4 \\
        --data ../shared/datasets/benchmark --out src/lightsr/pretrained/dlgsanet_tiny_x4.md

Beside the weights it also writes ``<model>_x<s>.openmodeldb.json``, the model's entry in
OpenModelDB's schema (its ``src/lib/schema.ts``: name, author, SPDX license, tags, description with
the card's measured Set5/B100 numbers, date, architecture, size, scale, channels, the resource with
its size and sha256, training iterations / batch / HR size, dataset). ``--openmodeldb-only`` writes
just that file from the existing card and the runs it lists, without evaluating anything::

    python benchmarks/model_card.py --openmodeldb-only --weights src/lightsr/pretrained/dlgsanet_tiny_x4.safetensors

bf16: the card gets a row of the same weights under bf16 (``--precision bf16``, CPU autocast) and a
line comparing Set5 in bf16 and fp32; the Set5 pair is also recorded, by the file's sha256, in
``src/lightsr/pretrained/precision.json``, which ``--precision auto`` reads (bf16 is picked only on
CPUs with native bf16 and within 0.02 dB). ``--precision-only`` measures just that pair, updates the
JSON and the card's bf16 line, and evaluates nothing else::

    python benchmarks/model_card.py --precision-only --weights src/lightsr/pretrained/dlgsanet_tiny_x4.safetensors
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import subprocess
import re
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

SETS = ["Set5", "Set14", "B100", "Urban100", "Manga109"]

# Published PSNR/SSIM (Y, full sets) of each paper's model, as printed in the papers
# (DLGSANet-tiny: ../shared/design/architectures.md "paper" rows of the official README;
#  LGUN: ../shared/papers/001_* Table 2; LAMNet: ../shared/papers/003_* Table 3).
PAPER = {
    ("dlgsanet_tiny", 2): ("DLGSANet paper, Table 2", ["38.16/0.9611", "33.92/0.9202", "32.26/0.9007", "32.82/0.9343", "39.14/0.9777"]),
    ("dlgsanet_tiny", 3): ("DLGSANet paper, Table 2", ["34.63/0.9288", "30.57/0.8459", "29.21/0.8083", "28.69/0.8630", "34.10/0.9480"]),
    ("dlgsanet_tiny", 4): ("DLGSANet paper (official README 'paper' row)", ["32.46/0.8984", "28.79/0.7861", "27.70/0.7408", "26.55/0.8002", "30.98/0.9137"]),
    ("lgun", 2): ("LGUN paper, Table 2", ["38.24/0.9618", "33.93/0.9208", "32.34/0.9027", "32.65/0.9322", "39.38/0.9786"]),
    ("lgun", 3): ("LGUN paper, Table 2", ["34.60/0.9292", "30.54/0.8458", "29.25/0.8102", "28.53/0.8586", "34.26/0.9480"]),
    ("lgun", 4): ("LGUN paper, Table 2", ["32.63/0.9008", "28.94/0.7897", "27.82/0.7458", "26.88/0.8084", "31.52/0.9183"]),
    ("lamnet", 2): ("LAMNet paper, Table 3", ["38.22/0.9613", "34.00/0.9208", "32.35/0.9019", "33.03/0.9359", "39.33/0.9782"]),
    ("lamnet", 3): ("LAMNet paper, Table 3", ["34.71/0.9295", "30.63/0.8472", "29.28/0.8097", "28.90/0.8668", "34.36/0.9491"]),
    ("lamnet", 4): ("LAMNet paper, Table 3", ["32.51/0.8983", "28.87/0.7880", "27.75/0.7427", "26.72/0.8048", "31.26/0.9169"]),
    ("lamnet_large", 2): ("LAMNet paper, Table 3", ["38.27/0.9615", "34.07/0.9214", "32.38/0.9023", "33.16/0.9373", "39.38/0.9785"]),
    ("lamnet_large", 3): ("LAMNet paper, Table 3", ["34.75/0.9299", "30.65/0.8478", "29.31/0.8107", "29.03/0.8692", "34.44/0.9497"]),
    ("lamnet_large", 4): ("LAMNet paper, Table 3", ["32.60/0.9000", "28.87/0.7886", "27.77/0.7434", "26.82/0.8078", "31.33/0.9183"]),
}
# The published bicubic rows (full sets; MATLAB-script convention, see docs/evaluation.md).
BICUBIC_PUBLISHED = {
    2: ["33.66/0.9299", "30.24/0.8688", "29.56/0.8431", "26.88/0.8403", "30.80/0.9339"],
    3: ["30.39/0.8682", "27.55/0.7742", "27.21/0.7385", "24.46/0.7349", "26.95/0.8556"],
    4: ["28.42/0.8104", "26.00/0.7027", "25.96/0.6675", "23.14/0.6577", "24.89/0.7866"],
}


def _csv_rows(path: Path) -> list[dict]:
    return list(csv.DictReader(path.read_text().splitlines())) if path.is_file() else []


def _device_of(run: Path) -> str:
    """'CPU' or 'GPU', with the process count, from the run's own train.log ('on cpu x 2 process(es)');
    a run resumed with another process count gives each in turn ('CPU, 1 then 2 procs')."""
    log = run / "train.log"
    starts = re.findall(r" on (cpu|cuda) x (\d+) process", log.read_text()) if log.is_file() else []
    if not starts:
        return "-"
    kind = "GPU" if starts[0][0] == "cuda" else "CPU"
    counts = list(dict.fromkeys(int(n) for _, n in starts))  # in order of first use
    if len(counts) > 1:
        return f"{kind}, {' then '.join(map(str, counts))} procs"
    n = counts[0]
    return f"{n} {kind}s" if kind == "GPU" and n > 1 else (kind if n == 1 else f"{kind}, {n} procs")


def read_run(run: Path) -> dict:
    rows = _csv_rows(run / "train_log.csv")
    vals = _csv_rows(run / "val_log.csv")
    cfg = (run / "config.yaml").read_text() if (run / "config.yaml").is_file() else ""
    best = max(vals, key=lambda r: float(r["psnr"])) if vals else None
    recipe = {}
    if cfg:
        import yaml

        data = yaml.safe_load(cfg) or {}
        train_set = (data.get("datasets") or {}).get("train") or {}
        scale = int(data.get("scale") or 1)
        lq = train_set.get("lq_size") or (train_set.get("gt_size") or 0) // scale or None
        train = data.get("train") or {}
        recipe = {"batch": train_set.get("batch_size") or train_set.get("batch_size_per_gpu"), "lq": lq,
                  "lr": (train.get("optim_g") or {}).get("lr"),
                  "loss": (train.get("pixel_opt") or {}).get("type", "L1Loss").removesuffix("Loss")}
    return {
        "name": run.name,
        "iters": int(rows[-1]["iter"]) if rows else 0,
        "elapsed_s": float(rows[-1]["elapsed_s"]) if rows else 0.0,
        "best": best,
        "last_val": vals[-1] if vals else None,
        "config": cfg,
        "recipe": recipe,
        "device": _device_of(run),
    }


# ------------------------------------------------------------------------------------------
# OpenModelDB metadata (schema: OpenModelDB/open-model-database src/lib/schema.ts)
AUTHOR = "lightsr-developers"  # OpenModelDB user id for pyproject's "lightsr developers"
TAGS = ["photo", "research"]  # trained on photos (T91, BSD200, DIV2K); architectures from papers
DATASET = ("T91 + BSD200 + 100 DIV2K-valid 256x256 crops (`../shared/datasets/train`), HR only; LR by "
           "MATLAB-compatible bicubic downscaling. These are research-use datasets.")


def openmodeldb_path(weights: Path) -> Path:
    return weights.with_name(weights.name.removesuffix(".safetensors") + ".openmodeldb.json")


def _card_row(card: str, marker: str) -> dict[str, str]:
    """Cells of the card's table row containing ``marker``, keyed by set name."""
    lines = card.splitlines()
    header = next(line for line in lines if line.startswith("| | Set5"))
    names = [c.strip().split(" (")[0] for c in header.strip("|").split("|")[1:]]
    row = next(line for line in lines if marker in line)
    return dict(zip(names, (c.strip() for c in row.strip("|").split("|")[1:])))


def _card_runs(card: str) -> list[Path]:
    return [REPO / m for m in re.findall(r"--run (\S+)", card)]


def _git_date(path: Path) -> str:
    """Date (YYYY-MM-DD) of the last commit that changed ``path``; today when uncommitted."""
    try:
        out = subprocess.run(["git", "log", "-1", "--format=%cs", "--", str(path)], cwd=REPO,
                             capture_output=True, text=True, timeout=30).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        out = ""
    return out or time.strftime("%Y-%m-%d")


def _license() -> str:
    m = re.search(r'^license = "([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M)
    return m.group(1) if m else None


def _dataset_size(config: str) -> int | None:
    """Images in the training config's ``dataroot_gt`` folders, when they are here."""
    import yaml

    roots = (((yaml.safe_load(config) or {}).get("datasets") or {}).get("train") or {}).get("dataroot_gt") or []
    roots = [REPO / r for r in ([roots] if isinstance(roots, str) else roots)]
    if not roots or not all(r.is_dir() for r in roots):
        return None
    return sum(1 for r in roots for f in r.iterdir() if f.suffix.lower() in (".png", ".jpg", ".jpeg", ".bmp", ".tif"))


def _description(model, card: str, runs: list[dict], wpath: Path) -> str:
    from lightsr.models import get_spec

    name, scale = model.lightsr_config["name"], model.scale
    spec = get_spec(name)
    ours, bic = _card_row(card, "(these weights)"), _card_row(card, "bicubic (measured")
    iters, hours = sum(r["iters"] for r in runs), sum(r["elapsed_s"] for r in runs) / 3600
    losses = " / ".join(sorted({r["recipe"].get("loss", "L1") for r in runs}))
    reading = "" if spec.official_params else "; lightsr's reading of the paper, which has no official code"
    text = (f"{spec.description.split(':')[0]} ({spec.paper}{reading}) at x{scale}, re-implemented and trained by lightsr "
            f"on a CPU budget: {iters:,} iterations ({hours:.1f} h) in {len(runs)} stage(s), {losses} loss, bicubic degradation.\n\n"
            f"Measured by lightsr (PSNR/SSIM on Y, border = scale, BasicSR convention): Set5 {ours['Set5']} and "
            f"B100 {ours['B100']}; bicubic {bic['Set5']} and {bic['B100']}.")
    if (name, scale) in PAPER:
        vals = PAPER[(name, scale)][1]
        text += (f" The paper's model (about 500k iterations on GPUs) reports {vals[0]} and {vals[2]}: "
                 "these CPU-budget weights stay below it.")
    if hasattr(model, "tlc_enabled"):
        text += f" DLGSANet's test-time local converter is {'on' if model.tlc_enabled else 'off'} for these weights."
    return text + (f"\n\nLoad with `lightsr.load_model(path)`, or through spandrel after `import lightsr.integrations.spandrel`. "
                   f"Model card: `{os.path.relpath(wpath.with_suffix('.md'), REPO)}`.")


def openmodeldb_entry(wpath: Path, card: str, urls: list[str] | None = None, date: str | None = None) -> dict:
    """The OpenModelDB entry of a weights file, from the file itself, its card and the runs the card lists."""
    import lightsr
    from lightsr.integrations.hub import FAMILIES, size_tags
    from lightsr.models import get_spec

    model = lightsr.load_model(wpath)
    name, options = model.lightsr_config["name"], model.lightsr_config["options"]
    runs = [read_run(r) for r in _card_runs(card)]
    last = runs[-1]
    channels = int(options.get("in_chans", 3))
    entry = {
        "name": f"lightsr {get_spec(name).description.split(':')[0]}",
        "author": AUTHOR,
        "license": _license(),
        "tags": TAGS,
        "description": _description(model, card, runs, wpath),
        "date": date or _git_date(wpath),
        "architecture": FAMILIES[get_spec(name).family].openmodeldb,
        "size": size_tags(name, options),
        "scale": model.scale,
        "inputChannels": channels,
        "outputChannels": channels,
        "resources": [{"platform": "pytorch", "type": "safetensors", "size": wpath.stat().st_size,
                       "sha256": hashlib.sha256(wpath.read_bytes()).hexdigest(), "urls": urls or [os.path.relpath(wpath.resolve(), REPO)]}],
        "trainingIterations": sum(r["iters"] for r in runs),
        "trainingBatchSize": last["recipe"]["batch"],
        "trainingHRSize": last["recipe"]["lq"] * model.scale,
        "trainingOTF": False,
        "dataset": DATASET,
        "datasetSize": _dataset_size(last["config"]),
        "images": [],
    }
    return {k: v for k, v in entry.items() if v is not None}


def write_openmodeldb(wpath: Path, card: str, urls: list[str] | None = None, date: str | None = None) -> Path:
    """Write ``<model>_x<s>.openmodeldb.json`` beside the weights, atomically, formatted as OpenModelDB's files."""
    out = openmodeldb_path(wpath)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(json.dumps(openmodeldb_entry(wpath, card, urls, date), indent=4, ensure_ascii=False))
    tmp.replace(out)
    return out


PRECISION_JSON = REPO / "src" / "lightsr" / "pretrained" / "precision.json"
BF16_MARK = "**bf16** (`--precision bf16`"


def measure_bf16(model, set5, fp32=None, bf16=None) -> dict:
    """Set5 PSNR of ``model`` in fp32 and under bf16 autocast (either measured here unless given)."""
    import lightsr
    from lightsr.inference.policy import BF16_TOLERANCE_DB, native_bf16

    fp32 = fp32 if fp32 is not None else lightsr.evaluate(model, set5, progress=False)["Set5"].psnr
    bf16 = bf16 if bf16 is not None else lightsr.evaluate(model, set5, precision="bf16", progress=False)["Set5"].psnr
    return {"set5_fp32": round(fp32, 4), "set5_bf16": round(bf16, 4), "delta_db": round(bf16 - fp32, 4),
            "within_tolerance": abs(bf16 - fp32) <= BF16_TOLERANCE_DB,
            "measured_with": "native bf16" if native_bf16() else "bf16 emulated by this CPU (no native bf16)"}


def _bf16_sets(choice: list[str]) -> list[str]:
    """The sets of the card's bf16 row: ``auto`` = every set on a CPU with native bf16, Set5 alone where
    bf16 is emulated (there it runs an order of magnitude slower than fp32: B100 alone would take longer
    than all fp32 rows together)."""
    from lightsr.inference.policy import native_bf16

    if choice != ["auto"]:
        return choice
    return SETS if native_bf16() else ["Set5"]


BF16_PARTIAL = ("The bf16 row was run on the sets with a value ('-': not run): this CPU has no native bf16, and emulated bf16 runs an order "
                "of magnitude slower than fp32 (`--bf16-sets` chooses; on a CPU with AVX512-BF16 / AMX it covers "
                "every set).")


def _psnr_of(res, name: str) -> float | None:
    return next((s.psnr for s in res.sets if s.name == name), None)


def record_precision(wpath: Path, m: dict) -> None:
    """Store the measurement in precision.json under the file's sha256 (atomically)."""
    table = json.loads(PRECISION_JSON.read_text()) if PRECISION_JSON.exists() else {}
    table = {k: v for k, v in table.items() if v.get("file") != wpath.name}  # the file's older versions
    table[hashlib.sha256(wpath.read_bytes()).hexdigest()] = {"file": wpath.name, **m}
    tmp = PRECISION_JSON.with_name(f".{PRECISION_JSON.name}.tmp")
    tmp.write_text(json.dumps(dict(sorted(table.items(), key=lambda kv: kv[1]["file"])), indent=2) + "\n")
    tmp.replace(PRECISION_JSON)


def bf16_line(m: dict) -> str:
    verdict = ("within 0.02 dB: `--precision auto` picks bf16 on CPUs with native bf16 (AVX512-BF16 / AMX)"
               if m["within_tolerance"] else "more than 0.02 dB: `--precision auto` keeps fp32")
    return (f"{BF16_MARK}, CPU autocast): Set5 {m['set5_bf16']:.4f} dB against {m['set5_fp32']:.4f} in fp32 "
            f"({m['delta_db']:+.4f} dB, {m['measured_with']}): {verdict}. Recorded by sha256 in "
            "`src/lightsr/pretrained/precision.json`.")


def set_bf16_line(card: str, line: str) -> str:
    """The card with its bf16 line replaced (or inserted before 'Evaluation time')."""
    lines = [ln for ln in card.splitlines() if not ln.startswith(BF16_MARK)]
    at = next((i for i, ln in enumerate(lines) if ln.startswith("Evaluation time:")), len(lines))
    return "\n".join(lines[:at] + [line, ""] + lines[at:]).replace("\n\n\n", "\n\n") + "\n"


def precision_only(args) -> int:
    import lightsr
    from lightsr.data.benchmark import find_benchmark

    model = lightsr.load_model(args.weights)
    m = measure_bf16(model, find_benchmark(args.data, "Set5", model.scale))
    wpath = Path(args.weights)
    record_precision(wpath, m)
    out = Path(args.out)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(set_bf16_line(out.read_text(), bf16_line(m)))
    tmp.replace(out)
    print(bf16_line(m))
    print(f"updated {out} and {PRECISION_JSON}")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", required=True)
    ap.add_argument("--run", action="append", default=[], help="training run folder (repeat, in training order)")
    ap.add_argument("--data", default="../shared/datasets/benchmark")
    ap.add_argument("--sets", nargs="+", default=SETS)
    ap.add_argument("--out", default=None, help="the card (default: <weights>.md beside the weights)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--bf16-sets", nargs="+", default=["auto"], metavar="SET",
                    help="sets of the bf16 row (default auto: all on a CPU with native bf16, Set5 alone where bf16 "
                         "is emulated; '-' in the other cells)")
    ap.add_argument("--results", default=None, metavar="DIR",
                    help="also write the evaluation (results.md / per_image.csv / results.json, as lightsr eval) here")
    ap.add_argument("--hardware", default=None, help="hardware line (default: this CPU and core count)")
    ap.add_argument("--gpu-hardware", default="one NVIDIA H200, lent for one session (benchmarks/gpu_session.sh, docs/gpu.md)",
                    help="what the GPU stages (runs whose train.log says cuda) ran on")
    ap.add_argument("--openmodeldb-only", action="store_true",
                    help="write only <model>_x<s>.openmodeldb.json, from the existing card and its runs (no evaluation)")
    ap.add_argument("--url", action="append", default=None,
                    help="download URL of the weights for the OpenModelDB resource (repeat; default: the file's path in the repository)")
    ap.add_argument("--date", default=None, help="OpenModelDB date, YYYY-MM-DD (default: the weights' last commit)")
    ap.add_argument("--precision-only", action="store_true",
                    help="measure Set5 in bf16 and fp32 only; update precision.json and the card's bf16 line")
    args = ap.parse_args()
    args.out = args.out or str(Path(args.weights).with_suffix(".md"))
    if args.precision_only:
        if args.threads:
            import torch

            torch.set_num_threads(args.threads)
        return precision_only(args)
    if args.openmodeldb_only:
        out = write_openmodeldb(Path(args.weights), Path(args.out).read_text(), args.url, args.date)
        print(out.read_text())
        return 0

    import torch

    import lightsr
    from lightsr.bench import environment
    from lightsr.data.benchmark import find_benchmark
    from lightsr.inference.policy import native_bf16

    if args.threads:
        torch.set_num_threads(args.threads)
    model = lightsr.load_model(args.weights)
    name, scale = model.lightsr_config["name"], model.scale
    sets = []
    for s in args.sets:
        try:
            sets.append(find_benchmark(args.data, s, scale))
        except (FileNotFoundError, ValueError) as exc:
            print(f"skip {s}: {exc}", file=sys.stderr)
    t0 = time.perf_counter()
    ours = lightsr.evaluate(model, sets, label=name)
    t_eval = time.perf_counter() - t0
    bic = lightsr.evaluate("bicubic", sets, scale=scale)
    # DLGSANet: the file's options say whether the test-time local converter is used (on unless the
    # metadata says tlc: false); the other setting is measured too, so the choice is visible
    tlc_used = None
    if hasattr(model, "set_tlc"):
        tlc_used = model.tlc_enabled
        model.set_tlc(not tlc_used)
        other = lightsr.evaluate(model, sets, label=name)
        model.set_tlc(tlc_used)
    chosen = [s for s in sets if s.name in _bf16_sets(args.bf16_sets)]
    low = lightsr.evaluate(model, chosen, label=name, precision="bf16") if chosen else None
    set5 = [s for s in sets if s.name == "Set5"]
    bf16 = measure_bf16(model, set5, fp32=ours["Set5"].psnr, bf16=low and _psnr_of(low, "Set5")) if set5 else None
    if args.results:
        ours.write(args.results)
    names = [s.name for s in ours.sets]
    counts = [len(s.images) for s in ours.sets]

    def cells(res):
        by_name = {s.name: s for s in res.sets}
        return [f"{by_name[n].psnr:.2f}/{by_name[n].ssim:.4f}" if n in by_name else "-" for n in names]

    head = "| | " + " | ".join(f"{n} ({c})" for n, c in zip(names, counts)) + " |"
    rule = "|---|" + "---|" * len(names)
    lines = [head, rule, f"| **lightsr {name} x{scale} (these weights)** | " + " | ".join(cells(ours)) + " |",
             f"| bicubic (measured, same convention) | " + " | ".join(cells(bic)) + " |"]
    if tlc_used is not None:
        lines.insert(3, f"| same weights, TLC {'off' if tlc_used else 'on'} (`--tlc {'off' if tlc_used else 'on'}`) | "
                     + " | ".join(cells(other)) + " |")
    if low is not None:
        lines.insert(3, "| same weights, bf16 (`--precision bf16`) | " + " | ".join(cells(low)) + " |")
    delta = [f"{o.psnr - b.psnr:+.2f} dB" for o, b in zip(ours.sets, bic.sets)]
    lines.append("| gain over bicubic | " + " | ".join(delta) + " |")
    idx = [SETS.index(n) if n in SETS else None for n in names]
    if (name, scale) in PAPER:
        src, vals = PAPER[(name, scale)]
        lines.append(f"| paper ({src}; full sets, full recipe) | " + " | ".join(vals[i] if i is not None else "-" for i in idx) + " |")
    lines.append("| bicubic, published (full sets) | " + " | ".join(BICUBIC_PUBLISHED[scale][i] if i is not None else "-" for i in idx) + " |")

    runs = [read_run(Path(r)) for r in args.run]
    total_iters = sum(r["iters"] for r in runs)
    total_s = sum(r["elapsed_s"] for r in runs)
    env = environment()
    hardware = args.hardware or f"{env['cpu']}, {env['cpus_usable']} cores, no GPU, shared with other jobs"
    gpu_stages = [r for r in runs if "GPU" in r["device"]]
    if gpu_stages:
        hardware = (f"CPU stages: {hardware}; GPU stages ("
                    + ", ".join(f"`{r['name']}`" for r in gpu_stages) + f"): {args.gpu_hardware}")
    params = lightsr.count_parameters(model)
    wpath = Path(args.weights)

    def rel(p) -> str:
        return os.path.relpath(Path(p).resolve(), REPO)

    md = [f"# {wpath.name}", "",
          f"**{name}** x{scale} ({params:,} parameters), trained by lightsr's own `lightsr train` on this "
          f"project's CPU machine{' and, for ' + str(len(gpu_stages)) + ' stage(s), a GPU' if gpu_stages else ''}. Weights file: `{wpath.name}` ({wpath.stat().st_size / 1e6:.1f} MB, safetensors, "
          "architecture and options in the metadata: `lightsr.load_model(path)` rebuilds it).", "",
          "## Measured quality", "",
          f"PSNR/SSIM on the Y channel, border = scale, `basicsr` convention (the papers' convention for "
          f"their own models; docs/evaluation.md), MATLAB-bicubic LR from `{args.data}`; (n) = images "
          "in each set here. Urban100 and Manga109 in `../shared` are **subsets** (25 and 10 images): "
          "their means are not comparable with the full-set numbers of the paper rows.", "",
          *lines, "",
          *([("DLGSANet's test-time local converter (TLC): **on** for these weights, as in the official evaluation"
              if tlc_used else
              "DLGSANet's test-time local converter (TLC): **off** for these weights (`\"tlc\": false` in the file's "
              "metadata options, which `lightsr upscale` and `lightsr eval` follow; `--tlc on` overrides)")
             + f"; the row 'same weights, TLC {'off' if tlc_used else 'on'}' measures the other setting.", ""]
            if tlc_used is not None else []),
          *([BF16_PARTIAL, ""] if low is not None and len(low.sets) < len(names) and not native_bf16() else []),
          *([bf16_line(bf16), ""] if bf16 else []),
          f"Evaluation time: {t_eval:.0f} s ({torch.get_num_threads()} CPU thread(s)). Re-create this card with:", "",
          "```bash",
          "python benchmarks/model_card.py --weights " + rel(wpath) + "".join(f" \\\n    --run {rel(r)}" for r in args.run)
          + f" \\\n    --data {args.data} --out {rel(args.out)}",
          "```", "",
          "and the table alone with `lightsr eval --scale " + f"{scale} --weights {rel(wpath)} --data {args.data} "
          "--sets " + " ".join(names) + "`.", "",
          "## Training", "",
          f"Data: `../shared/datasets/train` (T91 + BSD200 + 100 DIV2K-valid crops, HR only; LR made with "
          f"lightsr's MATLAB-bicubic), random crops, flips and 90° rotations. Hardware: {hardware}. "
          "In total **{:,} iterations in {:.1f} h** of wall time.".format(total_iters, total_s / 3600), "",
          "| stage (run) | device | iterations | batch x LR crop | loss | peak lr | wall time | best Set5 PSNR during training (iteration) |",
          "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        b, rc = r["best"], r["recipe"]
        best = f"{float(b['psnr']):.2f} dB ({b['iter']})" if b else "-"
        crop = f"{rc['batch']} x {rc['lq']}" if rc.get("batch") and rc.get("lq") else "-"
        lr = f"{float(rc['lr']):g}" if rc.get("lr") else "-"
        md.append(f"| `{r['name']}` | {r['device']} | {r['iters']:,} | {crop} | {rc.get('loss', '-')} | {lr} | {r['elapsed_s'] / 60:.0f} min | {best} |")
    md += ["", "The configs and logs of these runs are in `docs/training_runs/` (`config.yaml`, "
           "`train_log.csv`, `val_log.csv` per run); `lightsr plot-log` draws them.", "",
           "## Limits", "",
           f"These weights come from {total_iters:,} small-batch iterations, not from the papers' 500k-iteration "
           "GPU recipes: they beat bicubic clearly but stay below the paper's numbers (rows above). "
           "Retrain with the paper configs in `configs/` on a GPU for paper-level quality."]
    text = "\n".join(md) + "\n"
    out = Path(args.out)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text)
    tmp.replace(out)
    print(text)
    if bf16:
        record_precision(wpath, bf16)
    print(f"wrote {out} and {write_openmodeldb(wpath, text, args.url, args.date)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
