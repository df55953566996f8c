"""``lightsr upscale``: upscale image files, folders and globs."""
from __future__ import annotations

import argparse
import glob
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

EPILOG = """\
examples:
  lightsr upscale --demo                                    the bundled sample, x4, with a comparison
  lightsr upscale photo.jpg -o out/                         default model, x4, shipped weights
  lightsr upscale scans/ -o up/ --recursive --format png    a folder tree, written as PNG
  lightsr upscale "shots/*.png" -o up/ --weights lamnet_x4.safetensors --model lamnet
  lightsr upscale big.tif -o up/ --tile 256 --tile-overlap 32 --threads 2
  lightsr upscale img.png -o up/ --device cuda --precision bf16

what happens to each image:
  * RGB stays RGB, grayscale stays grayscale, palette images become RGB (RGBA with transparency);
  * with alpha, the colour is upscaled premultiplied (no dark fringes) and the alpha separately
    (--alpha bicubic, or --alpha model); a fully opaque alpha stays exactly opaque;
  * 16-bit PNG/TIFF in -> 16-bit out; the EXIF orientation is applied (the tag is reset to 1);
    the ICC profile and EXIF are carried over;
  * outputs are <name><suffix>.<ext> in OUTDIR (folder structure kept with --recursive), written
    atomically; existing outputs are kept unless --overwrite; inputs are never overwritten.
  * a file that cannot be read gets one line on stderr and the batch goes on; the exit code is 1
    if any image failed, 2 for a usage error (e.g. no weights).

Tiling: --tile auto (default) picks the largest tile that fits in memory and does not tile an
image that fits whole; overlapping tiles are blended with smooth weights (docs/upscale.md shows
how close tiled and whole-image outputs are for each model).
"""

GLOB_CHARS = set("*?[")
AUTO_FORMAT_BY_SUFFIX = {".jpg": "jpg", ".jpeg": "jpg", ".jpe": "jpg", ".png": "png", ".webp": "webp",
                         ".bmp": "bmp", ".tif": "tiff", ".tiff": "tiff"}


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "upscale",
        help="upscale images (files, folders, globs)",
        description="Upscale images with a lightsr model: robust to every common image kind, tiled, memory-bounded.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="*", metavar="INPUT", help="image files, folders or glob patterns (quote globs)")
    p.add_argument("-o", "--output", metavar="OUTDIR", help="output folder (created if missing; --demo: default lightsr-demo)")
    p.add_argument("--demo", action="store_true",
                   help="upscale the bundled sample image (CC0) and write a side-by-side comparison with bicubic")
    p.add_argument("--model", default=None, help="model name (default: lightsr.pretrained.DEFAULT_MODEL; with --weights: what the file holds)")
    p.add_argument("--scale", type=int, default=None, choices=(2, 3, 4), help="upscaling factor (default 4, or the weights' scale)")
    p.add_argument("--weights", default=None, metavar="FILE", help="weights file: lightsr .safetensors or a BasicSR .pth (params / params_ema), or an http(s):// URL (downloaded once, cached; append #sha256=<hex> to verify)")
    p.add_argument("--tile", default="auto", help="tile size in input pixels, 'auto' (from free memory) or 0 (whole image); default auto")
    p.add_argument("--tile-overlap", type=int, default=32, metavar="PIXELS", help="minimum overlap of neighbouring tiles (default 32)")
    p.add_argument("--precision", default="fp32", choices=("fp32", "bf16", "fp16"), help="fp32 (default), bf16 (CPU, CUDA) or fp16 (CUDA only)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default auto: CUDA when available")
    p.add_argument("--suffix", default="_x{scale}", help="added to each output name; {scale} is replaced (default _x{scale})")
    p.add_argument("--format", default="auto", choices=("auto", "png", "jpg", "jpeg", "webp", "bmp", "tiff"),
                   help="output format (default auto: same as the input; PNG for other inputs)")
    p.add_argument("--quality", type=int, default=95, help="JPEG / WebP quality (default 95)")
    p.add_argument("--alpha", default="bicubic", choices=("bicubic", "model"), help="how alpha channels are upscaled (default bicubic)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs (default: keep them and skip)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads for PyTorch (default: PyTorch's choice)")
    p.add_argument("--recursive", "-r", action="store_true", help="descend into sub-folders (and ** in globs)")
    p.add_argument("--max-pixels", type=float, default=None, metavar="N",
                   help="refuse inputs larger than N pixels (decompression-bomb guard; default about 179 million)")
    p.add_argument("--max-memory", type=float, default=None, metavar="GIB",
                   help="memory for one tile's activations, in GiB (default: 40%% of free RAM up to 2 GiB; 80%% of free GPU memory)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress bars and no per-image lines")
    return p


