"""``lightsr upscale``: upscale image and video files, folders and globs (one process, or many under torchrun)."""
from __future__ import annotations

import argparse
import glob
import os
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from lightsr.cli.errors import UsageError, debug_enabled, one_line
from lightsr.cli.video_args import (VIDEO_EPILOG, add_video_arguments, check_video_arguments, is_video_path,
                                    upscale_video_file, upscale_video_shared, video_output_path)

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
    if any image failed, 2 for a usage error (e.g. no weights); --debug adds tracebacks.
  * a model output holding NaN/Inf (broken weights) is an error, never a written image.
  * outputs of earlier runs (<name><suffix>.<ext> inside OUTDIR, e.g. a_x4.png when OUTDIR is the
    input folder) are never taken as inputs; .part files left by a killed run are removed.

progress: a bar on a terminal; otherwise (logs, pipes) a line every few seconds with the elapsed
time and an ETA, also while one large image is upscaled in a single pass.

Tiling: --tile auto (default) picks the largest tile that fits in memory and does not tile an
image that fits whole; overlapping tiles are blended with smooth weights (docs/upscale.md shows
how close tiled and whole-image outputs are for each model).

many processes, GPUs or machines (docs/ecosystem.md):
  torchrun --nproc_per_node 4 -m lightsr upscale photos/ -o out/ -r
  each input is upscaled by one process (a video's segments are shared by all), rank 0 prints
  the summary, and the exit code is 1 if any process failed; on the CPU the cores and the
  --tile auto memory are split among a machine's processes, on CUDA each takes cuda:LOCAL_RANK.
"""

GLOB_CHARS = set("*?[")
AUTO_FORMAT_BY_SUFFIX = {".jpg": "jpg", ".jpeg": "jpg", ".jpe": "jpg", ".png": "png", ".webp": "webp",
                         ".bmp": "bmp", ".tif": "tiff", ".tiff": "tiff"}


def add_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "upscale",
        help="upscale images and videos (files, folders, globs)",
        description="Upscale images and videos with a lightsr model: robust to every common image kind, tiled, "
                    "memory-bounded.",
        epilog=EPILOG + "\n" + VIDEO_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("inputs", nargs="*", metavar="INPUT",
                   help="image or video files, folders or glob patterns (quote globs)")
    p.add_argument("-o", "--output", metavar="OUTDIR", help="output folder (created if missing; --demo: default lightsr-demo)")
    p.add_argument("--demo", action="store_true",
                   help="upscale the bundled sample image (CC0) and write a side-by-side comparison with bicubic")
    p.add_argument("--model", default=None, help=f"model name (default: {_default_model()}; with --weights: what the file holds)")
    p.add_argument("--scale", type=int, default=None, choices=(2, 3, 4), help="upscaling factor (default 4, or the weights' scale)")
    p.add_argument("--weights", default=None, metavar="FILE", help="weights file: lightsr .safetensors or a BasicSR .pth (params / params_ema), or an http(s):// URL (downloaded once, cached; append #sha256=<hex> to verify)")
    p.add_argument("--tile", default="auto", help="tile size in input pixels, 'auto' (from free memory) or 0 (whole image); default auto")
    p.add_argument("--tile-overlap", type=int, default=32, metavar="PIXELS", help="minimum overlap of neighbouring tiles (default 32)")
    p.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                   help="auto (default): bf16 on CPUs with native bf16 (AVX512-BF16 / AMX) for weights measured to "
                        "lose <= 0.02 dB in it, else fp32; or fp32, bf16 (CPU, CUDA), fp16 (CUDA only)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"), help="default auto: CUDA when available")
    p.add_argument("--suffix", default="_x{scale}", help="added to each output name; {scale} is replaced (default _x{scale})")
    p.add_argument("--format", default="auto", choices=("auto", "png", "jpg", "jpeg", "webp", "bmp", "tiff"),
                   help="output format (default auto: same as the input; PNG for other inputs)")
    p.add_argument("--quality", type=int, default=95, help="JPEG / WebP quality (default 95)")
    p.add_argument("--alpha", default="bicubic", choices=("bicubic", "model"), help="how alpha channels are upscaled (default bicubic)")
    p.add_argument("--cuda-graphs", action="store_true",
                   help="CUDA: replay each tile shape's forward from a CUDA graph (fewer kernel launches)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs (default: keep them and skip)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads (default: the cores not already busy, from the load average; docs/speed.md)")
    p.add_argument("--recursive", "-r", action="store_true", help="descend into sub-folders (and ** in globs)")
    p.add_argument("--max-pixels", type=float, default=None, metavar="N",
                   help="refuse inputs larger than N pixels (decompression-bomb guard; default about 179 million)")
    p.add_argument("--max-memory", type=float, default=None, metavar="GIB",
                   help="memory for one tile's activations, in GiB (default: 40%% of free RAM up to 2 GiB; 80%% of free GPU memory)")
    p.add_argument("--max-download", default=None, metavar="SIZE",
                   help="largest --weights download accepted, e.g. 500M or 2G (default 1G)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress (bars, lines, downloads) and no per-image lines")
    add_video_arguments(p)
    return p


def _default_model() -> str:
    from lightsr.pretrained import DEFAULT_MODEL

    return DEFAULT_MODEL


@dataclass
class Job:
    source: Path
    rel: Path  # relative output location (folder structure kept for folder inputs)


@dataclass
class Settings:
    """The validated command line."""

    tile: int | str
    outdir: Path
    max_pixels: int
    max_memory: int | None
    max_download: int | None
    quiet: bool


@dataclass
class Tally:
    """What happened to the batch."""

    written: int = 0
    skipped: int = 0
    failures: int = 0
    claimed: dict = field(default_factory=dict)  # output path -> the input that wrote it


def _is_hidden(path: Path) -> bool:
    return path.name.startswith(".")


def earlier_output_pattern(suffix: str) -> re.Pattern | None:
    """Stems that this tool's outputs have with ``--suffix`` (``{scale}`` = any number), or None for ""."""
    if not suffix:
        return None
    parts = suffix.split("{scale}")
    return re.compile(".*" + r"\d+".join(re.escape(p) for p in parts) + "$")


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder)
        return True
    except ValueError:
        return False


