"""Peak memory (RSS) and time of upscaling one large image, end to end, as ``lightsr upscale`` does it.

A synthetic textured PNG of the requested size is written to a temporary folder, a model with
random weights (seed 0; speed and memory do not depend on the
weight values) is saved beside it, and a *child process* reads the image, upscales it with
automatic tiling and writes the result (``read_image`` -> ``Upscaler.upscale_image`` ->
``write_image``, the CLI's path, with glibc malloc tuned as the CLI tunes it unless
``--no-malloc-tuning``). The parent samples the child's RSS and reads its peak
(``VmHWM``) so that nothing of the benchmark itself is counted.

``--model nearest`` swaps the network for nearest-neighbour upscaling: the same pipeline (read,
tiles, band accumulation, 8-bit output array, PNG encoding) at negligible compute, to measure the
memory of everything but the network at sizes where a real network would run for hours on a
small CPU. The child also prints the network's measured activation peak per tile.

With ``--time-limit`` the child is stopped after that many seconds; the report then gives the
tiles done, the peak RSS so far and the projected total from the measured tile rate.

    python benchmarks/upscale_memory.py --width 4000 --height 3000 --model dlgsanet_tiny
    python benchmarks/upscale_memory.py --width 1000 --height 750 --model dlgsanet_tiny
    python benchmarks/upscale_memory.py --width 4000 --height 3000 --model nearest
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

CHILD = textwrap.dedent(
    r"""
    import json, sys, time
    t0 = time.perf_counter()
    import numpy as np, torch, torch.nn as nn, torch.nn.functional as F
    import lightsr
    from lightsr.inference import Upscaler
    from lightsr.inference.io import read_image, write_image
    cfg = json.loads(sys.argv[1])
    if cfg["malloc_tuning"]:  # as lightsr upscale does
        from lightsr.allocator import tune_malloc
        tune_malloc()
    if cfg["threads"]:
        torch.set_num_threads(cfg["threads"])

    class Nearest(nn.Module):
        scale = cfg["scale"]
        def forward(self, x):
            return F.interpolate(x, scale_factor=self.scale, mode="nearest")

    if cfg["model"] == "nearest":
        up = Upscaler(Nearest(), tile=cfg["tile"], device="cpu")
    else:
        up = Upscaler(weights=cfg["weights"], tile=cfg["tile"], device="cpu")
    t1 = time.perf_counter()
    data = read_image(cfg["input"])
    t2 = time.perf_counter()
    h, w = data.pixels.shape[:2]
    tile = up._tile_for(h, w)
    bpp = up.runner.bytes_per_pixel()
    print(json.dumps({"event": "plan", "tile": tile, "activation_bytes_per_pixel": bpp,
                      "tile_activation_bytes": bpp * (tile or max(h, w)) ** 2}), flush=True)
    last = [time.perf_counter()]
    def on_tile(done, total):
        print(json.dumps({"event": "tile", "done": done, "total": total, "t": time.perf_counter() - t2}), flush=True)
    out = up.upscale_image(data, on_tile=on_tile)
    t3 = time.perf_counter()
    del data
    write_image(cfg["output"], out, "png", overwrite=True)
    t4 = time.perf_counter()
    print(json.dumps({"event": "done", "load_model": t1 - t0, "read": t2 - t1, "upscale": t3 - t2, "write": t4 - t3,
                      "tile_used": up.last_tile, "out_shape": list(out.pixels.shape)}), flush=True)
    """
)


def _status(pid: int) -> dict[str, int]:
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(("VmRSS:", "VmHWM:")):
                    key, value = line.split(":")
                    out[key] = int(value.split()[0]) * 1024
    except OSError:
        pass
    return out


def make_image(path: Path, width: int, height: int) -> None:
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:height, :width].astype(np.float32)
    base = np.stack([np.sin(xx / 37 + yy / 53), np.cos(yy / 29 - xx / 61), np.sin(xx * yy / 9000)], -1) * 90 + 128
    base += rng.normal(0, 12, base.shape).astype(np.float32)
    Image.fromarray(np.clip(base, 0, 255).astype(np.uint8)).save(path, compress_level=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--width", type=int, default=4000)
    ap.add_argument("--height", type=int, default=3000)
    ap.add_argument("--scale", type=int, default=4)
    ap.add_argument("--model", default="dlgsanet_tiny", help="model name, or 'nearest' for the pipeline alone")
    ap.add_argument("--tile", default="auto")
    ap.add_argument("--threads", type=int, default=0, help="torch threads in the child (default: torch's choice)")
    ap.add_argument("--time-limit", type=float, default=None, help="stop the child after this many seconds")
    ap.add_argument("--no-malloc-tuning", action="store_true",
                    help="keep glibc's malloc defaults in the child (lightsr upscale tunes it: lightsr.allocator)")
    args = ap.parse_args()

    import torch

    import lightsr

    with tempfile.TemporaryDirectory(prefix="lightsr-mem-") as tmp:
        tmp = Path(tmp)
        src = tmp / "input.png"
        make_image(src, args.width, args.height)
        weights = None
        if args.model != "nearest":
            torch.manual_seed(0)
            weights = str(lightsr.save_model(lightsr.create_model(args.model, args.scale), tmp / "w.safetensors"))
        cfg = {"input": str(src), "output": str(tmp / "out.png"), "weights": weights, "model": args.model,
               "scale": args.scale, "tile": args.tile if args.tile == "auto" else int(args.tile), "threads": args.threads,
               "malloc_tuning": not args.no_malloc_tuning}
        print(f"upscaling a {args.width}x{args.height} RGB PNG x{args.scale} with {args.model} on the CPU "
              f"({os.cpu_count()} cores visible, torch {torch.__version__}); child process measured, malloc "
              f"{'glibc defaults' if args.no_malloc_tuning else 'tuned as by lightsr upscale'}")
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(cfg)], stdout=subprocess.PIPE, text=True)
        os.set_blocking(proc.stdout.fileno(), False)
        events, peak_rss, hwm, buffer = [], 0, 0, ""
        stopped = False
        while proc.poll() is None:
            st = _status(proc.pid)
            peak_rss = max(peak_rss, st.get("VmRSS", 0))
            hwm = max(hwm, st.get("VmHWM", 0))
            try:
                chunk = proc.stdout.read()
            except (BlockingIOError, TypeError):
                chunk = None
            if chunk:
                buffer += chunk
                *lines, buffer = buffer.split("\n")
                new = [json.loads(l) for l in lines if l.startswith("{")]
                events += new
                for e in new:  # progress as it happens (kept even if the run is stopped)
                    if e["event"] == "tile":
                        print(f"  tile {e['done']}/{e['total']} at {e['t']:.0f} s, RSS {st.get('VmRSS', 0) / 2**30:.2f} GiB",
                              flush=True)
            if args.time_limit and time.perf_counter() - t0 > args.time_limit:
                hwm = max(hwm, _status(proc.pid).get("VmHWM", 0))
                proc.kill()
                stopped = True
                break
            time.sleep(0.25)
        try:
            rest = proc.stdout.read() or ""
        except (BlockingIOError, TypeError, ValueError):  # nothing left in a non-blocking pipe
            rest = ""
        buffer += rest
        events += [json.loads(l) for l in buffer.split("\n") if l.startswith("{")]
        proc.wait()
        wall = time.perf_counter() - t0
        if not stopped and proc.returncode != 0:
            raise SystemExit(f"child failed with exit code {proc.returncode}")
        import resource

        child_maxrss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # KiB on Linux
        peak = max(hwm, child_maxrss if not stopped else 0, peak_rss)
        plan = next((e for e in events if e["event"] == "plan"), {})
        tiles = [e for e in events if e["event"] == "tile"]
        done = next((e for e in events if e["event"] == "done"), None)
        print(f"tile: {plan.get('tile') or 'whole image'}; network activations measured "
              f"{plan.get('activation_bytes_per_pixel', 0) / 1024:.2f} KiB per input pixel = "
              f"{plan.get('tile_activation_bytes', 0) / 2**30:.2f} GiB per tile")
        if done:
            print(f"time: {wall:.1f} s wall (model load {done['load_model']:.1f} s, read {done['read']:.1f} s, "
                  f"upscale {done['upscale']:.1f} s, write {done['write']:.1f} s); {len(tiles) and tiles[-1]['total']} tiles; "
                  f"output {done['out_shape']}")
            print(f"throughput: {args.width * args.height / done['upscale'] / 1e3:.1f} K input pixels/s")
        else:
            n = tiles[-1]["done"] if tiles else 0
            total = tiles[-1]["total"] if tiles else 0
            if n:
                rate = tiles[-1]["t"] / n
                print(f"stopped after {wall:.0f} s (--time-limit): {n}/{total} tiles in {tiles[-1]['t']:.0f} s "
                      f"= {rate:.1f} s per tile -> projected upscale time {rate * total / 60:.0f} min for all {total} tiles")
            else:
                print(f"stopped after {wall:.0f} s (--time-limit) before the first tile finished")
        print(f"peak RSS: {peak / 2**30:.2f} GiB{' (so far: the output array fills as rows finish)' if stopped else ''}"
              f" - limit 4 GiB: {'OK' if peak < 4 * 2**30 else 'EXCEEDED'}")


if __name__ == "__main__":
    main()
