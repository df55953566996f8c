"""``lightsr models``: list the registered models with their parameter counts per scale."""
from __future__ import annotations

import argparse
import inspect
import json

EPILOG = """\
examples:
  lightsr models                       table of all models, parameters at x2 / x3 / x4
  lightsr models --options lamnet      constructor options (ablation switches) of one model
  lightsr models --json                machine-readable listing
"""


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "models",
        help="list models and their parameter counts",
        description="List every registered model with its parameter count per scale. DLGSANet and "
        "LAMNet counts equal the official code's; LGUN (no official code) is our reading of its paper.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--options", metavar="NAME", help="show the constructor options (ablation switches) of NAME")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--no-peers", action="store_true", help="hide peer baselines (IMDN, PAN, ...)")
    return p


def _param_counts(name: str, scales) -> dict[int, int]:
    import torch

    from lightsr.models import count_parameters, create_model

    counts = {}
    for s in scales:
        with torch.device("meta"):  # no memory, no init cost
            counts[s] = count_parameters(create_model(name, s))
    return counts


def run(args: argparse.Namespace) -> int:
    from lightsr.models import get_spec, list_models
    from lightsr.pretrained import available

    if args.options:
        spec = get_spec(args.options)
        print(f"{spec.name}: {spec.description} [{spec.paper}]")
        if spec.builder.__doc__:
            print(inspect.cleandoc(spec.builder.__doc__))
        print("\noptions (default for this variant):")
        for pname, param in inspect.signature(spec.builder).parameters.items():
            if pname == "scale":
                continue
            default = spec.defaults.get(pname, param.default)
            print(f"  {pname} = {default!r}")
        return 0

    shipped = set(available())
    rows = []
    for name in list_models(include_peers=not args.no_peers):
        spec = get_spec(name)
        counts = _param_counts(name, spec.scales)
        rows.append(dict(
            name=name, family=spec.family, paper=spec.paper, description=spec.description, peer=spec.peer,
            params={str(s): n for s, n in counts.items()},
            official_params={str(s): n for s, n in spec.official_params.items()},
            pretrained=[s for s in spec.scales if (name, s) in shipped],
        ))
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    header = f"{'model':<16} {'params x2':>11} {'params x3':>11} {'params x4':>11}  {'weights':<8}  description"
    print(header)
    print("-" * len(header))
    for r in rows:
        cells = [f"{r['params'].get(str(s), 0):>11,}" if str(s) in r["params"] else f"{'-':>11}" for s in (2, 3, 4)]
        weights = ",".join(f"x{s}" for s in r["pretrained"]) or "-"
        print(f"{r['name']:<16} {' '.join(cells)}  {weights:<8}  {r['description']}")
    print("\nweights: scales with pretrained weights shipped in the package")
    return 0