def collect_inputs(inputs: list[str], recursive: bool, outdir: Path, suffix: str = "_x{scale}",
                   ) -> tuple[list[Job], list[tuple[str, str]], list[Path]]:
    """Expand files / folders / globs into jobs.

    Returns ``(jobs, [(input, reason)] for inputs that match nothing, earlier outputs skipped)``.
    Files found by a folder scan or a glob inside ``outdir`` whose name is ``<stem><suffix>`` are
    outputs of an earlier run and are not inputs; a sub-folder that is ``outdir`` is not scanned.
    Files named explicitly are always inputs."""
    jobs: list[Job] = []
    missing: list[tuple[str, str]] = []
    earlier: list[Path] = []
    seen: set[Path] = set()
    out_resolved = outdir.resolve()
    pattern = earlier_output_pattern(suffix)

    def add(path: Path, rel: Path, found: bool = True) -> None:
        key = path.resolve()
        if key in seen:
            return
        seen.add(key)
        if found and pattern is not None and _inside(path, out_resolved) and pattern.fullmatch(path.stem):
            earlier.append(path)
            return
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
            add(path, Path(path.name), found=False)
        elif GLOB_CHARS & set(item):
            matches = sorted(glob.glob(item, recursive=recursive))
            files = [Path(m) for m in matches if Path(m).is_file() and not _is_hidden(Path(m))]
            if not files:
                missing.append((item, "no file matches this pattern"))
            for f in files:
                add(f, Path(f.name))
        else:
            missing.append((item, "no such file or folder"))
    return jobs, missing, earlier


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


