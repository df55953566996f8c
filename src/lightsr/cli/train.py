"""``lightsr train``: train a model from a YAML recipe (BasicSR-style), resumable, single- or multi-process."""
from __future__ import annotations

import argparse
import os
import sys

EPILOG = """\
examples:
  lightsr train configs/dlgsanet_tiny_x2.yaml
        train with a paper recipe; the run folder is experiments/<name>/
  lightsr train configs/dlgsanet_tiny_x2.yaml --resume auto
        continue from the newest complete checkpoint (or start if there is none)
  lightsr train configs/lamnet_x2.yaml train.total_iter=1000 datasets.train.batch_size=8 name=try
        dotted key=value overrides (values are YAML: numbers, lists [a,b], null, true)
  lightsr train configs/dlgsanet_tiny_x2.yaml --check
        validate the config and the data folders, print the resolved config, do not train
  torchrun --nproc_per_node 4 -m lightsr train configs/lamnet_x2.yaml
        data-parallel on 4 GPUs (NCCL; gloo on CPU); datasets.train.batch_size is the effective batch
  torchrun --nnodes 2 --node_rank 0 --nproc_per_node 8 --rdzv_backend c10d \\
           --rdzv_endpoint host0:29500 -m lightsr train configs/lamnet_x2.yaml
        multi-node (run the same command with --node_rank 1 on the second machine)

Ctrl-C or SIGTERM finishes the current iteration, writes a checkpoint and exits (130 / 143);
--resume auto continues exactly where it stopped. Any failure (a full disk, a bad image in a data
worker) stops the workers and exits 1 within seconds, with one line naming the last complete
checkpoint and the command that resumes from it (same overrides); the traceback is in train.log. Outputs: models/net_g_<iter>.safetensors
(EMA weights, lightsr format), models/net_g_<iter>.pth (BasicSR params + params_ema),
training_states/<iter>.state, net_g_latest / net_g_best .safetensors, train_log.csv,
val_log.csv, train.log. See docs/training.md.
"""


def add_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    p = sub.add_parser(
        "train",
        help="train a model from a YAML recipe (configs/*.yaml)",
        description="Train a super-resolution model from a BasicSR-style YAML config. The config is "
        "validated first: unknown keys and wrong types are errors that name the key.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", help="YAML training config (see configs/)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted overrides, e.g. train.total_iter=1000 datasets.train.batch_size=8")
    p.add_argument("--resume", metavar="auto|PATH",
                   help="'auto': newest complete checkpoint of the run folder (start fresh if none); or a "
                   "run folder or a training_states/<iter>.state file")
    p.add_argument("--check", action="store_true",
                   help="validate the config and the data folders, print the resolved config and exit")
    p.add_argument("--quiet", action="store_true", help="no console output (train.log is still written)")
    _accept_trailing_overrides(p)
    return p


def _accept_trailing_overrides(parser: argparse.ArgumentParser) -> None:
    """argparse stops filling a ``nargs="*"`` positional at the first option, so ``CONFIG --resume auto
    a=b`` would reject ``a=b``; collect such leftover ``key=value`` words into ``overrides`` instead."""

    def parse_known_args(self, args=None, namespace=None):
        ns, extras = argparse.ArgumentParser.parse_known_args(self, args, namespace)
        keep = [a for a in extras if a.startswith("-") or "=" not in a]
        ns.overrides = list(getattr(ns, "overrides", None) or []) + [a for a in extras if a not in keep]
        return ns, keep

    import types

    parser.parse_known_args = types.MethodType(parse_known_args, parser)


def _is_main_rank() -> bool:
    return os.environ.get("RANK", "0") == "0"


def run(args: argparse.Namespace) -> int:
    from lightsr.cli.errors import debug_enabled
    from lightsr.data.train_dataset import DataError
    from lightsr.train.config import ConfigError, dump_config, load_config
    from lightsr.weights import CheckpointError

    try:
        cfg = load_config(args.config, args.overrides)
        if args.check:
            return _check(cfg, dump_config)
        from lightsr.train.trainer import TrainingError, train

        try:
            return train(cfg, resume=args.resume, console=not args.quiet, raise_errors=debug_enabled())
        except TrainingError as exc:
            if _is_main_rank():
                print(f"lightsr train: error: {exc}", file=sys.stderr)
            return 2
    except ConfigError as exc:
        if _is_main_rank():
            print(f"lightsr train: config error: {exc}", file=sys.stderr)
        return 2
    except (DataError, CheckpointError) as exc:
        if _is_main_rank():
            print(f"lightsr train: error: {exc}", file=sys.stderr)
        return 1


def _check(cfg, dump_config) -> int:
    from lightsr.data.train_dataset import SRTrainDataset, SRValDataset
    from lightsr.train.log import setup_logging

    setup_logging(None, True)
    print(dump_config(cfg), end="", flush=True)
    ds = cfg.train_set
    train_set = SRTrainDataset(
        ds.dataroot_gt, ds.dataroot_lq if ds.type == "PairedImageDataset" else None, scale=cfg.scale,
        lq_size=cfg.lq_patch, filename_tmpl=ds.filename_tmpl, meta_info_file=ds.meta_info_file, preload=False,
        small_images=ds.small_images, enlarge_ratio=ds.dataset_enlarge_ratio, cache_dir=ds.lr_cache_dir,
    )
    world = int(os.environ.get("WORLD_SIZE", "1"))
    print(f"# train: {len(train_set.items)} images usable, LR patch {cfg.lq_patch}, "
          f"effective batch {cfg.effective_batch(world)} ({cfg.per_process_batch(world)} x {world} process(es))")
    for key, vs in cfg.val_sets().items():
        val = SRValDataset(vs.dataroot_gt, vs.dataroot_lq if vs.type == "PairedImageDataset" else None,
                           scale=cfg.scale, filename_tmpl=vs.filename_tmpl, meta_info_file=vs.meta_info_file)
        print(f"# {key}: {len(val)} images")
    print("# config OK")
    return 0
