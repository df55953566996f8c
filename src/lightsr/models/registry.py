"""Model registry: names -> builders, with variant defaults and checkpoint detectors.

Every model built by :func:`create_model` carries ``model.lightsr_config``
(``{"name", "scale", "options"}``), which is what :func:`lightsr.save_model` writes into the
safetensors metadata so that :func:`lightsr.load_model` can rebuild it from the file alone.
"""
from __future__ import annotations

import collections.abc
import difflib
import inspect
import json
import math
import types
import typing
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch
import torch.nn as nn

__all__ = [
    "ModelSpec",
    "UnknownModel",
    "check_options",
    "Detection",
    "register_model",
    "register_detector",
    "create_model",
    "list_models",
    "get_spec",
    "count_parameters",
    "detectors",
]


@dataclass(frozen=True)
class ModelSpec:
    name: str
    family: str  # architecture family: dlgsanet / lamnet / lgun / imdn / pan ...
    builder: Callable[..., nn.Module]  # builder(scale=..., **options)
    defaults: Mapping[str, object] = field(default_factory=dict)  # variant settings
    scales: tuple[int, ...] = (2, 3, 4)
    description: str = ""
    paper: str = ""
    official_params: Mapping[int, int] = field(default_factory=dict)  # scale -> count of the official code
    paper_params: Mapping[int, int] = field(default_factory=dict)  # scale -> count printed in the paper
    peer: bool = False  # a baseline from another paper (not one of lightsr's three architectures)
    # option -> (lowest, highest) allowed value (for lists: of every element); options not listed get
    # DEFAULT_RANGES by type. Checked before anything is built (crafted metadata cannot size a model).
    option_ranges: Mapping[str, tuple[float, float]] = field(default_factory=dict)


# the ranges of options a spec does not list: integers are sizes or counts, floats factors
DEFAULT_RANGES = {int: (0, 4096), float: (-1e6, 1e6)}
MAX_LIST_LENGTH = 64


class UnknownModel(ValueError, KeyError):
    """A model name that is not registered (message is one line, with the closest names)."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else "unknown model"


@dataclass(frozen=True)
class Detection:
    """Result of recognising a state dict: enough to rebuild the model."""

    name: str
    scale: int
    options: dict


_REGISTRY: dict[str, ModelSpec] = {}
_DETECTORS: list[tuple[str, Callable[[Mapping[str, torch.Tensor]], Detection | None]]] = []


def register_model(spec: ModelSpec) -> ModelSpec:
    if spec.name in _REGISTRY:
        raise ValueError(f"model {spec.name!r} is already registered")
    _REGISTRY[spec.name] = spec
    return spec


def register_detector(family: str, fn: Callable[[Mapping[str, torch.Tensor]], Detection | None]) -> None:
    """``fn(state_dict)`` returns a :class:`Detection` when the keys belong to ``family``, else None."""
    _DETECTORS.append((family, fn))


def detectors() -> list[tuple[str, Callable]]:
    _ensure_loaded()
    return list(_DETECTORS)


def _ensure_loaded() -> None:
    # the architecture modules register themselves on import
    import lightsr.models.peers  # noqa: F401
    import lightsr.models.zoo  # noqa: F401


def list_models(include_peers: bool = True) -> list[str]:
    _ensure_loaded()
    return [n for n, s in _REGISTRY.items() if include_peers or not s.peer]


def get_spec(name: str) -> ModelSpec:
    """The spec of a registered model; :class:`UnknownModel` (one line, with suggestions) otherwise."""
    _ensure_loaded()
    if isinstance(name, str) and name in _REGISTRY:
        return _REGISTRY[name]
    raise UnknownModel(f"unknown model {name!r}{suggest_model(str(name))}; available: {', '.join(_REGISTRY)}")


def suggest_model(name: str) -> str:
    """``" (did you mean 'x'?)"`` for a mistyped model name (case, '-' for '_', close spelling), or ``""``."""
    names = list(_REGISTRY)
    norm = name.strip().lower().replace("-", "_").replace(" ", "_")
    if norm in names:
        return f" (did you mean {norm!r}?)"
    close = difflib.get_close_matches(norm, names, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _option_hints(spec: ModelSpec) -> dict[str, object]:
    init = spec.builder.__init__ if inspect.isclass(spec.builder) else spec.builder
    try:
        return typing.get_type_hints(init)
    except Exception:  # noqa: BLE001 - unresolvable annotations: fall back to the defaults' types
        params = inspect.signature(spec.builder).parameters
        return {k: type(p.default) for k, p in params.items() if p.default is not inspect.Parameter.empty}


def _check_value(value, hint, where: str, bounds) -> None:
    """Raise ValueError (one line) unless ``value`` fits annotation ``hint`` and ``bounds``."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return
        problems = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _check_value(value, arg, where, bounds)
            except ValueError as exc:
                problems.append(str(exc))
        raise ValueError(problems[0] if problems else f"{where}: {value!r} is not allowed")
    if origin in (list, tuple, collections.abc.Sequence) or hint in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {type(value).__name__}")
        if len(value) > MAX_LIST_LENGTH:
            raise ValueError(f"{where}: a list of {len(value)} values (at most {MAX_LIST_LENGTH})")
        item = (typing.get_args(hint) or (object,))[0]
        for i, v in enumerate(value):
            _check_value(v, item, f"{where}[{i}]", bounds)
        return
    if origin is typing.Literal:
        if value not in typing.get_args(hint):
            raise ValueError(f"{where}: {value!r} is not one of {', '.join(map(repr, typing.get_args(hint)))}")
        return
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{where}: expected true or false, got {value!r}")
        return
    if hint is int or hint is float:
        ok = isinstance(value, int) if hint is int else isinstance(value, (int, float))
        if isinstance(value, bool) or not ok:
            raise ValueError(f"{where}: expected {'an integer' if hint is int else 'a number'}, got {value!r}")
        lo, hi = bounds if bounds is not None else DEFAULT_RANGES[hint]
        if not math.isfinite(value) or not lo <= value <= hi:
            raise ValueError(f"{where}: {value!r} is outside the allowed range [{lo:g}, {hi:g}]")
        return
    if hint is str:
        if not isinstance(value, str) or len(value) > 64:
            raise ValueError(f"{where}: expected a short string, got {value!r:.40}")
        return
    if value is not None and not isinstance(value, (bool, int, float, str, list, tuple)):
        raise ValueError(f"{where}: unsupported value {value!r:.40}")


