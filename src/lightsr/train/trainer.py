"""The training loop.

One process (CPU or one GPU) or many (``torchrun``, DDP over NCCL on GPUs or gloo on CPU). Per
iteration: set the scheduled learning rate, forward (optionally under autocast: ``train.amp``,
resolved by :mod:`lightsr.train.amp`), pixel loss, backward (GradScaler for fp16) - the three
replayed from a CUDA graph with ``train.cuda_graphs`` (:mod:`lightsr.train.graph_step`) -, optional
gradient clipping, optimiser step, EMA update. Every
``logger.print_freq`` iterations a log row, every ``val.val_freq`` a validation with the EMA
weights, every ``logger.save_checkpoint_freq`` (and at the end, and on SIGINT / SIGTERM) a complete
checkpoint set. Only global rank 0 writes files.

Exit codes of :func:`train`: 0 finished, 130 stopped by SIGINT, 143 stopped by SIGTERM (in both
cases after writing a checkpoint: ``--resume auto`` continues), 1 loss became NaN/inf or the run
failed.

**A run never hangs.** Any exception - in the loop, while writing a checkpoint (a full disk), in a
data worker - stops the data workers (killed if they do not exit at once: they ignore SIGTERM),
is written to ``train.log`` with its traceback and to the console as one line naming the last
complete checkpoint and the exact command that resumes from it, and :func:`train` returns 1
within seconds. Complete checkpoint sets are never touched by a failed write.
"""
from __future__ import annotations

import hashlib
import logging
import math
import os
import random
import shutil
import signal
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from lightsr.allocator import tune_malloc
from lightsr.train import distributed as D
from lightsr.train.amp import resolve_amp
from lightsr.train.checkpoint import (
    STATE_FORMAT,
    STATE_VERSION,
    CheckpointSet,
    atomic_torch_save,
    capture_rng,
    find_checkpoints,
    load_state,
    prune_checkpoints,
    remove_stale_temp_files,
    restore_rng,
)
from lightsr.train.config import Config, ConfigError, dump_config
from lightsr.train.ema import ModelEMA, unwrap
from lightsr.train.graph_step import GraphedStep
from lightsr.train.log import CSVLog, TensorBoard, format_duration, setup_logging
from lightsr.train.optim import LRSchedule, build_loss, build_optimizer

__all__ = ["Trainer", "TrainingError", "train", "load_pretrained", "resolve_resume"]

log = logging.getLogger("lightsr.train")

EXIT_OK, EXIT_NONFINITE, EXIT_SIGINT, EXIT_SIGTERM = 0, 1, 130, 143
EXIT_FAILED = 1
WORKER_EXIT_S = 2.0  # seconds a data worker gets to exit on its own before it is killed
TRAIN_FIELDS = ["iter", "epoch", "lr", "loss", "iter_per_s", "data_s", "elapsed_s"]


class TrainingError(RuntimeError):
    """A problem that stops training before it starts (message is one line)."""


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------


def load_pretrained(model: nn.Module, path: str, key: str | None, strict: bool) -> str:
    """Load initial weights. Non-strict: tensors whose name and shape match are loaded, the rest
    (e.g. the upsampler head of a x2 model loaded into x3/x4) keep their initialisation. Returns a
    one-line report."""
    from lightsr.weights import CheckpointError, _mismatch_report, read_checkpoint

    sd, _ = read_checkpoint(path, key)
    target = model.state_dict()
    if strict:
        problem = _mismatch_report(model, sd)
        if problem:
            raise CheckpointError(
                f"{path}: does not fit {model.lightsr_config['name']} x{model.scale}: {problem} "
                f"(set path.strict_load_g: false to load the matching tensors only)"
            )
        model.load_state_dict(sd, strict=True)
        return f"loaded all {len(sd)} tensors from {path}"
    loaded = {k: v for k, v in sd.items() if k in target and tuple(v.shape) == tuple(target[k].shape)}
    shape_skip = [k for k, v in sd.items() if k in target and tuple(v.shape) != tuple(target[k].shape)]
    unexpected = [k for k in sd if k not in target]
    missing = [k for k in target if k not in loaded]
    if len(loaded) < len(target) / 2:  # a head swap leaves most tensors matching; this is another model
        raise CheckpointError(
            f"{path}: only {len(loaded)} of {len(target)} tensors of {model.lightsr_config['name']} x{model.scale} "
            f"match by name and shape (wrong architecture or options?)"
        )
    model.load_state_dict(loaded, strict=False)
    parts = [f"loaded {len(loaded)}/{len(target)} tensors from {path}"]
    if shape_skip:
        parts.append(f"{len(shape_skip)} skipped for shape (e.g. {shape_skip[0]})")
    if missing:
        parts.append(f"{len(missing)} left at initialisation (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unused (e.g. {unexpected[0]})")
    return "; ".join(parts)


