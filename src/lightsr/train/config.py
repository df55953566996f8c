"""Training configuration: a typed schema for BasicSR-style YAML files.

A config is a YAML mapping with the familiar BasicSR sections (``name``, ``scale``, ``num_gpu``,
``manual_seed``, ``datasets.train`` / ``datasets.val``, ``network_g`` with ``type``, ``path``,
``train.optim_g`` / ``train.scheduler`` / ``train.pixel_opt``, ``val``, ``logger``). It is checked
against the dataclasses below before anything runs:

* an unknown or misspelt key is an error that names it and suggests the closest valid key;
* a value of the wrong type is an error that names the key, the expected and the found type;
* numbers written BasicSR-style as floats (``!!float 5e3``) are accepted where an integer is
  expected when they are whole.

:func:`load_config` reads a file, applies ``key=value`` overrides (dotted paths, values parsed as
YAML: ``train.total_iter=1000``, ``network_g.groups=1``, ``datasets.train.dataroot_gt=[a,b]``)
and returns a validated :class:`Config`.
"""
from __future__ import annotations

import copy
import dataclasses
import difflib
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional, Union

import yaml

__all__ = [
    "Config",
    "ConfigError",
    "DatasetConfig",
    "LoggerConfig",
    "MetricConfig",
    "NetworkConfig",
    "OptimConfig",
    "PathConfig",
    "PixelLossConfig",
    "SchedulerConfig",
    "TrainConfig",
    "ValConfig",
    "apply_overrides",
    "config_to_dict",
    "load_config",
    "parse_config",
]


class ConfigError(ValueError):
    """An invalid training configuration (the message names the offending key)."""


# --------------------------------------------------------------------------------------------
# schema
# --------------------------------------------------------------------------------------------


@dataclass
class DatasetConfig:
    """One dataset (``datasets.train`` or ``datasets.val`` / ``datasets.val_*``).

    ``PairedImageDataset``: HR (``dataroot_gt``) and LR (``dataroot_lq``) folders matched by name
    (LR name = ``filename_tmpl.format(HR stem)``). ``HRImageDataset``: HR folders only; LR images are
    made with lightsr's MATLAB-compatible bicubic ``imresize`` from the HR image cropped to a
    multiple of the scale, and cached on disk (``lr_cache_dir``). Several folders may be listed.
    """

    type: Literal["PairedImageDataset", "HRImageDataset"] = "PairedImageDataset"
    name: Optional[str] = None
    dataroot_gt: Union[str, list[str], None] = None
    dataroot_lq: Union[str, list[str], None] = None
    filename_tmpl: str = "{}"
    meta_info_file: Optional[str] = None
    io_backend: dict[str, str] = field(default_factory=lambda: {"type": "disk"})
    # training only
    gt_size: Optional[int] = None  # HR patch (BasicSR); or give lq_size (LR patch)
    lq_size: Optional[int] = None
    use_hflip: bool = True
    use_rot: bool = True  # with use_hflip: the 8 flips/rotations (vflip + transpose as BasicSR)
    use_shuffle: bool = True
    batch_size: Optional[int] = None  # effective batch over all processes (paper convention)
    batch_size_per_gpu: Optional[int] = None  # BasicSR convention: per process
    num_worker_per_gpu: int = 1
    dataset_enlarge_ratio: int = 1
    small_images: Literal["skip", "pad"] = "skip"
    preload: Union[bool, Literal["auto"]] = "auto"
    lr_cache_dir: Optional[str] = None
    color: Optional[Literal["rgb"]] = None


@dataclass
class NetworkConfig:
    """``network_g``: ``type`` is a lightsr model name; every other key is a constructor option."""

    type: str = ""
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class PathConfig:
    pretrain_network_g: Optional[str] = None
    strict_load_g: bool = True
    param_key_g: Optional[Literal["params", "params_ema"]] = None
    resume_state: Optional[str] = None
    experiments_root: Optional[str] = None


@dataclass
class OptimConfig:
    type: Literal["Adam", "AdamW", "SGD"] = "Adam"
    lr: float = 5e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.99])
    eps: float = 1e-8
    weight_decay: float = 0.0
    momentum: Optional[float] = None  # SGD only
    nesterov: bool = False  # SGD only