class Console:
    """Where lines go: results to stdout, problems to stderr, nothing but errors with --quiet."""

    def __init__(self, quiet: bool):
        self.quiet = quiet
        self.bar = None  # the images Progress, so that lines do not break a terminal bar
        self._warned: set[str] = set()

    def say(self, msg: str, err: bool = False) -> None:
        stream = sys.stderr if err else sys.stdout
        if self.bar is not None:
            self.bar.write(msg, stream)
        else:
            print(msg, file=stream, flush=True)

    def info(self, msg: str) -> None:
        if not self.quiet:
            self.say(msg)

    def note(self, msg: str) -> None:
        if not self.quiet:
            self.say(f"note: {msg}", err=True)

    def warn(self, msg: str) -> None:
        if msg not in self._warned:  # the same warning once per run
            self._warned.add(msg)
            self.say(f"warning: {msg}", err=True)

    def error(self, where: Path | str, reason: str) -> None:
        self.say(f"error: {where}: {one_line(reason)}", err=True)


# ------------------------------------------------------------------------------------------------
# validation
# ------------------------------------------------------------------------------------------------
def validate(args) -> Settings:
    """Check the command line (before anything is loaded); :class:`UsageError` on a bad value."""
    from lightsr.inference.io import DEFAULT_MAX_PIXELS
    from lightsr.pretrained import parse_size

    if not args.inputs and not args.demo:
        raise UsageError("give INPUT files, folders or globs (or --demo)")
    if args.demo and args.inputs:
        raise UsageError("--demo takes no INPUT (it upscales the bundled sample)")
    if not args.output and not args.demo:
        raise UsageError("-o OUTDIR is required")
    if args.threads is not None and args.threads < 1:
        raise UsageError("--threads must be >= 1")
    tile = args.tile
    if tile != "auto":
        try:
            tile = int(tile)
        except ValueError:
            raise UsageError(f"--tile must be 'auto', 0 or a size in pixels, not {tile!r}") from None
        if tile != 0 and tile < 16:
            raise UsageError("--tile must be 0 (whole image) or at least 16 pixels")
    if args.tile_overlap < 0:
        raise UsageError("--tile-overlap must be >= 0")
    if not 1 <= args.quality <= 100:
        raise UsageError("--quality must be between 1 and 100")
    problem = check_video_arguments(args)
    if problem:
        raise UsageError(problem)
    if args.max_pixels is not None and not args.max_pixels > 0:
        raise UsageError("--max-pixels must be positive")
    if args.max_memory is not None and not args.max_memory > 0:
        raise UsageError("--max-memory must be positive (GiB)")
    try:
        max_download = parse_size(args.max_download) if args.max_download is not None else None
    except ValueError as exc:
        raise UsageError(f"--max-download: {exc}") from None
    outdir = Path(args.output or "lightsr-demo")
    if outdir.exists() and not outdir.is_dir():
        raise UsageError(f"-o {outdir}: exists and is not a folder")
    setup_cpu(args.threads)
    return Settings(tile=tile, outdir=outdir, max_pixels=int(args.max_pixels) if args.max_pixels else DEFAULT_MAX_PIXELS,
                    max_memory=int(args.max_memory * (1 << 30)) if args.max_memory else None,
                    max_download=max_download, quiet=args.quiet)


def setup_cpu(threads: int | None) -> int:
    """The CLI's CPU set-up: ``--threads`` or the policy's default (the cores not already busy), set
    and returned; and glibc malloc tuned to keep freed memory (``lightsr.allocator``: without it
    every layer's activations are fresh, page-faulting memory; 3-4% of an upscale here)."""
    import torch

    from lightsr.allocator import tune_malloc
    from lightsr.inference.policy import default_threads

    tune_malloc()
    n = threads if threads is not None else default_threads()
    torch.set_num_threads(n)
    return n


def _threads_note(upscaler) -> str:
    import torch

    return f", {torch.get_num_threads()} thread(s)" if upscaler.device.type == "cpu" else ""


