"""``lightsr eval``: PSNR / SSIM on the benchmark sets, computed as the papers compute them."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

EPILOG = """\
examples:
  # the bicubic rows every paper table starts with (SRCNN/VDSR MATLAB protocol)
  lightsr eval --model bicubic --scale 4 --data ../shared/datasets/benchmark --convention matlab-y

  # a peer baseline from its released checkpoint (published: 32.21 / 28.58 / 27.56 dB)
  lightsr eval --model imdn --weights ../shared/weights/IMDN/IMDN_x4.pth --scale 4 \\
      --data ../shared/datasets/benchmark --sets Set5 Set14 B100

  # one of our models with its shipped weights, TLC off, x8 self-ensemble, SR images saved
  lightsr eval --model dlgsanet_light --scale 4 --data DIR --tlc off --self-ensemble --save-images

  # DLGSANet Table 5: share of positive entries of the SparseGSA attention maps
  lightsr eval --model dlgsanet_light --weights W.pth --scale 4 --data DIR --attention-stats

  # the official DLGSANet/LAMNet configs shave 4 pixels at every scale; NTIRE scores RGB
  lightsr eval --model lamnet --weights W.pth --scale 2 --data DIR --crop-border 4
  lightsr eval --model imdn --weights W.pth --scale 4 --data DIR --sets DIV2K --convention ntire