@dataclass
class SchedulerConfig:
    """Learning-rate schedule, evaluated in closed form at each iteration (1-based, BasicSR order).

    * ``MultiStepLR``: ``lr * gamma ** (number of milestones <= iter)``;
    * ``CosineAnnealingLR``: cosine from ``lr`` to ``eta_min`` over ``T_max`` (default ``total_iter``);
    * ``CosineAnnealingRestartLR``: BasicSR's cosine with restarts (``periods``, ``restart_weights``);
    * ``ConstantLR``: ``lr`` throughout.
    """

    type: Literal["MultiStepLR", "CosineAnnealingLR", "CosineAnnealingRestartLR", "ConstantLR"] = "MultiStepLR"
    milestones: list[int] = field(default_factory=list)
    gamma: float = 0.5
    eta_min: float = 0.0
    T_max: Optional[int] = None
    periods: list[int] = field(default_factory=list)
    restart_weights: list[float] = field(default_factory=list)


@dataclass
class PixelLossConfig:
    type: Literal["L1Loss", "MSELoss", "CharbonnierLoss"] = "L1Loss"
    loss_weight: float = 1.0
    reduction: Literal["mean", "sum"] = "mean"
    eps: float = 1e-12  # CharbonnierLoss


@dataclass
class TrainConfig:
    total_iter: int = 0
    optim_g: OptimConfig = field(default_factory=OptimConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    pixel_opt: PixelLossConfig = field(default_factory=PixelLossConfig)
    warmup_iter: int = -1  # linear warm-up over this many iterations (-1: none)
    ema_decay: float = 0.0  # 0 disables EMA; BasicSR: ema = d * ema + (1 - d) * param every iteration
    ema_warmup: bool = False  # decay min(ema_decay, (1 + i) / (10 + i)) at iteration i (not BasicSR; short runs)
    grad_clip_norm: Optional[float] = None
    # autocast of forward + loss. bf16: CPU or CUDA; fp16: CUDA only (GradScaler); auto: bf16 on CPUs
    # with native bf16 (AVX512-BF16 / AMX) and on CUDA GPUs that support it, else none
    amp: Literal["none", "bf16", "fp16", "auto"] = "none"
    channels_last: bool = False  # CUDA only
    compile: Union[bool, str] = False  # False, True or a torch.compile mode
    cuda_graphs: bool = False  # CUDA: forward + loss + backward replayed from a CUDA graph (lightsr.train.graph_step)
    cudnn_benchmark: bool = True  # CUDA: cuDNN autotuning for the fixed training shapes (off under deterministic)
    deterministic: bool = False
    num_threads: Optional[int] = None  # torch intra-op threads per process (CPU); default: cores / local ranks
    malloc_tuning: bool = True  # CPU: keep freed memory for reuse instead of page-faulting every step (lightsr.allocator)


@dataclass
class MetricConfig:
    type: Literal["calculate_psnr", "calculate_ssim", "psnr", "ssim"] = "calculate_psnr"
    crop_border: Optional[int] = None  # default: scale
    test_y_channel: bool = True
    better: Literal["higher", "lower"] = "higher"


@dataclass
class ValConfig:
    val_freq: Optional[int] = None  # iterations between validations (None: only at the end)
    save_img: bool = False
    use_ema: bool = True
    metrics: dict[str, MetricConfig] = field(
        default_factory=lambda: {"psnr": MetricConfig("calculate_psnr"), "ssim": MetricConfig("calculate_ssim")}
    )
    pbar: bool = False


@dataclass
class LoggerConfig:
    print_freq: int = 100
    save_checkpoint_freq: int = 5000
    keep_checkpoints: int = 3  # complete checkpoint sets kept on disk (newest K); 0 keeps all
    use_tb_logger: bool = False
    progress_bar: Union[bool, Literal["auto"]] = "auto"


@dataclass
class Config:
    name: str = ""
    scale: int = 0
    network_g: NetworkConfig = field(default_factory=NetworkConfig)
    datasets: dict[str, DatasetConfig] = field(default_factory=dict)
    train: TrainConfig = field(default_factory=TrainConfig)
    path: PathConfig = field(default_factory=PathConfig)
    val: Optional[ValConfig] = None
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    model_type: Optional[Literal["SRModel"]] = None  # accepted for BasicSR compatibility
    num_gpu: Union[int, Literal["auto"]] = "auto"  # 0: CPU; auto / >= 1: CUDA when available
    manual_seed: int = 0
    description: str = ""
    source: Optional[str] = None  # path of the YAML file (set by load_config)
    overrides: list[str] = field(default_factory=list)  # the key=value overrides given (set by load_config)

    # -- derived ---------------------------------------------------------------------------
    @property
    def train_set(self) -> DatasetConfig:
        return self.datasets["train"]

    def val_sets(self) -> dict[str, DatasetConfig]:
        return {k: v for k, v in self.datasets.items() if k == "val" or k.startswith("val_")}

    @property
    def lq_patch(self) -> int:
        ds = self.train_set
        return int(ds.lq_size if ds.lq_size is not None else ds.gt_size // self.scale)

    def per_process_batch(self, world_size: int) -> int:
        ds = self.train_set
        if ds.batch_size_per_gpu is not None:
            return int(ds.batch_size_per_gpu)
        if ds.batch_size % world_size:
            raise ConfigError(
                f"datasets.train.batch_size={ds.batch_size} (the effective batch) is not divisible by the "
                f"{world_size} processes; change it or give datasets.train.batch_size_per_gpu"
            )
        return ds.batch_size // world_size

    def effective_batch(self, world_size: int) -> int:
        return self.per_process_batch(world_size) * world_size

    def experiments_root(self) -> Path:
        return Path(self.path.experiments_root or os.path.join("experiments", self.name))


# --------------------------------------------------------------------------------------------
# generic dataclass validation
# --------------------------------------------------------------------------------------------


def _suggest(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    hint = f"; did you mean '{close[0]}'?" if close else ""
    return f"{hint} Valid keys: {', '.join(valid)}"


def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if tp is type(None):
        return "null"
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "mapping"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _describe(value) -> str:
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


class _Mismatch(Exception):
    pass


def _convert(value, tp, where: str):
    """Check ``value`` against annotation ``tp``; return the converted value or raise ConfigError."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if tp is type(None):
        if value is None:
            return None
        raise _Mismatch
    if origin is Literal:
        if value in typing.get_args(tp) and type(value) in {type(a) for a in typing.get_args(tp)}:
            return value
        raise _Mismatch
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        # try exact-kind members first so that 1 stays int in Union[int, float]
        for arg in args:
            try:
                return _convert(value, arg, where)
            except _Mismatch:
                continue
        raise _Mismatch
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise _Mismatch
        return _build(tp, value, where)
    if origin is list:
        if isinstance(value, tuple):
            value = list(value)
        if not isinstance(value, list):
            raise _Mismatch
        (item,) = typing.get_args(tp)
        return [_convert_or_fail(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise _Mismatch
        _, vt = typing.get_args(tp)
        return {str(k): _convert_or_fail(v, vt, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if tp is int:
        if isinstance(value, bool):
            raise _Mismatch
        if isinstance(value, int):
            return value
        if isinstance(value, float) and math.isfinite(value) and value == int(value):
            return int(value)  # BasicSR writes iteration counts as !!float 5e3
        raise _Mismatch
    if tp is float:
        if isinstance(value, bool):
            raise _Mismatch
        if isinstance(value, (int, float)):
            if not math.isfinite(value):
                raise ConfigError(f"{where}: expected a finite number, got {value}")
            return float(value)
        raise _Mismatch
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    raise TypeError(f"unsupported annotation {tp!r} at {where}")  # programming error


def _convert_or_fail(value, tp, where: str):
    try:
        return _convert(value, tp, where)
    except _Mismatch:
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {_describe(value)}") from None


def _build(cls, data: dict, where: str):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            raise ConfigError(f"{where + '.' if where else ''}{key}: unknown key{_suggest(str(key), names)}")
        kwargs[key] = _convert_or_fail(value, hints[key], f"{where + '.' if where else ''}{key}")
    return cls(**kwargs)


# --------------------------------------------------------------------------------------------
# loading, overrides, semantic checks
# --------------------------------------------------------------------------------------------


class _UniqueKeyLoader(yaml.SafeLoader):
    """Safe YAML loader that rejects duplicate keys (PyYAML silently keeps the last one)."""


def _construct_mapping(loader, node, deep=False):
    loader.flatten_mapping(node)
    seen = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConfigError(f"duplicate key {key!r} (line {key_node.start_mark.line + 1})")
        seen[key] = True
    return yaml.SafeLoader.construct_mapping(loader, node, deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def parse_value(text: str):
    """Parse an override value as YAML (``8`` -> int, ``[1,2]`` -> list, ``null``), plus ``1e-3`` -> float."""
    try:
        value = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.YAMLError as exc:
        raise ConfigError(f"cannot parse override value {text!r}: {exc}") from None
    if isinstance(value, str):
        try:
            special = value.lower().lstrip("+-") in ("inf", "nan", "infinity")
            return float(value) if any(c in value for c in ".eE") or special else int(value)
        except ValueError:
            return value
    return value


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply ``dotted.key=value`` overrides to a raw config mapping (returns a copy).

    Keys are created where missing (the schema check afterwards rejects unknown ones with a
    suggestion), so options of ``network_g`` or new validation sets can be given this way.
    """
    raw = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value (e.g. train.total_iter=1000)")
        key, text = item.split("=", 1)
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {item!r}: empty key component")
        node = raw
        for i, part in enumerate(parts[:-1]):
            nxt = node.get(part)
            if nxt is None:
                nxt = node[part] = {}
            elif not isinstance(nxt, dict):
                raise ConfigError(f"override {item!r}: {'.'.join(parts[: i + 1])} is not a mapping")
            node = nxt
        node[parts[-1]] = parse_value(text)
    return raw


def parse_config(raw: dict, source: str | None = None) -> Config:
    """Validate a raw mapping against the schema and the cross-field rules."""
    if not isinstance(raw, dict):
        raise ConfigError(f"a training config must be a YAML mapping, got {type(raw).__name__}")
    raw = copy.deepcopy(raw)
    raw.pop("source", None)
    raw.pop("overrides", None)
    net = raw.get("network_g")
    if isinstance(net, dict):
        net = dict(net)
        net_type = net.pop("type", "")
        net_opts = net.pop("options", {}) or {}
        if not isinstance(net_opts, dict):
            raise ConfigError("network_g.options: expected mapping")
        raw["network_g"] = {"type": net_type, "options": {**net_opts, **net}}
    cfg = _build(Config, raw, "")
    cfg.source = source
    if cfg.val is None and any(k == "val" or k.startswith("val_") for k in cfg.datasets):
        cfg.val = ValConfig()  # validation sets but no val section: validate at the end, default metrics
    _check(cfg)
    return cfg


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> Config:
    """Read a YAML training config, apply ``key=value`` overrides and validate it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config ({exc.strerror or exc})") from None
    try:
        raw = yaml.load(text, Loader=_UniqueKeyLoader)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: invalid YAML: {' '.join(str(exc).split())}") from None
    if raw is None:
        raise ConfigError(f"{path}: empty config")
    overrides = [str(o) for o in overrides or []]
    raw = apply_overrides(raw, overrides)
    cfg = parse_config(raw, str(path))
    cfg.overrides = overrides
    return cfg


def _check(cfg: Config) -> None:
    """Cross-field rules the types alone cannot express."""
    _check_network(cfg)
    _check_datasets(cfg)
    _check_train_set(cfg)
    _check_train(cfg)
    _check_logger_and_val(cfg)


def _check_network(cfg: Config) -> None:
    """The run name, the model and its options (built on the meta device: the values are checked too)."""
    from lightsr.models import get_spec

    if not cfg.name:
        raise ConfigError("name: required (the run folder is experiments/<name>)")
    if any(c in cfg.name for c in "/\\") or cfg.name in (".", ".."):
        raise ConfigError(f"name: {cfg.name!r} must be a plain folder name")
    if not cfg.network_g.type:
        raise ConfigError("network_g.type: required (a lightsr model name, e.g. dlgsanet_tiny)")
    try:
        spec = get_spec(cfg.network_g.type)
    except KeyError as exc:  # lightsr.models.UnknownModel: one line with the closest names
        raise ConfigError(f"network_g.type: {exc}") from None
    if cfg.scale not in spec.scales:
        raise ConfigError(f"scale: {cfg.network_g.type} supports {list(spec.scales)}, got {cfg.scale}")
    import inspect

    valid_opts = [p for p in inspect.signature(spec.builder).parameters if p != "scale"]
    for key in cfg.network_g.options:
        if key in ("scale", "upscale"):
            raise ConfigError(f"network_g.{key}: the scale is the top-level 'scale' key")
        if key not in valid_opts:
            raise ConfigError(
                f"network_g.{key}: unknown option of {cfg.network_g.type}{_did_you_mean(key, valid_opts)} "
                f"Valid options: {', '.join(valid_opts)}"
            )
    try:  # types and ranges first, then a build on the meta device: checks the values too, at no cost
        from lightsr.weights import expected_state_dict

        expected_state_dict(cfg.network_g.type, cfg.scale, cfg.network_g.options)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"network_g: cannot build {cfg.network_g.type} x{cfg.scale}: {exc}") from None


def _check_datasets(cfg: Config) -> None:
    if "train" not in cfg.datasets:
        raise ConfigError("datasets.train: required")
    for key in cfg.datasets:
        if key != "train" and key != "val" and not key.startswith("val_"):
            raise ConfigError(f"datasets.{key}: dataset keys are 'train', 'val' and 'val_<name>'{_did_you_mean(key, ['train', 'val'])}")
    for key, ds in cfg.datasets.items():
        where = f"datasets.{key}"
        if ds.io_backend.get("type", "disk") != "disk" or set(ds.io_backend) - {"type"}:
            raise ConfigError(f"{where}.io_backend: only {{type: disk}} is supported")
        if not ds.dataroot_gt:
            raise ConfigError(f"{where}.dataroot_gt: required (an HR folder or a list of folders)")
        gts = [ds.dataroot_gt] if isinstance(ds.dataroot_gt, str) else ds.dataroot_gt
        if ds.type == "PairedImageDataset":
            if not ds.dataroot_lq:
                raise ConfigError(f"{where}.dataroot_lq: required for PairedImageDataset (or use type: HRImageDataset)")
            lqs = [ds.dataroot_lq] if isinstance(ds.dataroot_lq, str) else ds.dataroot_lq
            if len(lqs) != len(gts):
                raise ConfigError(f"{where}: dataroot_gt lists {len(gts)} folders but dataroot_lq {len(lqs)}")
        elif ds.dataroot_lq:
            raise ConfigError(f"{where}.dataroot_lq: HRImageDataset makes the LR images itself; remove it or use PairedImageDataset")
        if "{}" not in ds.filename_tmpl:
            raise ConfigError(f"{where}.filename_tmpl: must contain '{{}}' (e.g. '{{}}x{cfg.scale}')")
        if ds.meta_info_file and len(gts) != 1:
            raise ConfigError(f"{where}.meta_info_file: needs exactly one dataroot_gt")


def _check_train_set(cfg: Config) -> None:
    tr = cfg.train_set
    if (tr.gt_size is None) == (tr.lq_size is None):
        raise ConfigError("datasets.train: give exactly one of gt_size (HR patch) and lq_size (LR patch)")
    if tr.gt_size is not None and (tr.gt_size <= 0 or tr.gt_size % cfg.scale):
        raise ConfigError(f"datasets.train.gt_size: {tr.gt_size} is not a positive multiple of scale {cfg.scale}")
    if tr.lq_size is not None and tr.lq_size <= 0:
        raise ConfigError("datasets.train.lq_size: must be positive")
    if (tr.batch_size is None) == (tr.batch_size_per_gpu is None):
        raise ConfigError(
            "datasets.train: give exactly one of batch_size (effective batch over all processes) and "
            "batch_size_per_gpu (BasicSR: per process)"
        )
    key, batch = (("batch_size", tr.batch_size) if tr.batch_size is not None
                  else ("batch_size_per_gpu", tr.batch_size_per_gpu))
    if batch <= 0:
        raise ConfigError(f"datasets.train.{key}: must be positive, got {batch}")
    if tr.num_worker_per_gpu < 0:
        raise ConfigError("datasets.train.num_worker_per_gpu: must be >= 0")
    if tr.dataset_enlarge_ratio < 1:
        raise ConfigError("datasets.train.dataset_enlarge_ratio: must be >= 1")


def _check_train(cfg: Config) -> None:
    t = cfg.train
    if t.total_iter <= 0:
        raise ConfigError("train.total_iter: required, a positive number of iterations")
    if len(t.optim_g.betas) != 2:
        raise ConfigError("train.optim_g.betas: expected two numbers, e.g. [0.9, 0.99]")
    if t.optim_g.lr <= 0:
        raise ConfigError("train.optim_g.lr: must be positive")
    if t.optim_g.type != "SGD" and (t.optim_g.momentum is not None or t.optim_g.nesterov):
        raise ConfigError(f"train.optim_g.momentum: only for SGD, not {t.optim_g.type} (use betas)")
    if not 0.0 <= t.ema_decay < 1.0:
        raise ConfigError("train.ema_decay: must be in [0, 1) (0 disables the EMA)")
    if t.grad_clip_norm is not None and t.grad_clip_norm <= 0:
        raise ConfigError("train.grad_clip_norm: must be positive (or null)")
    if isinstance(t.compile, str) and t.compile not in ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"):
        raise ConfigError(f"train.compile: {t.compile!r} is not a torch.compile mode")
    if t.cuda_graphs and t.compile:
        raise ConfigError("train.cuda_graphs: not together with train.compile (torch.compile's own CUDA graphs: "
                          "compile: reduce-overhead)")
    if t.num_threads is not None and t.num_threads < 1:
        raise ConfigError("train.num_threads: must be >= 1")
    s = t.scheduler
    if s.type == "MultiStepLR" and sorted(s.milestones) != s.milestones:
        raise ConfigError("train.scheduler.milestones: must be increasing")
    if s.type == "CosineAnnealingRestartLR":
        if not s.periods or len(s.periods) != len(s.restart_weights or s.periods):
            raise ConfigError("train.scheduler: CosineAnnealingRestartLR needs periods (and as many restart_weights)")
    if s.type == "CosineAnnealingLR" and s.T_max is not None and s.T_max <= 0:
        raise ConfigError("train.scheduler.T_max: must be positive")


def _check_logger_and_val(cfg: Config) -> None:
    lg = cfg.logger
    if lg.save_checkpoint_freq <= 0 or lg.print_freq <= 0:
        raise ConfigError("logger.save_checkpoint_freq and logger.print_freq: must be positive")
    if lg.keep_checkpoints < 0:
        raise ConfigError("logger.keep_checkpoints: must be >= 0 (0 keeps all)")
    if cfg.val is not None:
        if cfg.val.val_freq is not None and cfg.val.val_freq <= 0:
            raise ConfigError("val.val_freq: must be positive")
        if not cfg.val_sets():
            raise ConfigError("val: given but no datasets.val / datasets.val_<name> to validate on")
        for key, m in cfg.val.metrics.items():
            if m.crop_border is not None and m.crop_border < 0:
                raise ConfigError(f"val.metrics.{key}.crop_border: must be >= 0")


def _did_you_mean(key: str, valid: list[str]) -> str:
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else ""


def config_to_dict(cfg: Config) -> dict:
    """The resolved config as a plain mapping (network options flattened back into network_g)."""
    data = dataclasses.asdict(cfg)
    net = data.pop("network_g")
    data["network_g"] = {"type": net["type"], **net["options"]}
    data.pop("source", None)
    data.pop("overrides", None)
    order = ["name", "description", "model_type", "scale", "num_gpu", "manual_seed", "datasets", "network_g",
             "path", "train", "val", "logger"]
    return {k: data[k] for k in order if k in data}


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False, default_flow_style=None)