def _resolve_weights(args, settings: Settings):
    """A local path for --weights (downloads honour --max-download and --quiet), or None."""
    if args.weights is None or str(args.weights) == "default":
        return args.weights
    from lightsr.pretrained import resolve_weights

    if args.model is not None:
        from lightsr.models import get_spec

        get_spec(args.model)  # a mistyped name is reported as such before any download
    return resolve_weights(args.weights, progress=not settings.quiet, max_bytes=settings.max_download)


def _as_usage_error(exc: Exception) -> Exception:
    """A ValueError / missing file from loading (e.g. --device cuda without a GPU) is a usage error;
    lightsr's own errors keep their type (and exit code)."""
    from lightsr.cli.errors import user_errors

    return exc if isinstance(exc, user_errors()) else UsageError(one_line(exc))


def load_upscaler(args, settings: Settings, console: Console, device: str | None = None,
                  max_memory: int | None = None):
    """The model (``device`` / ``max_memory``: this process's, under torchrun; default the command line's)."""
    from lightsr.inference import Upscaler

    try:
        return Upscaler(
            args.model, args.scale, weights=_resolve_weights(args, settings), tile=settings.tile,
            tile_overlap=args.tile_overlap, precision=args.precision, device=device or args.device, alpha=args.alpha,
            max_memory=settings.max_memory if max_memory is None else max_memory, warn=console.warn,
            cuda_graphs=getattr(args, "cuda_graphs", False),
        )
    except (ValueError, TypeError, FileNotFoundError) as exc:
        raise _as_usage_error(exc) from None


