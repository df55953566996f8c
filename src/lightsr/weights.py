"""Reading and writing model weights.

* :func:`save_model` writes safetensors with the architecture, scale and every option in the
  metadata, so :func:`load_model` rebuilds the model from the file alone.
* :func:`load_model` also reads BasicSR-style ``.pth`` checkpoints (``params`` / ``params_ema``,
  optional ``module.`` prefix) of DLGSANet and LAMNet - and any registered architecture -
  detecting the architecture, variant and scale from the state dict itself, and loads strictly:
  every key used, every shape checked.
* Nothing is ever unpickled beyond plain tensors and containers (``torch.load(weights_only=True)``).
"""
from __future__ import annotations

import json
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Mapping

import torch
import torch.nn as nn

__all__ = [
    "CheckpointError",
    "canonical_state_dict",
    "detect_architecture",
    "load_model",
    "read_checkpoint",
    "save_basicsr_checkpoint",
    "save_model",
]

FORMAT = "lightsr"
FORMAT_VERSION = "1"
# wrapper keys, in order of preference (BasicSR: params_ema > params; then other trainers)
WRAPPER_KEYS = ("params_ema", "params-ema", "params", "state_dict", "model_state_dict", "model", "net", "netG")
STRIP_PREFIXES = ("module.", "netG.", "model.")
JUNK_SUFFIXES = ("total_ops", "total_params")  # left behind by thop


class CheckpointError(ValueError):
    """A weights file that cannot be read or does not fit the model (message is one line)."""