def resolve_resume(cfg: Config, resume: str | None) -> CheckpointSet | None:
    """The checkpoint set to resume from. ``None``: start fresh (refused if the run folder already
    holds checkpoints); ``"auto"``: the newest complete set, if any; else a ``.state`` file or a run folder."""
    root = cfg.experiments_root()
    resume = resume or cfg.path.resume_state
    if resume is None:
        existing = find_checkpoints(root)
        if existing:
            raise TrainingError(
                f"{root} already holds checkpoints (newest: iteration {existing[-1].iteration}); "
                f"continue with `{resume_command(cfg)}`, or change 'name' / path.experiments_root to start a new run"
            )
        return None
    if resume == "auto":
        sets = find_checkpoints(root)
        return sets[-1] if sets else None
    p = Path(resume)
    if p.is_dir():
        sets = find_checkpoints(p)
        if not sets:
            raise TrainingError(f"{p}: no complete checkpoint in this folder")
        return sets[-1]
    if p.suffix == ".state" and p.is_file() and p.stem.isdigit():
        cs = CheckpointSet(p.resolve().parent.parent, int(p.stem))
        if not cs.complete():
            raise TrainingError(f"{p}: its weights {cs.pth} are missing")
        return cs
    raise TrainingError(f"--resume {resume}: expected 'auto', a run folder or a training_states/<iter>.state file")


def _params_digest(model: nn.Module) -> str:
    h = hashlib.sha1()
    for name, p in sorted(unwrap(model).state_dict().items()):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _default_threads(local_world: int) -> int:
    """The usable cores shared among the local processes: a fixed number, so that a run and its
    resumption compute with the same thread count (thread splits change float sums in the last
    bits). Unlike upscale / eval it does not follow the load average; :func:`_warn_if_busy` says so
    when other work already occupies cores (docs/speed.md: 2 threads on a busy 2-core machine ran
    5-18x slower than 1)."""
    from lightsr.inference.policy import usable_cores

    return max(1, usable_cores() // max(1, local_world))


def _warn_if_busy(threads: int, local_world: int) -> None:
    from lightsr.inference.policy import default_threads

    idle = default_threads(processes=local_world)
    if idle < threads:
        log.warning("%d thread(s) per process but other work keeps the CPU busy (load average %.1f): "
                    "set train.num_threads: %d (intra-op threads stall on busy cores)", threads,
                    os.getloadavg()[0], idle)


def resume_command(cfg: Config) -> str:
    """The shell command that continues this run: the same config and overrides, plus ``--resume auto``."""
    import shlex

    return shlex.join(["lightsr", "train", cfg.source or "CONFIG.yaml", *cfg.overrides, "--resume", "auto"])


def _log_traceback(exc: BaseException) -> None:
    """The traceback of ``exc`` into train.log only (the console gets one line)."""
    import traceback

    text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)).rstrip()
    for h in log.handlers:
        if isinstance(h, logging.FileHandler):
            h.handle(log.makeRecord(log.name, logging.ERROR, __file__, 0, "traceback:\n%s", (text,), None))


def _one_line(exc: BaseException) -> str:
    """The first line of the message; the type name too unless it is one of lightsr's own errors."""
    if isinstance(exc, OSError) and exc.strerror:
        where = getattr(exc, "filename2", None) or exc.filename
        return f"{exc.strerror} ({where})" if where else exc.strerror
    lines = [line for line in str(exc).splitlines() if line.strip()]
    if len(lines) > 1 and lines[0].startswith("Caught ") and "DataLoader worker" in lines[0]:
        return f"in a data worker: {' '.join(lines[-1].split())}"  # the original exception's own last line
    text = " ".join(lines[0].split()) if lines else ""
    if type(exc).__module__.startswith("lightsr") and text:
        return text
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


# --------------------------------------------------------------------------------------------
# trainer
# --------------------------------------------------------------------------------------------