# ------------------------------------------------------------------------------------------------
# the batch
# ------------------------------------------------------------------------------------------------
class Batch:
    """Upscales jobs one by one; every problem with one image is one line, and the batch goes on."""

    def __init__(self, args, settings: Settings, upscaler, console: Console, inputs: list[Job]):
        from lightsr.inference.io import normalise_format

        self.args, self.settings, self.up, self.console = args, settings, upscaler, console
        self.scale = upscaler.scale
        self.suffix = args.suffix.replace("{scale}", str(self.scale))
        self.fmt = None if args.format == "auto" else normalise_format(args.format)
        self.inputs = {j.source.resolve() for j in inputs}
        self.tally = Tally()
        self.cleaned: set[Path] = set()

    def fail(self, src: Path, reason: str) -> None:
        self.tally.failures += 1
        self.console.error(src, reason)

    def _unusable(self, src: Path, out_path: Path) -> bool:
        """True (and reported) when ``out_path`` must not be written: an input, taken, or existing."""
        if out_path.resolve() in self.inputs:
            self.fail(src, f"output {out_path} would overwrite an input file (choose another -o or --suffix)")
        elif out_path in self.tally.claimed:
            self.fail(src, f"same output name {out_path} as {self.tally.claimed[out_path]} (rename one or use --suffix)")
        elif out_path.exists() and not self.args.overwrite:
            self.tally.skipped += 1
            self.console.info(f"skip: {out_path} exists (use --overwrite to replace it)")
        else:
            return False
        return True

    def _clean(self, folder: Path) -> None:
        """Remove the .part files an interrupted run left in an output folder (once per folder)."""
        from lightsr.inference.partfiles import remove_stale_parts

        if folder in self.cleaned:
            return
        self.cleaned.add(folder)
        removed = remove_stale_parts(folder)
        if removed:
            self.console.note(f"removed {len(removed)} unfinished .part file(s) of an interrupted run in {folder}")

    def _memory_problem(self, data) -> str | None:
        import torch

        from lightsr.inference.runner import available_memory

        h, w, c = data.pixels.shape
        need = h * w * self.scale ** 2 * c * data.pixels.itemsize
        free = available_memory(torch.device("cpu"))
        usable = 0.8 * free
        if need <= usable:
            return None
        return (f"the {w * self.scale}x{h * self.scale} output needs {need / 2**30:.1f} GiB of memory, more than the "
                f"{usable / 2**30:.1f} GiB lightsr may use (80% of the {free / 2**30:.1f} GiB available now)")

    def _output_format(self, src: Path, data) -> str:
        from lightsr.inference.io import FORMATS

        fmt = self.fmt or _auto_format(src)
        _, _, alpha_ok, deep_ok = FORMATS[fmt]
        if data.has_alpha and not alpha_ok:
            self.console.say(f"note: {src}: {fmt.upper()} has no alpha channel: writing PNG instead", err=True)
            return "png"
        if data.bits > 8 and not deep_ok:
            self.console.say(f"note: {src}: {fmt.upper()} holds 8 bits per sample: the {data.bits}-bit result is "
                             f"reduced to 8 bits", err=True)
        return fmt

    def process(self, job: Job) -> None:
        src = job.source
        if is_video_path(src):
            return self._process_video(job)
        if self._unusable(src, _output_path(self.settings.outdir, job, self.suffix, self.fmt or _auto_format(src))):
            return  # checked before reading, and again once the format is known
        try:
            self._process(job)
        except KeyboardInterrupt:
            raise
        except Exception as exc:  # noqa: BLE001 - one image's problem is one line; the batch goes on
            if debug_enabled():
                import traceback

                traceback.print_exc()
            self.fail(src, _reason(exc))

    def _video_done(self, ok: bool, src: Path, out_path: Path) -> None:
        if ok:
            self.tally.claimed[out_path] = src
            self.tally.written += 1
        else:
            self.tally.failures += 1

    def _process_video(self, job: Job) -> None:
        """A video: streamed through the model by lightsr.video (one line per problem, as for images)."""
        src = job.source
        out_path = video_output_path(self.settings.outdir, job.rel, self.suffix, self.args)
        if self._unusable(src, out_path):
            return
        self._clean(out_path.parent)
        self._video_done(upscale_video_file(src, out_path, self.args, self.up, say=self.console.info,
                                            err=lambda msg: self.console.say(msg, err=True)), src, out_path)

    def process_shared_video(self, job: Job, pj) -> None:
        """A video that every rank of a torchrun job works on (its segments shared): all ranks call
        this for the same jobs in the same order; rank 0 decides, counts and speaks."""
        src = job.source
        out_path = video_output_path(self.settings.outdir, job.rel, self.suffix, self.args)
        if not pj.broadcast(not self._unusable(src, out_path) if pj.is_main else None):
            return
        if pj.is_main:
            self._clean(out_path.parent)
        ok = upscale_video_shared(src, out_path, self.args, self.up, pj, say=self.console.info,
                                  err=lambda msg: self.console.say(msg, err=True))
        if pj.is_main:
            self._video_done(ok, src, out_path)

    def _process(self, job: Job) -> None:
        from lightsr.inference.io import ImageError, read_image, write_image

        src, t0 = job.source, time.perf_counter()
        try:
            data = read_image(src, max_pixels=self.settings.max_pixels)
        except ImageError as exc:
            return self.fail(src, str(exc))
        for note in data.notes:
            self.console.say(f"note: {src}: {note}", err=True)
        fmt = self._output_format(src, data)
        out_path = _output_path(self.settings.outdir, job, self.suffix, fmt)
        if self._unusable(src, out_path):
            return
        problem = self._memory_problem(data)
        if problem:
            return self.fail(src, problem)
        result = self._upscale(src, data)
        h, w = data.pixels.shape[:2]
        del data
        self._clean(out_path.parent)
        try:
            write_image(out_path, result, fmt, quality=self.args.quality, overwrite=self.args.overwrite)
        except FileExistsError:
            self.tally.skipped += 1
            self.console.info(f"skip: {out_path} appeared while upscaling (use --overwrite to replace it)")
            return
        except ImageError as exc:
            return self.fail(src, f"cannot write {out_path}: {exc}")
        except OSError as exc:
            return self.fail(src, f"cannot write {out_path}: {exc.strerror or one_line(exc)}")
        self.tally.claimed[out_path] = src
        self.tally.written += 1
        tiles = f", tiles {self.up.last_tile}px" if self.up.last_tile else ""
        self.console.info(f"{src} -> {out_path} ({w}x{h} -> {w * self.scale}x{h * self.scale}, "
                          f"{time.perf_counter() - t0:.1f} s{tiles})")

    def _upscale(self, src: Path, data):
        """The model on one image, with progress: tiles as they finish, or an estimate for one pass."""
        from lightsr.inference.progress import Progress

        h, w = data.pixels.shape[:2]
        quiet = self.settings.quiet
        expected = None
        if not quiet and self.up._tile_for(h, w) is None and h * w >= LONG_IMAGE_PIXELS:
            expected = self.up.estimate_seconds(h, w)  # one pass reports nothing until it ends
        progress = Progress(None, f"  {src.name}", unit="tile", enabled=not quiet, expected_s=expected, leave=False)

        def on_tile(done: int, total: int) -> None:
            if total > 1:
                progress.total = total
                progress.set(done)

        try:
            return self.up.upscale_image(data, on_tile=on_tile)
        finally:
            progress.close()