data layouts found automatically under --data (see docs/evaluation.md):
  <Set>/HR + <Set>/LR_bicubic/X<s>/<name>x<s>.png      EDSR benchmark.tar, SwinIR testsets
  <Set>/GTmod12 + <Set>/LRbicx<s>                      BasicSR
  HR/<Set>/x<s>/<name>_HR_x<s>.png + LR/LRBI/<Set>/x<s>  RCAN, LAMNet
  DIV2K_valid_HR + DIV2K_valid_LR_bicubic/X<s>         DIV2K
  <Set>/*.png (HR only)                                 LR made with MATLAB-exact bicubic, cached
Sets without LR files get theirs from imresize(modcrop(HR, s), 1/s), cached under --cache-dir
(default $LIGHTSR_CACHE or ~/.cache/lightsr); nothing is ever written into the dataset folder.

outputs (in --output, default results/eval/<model>_x<s>): results.md (the table), per_image.csv,
results.json, and sr/<set>/<image>.png with --save-images. Exit status 1 if any image or set failed;
when an image failed (unreadable, NaN/Inf output ...) the table is printed but no result file is
written, so an earlier complete results.md is never replaced by a partial one. Sets with fewer
images than the standard ones (e.g. 25 of Urban100's 100) are labelled as subsets in the tables.
"""


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    from lightsr.data.benchmark import DEFAULT_SETS
    from lightsr.evaluation import CONVENTIONS

    p = sub.add_parser(
        "eval",
        help="PSNR/SSIM on benchmark sets (paper conventions)",
        description="Evaluate a model (or bicubic) on Set5 / Set14 / B100 / Urban100 / Manga109 / DIV2K and "
        "print a paper-style PSNR/SSIM table. SR output is quantised to uint8, scored on BT.601 Y with a "
        "border of `scale` pixels shaved, and averaged per image, as RCAN/BasicSR/SwinIR do.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    m = p.add_argument_group("model")
    m.add_argument("--model", metavar="NAME", help="registered model (lightsr models) or 'bicubic'; "
                   "optional with --weights (recognised from the file)")
    m.add_argument("--weights", metavar="FILE", help="checkpoint (.safetensors or BasicSR/plain .pth), or an "
                   "http(s) URL (optionally #sha256=HEX, downloaded once); default: the weights shipped with "
                   "lightsr for --model, if any")
    m.add_argument("--key", metavar="KEY", help="entry of a .pth to load (params or params_ema; default EMA first)")
    m.add_argument("--scale", type=int, choices=(2, 3, 4), help="SR factor (read from --weights when omitted)")
    m.add_argument("--label", help="name of the model in tables (default: the model name)")
    m.add_argument("--tlc", choices=("on", "off"), help="DLGSANet test-time local converter (default: as the "
                   "weights say: on, as the official evaluation, unless the file's metadata has tlc: false)")
    m.add_argument("--tlc-kernel", type=int, metavar="N", help="DLGSANet TLC window in LR pixels (default 96/72/48)")
    m.add_argument("--self-ensemble", action="store_true", help="x8 geometric self-ensemble (the '+' rows)")
    m.add_argument("--tile", type=int, metavar="N", help="run the model on overlapping NxN LR tiles to bound "
                   "memory (changes numbers slightly; off by default)")
    m.add_argument("--tile-overlap", type=int, default=16, metavar="N", help="tile overlap in LR pixels (16)")
    m.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    m.add_argument("--threads", type=int, metavar="N",
                   help="torch CPU threads (default: the cores not already busy, from the load average)")
    m.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"),
                   help="auto (default): bf16 on CPUs with native bf16 for weights measured to lose <= 0.02 dB "
                        "in it, else fp32 (the papers' numbers); the table says which ran")
    m.add_argument("--max-download", metavar="SIZE", help="largest --weights download accepted, e.g. 500M or 2G "
                   "(default 1G)")

    d = p.add_argument_group("data")
    d.add_argument("--data", metavar="DIR", default=os.environ.get("LIGHTSR_DATA"),
                   help="folder holding the benchmark sets, or one set folder (default $LIGHTSR_DATA)")
    d.add_argument("--sets", nargs="+", metavar="SET", help=f"sets to evaluate (default: those of "
                   f"{' '.join(DEFAULT_SETS)} found under --data; also DIV2K)")
    d.add_argument("--lr-source", choices=("auto", "file", "generate"), default="auto",
                   help="auto: LR files where present, else generated; file: require LR files; "
                   "generate: always make LR from HR with MATLAB-exact bicubic")
    d.add_argument("--mod", type=int, metavar="N", help="modcrop HR to a multiple of N before generating LR "
                   "(default: the scale; 12 = BasicSR GTmod12)")
    d.add_argument("--hr-template", metavar="T", help="HR file stem template, e.g. '{name}_HR_x{scale}'")
    d.add_argument("--lr-template", metavar="T", help="LR file stem template, e.g. '{name}x{scale}' or "
                   "'{name}_LRBI_x{scale}' (like BasicSR filename_tmpl)")
    d.add_argument("--lr-dir", metavar="DIR", help="LR folder (with a single set)")
    d.add_argument("--cache-dir", metavar="DIR", help="cache for generated LR images")
    d.add_argument("--no-cache", action="store_true", help="do not cache generated LR images")
    d.add_argument("--limit", type=int, metavar="N", help="only the first N images of each set (quick checks)")

    c = p.add_argument_group("scoring convention (docs/evaluation.md)")
    c.add_argument("--convention", choices=tuple(CONVENTIONS), default="basicsr",
                   help="basicsr (default; RCAN/BasicSR/SwinIR/DLGSANet/LAMNet), matlab-y (SRCNN/VDSR MATLAB "
                   "protocol; reproduces the published bicubic rows), ntire (RGB, border 4)")
    c.add_argument("--crop-border", type=int, metavar="N", help="pixels shaved per side (default: the scale; "
                   "the official DLGSANet/LAMNet configs use 4)")
    c.add_argument("--rgb", action="store_true", help="score RGB instead of Y")
    c.add_argument("--round-y", choices=("yes", "no"), help="round Y to integers (MATLAB rgb2ycbcr on uint8)")
    c.add_argument("--gray", choices=("rgb", "y"), help="grayscale images (Set14 bridge): rgb = replicate to RGB, "
                   "score like colour; y = score on the gray values")
    c.add_argument("--bicubic-output", choices=("uint8", "float"), help="bicubic: round the SR to uint8 or not")
    c.add_argument("--bicubic-channel", choices=("rgb", "y"), help="bicubic: resize RGB, or only Y (SRCNN/VDSR)")

    o = p.add_argument_group("output")
    o.add_argument("-o", "--output", metavar="DIR", help="output folder (default results/eval/<model>_x<s>)")
    o.add_argument("--save-images", action="store_true", help="save SR images to <output>/sr/<set>/<image>.png")
    o.add_argument("--attention-stats", action="store_true", help="DLGSANet: average share of positive "
                   "entries of the SparseGSA attention maps per set (paper Table 5)")
    o.add_argument("--quiet", action="store_true", help="no progress bars")
    return p


def _fail(msg: str) -> int:
    from lightsr.cli.errors import one_line

    print(f"lightsr eval: error: {one_line(msg)}", file=sys.stderr)
    return 2


def _load(args):
    """Build the model to evaluate: (model, name, scale) or raise ValueError with a one-line message.

    name is the identifier ("bicubic" or the registry name) that names the output folder; the table
    label defaults in :func:`lightsr.evaluation.evaluate` ("Bicubic" / the registry name)."""
    import lightsr
    from lightsr.evaluation import Bicubic
    from lightsr.models import get_spec
    from lightsr.pretrained import default_weights, resolve_weights

    if args.model and args.model.lower() == "bicubic":
        if args.weights:
            raise ValueError("bicubic has no weights; drop --weights")
        if not args.scale:
            raise ValueError("--scale is required with --model bicubic")
        return Bicubic(args.scale), "bicubic", args.scale
    if args.model:
        try:
            get_spec(args.model)
        except KeyError as exc:
            raise ValueError(str(exc).strip("'\"")) from None
    weights = args.weights
    if weights is None or weights == "default":
        if not args.model:
            raise ValueError("give --model NAME (or 'bicubic') and/or --weights FILE")
        if not args.scale:
            raise ValueError("--scale is required without --weights")
        found = default_weights(args.model, args.scale)
        if found is None:
            raise ValueError(f"no pretrained weights are shipped for {args.model} x{args.scale}; pass --weights FILE "
                             "(lightsr never evaluates randomly initialised weights)")
        weights = found
    else:  # a path, or an http(s)/file URL (optionally #sha256=...) fetched once into the cache
        from lightsr.pretrained import parse_size

        try:
            limit = parse_size(args.max_download) if args.max_download else None
        except ValueError as exc:
            raise ValueError(f"--max-download: {exc}") from None
        try:
            weights = resolve_weights(weights, args.model, args.scale, progress=not args.quiet, max_bytes=limit)
        except (FileNotFoundError, OSError) as exc:
            raise ValueError(str(exc)) from None
    options = {}
    if args.tlc_kernel:
        options["tlc_kernel"] = args.tlc_kernel
    model = lightsr.load_model(weights, name=args.model, scale=args.scale, key=args.key, **options)
    return model, model.lightsr_config["name"], int(model.scale)


def _resolve_sets(args, scale: int):
    from lightsr.data.benchmark import DEFAULT_SETS, find_benchmark

    kw = dict(lr_source=args.lr_source, mod=args.mod, hr_template=args.hr_template, lr_template=args.lr_template,
              cache_dir=args.cache_dir, cache=not args.no_cache, lr_dir=args.lr_dir)
    root = Path(args.data).expanduser()
    sets, problems = [], []
    if args.sets:
        if args.lr_dir and len(args.sets) > 1:
            raise ValueError("--lr-dir applies to a single set; give one name in --sets")
        for name in args.sets:
            try:
                sets.append(find_benchmark(root, name, scale, **kw))
            except (FileNotFoundError, ValueError) as exc:
                problems.append(f"{name}: {exc}")
        return sets, problems
    # no --sets: the standard sets found under root, or root itself as one set
    for name in DEFAULT_SETS:
        try:
            sets.append(find_benchmark(root, name, scale, **kw))
        except FileNotFoundError:
            continue
    if not sets:
        sets.append(find_benchmark(root, None, scale, **kw))
    return sets, problems


def run(args: argparse.Namespace) -> int:
    from lightsr import parallel

    if args.threads is not None and args.threads < 1:
        return _fail("--threads must be >= 1")
    from lightsr.cli.upscale import setup_cpu

    setup_cpu(args.threads)
    if not args.data:
        return _fail("--data DIR is required (or set LIGHTSR_DATA)")
    if not Path(args.data).expanduser().is_dir():
        return _fail(f"data folder not found: {args.data}")
    try:
        pj = parallel.start(args.device or "auto", threads=args.threads)  # one process, or this rank under torchrun
    except ValueError as exc:
        return _fail(str(exc))
    with pj:
        return _run(args, pj)


def _device(args, pj) -> str:
    """This process's device: --device (default cuda if available); under torchrun, the rank's own."""
    import torch

    if pj.world_size > 1:
        return str(pj.device)
    return args.device or ("cuda" if torch.cuda.is_available() else "cpu")


def _run(args: argparse.Namespace, pj) -> int:
    """Every rank loads the model and scores its share of the images; rank 0 prints and writes."""
    import torch

    from lightsr.evaluation import evaluate
    from lightsr.weights import CheckpointError

    say = pj.is_main  # the other ranks print nothing: rank 0 speaks for the job
    try:
        model, name, scale = _load(args)
    except (ValueError, CheckpointError) as exc:
        return _fail(str(exc)) if say else 2
    if args.scale and args.scale != scale:
        return _fail(f"--scale {args.scale} but the weights are x{scale}") if say else 2
    device = _device(args, pj)
    try:
        sets, problems = _resolve_sets(args, scale)
    except (FileNotFoundError, ValueError) as exc:
        return _fail(str(exc)) if say else 2
    for msg in problems if say else ():
        print(f"lightsr eval: {msg}", file=sys.stderr)
    if not sets:
        return _fail("no benchmark set to evaluate") if say else 2
    shown = args.label or name  # the folder and progress name; the table label stays evaluate()'s default
    out_dir = Path(args.output) if args.output else Path("results") / "eval" / f"{shown}_x{scale}"
    precision, note = args.precision, None
    if precision == "auto":
        from lightsr.inference.policy import auto_precision

        precision, note = auto_precision(torch.device(device), getattr(model, "lightsr_source", None))
    if say and not args.quiet:
        ranks = f", {pj.world_size} processes" if pj.world_size > 1 else ""
        print(f"{shown} x{scale} on {len(sets)} set(s), device {device}{ranks}, {precision}"
              + (f" [{note}]" if note else ""), file=sys.stderr)
        for s in sets:
            print(f"  {s.describe()}", file=sys.stderr)
    round_y = None if args.round_y is None else args.round_y == "yes"
    try:
        result = evaluate(
            model, sets, scale=scale, convention=args.convention, crop_border=args.crop_border,
            y_channel=False if args.rgb else None, round_y=round_y, gray=args.gray,
            bicubic_output=args.bicubic_output, bicubic_channel=args.bicubic_channel,
            self_ensemble=args.self_ensemble, tile=args.tile, tile_overlap=args.tile_overlap,
            tlc=None if args.tlc is None else args.tlc == "on", device=device, precision=precision,
            save_dir=out_dir / "sr" if args.save_images else None, attention_stats=args.attention_stats,
            label=args.label, progress=not args.quiet, limit=args.limit, job=pj,
        )
    except ValueError as exc:
        return _fail(str(exc)) if say else 2
    failed = _report(result, out_dir, args, problems) if say else False
    return pj.finish(failed)


def _report(result, out_dir: Path, args, problems: list[str]) -> bool:
    """Print the table and write the result files (rank 0); True when anything failed."""
    for set_name, image, msg in result.failures:
        print(f"lightsr eval: error: {set_name}/{image}: {msg}", file=sys.stderr)
    print(result.to_markdown(), end="")
    if result.failures:  # a partial table must never replace an earlier complete one
        print(f"lightsr eval: {len(result.failures)} image(s) failed: the table above is partial and no result "
              f"file was written to {out_dir}", file=sys.stderr)
        return True
    paths = result.write(out_dir)
    print(f"\nwrote {paths['markdown']}, {paths['csv']}, {paths['json']}"
          + (f", SR images in {out_dir / 'sr'}" if args.save_images else ""))
    return bool(problems)