def _atomic_target(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def save_model(model: nn.Module, path: str | os.PathLike, metadata: Mapping[str, str] | None = None) -> Path:
    """Write ``model``'s weights to a safetensors file, atomically, with its build recipe in the metadata.

    The model must come from :func:`lightsr.create_model` / :func:`load_model` (it carries
    ``lightsr_config``). ``metadata`` adds free-form string entries (e.g. training notes).
    """
    from safetensors.torch import save_file

    from lightsr import __version__

    config = getattr(model, "lightsr_config", None)
    if config is None:
        raise ValueError("save_model needs a model built by lightsr.create_model (no lightsr_config found)")
    path = Path(path)
    state = {k: v.detach().to("cpu").contiguous().clone() for k, v in model.state_dict().items()}
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    meta.update(
        format=FORMAT,
        format_version=FORMAT_VERSION,
        arch=config["name"],
        scale=str(config["scale"]),
        options=json.dumps(config["options"], sort_keys=True),
        lightsr_version=__version__,
    )
    tmp = _atomic_target(path)
    try:
        save_file(state, str(tmp), metadata=meta)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def save_basicsr_checkpoint(
    path: str | os.PathLike,
    params: Mapping[str, torch.Tensor],
    params_ema: Mapping[str, torch.Tensor] | None = None,
) -> Path:
    """Write a BasicSR-style ``.pth`` (``{"params": ..., "params_ema": ...}``), atomically."""
    path = Path(path)
    payload = {"params": {k: v.detach().cpu() for k, v in params.items()}}
    if params_ema is not None:
        payload["params_ema"] = {k: v.detach().cpu() for k, v in params_ema.items()}
    tmp = _atomic_target(path)
    try:
        torch.save(payload, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def _is_safetensors(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            head = f.read(9)
    except OSError:
        return False
    if len(head) < 9:
        return False
    n = int.from_bytes(head[:8], "little")
    return 0 < n < 100_000_000 and head[8:9] == b"{"


def read_checkpoint(path: str | os.PathLike, key: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a weights file into ``(state_dict, metadata)`` without executing pickled code.

    ``.safetensors`` files give their metadata; ``.pth``/``.pt``/``.ckpt`` files are unwrapped
    (``key`` picks a wrapper such as ``params``; default: ``params_ema`` then ``params`` ...),
    ``module.``-style prefixes and thop junk keys are removed.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"{path}: empty file")
    if path.suffix == ".safetensors" or _is_safetensors(path):
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                meta = dict(f.metadata() or {})
                sd = {k: f.get_tensor(k) for k in f.keys()}
        except Exception as exc:  # safetensors raises its own error types
            raise CheckpointError(f"{path}: not a readable safetensors file ({_one_line(exc)})") from None
        return canonical_state_dict(sd, key), meta
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"{path}: refused to load - the file holds pickled objects other than tensors "
            f"({_one_line(exc)[:160]})"
        ) from None
    except (EOFError, RuntimeError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise CheckpointError(f"{path}: cannot read checkpoint, file is truncated or corrupt ({_one_line(exc)[:160]})") from None
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(obj).__name__}")
    return canonical_state_dict(obj, key), {}


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def canonical_state_dict(obj: Mapping, key: str | None = None) -> dict[str, torch.Tensor]:
    """Unwrap trainer containers and strip shared prefixes (spandrel-compatible rules)."""
    if key is not None:
        if key not in obj:
            raise CheckpointError(f"checkpoint has no {key!r} entry (entries: {', '.join(map(str, obj))})")
        obj = obj[key]
    else:
        for _ in range(3):  # nested wrappers, e.g. {"state_dict": {"params": ...}}
            wrapper = next((k for k in WRAPPER_KEYS if isinstance(obj.get(k), Mapping)), None)
            if wrapper is None and len(obj) == 1 and isinstance(next(iter(obj.values())), Mapping):
                wrapper = next(iter(obj))
            if wrapper is None:
                break
            obj = obj[wrapper]
    sd = {str(k): v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not sd:
        raise CheckpointError("checkpoint holds no tensors")
    sd = {k: v for k, v in sd.items() if not k.endswith(JUNK_SUFFIXES)}
    changed = True
    while changed:
        changed = False
        for prefix in STRIP_PREFIXES:
            if all(k.startswith(prefix) for k in sd):
                sd = {k[len(prefix):]: v for k, v in sd.items()}
                changed = True
    return sd


def detect_architecture(state_dict: Mapping[str, torch.Tensor]):
    """Recognise a state dict: returns a :class:`lightsr.models.Detection` or raises CheckpointError."""
    from lightsr.models.registry import detectors

    for family, detect in detectors():
        try:
            found = detect(state_dict)
        except KeyError as exc:
            raise CheckpointError(f"looks like a {family} checkpoint but key {exc} is missing") from None
        except (ValueError, IndexError) as exc:
            raise CheckpointError(f"looks like a {family} checkpoint but cannot be recognised: {_one_line(exc)}") from None
        if found is not None:
            return found
    families = ", ".join(sorted({f for f, _ in detectors()}))
    sample = ", ".join(list(state_dict)[:3])
    raise CheckpointError(
        f"unrecognised checkpoint: expected a lightsr safetensors file or a checkpoint of {families} "
        f"(e.g. DLGSANet keys 'overlap_embed.0.proj.weight', LAMNet keys 'shallow_feature_extraction.weight'); "
        f"found {len(state_dict)} tensors such as {sample}"
    )


def _mismatch_report(model: nn.Module, sd: Mapping[str, torch.Tensor]) -> str | None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    shapes = [f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in sd and tuple(sd[k].shape) != tuple(v.shape)]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    if shapes:
        parts.append(f"{len(shapes)} of wrong shape (e.g. {shapes[0]})")
    return "; ".join(parts) or None


def load_model(
    path: str | os.PathLike,
    name: str | None = None,
    scale: int | None = None,
    *,
    key: str | None = None,
    device: str | torch.device = "cpu",
    strict: bool = True,
    **options,
) -> nn.Module:
    """Build the right model for a weights file and load it (strictly), in eval mode.

    Args:
        path: lightsr safetensors, or a BasicSR / plain ``.pth`` state dict.
        name, scale: force the architecture and scale (needed only for checkpoints that cannot be
            recognised); when given they must agree with what the file says.
        key: wrapper entry to read from a ``.pth`` (``params`` or ``params_ema``; default: EMA first).
        options: extra constructor options, e.g. ``tlc=False`` (options that leave no trace in
            the weights, such as attention activations, come from the metadata or these).
    """
    from lightsr.models import create_model

    path = Path(path)
    sd, meta = read_checkpoint(path, key)
    if meta.get("format") == FORMAT:
        found_name, found_scale = meta["arch"], int(meta["scale"])
        found_options = json.loads(meta.get("options", "{}"))
    elif name is not None and scale is not None:
        found_name, found_scale, found_options = name, int(scale), {}
    else:
        det = detect_architecture(sd)
        found_name, found_scale, found_options = det.name, det.scale, dict(det.options)
    if name is not None and name != found_name:
        from lightsr.models import get_spec

        if get_spec(name).family != get_spec(found_name).family:
            raise CheckpointError(f"{path}: holds a {found_name} model, not {name}")
        found_name = name
    if scale is not None and int(scale) != found_scale:
        raise CheckpointError(f"{path}: holds a x{found_scale} model, not x{scale}")
    try:
        model = create_model(found_name, found_scale, **{**found_options, **options})
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot build {found_name} x{found_scale}: {_one_line(exc)}") from None
    if strict:
        problem = _mismatch_report(model, sd)
        if problem:
            raise CheckpointError(f"{path}: does not fit {found_name} x{found_scale}: {problem}")
    try:
        model.load_state_dict(sd, strict=strict)
    except (RuntimeError, ValueError) as exc:
        raise CheckpointError(f"{path}: does not fit {found_name} x{found_scale}: {_one_line(exc)}") from None
    model.lightsr_source = str(path)
    return model.to(device).eval()