LONG_IMAGE_PIXELS = 512 * 512  # whole-image passes from this size on get an estimated ETA


def _reason(exc: BaseException) -> str:
    """One line for an exception raised while upscaling one image."""
    from lightsr.inference.runner import NonFiniteOutput

    if isinstance(exc, MemoryError):
        return f"out of memory ({one_line(exc)})" if str(exc) else "out of memory"
    if isinstance(exc, NonFiniteOutput):
        return one_line(exc)
    if isinstance(exc, RuntimeError):
        return f"the model failed: {one_line(exc)}"
    if isinstance(exc, OSError):
        return f"{exc.strerror or one_line(exc)}"
    return f"{type(exc).__name__}: {one_line(exc)}"


def add_tallies(tallies: list[Tally]) -> Tally:
    """The tallies of every rank, added up."""
    total = Tally()
    for t in tallies:
        total.written += t.written
        total.skipped += t.skipped
        total.failures += t.failures
        total.claimed.update(t.claimed)
    return total


def summary(tally: Tally, outdir: Path, earlier: int) -> int:
    parts = [f"{tally.written} written to {outdir}/"]
    if tally.skipped or earlier:
        parts.append(f"{tally.skipped + earlier} skipped ("
                     + ", ".join(t for t in (f"{tally.skipped} output exists" if tally.skipped else "",
                                             f"{earlier} earlier output(s)" if earlier else "") if t) + ")")
    if tally.failures:
        parts.append(f"{tally.failures} failed")
    print("lightsr upscale: " + ", ".join(parts), file=sys.stderr if tally.failures else sys.stdout)
    return 1 if tally.failures else 0


# ------------------------------------------------------------------------------------------------
def run(args) -> int:
    from lightsr import parallel

    settings = validate(args)
    if args.demo:
        return _run_demo(args, settings)
    try:
        pj = parallel.start(args.device, threads=args.threads)  # one process, or this rank under torchrun
    except ValueError as exc:  # e.g. --device cuda without a GPU
        raise UsageError(one_line(exc)) from None
    with pj:
        return _run_batch(args, settings, pj)


def _list_inputs(args, settings: Settings, console: Console, pj):
    """Rank 0 lists the inputs (and reports what matched nothing) for every rank."""
    listing = collect_inputs(args.inputs, args.recursive, settings.outdir, args.suffix) if pj.is_main else None
    jobs, missing, earlier = pj.broadcast(listing)
    if pj.is_main:
        for item, reason in missing:
            console.error(item, reason)
        if earlier:
            more = f" and {len(earlier) - 1} more" if len(earlier) > 1 else ""
            console.info(f"skip: {earlier[0]}{more}: output(s) of an earlier run (in -o {settings.outdir}, named "
                         f"*{args.suffix}), never taken as inputs")
        if not jobs:
            print("lightsr upscale: no input images found" + (" (only outputs of earlier runs)" if earlier else ""),
                  file=sys.stderr)
    return jobs, missing, earlier