class Trainer:
    def __init__(self, cfg: Config, resume: str | None = None, *, console: bool = True, raise_errors: bool = False):
        self.cfg = cfg
        self.resume_arg = resume
        self.console = console
        self.raise_errors = raise_errors  # re-raise a failure after the clean-up (``lightsr --debug train``)
        self.stop_signal: int | None = None
        self._old_handlers: dict[int, object] = {}
        self.loader = None
        self.it = 0

    # -- setup ----------------------------------------------------------------------------
    def _setup_runtime(self) -> None:
        cfg = self.cfg
        # process-wide torch settings changed below, restored when run() returns (library use)
        self._saved_globals = (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled(),
                               torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic)
        want_cuda = cfg.num_gpu != 0
        if cfg.train.deterministic and want_cuda and torch.cuda.is_available():
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        self.dist = D.init(use_cuda=want_cuda)
        self.device = self.dist.device
        self.cuda = self.device.type == "cuda"
        self.malloc_tuned = False
        if not self.cuda:
            threads = cfg.train.num_threads or _default_threads(self.dist.local_world_size)
            torch.set_num_threads(threads)
            if not cfg.train.num_threads and self.dist.rank == 0:
                _warn_if_busy(threads, self.dist.local_world_size)
            self.malloc_tuned = bool(cfg.train.malloc_tuning) and tune_malloc()
        elif cfg.train.num_threads:
            torch.set_num_threads(cfg.train.num_threads)
        if cfg.train.deterministic:
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.benchmark = False
            torch.backends.cudnn.deterministic = True
        elif self.cuda:
            torch.backends.cudnn.benchmark = bool(cfg.train.cudnn_benchmark)  # training shapes are fixed
        seed = cfg.manual_seed + self.dist.rank
        random.seed(seed)
        np.random.seed(seed % 2**32)
        torch.manual_seed(seed)
        self.root = cfg.experiments_root()
        bar = cfg.logger.progress_bar
        self.use_bar = bool(self.console and (sys.stderr.isatty() if bar == "auto" else bar))

    def _build_model(self) -> None:
        from lightsr import count_parameters, create_model

        cfg = self.cfg
        model = create_model(cfg.network_g.type, cfg.scale, **cfg.network_g.options)
        self.n_params = count_parameters(model)
        if self.start_set is None and cfg.path.pretrain_network_g:
            report = load_pretrained(model, cfg.path.pretrain_network_g, cfg.path.param_key_g, cfg.path.strict_load_g)
            log.info("pretrained: %s", report)
        model.to(self.device)
        self.channels_last = bool(cfg.train.channels_last and self.cuda)
        if self.channels_last:
            model.to(memory_format=torch.channels_last)
        model.train()
        self.model = model
        self.ema = ModelEMA(model, cfg.train.ema_decay, cfg.train.ema_warmup) if cfg.train.ema_decay > 0 else None
        self.optimizer = build_optimizer(model.parameters(), cfg.train.optim_g)
        self.schedule = LRSchedule(cfg.train.scheduler, cfg.train.optim_g.lr, cfg.train.total_iter, cfg.train.warmup_iter)
        self.loss_fn = build_loss(cfg.train.pixel_opt).to(self.device)
        amp = resolve_amp(cfg.train.amp, self.device)
        if amp.note and self.dist.is_main:
            (log.warning if amp.warn else log.info)("%s", amp.note)
        self.amp_dtype = amp.dtype
        self.scaler = torch.amp.GradScaler("cuda") if amp.grad_scaler else None

    def _build_data(self) -> None:
        from torch.utils.data import DataLoader

        from lightsr.data.train_dataset import SRTrainDataset, SRValDataset, TrainBatchSampler, worker_init

        cfg = self.cfg
        ds = cfg.train_set
        is_main = self.dist.is_main

        def make_train():
            return SRTrainDataset(
                ds.dataroot_gt, ds.dataroot_lq if ds.type == "PairedImageDataset" else None,
                scale=cfg.scale, lq_size=cfg.lq_patch, use_hflip=ds.use_hflip, use_rot=ds.use_rot,
                filename_tmpl=ds.filename_tmpl, meta_info_file=ds.meta_info_file, preload=ds.preload,
                small_images=ds.small_images, enlarge_ratio=ds.dataset_enlarge_ratio, cache_dir=ds.lr_cache_dir,
                seed=cfg.manual_seed, progress=is_main and self.use_bar,
            )

        # rank 0 first: it fills the LR cache that the other ranks then read
        if is_main:
            self.train_set = make_train()
        D.barrier()
        if not is_main:
            self.train_set = make_train()
        self.batch = cfg.per_process_batch(self.dist.world_size)
        self.sampler = TrainBatchSampler(
            len(self.train_set), self.batch, world_size=self.dist.world_size, rank=self.dist.rank,
            seed=cfg.manual_seed, shuffle=ds.use_shuffle, start_iter=self.start_iter,
        )
        workers = ds.num_worker_per_gpu
        kwargs = {}
        if workers > 0:
            import multiprocessing as mp

            kwargs = dict(persistent_workers=True, prefetch_factor=2, worker_init_fn=worker_init)
            if "fork" in mp.get_all_start_methods():
                kwargs["multiprocessing_context"] = "fork"  # preloaded images are shared, not copied
        self.loader = DataLoader(self.train_set, batch_sampler=self.sampler, num_workers=workers,
                                 pin_memory=self.cuda, **kwargs)
        self.val_sets = {}
        for key, vs in cfg.val_sets().items():
            self.val_sets[vs.name or key] = SRValDataset(
                vs.dataroot_gt, vs.dataroot_lq if vs.type == "PairedImageDataset" else None, scale=cfg.scale,
                filename_tmpl=vs.filename_tmpl, meta_info_file=vs.meta_info_file, cache_dir=vs.lr_cache_dir,
            )

    def _load_with_fallback(self, cs: CheckpointSet):
        """Read ``cs``; if it is unreadable (e.g. a disk that lied about a write), try the older sets."""
        candidates = [c for c in reversed(find_checkpoints(cs.root)) if c.iteration <= cs.iteration] or [cs]
        for c in candidates:
            try:
                return c, load_state(c)
            except Exception as exc:  # noqa: BLE001 - any unreadable file: try the previous set
                log.warning("cannot read checkpoint %d (%s); trying the previous one", c.iteration,
                            str(exc).splitlines()[0][:200])
        raise TrainingError(f"{cs.root}: no readable checkpoint")

    def _restore(self) -> None:
        cs = self.start_set
        if cs is None:
            return
        # ranks on other machines need not see the file system: rank 0 read it, everyone gets a copy
        payload = D.broadcast_object(self._payload if self.dist.is_main else None)
        self._payload = None
        state, params, params_ema = payload
        self._report_config_changes(state.get("config"))
        try:
            unwrap(self.model).load_state_dict(params, strict=True)
        except RuntimeError as exc:
            raise TrainingError(f"{cs.pth}: the checkpoint does not fit network_g as configured now "
                                f"({str(exc).splitlines()[0][:200]})") from None
        if self.ema is not None:
            if params_ema is None:
                log.warning("%s has no params_ema; the EMA restarts from the current weights", cs.pth)
                self.ema = ModelEMA(self.model, self.cfg.train.ema_decay, self.cfg.train.ema_warmup)
            else:
                self.ema.load_state_dict(params_ema)
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except (ValueError, KeyError) as exc:
            raise TrainingError(f"{cs.state}: optimiser state does not fit this config ({exc})") from None
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        rngs = state.get("rng") or []
        if len(rngs) == self.dist.world_size:
            restore_rng(rngs[self.dist.rank])
        else:
            log.warning("resuming with %d processes from a %d-process run: RNG states reseeded",
                        self.dist.world_size, len(rngs))
            seed = self.cfg.manual_seed + self.dist.rank + 7919 * cs.iteration
            random.seed(seed)
            np.random.seed(seed % 2**32)
            torch.manual_seed(seed)
        self.best = state.get("best") or {}
        self.elapsed_before = float(state.get("elapsed_s", 0.0))
        data = state.get("data") or {}
        if data.get("fingerprint") and data["fingerprint"] != self.train_set.fingerprint():
            log.warning("the training set changed since the checkpoint (%s -> %s): the data order differs",
                        data["fingerprint"], self.train_set.fingerprint())
        if data.get("global_batch") and data["global_batch"] != self.sampler.global_batch:
            log.warning("effective batch changed from %d to %d since the checkpoint", data["global_batch"],
                        self.sampler.global_batch)

    def _report_config_changes(self, saved: str | None) -> None:
        if not saved or not self.dist.is_main:
            return
        import yaml

        from lightsr.train.config import config_to_dict

        def flat(d, prefix=""):
            out = {}
            for k, v in d.items():
                if isinstance(v, dict) and v:
                    out.update(flat(v, f"{prefix}{k}."))
                else:
                    out[f"{prefix}{k}"] = v
            return out

        try:
            before = flat(yaml.safe_load(saved))
        except yaml.YAMLError:
            return
        now = flat(config_to_dict(self.cfg))
        defaults = flat(config_to_dict(Config()))
        before = {**{k: v for k, v in defaults.items() if k in now}, **before}  # keys newer than the checkpoint
        changed = [f"{k}: {before.get(k)!r} -> {now.get(k)!r}" for k in sorted(set(before) | set(now))
                   if before.get(k) != now.get(k) and k != "description"]
        if changed:
            log.warning("resuming with changed settings: %s", "; ".join(changed[:12]) + (" ..." if len(changed) > 12 else ""))

    # -- signals ---------------------------------------------------------------------------
    def _on_signal(self, signum, _frame) -> None:
        if self.stop_signal is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        self.stop_signal = signum
        log.warning("%s received: finishing this iteration and writing a checkpoint (Ctrl-C again to abort)",
                    signal.Signals(signum).name)

    def _install_signals(self) -> None:
        import threading

        if threading.current_thread() is not threading.main_thread():
            return
        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old_handlers[sig] = signal.signal(sig, self._on_signal)

    def _restore_signals(self) -> None:
        for sig, h in self._old_handlers.items():
            signal.signal(sig, h)
        self._old_handlers.clear()

    # -- checkpoints -----------------------------------------------------------------------
    def _export_model(self) -> nn.Module:
        return self.ema.module if self.ema is not None else unwrap(self.model)

    def save_checkpoint(self, it: int) -> None:
        from lightsr import save_model
        from lightsr.weights import save_basicsr_checkpoint

        cfg = self.cfg
        rngs = D.all_gather_object(capture_rng())
        if self.dist.distributed:
            digests = D.all_gather_object(_params_digest(self.model))
            if len(set(digests)) != 1:
                raise RuntimeError(f"DDP replicas diverged at iteration {it}: parameter digests {digests}")
            if self.dist.is_main:
                log.info("replicas identical on all %d ranks (sha1 %s)", self.dist.world_size, digests[0][:12])
        if self.dist.is_main:
            cs = CheckpointSet(self.root, it)
            raw = unwrap(self.model)
            save_basicsr_checkpoint(cs.pth, raw.state_dict(), self.ema.state_dict() if self.ema else None)
            meta = {
                "iteration": str(it),
                "weights": "params_ema" if self.ema is not None else "params",
                "run": cfg.name,
                "train_config": dump_config(cfg),
            }
            save_model(self._export_model(), cs.safetensors, metadata=meta)
            state = {
                "format": STATE_FORMAT,
                "version": STATE_VERSION,
                "iter": it,
                "epoch": self.sampler.epoch_of(max(it - 1, 0)),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": {**self.schedule.state_dict(), "last_iter": it},
                "scaler": self.scaler.state_dict() if self.scaler is not None else None,
                "ema_decay": cfg.train.ema_decay,
                "rng": rngs,
                "world_size": self.dist.world_size,
                "best": dict(self.best),
                "elapsed_s": self.elapsed_before + (time.perf_counter() - self.t_start),
                "data": {"position": it, "global_batch": self.sampler.global_batch,
                         "fingerprint": self.train_set.fingerprint()},
                "config": dump_config(cfg),
            }
            atomic_torch_save(state, cs.state)  # last: the set is complete from here on
            latest = self.root / "models" / "net_g_latest.safetensors"
            _atomic_copy(cs.safetensors, latest)
            removed = prune_checkpoints(self.root, cfg.logger.keep_checkpoints)
            log.info("checkpoint iteration %d -> %s%s", it, cs.safetensors,
                     f" (removed iterations {removed})" if removed else "")
        self.last_saved = it
        D.barrier()

    # -- validation ------------------------------------------------------------------------
    def validate(self, it: int) -> None:
        from lightsr.train.validate import evaluate, metric_functions

        cfg = self.cfg
        if cfg.val is None or not self.val_sets:
            return
        model = self.ema.module if (self.ema is not None and cfg.val.use_ema) else unwrap(self.model)
        fns = metric_functions(cfg.val.metrics, cfg.scale)
        first = True
        for name, ds in self.val_sets.items():
            save_dir = self.root / "visualization" / name
            on_image = None
            if cfg.val.save_img and self.dist.is_main:
                def on_image(img_name, sr, _d=save_dir):
                    from PIL import Image

                    from lightsr.inference.io import atomic_output

                    with atomic_output(_d / f"{img_name}_{it}.png", overwrite=True) as f:
                        Image.fromarray(sr).save(f, format="PNG", compress_level=1)
            t0 = time.perf_counter()
            res = evaluate(model, ds, fns, self.device, rank=self.dist.rank, world_size=self.dist.world_size,
                           channels_last=self.channels_last, on_image=on_image,
                           progress=cfg.val.pbar and self.dist.is_main)
            took = time.perf_counter() - t0
            is_best = False
            if first and res:
                key = next(iter(cfg.val.metrics))
                higher = cfg.val.metrics[key].better == "higher"
                prev = self.best.get("value")
                if prev is None or (res[key] > prev if higher else res[key] < prev):
                    self.best = {"metric": key, "value": res[key], "iter": it, "dataset": name}
                    is_best = True
            first = False
            if self.dist.is_main:
                text = " ".join(f"{k} {v:.4f}" for k, v in res.items())
                log.info("validation %s @ %d: %s (%.1fs)%s", name, it, text, took,
                         f"  best {self.best['metric']} {self.best['value']:.4f} @ {self.best['iter']}" if self.best else "")
                self.val_csv.write({"iter": it, "dataset": name, **res, "best": int(is_best)})
                if self.tb is not None:
                    for k, v in res.items():
                        self.tb.scalar(f"val/{name}/{k}", v, it)
                if is_best:
                    meta = {"iteration": str(it), "weights": "params_ema" if self.ema is not None else "params",
                            "run": cfg.name, f"best_{self.best['metric']}": f"{self.best['value']:.4f}"}
                    from lightsr import save_model

                    save_model(model, self.root / "models" / "net_g_best.safetensors", metadata=meta)

    # -- failures ----------------------------------------------------------------------------
    def _stop_workers(self) -> None:
        """Shut the data workers down; kill the ones that do not exit (they ignore SIGTERM, so
        Python's exit would wait for them forever)."""
        loader, self.loader = self.loader, None
        it = getattr(loader, "_iterator", None) if loader is not None else None
        workers = list(getattr(it, "_workers", None) or [])
        if it is not None:
            try:
                it._shutdown_workers()
            except Exception:  # noqa: BLE001 - a half-dead loader: the kill below still applies
                pass
        deadline = time.monotonic() + WORKER_EXIT_S
        for w in workers:
            w.join(timeout=max(0.0, deadline - time.monotonic()))
            if w.is_alive():
                w.kill()
                w.join(timeout=5)

    def _report_failure(self, exc: BaseException) -> int:
        """One line on the console and in train.log (the traceback too, in train.log only)."""
        dist = getattr(self, "dist", None)
        if not (dist.is_main if dist is not None else os.environ.get("RANK", "0") == "0"):
            return EXIT_FAILED
        root = self.cfg.experiments_root()
        last = find_checkpoints(root)
        hint = (f"the last complete checkpoint is iteration {last[-1].iteration}: continue with `{resume_command(self.cfg)}`"
                if last else "no complete checkpoint was written")
        what = "interrupted" if isinstance(exc, KeyboardInterrupt) else f"failed: {_one_line(exc)}"
        message = f"training {what} at iteration {self.it}; {hint}"
        if log.handlers:
            log.error("%s (details in %s)", message, root / "train.log")
            _log_traceback(exc)
        else:  # failed before logging was set up
            print(f"lightsr train: error: {message}", file=sys.stderr, flush=True)
        return EXIT_FAILED

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> int:
        cfg = self.cfg
        self._setup_runtime()
        is_main = self.dist.is_main
        setup_logging(self.root if is_main else None, is_main, self.console)
        self.tb = None
        try:
            if cfg.logger.use_tb_logger and is_main:
                import importlib.util

                if importlib.util.find_spec("tensorboard") is None:
                    raise TrainingError("logger.use_tb_logger needs the tensorboard package: "
                                        "pip install 'lightsr[tensorboard]' (or set it to false)")
            if isinstance(cfg.num_gpu, int) and cfg.num_gpu > 0 and not self.cuda:
                log.warning("num_gpu=%d but CUDA is not available: training on the CPU", cfg.num_gpu)
            elif isinstance(cfg.num_gpu, int) and cfg.num_gpu > 1 and not self.dist.distributed:
                log.warning("num_gpu=%d but this is a single process: start it with torchrun --nproc_per_node %d "
                            "to use them all", cfg.num_gpu, cfg.num_gpu)
            self.start_set, self._payload = (None, None)
            if is_main:
                self.start_set = resolve_resume(cfg, self.resume_arg)
                if self.start_set is not None:
                    remove_stale_temp_files(self.start_set.root)
                    self.start_set, self._payload = self._load_with_fallback(self.start_set)
            self.start_set = D.broadcast_object(self.start_set)
            self.start_iter = self.start_set.iteration if self.start_set else 0
            self.best, self.elapsed_before, self.last_saved = {}, 0.0, self.start_iter
            if self.start_iter >= cfg.train.total_iter:
                log.info("%s: already trained to iteration %d (train.total_iter=%d); nothing to do",
                         self.root, self.start_iter, cfg.train.total_iter)
                return EXIT_OK
            self._build_model()
            self._build_data()
            self._restore()
            return self._loop()
        except (TrainingError, ConfigError):
            raise  # before the first iteration: the caller prints it (nothing was trained)
        except BaseException as exc:
            self._stop_workers()
            if isinstance(exc, KeyboardInterrupt) or self.raise_errors:
                self._report_failure(exc)
                raise
            return self._report_failure(exc)
        finally:
            self._stop_workers()
            if self.tb is not None:
                self.tb.close()
            for name in ("train_csv", "val_csv"):
                if getattr(self, name, None) is not None:
                    getattr(self, name).close()
            self._restore_signals()
            D.shutdown()
            threads, det, bench, cudnn_det = self._saved_globals
            torch.set_num_threads(threads)
            torch.use_deterministic_algorithms(det)
            torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = bench, cudnn_det
            for h in list(log.handlers):
                if isinstance(h, logging.FileHandler):
                    log.removeHandler(h)
                    h.close()

    def _graphed_step(self, model: nn.Module) -> GraphedStep:
        """Forward + loss + backward of a step: replayed from a CUDA graph with ``train.cuda_graphs``
        where capture works, else eager (the same computation)."""
        enabled = bool(self.cfg.train.cuda_graphs)
        graphed = GraphedStep(model, self.loss_fn, amp_dtype=self.amp_dtype, scaler=self.scaler, enabled=enabled)
        if enabled and self.dist.is_main:
            if graphed.captures:
                log.info("train.cuda_graphs: the training step is captured at its first iteration")
            else:
                log.warning("train.cuda_graphs: not used (%s); the step runs eagerly", graphed.fallback_reason)
        return graphed

    def _open_logs(self, start: int) -> None:
        """The run folder, its config and logs (rank 0); a resume truncates them after ``start``."""
        cfg, root = self.cfg, self.root
        root.mkdir(parents=True, exist_ok=True)
        (root / "config.yaml").write_text(dump_config(cfg), encoding="utf-8")
        metric_names = list(cfg.val.metrics) if cfg.val else []
        self.train_csv = CSVLog(root / "train_log.csv", TRAIN_FIELDS)
        self.val_csv = CSVLog(root / "val_log.csv", ["iter", "dataset", *metric_names, "best"])
        if start:
            self.train_csv.truncate_after(start)
            self.val_csv.truncate_after(start)
        if cfg.logger.use_tb_logger:
            self.tb = TensorBoard(root / "tb", purge_step=start + 1 if start else None)

    def _log_start(self, start: int, total: int) -> None:
        cfg, ds = self.cfg, self.train_set
        per_process = "" if self.cuda else (f", {torch.get_num_threads()} threads each"
                                            + (", malloc tuned (lightsr.allocator)" if self.malloc_tuned else ""))
        log.info("run %s: %s x%d (%s parameters) on %s x %d process(es)%s", cfg.name, cfg.network_g.type,
                 cfg.scale, f"{self.n_params:,}", self.device.type, self.dist.world_size, per_process)
        log.info("data: %d training images x%d (%s), LR patch %d, batch %d per process = %d effective, "
                 "%d iterations per epoch, %d workers", len(ds.items), ds.enlarge_ratio,
                 "in memory" if ds.preloaded is not None else "from disk", cfg.lq_patch, self.batch,
                 self.sampler.global_batch, self.sampler.batches_per_epoch, cfg.train_set.num_worker_per_gpu)
        log.info("%s iteration %d of %d -> %s", "resuming at" if start else "starting at", start, total, self.root)

    def _wrapped_model(self) -> nn.Module:
        """The model as the step runs it: under DDP with several processes, compiled with ``train.compile``."""
        model = self.model
        if self.dist.distributed:
            model = nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.cuda else None, **D.no_buffer_sync_kwargs())
        if self.cfg.train.compile:
            model = torch.compile(model, mode=None if self.cfg.train.compile is True else self.cfg.train.compile)
        return model

    def _optimizer_step(self, it: int) -> None:
        """Gradient clipping (``train.grad_clip_norm``), the optimizer step (through the fp16 scaler), the EMA."""
        clip = self.cfg.train.grad_clip_norm
        if clip:
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)  # clip the true gradients, not the fp16-scaled ones
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), clip)
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.ema is not None:
            self.ema.update(self.model, it)

    def _log_window(self, window: "_Window", it: int, total: int, lr: float, bar) -> float:
        """Mean loss over the print window (all ranks), written to the CSV / TensorBoard / console on rank 0."""
        loss_sum, n_sum = D.all_reduce_sum([window.loss.item(), float(window.n)], self.device)
        mean_loss = loss_sum / max(n_sum, 1)
        now = time.perf_counter()
        speed = window.n / max(now - window.t0, 1e-9)
        if self.dist.is_main:
            elapsed = self.elapsed_before + (now - self.t_start)
            row = {"iter": it, "epoch": self.sampler.epoch_of(it - 1), "lr": lr, "loss": mean_loss,
                   "iter_per_s": speed, "data_s": window.data_s / max(window.n, 1), "elapsed_s": elapsed}
            self.train_csv.write(row)
            if self.tb is not None:
                self.tb.scalar("train/loss", mean_loss, it)
                self.tb.scalar("train/lr", lr, it)
            if bar is not None:
                bar.set_postfix(loss=f"{mean_loss:.4f}", lr=f"{lr:.2e}", refresh=False)
            else:
                eta = (total - it) / speed if speed > 0 else float("nan")
                log.info("iter %d/%d | epoch %d | lr %.3e | loss %.5f | %.2f it/s | data %.3fs/it | eta %s",
                         it, total, row["epoch"], lr, mean_loss, speed, row["data_s"], format_duration(eta))
        return mean_loss

    def _should_stop(self, it: int, start: int) -> bool:
        """Ranks agree on stopping (a signal may reach only some); on GPUs every 10 iterations, so that
        the flag's all-reduce does not synchronise the device at every step."""
        check = not (self.dist.distributed and self.cuda) or (it - start) % 10 == 0
        return check and D.any_flag(self.stop_signal is not None, self.device)

    def _loop(self) -> int:
        cfg, start, total = self.cfg, self.start_iter, self.cfg.train.total_iter
        if self.dist.is_main:
            self._open_logs(start)
            self._log_start(start, total)
        self.train_model = self._wrapped_model()
        graphed = self._graphed_step(self.train_model)
        self._install_signals()
        bar = None
        if self.dist.is_main and self.use_bar:
            from tqdm import tqdm

            bar = tqdm(total=total, initial=start, unit="it", dynamic_ncols=True, desc=cfg.name, smoothing=0.05)
        self.t_start = time.perf_counter()
        window = _Window(self.device)
        it = self.it = start
        data_iter = iter(self.loader)
        val_freq = cfg.val.val_freq if cfg.val else None
        try:
            while it < total:
                if self._should_stop(it, start):
                    break
                t_data = time.perf_counter()
                try:
                    lq, gt = next(data_iter)
                except RuntimeError:
                    if self.stop_signal is not None:  # a worker died of the same signal
                        break
                    raise
                window.data_s += time.perf_counter() - t_data
                it = self.it = it + 1
                lr = self.schedule.apply(self.optimizer, it)
                lq = lq.to(self.device, non_blocking=True)
                gt = gt.to(self.device, non_blocking=True)
                if self.channels_last:
                    lq = lq.contiguous(memory_format=torch.channels_last)
                self.optimizer.zero_grad(set_to_none=True)
                loss = graphed(lq, gt)  # forward (autocast per train.amp), loss, backward (scaled for fp16)
                self._optimizer_step(it)
                window.add(loss)
                if bar is not None:
                    bar.update(1)
                if it % cfg.logger.print_freq == 0 or it == total:
                    mean_loss = self._log_window(window, it, total, lr, bar)
                    if not math.isfinite(mean_loss):
                        log.error("loss is %s at iteration %d; stopping without saving (last checkpoint: iteration %d). "
                                  "Lower train.optim_g.lr or set train.grad_clip_norm", mean_loss, it, self.last_saved)
                        return EXIT_NONFINITE
                    window.reset()
                if (val_freq and it % val_freq == 0) or it == total:
                    self.validate(it)  # before the checkpoint, so that its state records the best metric
                if it % cfg.logger.save_checkpoint_freq == 0 or it == total:
                    self.save_checkpoint(it)
        finally:
            if bar is not None:
                bar.close()
            del data_iter
        return self._finish(it, total)

    def _finish(self, it: int, total: int) -> int:
        """Exit code of a loop that ended without a non-finite loss: done, or stopped by a signal (checkpointed)."""
        if it == total:
            if self.dist.is_main:
                elapsed = self.elapsed_before + (time.perf_counter() - self.t_start)
                log.info("finished %d iterations in %s; weights: %s", total, format_duration(elapsed),
                         self.root / "models" / "net_g_latest.safetensors")
            return EXIT_OK
        if self.last_saved != it:
            self.save_checkpoint(it)
        sig = self.stop_signal
        if self.dist.is_main:
            log.warning("stopped at iteration %d by %s; checkpoint written. Continue with: %s",
                        it, signal.Signals(sig).name if sig else "a signal", resume_command(self.cfg))
        return EXIT_SIGTERM if sig == signal.SIGTERM else EXIT_SIGINT


class _Window:
    """Loss and data-wait time summed over the iterations since the last log line."""

    def __init__(self, device: torch.device):
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.reset()

    def reset(self) -> None:
        self.loss.zero_()
        self.n, self.data_s, self.t0 = 0, 0.0, time.perf_counter()

    def add(self, loss: torch.Tensor) -> None:
        self.loss += loss.detach().double()
        self.n += 1


def _atomic_copy(src: Path, dst: Path) -> None:
    from lightsr.weights import file_mode

    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".tmp", dir=dst.parent)
    os.close(fd)
    os.chmod(tmp, file_mode())
    try:
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def train(cfg: Config, resume: str | None = None, *, console: bool = True, raise_errors: bool = False) -> int:
    """Train from a validated config; returns the exit code (see the module docstring).

    ``raise_errors``: re-raise a failure (after stopping the workers and logging it) instead of
    returning 1."""
    return Trainer(cfg, resume, console=console, raise_errors=raise_errors).run()