@dataclass
class Job:
    source: Path
    rel: Path  # relative output location (folder structure kept for folder inputs)


def _is_hidden(path: Path) -> bool:
    return path.name.startswith(".")


def collect_inputs(inputs: list[str], recursive: bool, outdir: Path) -> tuple[list[Job], list[tuple[str, str]]]:
    """Expand files / folders / globs into jobs; returns (jobs, [(input, reason)] for inputs that match nothing)."""
    jobs: list[Job] = []
    missing: list[tuple[str, str]] = []
    seen: set[Path] = set()
    out_resolved = outdir.resolve()

    def add(path: Path, rel: Path) -> None:
        key = path.resolve()
        if key in seen:
            return
        seen.add(key)
        jobs.append(Job(path, rel))

    for item in inputs:
        path = Path(item)
        if path.is_dir():
            if recursive:
                for root, dirs, files in os.walk(path):
                    root_p = Path(root)
                    dirs[:] = sorted(d for d in dirs if not d.startswith(".") and (root_p / d).resolve() != out_resolved)
                    for name in sorted(files):
                        f = root_p / name
                        if not _is_hidden(f):
                            add(f, f.relative_to(path))
            else:
                for f in sorted(path.iterdir()):
                    if f.is_file() and not _is_hidden(f):
                        add(f, Path(f.name))
        elif path.exists():
            add(path, Path(path.name))
        elif GLOB_CHARS & set(item):
            matches = sorted(glob.glob(item, recursive=recursive))
            files = [Path(m) for m in matches if Path(m).is_file() and not _is_hidden(Path(m))]
            if not files:
                missing.append((item, "no file matches this pattern"))
            for f in files:
                add(f, Path(f.name))
        else:
            missing.append((item, "no such file or folder"))
    return jobs, missing


def _auto_format(source: Path) -> str:
    return AUTO_FORMAT_BY_SUFFIX.get(source.suffix.lower(), "png")


def _output_path(outdir: Path, job: Job, suffix: str, fmt: str) -> Path:
    from lightsr.inference.io import FORMATS

    ext = FORMATS[fmt][1]
    if fmt == "jpg" and job.source.suffix.lower() == ".jpeg":
        ext = ".jpeg"
    if fmt == "tiff" and job.source.suffix.lower() == ".tiff":
        ext = ".tiff"
    return outdir / job.rel.parent / f"{job.rel.stem}{suffix}{ext}"