def split_jobs(jobs: list[Job], pj, preview: bool = False) -> tuple[list[Job], list[Job]]:
    """``(this rank's jobs, videos every rank shares)``. One process: all jobs, no shared video.

    Under torchrun, videos (not previews) are shared by all ranks, segment by segment; the other
    inputs are sharded by output stem, so that inputs that could claim the same output name (a.jpg,
    a.png) fall to the same rank and the same-name check works as in one process."""
    if pj.world_size == 1:
        return list(jobs), []
    shared = [j for j in jobs if not preview and is_video_path(j.source)]
    groups: dict[str, list[Job]] = {}
    for j in jobs:
        if preview or not is_video_path(j.source):
            groups.setdefault(str(j.rel.parent / j.rel.stem), []).append(j)
    return [j for key in pj.shard(groups, key=str) for j in groups[key]], shared


def _memory_budget(settings: Settings, pj) -> int | None:
    """--max-memory, or under torchrun on the CPU the default tile budget split among this machine's processes."""
    if settings.max_memory is not None or pj.info.local_world_size == 1 or pj.device.type != "cpu":
        return settings.max_memory
    from lightsr.inference.runner import default_budget

    return default_budget(pj.device) // pj.info.local_world_size


def _describe(upscaler, settings: Settings, args, n_inputs: int, pj) -> str:
    config = getattr(upscaler.model, "lightsr_config", {})
    source = getattr(upscaler.model, "lightsr_source", args.weights or "module")
    ranks = f", {pj.world_size} processes" if pj.world_size > 1 else ""
    return (f"lightsr upscale: {config.get('name', type(upscaler.model).__name__)} x{upscaler.scale} ({source}) on "
            f"{upscaler.device} {upscaler.runner.precision}{_threads_note(upscaler)}{ranks}, {n_inputs} input(s) -> "
            f"{settings.outdir}/" + (f" [{upscaler.precision_note}]" if upscaler.precision_note else ""))


def _run_batch(args, settings: Settings, pj) -> int:
    from lightsr.inference.progress import Progress

    console = Console(settings.quiet)
    jobs, missing, earlier = _list_inputs(args, settings, console, pj)
    if not jobs:
        return 1
    # the model after input discovery: a typo in a path should not cost a model load
    upscaler = load_upscaler(args, settings, console, device=str(pj.device), max_memory=_memory_budget(settings, pj))
    batch = Batch(args, settings, upscaler, console, jobs)  # every input: its overwrite guard needs them all
    mine, shared = split_jobs(jobs, pj, bool(args.preview))
    if pj.is_main:
        batch.tally.failures += len(missing)
        console.info(_describe(upscaler, settings, args, len(jobs), pj))
    with Progress(len(mine) + len(shared), "images", unit="img", enabled=pj.is_main and not settings.quiet) as bar:
        console.bar = bar
        for job in mine:
            bar.set_postfix(job.source.name[-30:])
            batch.process(job)
            bar.update()
        for job in shared:
            bar.set_postfix(job.source.name[-30:])
            batch.process_shared_video(job, pj)
            bar.update()
        console.bar = None
    tallies = pj.gather_object(batch.tally)
    if pj.is_main:
        summary(add_tallies(tallies), settings.outdir, len(earlier))
    return pj.finish(batch.tally.failures > 0)


def _run_demo(args, settings: Settings) -> int:
    from lightsr.inference.demo import SAMPLE, run_demo

    t0 = time.perf_counter()
    try:
        image, figure = run_demo(
            settings.outdir, model=args.model, scale=args.scale, device=args.device, threads=args.threads,
            weights=_resolve_weights(args, settings), tile=settings.tile, tile_overlap=args.tile_overlap,
            precision=args.precision, max_memory=settings.max_memory,
        )
    except (ValueError, TypeError, FileNotFoundError) as exc:
        raise _as_usage_error(exc) from None
    print(f"lightsr upscale --demo: {SAMPLE.name} -> {image.name} in {time.perf_counter() - t0:.1f} s")
    print(f"  upscaled image:        {image}")
    print(f"  side-by-side figure:   {figure}")
    return 0
