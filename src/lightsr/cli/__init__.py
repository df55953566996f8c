"""``lightsr`` command-line interface.

Each sub-command lives in its own module under :mod:`lightsr.cli` and exposes two
functions:

* ``add_parser(subparsers)`` – registers the sub-command and its options;
* ``run(args) -> int`` – executes it and returns the process exit code.

Modules are imported lazily so that ``lightsr --help`` stays fast and a broken
optional dependency of one command never breaks the others.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

# sub-command name -> module (relative to this package); order = order in --help
COMMANDS: dict[str, str] = {
    "models": "models",
    "upscale": "upscale",
    "eval": "eval",
    "compare": "compare",
    "train": "train",
    "prepare": "prepare",
    "plot-log": "plot_log",
    "bench": "bench",
    "plot": "plot",
    "export": "export",
}

DESCRIPTION = """\
lightsr: lightweight single-image super-resolution (DLGSANet, LGUN, LAMNet).

Typical use:
  lightsr models                                   list models and parameter counts
  lightsr upscale photo.png -o out/ --scale 4      upscale images with the default model
  lightsr eval --model bicubic --scale 4 --data ../shared/datasets/benchmark
  lightsr train configs/dlgsanet_light_x4.yaml     train from a paper recipe
  lightsr bench --scales 4                         parameters, MACs and latency

Run `lightsr <command> --help` for the options of each command.
"""

EXIT_CODES = """\
exit codes: 0 success; 1 the work failed (or part of it: an image, a set, a run); 2 the command
could not start (bad arguments, unknown model, unusable weights or config); 130 interrupted.
Errors are one line naming the file and the reason; --debug (or LIGHTSR_DEBUG=1) adds the traceback.
"""


def _available_commands(only: str | None = None) -> dict[str, object]:
    found = {}
    for name, mod in COMMANDS.items():
        if only is not None and name != only:
            continue
        try:
            found[name] = importlib.import_module(f"{__name__}.{mod}")
        except ModuleNotFoundError as exc:  # command not implemented in this build
            if exc.name == f"{__name__}.{mod}":
                continue
            raise
    return found


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser with every command, or with the command ``only`` alone (``main`` when the
    command line names one: the other commands' modules and their imports are not loaded)."""
    from lightsr import __version__

    parser = argparse.ArgumentParser(
        prog="lightsr",
        description=DESCRIPTION,
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"lightsr {__version__}")
    parser.add_argument("--debug", action="store_true", help="show the traceback of any error (also LIGHTSR_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", metavar="<command>")
    for name, module in _available_commands(only).items():
        p = module.add_parser(sub)
        if not any("--debug" in a.option_strings for a in p._actions):
            p.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                           help="show the traceback of any error (also LIGHTSR_DEBUG=1)")
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from lightsr.cli import errors

    argv = list(sys.argv[1:] if argv is None else argv)
    named = next((a for a in argv if not a.startswith("-")), None)  # global options take no values
    parser = build_parser(named if named in COMMANDS else None)
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return errors.EXIT_USAGE
    errors.set_debug(getattr(args, "debug", False))
    prog = f"lightsr {args.command}"
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        print("lightsr: interrupted", file=sys.stderr)
        return errors.EXIT_INTERRUPTED
    except BrokenPipeError:  # e.g. `lightsr eval ... | head`: stop quietly like other CLI tools
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except Exception as exc:  # noqa: BLE001 - the one error path: one line, a traceback only with --debug
        return errors.report(prog, exc)
    finally:
        errors.set_debug(False)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