def check_options(name: str, options: Mapping[str, object]) -> None:
    """Check ``options`` of model ``name`` against its constructor's types and the spec's ranges.

    Raises :class:`UnknownModel`, ``TypeError`` (unknown option) or ``ValueError`` (wrong type, out
    of range), each with a one-line message. Nothing is built: crafted metadata is refused first.
    """
    spec = get_spec(name)
    if not isinstance(options, Mapping):
        raise ValueError(f"{name}: options must be a mapping, got {type(options).__name__}")
    params = inspect.signature(spec.builder).parameters
    unknown = sorted(str(k) for k in options if k not in params or k == "scale")
    if unknown:
        valid = ", ".join(p for p in params if p != "scale")
        raise TypeError(f"{name}: unknown option(s) {', '.join(unknown)}; valid options: {valid}")
    hints = _option_hints(spec)
    for key, value in options.items():
        _check_value(value, hints.get(key, object), f"{name} option {key}", spec.option_ranges.get(key))


def _jsonable(value):
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    raise TypeError(f"option value {value!r} is not JSON-serialisable")


def _as_scale(scale, spec: ModelSpec) -> int:
    try:
        value = float(scale) if not isinstance(scale, bool) else math.nan
    except (TypeError, ValueError):
        value = math.nan
    if not math.isfinite(value) or value != int(value):
        raise ValueError(f"{spec.name}: scale must be one of {spec.scales}, got {scale!r}")
    return int(value)


def create_model(name: str, scale: int = 4, **options) -> nn.Module:
    """Build model ``name`` for ``scale`` (x2, x3 or x4), with variant defaults overridden by ``options``.

    >>> m = create_model("dlgsanet_light", scale=4)            # 760,776 parameters
    >>> m = create_model("lamnet", 2, csm="none", iem=False)    # a Table-4 ablation
    """
    spec = get_spec(name)
    scale = _as_scale(scale, spec)
    if scale not in spec.scales:
        raise ValueError(f"{name} supports scales {spec.scales}, not {scale}")
    params = inspect.signature(spec.builder).parameters
    unknown = sorted(set(options) - set(params) - {"scale"})
    if unknown:
        valid = ", ".join(p for p in params if p != "scale")
        raise TypeError(f"{name}: unknown option(s) {', '.join(unknown)}; valid options: {valid}")
    kwargs = {**spec.defaults, **options}
    model = spec.builder(scale=scale, **kwargs)
    model.lightsr_config = {"name": name, "scale": scale, "options": _jsonable(dict(options))}
    return model


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def options_json(model: nn.Module) -> str:
    return json.dumps(model.lightsr_config["options"], sort_keys=True)