def run(args) -> int:
    from tqdm import tqdm

    from lightsr.inference.io import DEFAULT_MAX_PIXELS, FORMATS, ImageError, normalise_format, read_image, write_image

    quiet = args.quiet
    if not args.inputs and not args.demo:
        print("lightsr upscale: error: give INPUT files, folders or globs (or --demo)", file=sys.stderr)
        return 2
    if not args.output and not args.demo:
        print("lightsr upscale: error: -o OUTDIR is required", file=sys.stderr)
        return 2

    def say(msg: str, err: bool = False) -> None:
        tqdm.write(msg, file=sys.stderr if err else sys.stdout)

    def usage_error(msg: str) -> int:
        print(f"lightsr upscale: error: {msg}", file=sys.stderr)
        return 2

    if args.threads is not None:
        if args.threads < 1:
            return usage_error("--threads must be >= 1")
        import torch

        torch.set_num_threads(args.threads)
    tile = args.tile
    if tile != "auto":
        try:
            tile = int(tile)
        except ValueError:
            return usage_error(f"--tile must be 'auto', 0 or a size in pixels, not {tile!r}")
        if tile != 0 and tile < 16:
            return usage_error("--tile must be 0 (whole image) or at least 16 pixels")
    if args.tile_overlap < 0:
        return usage_error("--tile-overlap must be >= 0")
    if not 1 <= args.quality <= 100:
        return usage_error("--quality must be between 1 and 100")
    if args.demo:
        return _run_demo(args, tile)
    max_pixels = int(args.max_pixels) if args.max_pixels else DEFAULT_MAX_PIXELS
    outdir = Path(args.output)
    if outdir.exists() and not outdir.is_dir():
        return usage_error(f"-o {outdir}: exists and is not a folder")

    jobs, missing = collect_inputs(args.inputs, args.recursive, outdir)
    failures = 0
    for item, reason in missing:
        print(f"error: {item}: {reason}", file=sys.stderr)
        failures += 1
    if not jobs:
        print("lightsr upscale: no input images found", file=sys.stderr)
        return 1

    # model (after input discovery: a typo in a path should not cost a model load)
    from lightsr import CheckpointError
    from lightsr.inference import Upscaler, WeightsMissing

    warned: set[str] = set()

    def warn(msg: str) -> None:
        if msg not in warned:  # the same warning once per run
            warned.add(msg)
            say(f"warning: {msg}", err=True)

    try:
        upscaler = Upscaler(
            args.model, args.scale, weights=args.weights, tile=tile, tile_overlap=args.tile_overlap,
            precision=args.precision, device=args.device, alpha=args.alpha,
            max_memory=int(args.max_memory * (1 << 30)) if args.max_memory else None, warn=warn,
        )
    except (CheckpointError, WeightsMissing, ValueError, KeyError, OSError) as exc:
        return usage_error(str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__)
    scale = upscaler.scale
    suffix = args.suffix.replace("{scale}", str(scale))
    fmt_arg = None if args.format == "auto" else normalise_format(args.format)
    config = getattr(upscaler.model, "lightsr_config", {})
    if not quiet:
        source = getattr(upscaler.model, "lightsr_source", args.weights or "module")
        say(f"lightsr upscale: {config.get('name', type(upscaler.model).__name__)} x{scale} ({source}) on "
            f"{upscaler.device} {upscaler.runner.precision}, {len(jobs)} input(s) -> {outdir}/")

    inputs_resolved = {j.source.resolve() for j in jobs}
    claimed: dict[Path, Path] = {}
    written = skipped = 0
    bar = tqdm(jobs, desc="images", unit="img", disable=quiet or None, file=sys.stderr, dynamic_ncols=True)
    for job in bar:
        src = job.source
        bar.set_postfix_str(src.name[-30:], refresh=False)

        def fail(reason: str) -> None:
            nonlocal failures
            failures += 1
            say(f"error: {src}: {reason}", err=True)

        def unusable(out_path: Path) -> bool:
            """True (and reported) when ``out_path`` must not be written: an input, taken, or existing."""
            nonlocal skipped
            if out_path.resolve() in inputs_resolved:
                fail(f"output {out_path} would overwrite an input file (choose another -o or --suffix)")
            elif out_path in claimed:
                fail(f"same output name {out_path} as {claimed[out_path]} (rename one or use --suffix)")
            elif out_path.exists() and not args.overwrite:
                skipped += 1
                if not quiet:
                    say(f"skip: {out_path} exists (use --overwrite to replace it)")
            else:
                return False
            return True

        fmt = fmt_arg or _auto_format(src)
        if unusable(_output_path(outdir, job, suffix, fmt)):  # checked before reading, and again below
            continue
        t0 = time.perf_counter()
        try:
            data = read_image(src, max_pixels=max_pixels)
        except ImageError as exc:
            fail(str(exc))
            continue
        for note in data.notes:
            say(f"note: {src}: {note}", err=True)
        # formats that cannot hold what the image has
        _, _, alpha_ok, deep_ok = FORMATS[fmt]
        if data.has_alpha and not alpha_ok:
            say(f"note: {src}: {fmt.upper()} has no alpha channel: writing PNG instead", err=True)
            fmt = "png"
        elif data.bits > 8 and not deep_ok:
            say(f"note: {src}: {fmt.upper()} holds 8 bits per sample: the {data.bits}-bit result is reduced to 8 bits", err=True)
        out_path = _output_path(outdir, job, suffix, fmt)  # the format may have changed
        if unusable(out_path):
            continue
        h, w = data.pixels.shape[:2]
        need = h * w * scale * scale * data.pixels.shape[2] * data.pixels.itemsize
        from lightsr.inference.runner import available_memory
        import torch

        free = available_memory(torch.device("cpu"))
        if need > 0.8 * free:
            fail(f"the {w * scale}x{h * scale} output needs {need / 2**30:.1f} GiB but only {free / 2**30:.1f} GiB of memory is free")
            continue
        tile_bar = None

        def on_tile(done: int, total: int) -> None:
            nonlocal tile_bar
            if quiet or total <= 1:
                return
            if tile_bar is None:
                tile_bar = tqdm(total=total, desc="  tiles", unit="tile", leave=False, file=sys.stderr,
                                disable=None, position=1, dynamic_ncols=True)
            tile_bar.update(done - tile_bar.n)

        try:
            try:
                result = upscaler.upscale_image(data, on_tile=on_tile)
            finally:
                if tile_bar is not None:
                    tile_bar.close()
            del data
            write_image(out_path, result, fmt, quality=args.quality, overwrite=args.overwrite)
        except FileExistsError:
            skipped += 1
            say(f"skip: {out_path} appeared while upscaling (use --overwrite to replace it)")
            continue
        except ImageError as exc:
            fail(f"cannot write {out_path}: {exc}")
            continue
        except MemoryError as exc:
            fail(f"out of memory ({exc})" if str(exc) else "out of memory")
            continue
        except OSError as exc:
            fail(f"cannot write {out_path}: {exc.strerror or exc}")
            continue
        except RuntimeError as exc:
            text = str(exc).strip().splitlines()
            fail(f"the model failed: {text[0] if text else type(exc).__name__}")
            continue
        claimed[out_path] = src
        written += 1
        if not quiet:
            tiles = f", tiles {upscaler.last_tile}px" if upscaler.last_tile else ""
            say(f"{src} -> {out_path} ({w}x{h} -> {w * scale}x{h * scale}, {time.perf_counter() - t0:.1f} s{tiles})")
    bar.close()
    parts = [f"{written} written to {outdir}/"]
    if skipped:
        parts.append(f"{skipped} skipped (output exists)")
    if failures:
        parts.append(f"{failures} failed")
    print("lightsr upscale: " + ", ".join(parts), file=sys.stderr if failures else sys.stdout)
    return 1 if failures else 0


def _run_demo(args, tile) -> int:
    if args.inputs:
        print("lightsr upscale: error: --demo takes no INPUT (it upscales the bundled sample)", file=sys.stderr)
        return 2
    from lightsr import CheckpointError
    from lightsr.inference import WeightsMissing
    from lightsr.inference.demo import SAMPLE, run_demo

    outdir = Path(args.output or "lightsr-demo")
    t0 = time.perf_counter()
    try:
        image, figure = run_demo(
            outdir, model=args.model, scale=args.scale, device=args.device, threads=args.threads,
            weights=args.weights, tile=tile, tile_overlap=args.tile_overlap, precision=args.precision,
            max_memory=int(args.max_memory * (1 << 30)) if args.max_memory else None,
        )
    except (CheckpointError, WeightsMissing, ValueError, KeyError, OSError) as exc:
        print(f"lightsr upscale: error: {str(exc).strip().splitlines()[0]}", file=sys.stderr)
        return 2
    print(f"lightsr upscale --demo: {SAMPLE.name} -> {image.name} in {time.perf_counter() - t0:.1f} s")
    print(f"  upscaled image:        {image}")
    print(f"  side-by-side figure:   {figure}")
    return 0
