"""Peak memory and time of evaluating one full-size benchmark image on CPU (whole image, no tiling).

Uses randomly initialised weights: only memory and time are measured here, never quality.
Each model runs in its own subprocess so that peak RSS values do not mix.

    python benchmarks/eval_memory.py --data ../shared/datasets/benchmark --set Manga109 --scale 2 \
        --models dlgsanet_light lamnet imdn --threads 2
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

CHILD = r"""
import json, os, resource, sys, tempfile, time, torch, lightsr
from pathlib import Path
from lightsr.data.benchmark import BenchmarkSet, find_benchmark
name, scale, data, set_name, threads = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5])
torch.set_num_threads(threads)
ds = find_benchmark(data, set_name, scale)
from PIL import Image
areas = [Image.open(ds._entries[i].hr_path).size for i in range(len(ds))]
big = max(range(len(ds)), key=lambda i: areas[i][0] * areas[i][1])
with tempfile.TemporaryDirectory() as tmp:  # a one-image set holding the largest HR image
    (Path(tmp) / "HR").mkdir()
    hr = ds._entries[big].hr_path
    os.symlink(hr.resolve(), Path(tmp) / "HR" / hr.name)
    one = BenchmarkSet(Path(tmp) / "HR", scale, name=set_name, cache=False)
    model = lightsr.create_model(name, scale)
    r = lightsr.evaluate(model, [one], progress=False)
img = r.sets[0].images[0] if r.sets[0].images else None
print(json.dumps(dict(model=name, image=hr.stem, lr=[img.lr_height, img.lr_width] if img else None,
                      seconds=img.seconds if img else None,
                      peak_rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, failures=r.failures)))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", required=True)
    ap.add_argument("--set", default="Manga109")
    ap.add_argument("--scale", type=int, default=2)
    ap.add_argument("--models", nargs="+", default=["dlgsanet_light", "lamnet"])
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    print(f"| model | LR input | seconds (CPU, {args.threads} threads) | peak RSS |")
    print("|---|---|---|---|")
    status = 0
    for name in args.models:
        out = subprocess.run([sys.executable, "-c", CHILD, name, str(args.scale), args.data, args.set, str(args.threads)],
                             capture_output=True, text=True)
        if out.returncode != 0:
            print(f"| {name} | failed: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode} | | |")
            status = 1
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {name} x{args.scale} | {r['image']} {r['lr'][1]}x{r['lr'][0]} | {r['seconds']:.0f} | {r['peak_rss_gb']:.2f} GB |")
        sys.stdout.flush()
        status |= bool(r["failures"])
    return status


if __name__ == "__main__":
    sys.exit(main())
