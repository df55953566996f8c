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
import re
import tempfile
import warnings
import zipfile
from pathlib import Path
from typing import Mapping

import torch
import torch.nn as nn

__all__ = [
    "CheckpointError",
    "canonical_state_dict",
    "check_finite",
    "detect_architecture",
    "expected_state_dict",
    "file_mode",
    "load_model",
    "read_checkpoint",
    "save_basicsr_checkpoint",
    "save_model",
    "sniff",
]

FORMAT = "lightsr"
FORMAT_VERSION = "1"
# wrapper keys, in order of preference (BasicSR: params_ema > params; then other trainers)
WRAPPER_KEYS = ("params_ema", "params-ema", "params", "state_dict", "model_state_dict", "model", "net", "netG")
STRIP_PREFIXES = ("module.", "netG.", "model.")
JUNK_SUFFIXES = ("total_ops", "total_params")  # left behind by thop


class CheckpointError(ValueError):
    """A weights file that cannot be read or does not fit the model (message is one line)."""


def file_mode() -> int:
    """Permission bits of a new file under the process umask (``0o666 & ~umask``).

    ``tempfile.mkstemp`` creates ``0600`` files; atomic writers chmod their temporary file to this
    so that outputs get the same permissions as any file the user creates."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no /proc: read the umask by setting it (restored at once)
    os.umask(mask)
    return 0o666 & ~mask


def _atomic_target(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    os.chmod(tmp, file_mode())
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
        os.chmod(tmp, file_mode())  # safetensors creates the file anew (0600 from the temp name's mode)
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


# magic bytes of files people pass as weights by mistake -> what to call them
_FOREIGN_MAGIC = (
    (b"\xff\xd8\xff", "a JPEG image"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"GIF8", "a GIF image"),
    (b"RIFF", "a RIFF file (WebP image or audio)"),
    (b"BM", "a BMP image"),
    (b"II*\x00", "a TIFF image"),
    (b"MM\x00*", "a TIFF image"),
    (b"\x1f\x8b", "a gzip archive (unpack it first)"),
    (b"7z\xbc\xaf", "a 7-Zip archive (unpack it first)"),
    (b"Rar!", "a RAR archive (unpack it first)"),
    (b"%PDF", "a PDF document"),
    (b"\x7fELF", "an executable"),
    (b"\x08\x01\x12", "an ONNX model (lightsr exports ONNX but reads PyTorch weights)"),
)


def sniff(path: str | os.PathLike) -> tuple[str, str]:
    """What a file is, from its first bytes: ``(kind, description)``.

    ``kind`` is ``"safetensors"``, ``"torch-zip"`` (``torch.save``), ``"pickle"`` (legacy ``torch.save``
    or a plain pickle) or ``"other"``; ``description`` names the content for error messages."""
    path = Path(path)
    if _is_safetensors(path):
        return "safetensors", "a safetensors file"
    with open(path, "rb") as f:
        head = f.read(512)
    if head.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(path) as z:
                names = z.namelist()
        except (zipfile.BadZipFile, OSError, ValueError, EOFError):
            return "torch-zip", "a zip archive"  # truncated: torch.load names the problem
        if any(n.endswith("data.pkl") for n in names):
            return "torch-zip", "a PyTorch checkpoint"
        return "other", "a zip archive that is not a PyTorch checkpoint (unpack it first?)"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pickle", "a pickle file"
    for magic, what in _FOREIGN_MAGIC:
        if head.startswith(magic):
            return "other", what
    lowered = head.lstrip().lower()
    if lowered.startswith((b"<!doctype html", b"<html", b"<?xml", b"<head")):
        return "other", "an HTML/XML page (a download that returned a web page instead of the file?)"
    try:
        text = head.decode("utf-8")
        if all(c.isprintable() or c in "\r\n\t" for c in text):
            return "other", "a text file"
    except UnicodeDecodeError:
        pass
    return "other", "not a PyTorch or safetensors file (unknown content)"


def read_checkpoint(path: str | os.PathLike, key: str | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read a weights file into ``(state_dict, metadata)`` without executing pickled code.

    ``.safetensors`` files give their metadata; ``.pth``/``.pt``/``.ckpt`` files are unwrapped
    (``key`` picks a wrapper such as ``params``; default: ``params_ema`` then ``params`` ...),
    ``module.``-style prefixes and thop junk keys are removed. Every problem - missing, empty,
    truncated, corrupt, not a weights file at all, pickled code - is a :class:`CheckpointError`.
    """
    path = Path(path)
    try:
        if not path.is_file():
            raise CheckpointError(f"{path}: no such file" if not path.exists() else f"{path}: not a regular file")
        if path.stat().st_size == 0:
            raise CheckpointError(f"{path}: empty file")
        kind, what = sniff(path)
    except OSError as exc:
        raise CheckpointError(f"{path}: cannot read ({exc.strerror or _one_line(exc)})") from None
    if kind == "safetensors":
        sd, meta = _read_safetensors(path)
    elif kind in ("torch-zip", "pickle"):
        sd, meta = _read_torch(path), {}
    else:
        raise CheckpointError(f"{path}: not a weights file: it is {what} "
                              f"(expected a lightsr .safetensors file or a PyTorch .pth checkpoint)")
    if not isinstance(sd, Mapping):
        raise CheckpointError(f"{path}: expected a dict of tensors, found {type(sd).__name__}")
    try:
        return canonical_state_dict(sd, key), meta
    except CheckpointError as exc:
        raise CheckpointError(f"{path}: {exc}") from None


def _read_safetensors(path: Path) -> tuple[dict, dict[str, str]]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            meta = dict(f.metadata() or {})
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except MemoryError:
        raise CheckpointError(f"{path}: not enough memory to read it") from None
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own (and Rust panic) error types
        raise CheckpointError(f"{path}: not a readable safetensors file ({_one_line(exc)})") from None
    return sd, meta


def _read_torch(path: Path):
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": the outcome says enough
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        full = str(exc)
        text = _one_line(exc)
        found = re.search(r"(?:GLOBAL|Unsupported global:?)\s+([\w.]+)", full)
        if found or "weights_only" in full.lower() or "weights only" in full.lower():
            what = f" ({found.group(1)})" if found else ""
            raise CheckpointError(
                f"{path}: refused to load: the file holds pickled Python objects{what}, not only tensors, "
                f"and lightsr never runs pickled code (re-save it as a plain state dict or safetensors)"
            ) from None
        raise CheckpointError(f"{path}: cannot read checkpoint, file is truncated or corrupt ({text})") from None
    except MemoryError:
        raise CheckpointError(f"{path}: not enough memory to read it") from None
    except Exception as exc:  # noqa: BLE001 - the weights-only unpickler runs no code: anything else is corrupt data
        raise CheckpointError(
            f"{path}: cannot read checkpoint, file is truncated or corrupt ({_one_line(exc)})"
        ) from None


def _one_line(exc: BaseException, limit: int = 160) -> str:
    """The message of ``exc`` as one line without ANSI codes, at most ``limit`` characters (cut at a word)."""
    text = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", str(exc))
    text = " ".join(text.split()) or type(exc).__name__
    if len(text) > limit:
        text = text[: limit - 4].rsplit(" ", 1)[0].rstrip(",;:") + " ..."
    return text


def canonical_state_dict(obj: Mapping, key: str | None = None) -> dict[str, torch.Tensor]:
    """Unwrap trainer containers and strip shared prefixes (spandrel-compatible rules)."""
    if key is not None:
        if key not in obj:
            entries = ", ".join(map(str, list(obj)[:12]))
            raise CheckpointError(f"checkpoint has no {key!r} entry (entries: {entries})")
        obj = obj[key]
        if not isinstance(obj, Mapping):
            raise CheckpointError(f"checkpoint entry {key!r} is a {type(obj).__name__}, not a dict of tensors")
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
    odd = next((k for k, v in sd.items() if v.layout != torch.strided or v.is_complex()), None)
    if odd is not None:
        raise CheckpointError(f"tensor {odd!r} is {sd[odd].layout} / {sd[odd].dtype}: not a weights tensor")
    sd = {k: v for k, v in sd.items() if not k.endswith(JUNK_SUFFIXES)}
    changed = True
    while changed and sd:
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
        except Exception as exc:  # noqa: BLE001 - crafted shapes: IndexError, ZeroDivisionError, TypeError ...
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
    """What keeps ``sd`` from loading strictly into ``model`` (which may live on the meta device), or None."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in sd]
    unexpected = [k for k in sd if k not in expected]
    shapes = [f"{k} {tuple(sd[k].shape)} vs {tuple(v.shape)}" for k, v in expected.items()
              if k in sd and tuple(sd[k].shape) != tuple(v.shape)]
    kinds = [f"{k} is {sd[k].dtype}, expected {v.dtype}" for k, v in expected.items()
             if k in sd and sd[k].is_floating_point() != v.is_floating_point()]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing (e.g. {missing[0]})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
    if shapes:
        parts.append(f"{len(shapes)} of wrong shape (e.g. {shapes[0]})")
    if kinds:
        parts.append(f"{len(kinds)} of wrong type (e.g. {kinds[0]})")
    return "; ".join(parts) or None


# weights of a trained network never come near this: a larger value is a broken file, not a model
MAX_ABS_WEIGHT = 1e12


def check_finite(sd: Mapping[str, torch.Tensor], path: str | os.PathLike | None = None) -> None:
    """Refuse a state dict with NaN/Inf (or absurdly large) values, naming the first bad tensor."""
    where = f"{path}: " if path is not None else ""
    for k, v in sd.items():
        if not v.is_floating_point() or v.numel() == 0:
            continue
        finite = torch.isfinite(v)
        if not bool(finite.all()):
            bad = int((~finite).sum())
            raise CheckpointError(f"{where}tensor {k!r} holds {bad} NaN/Inf value(s) of {v.numel()}: the weights are "
                                  f"broken (a diverged training run?); refusing to load them")
        peak = float(v.detach().abs().max())
        if peak > MAX_ABS_WEIGHT:
            raise CheckpointError(f"{where}tensor {k!r} holds values up to {peak:.3g}, far beyond any trained network "
                                  f"(|w| <= {MAX_ABS_WEIGHT:g}): the weights are broken; refusing to load them")


def _metadata_model(path: Path, meta: Mapping[str, str]) -> tuple[str, int, dict]:
    """(architecture, scale, options) from lightsr safetensors metadata, every field checked."""
    version = str(meta.get("format_version", FORMAT_VERSION))
    if not re.fullmatch(r"[0-9]{1,6}", version) or int(version) > int(FORMAT_VERSION):
        raise CheckpointError(f"{path}: written by a newer lightsr (format_version {version!r}); upgrade lightsr")
    arch = meta.get("arch")
    if not arch:
        raise CheckpointError(f"{path}: lightsr metadata without an 'arch' entry (the model name)")
    scale = str(meta.get("scale", ""))
    if not re.fullmatch(r"[0-9]{1,2}", scale):
        raise CheckpointError(f"{path}: metadata 'scale' must be a small whole number (2, 3, 4), got {scale[:20]!r}")
    text = meta.get("options", "{}")
    try:
        options = json.loads(text) if len(text) < 100_000 else None
    except (ValueError, RecursionError):
        raise CheckpointError(f"{path}: metadata 'options' is not valid JSON") from None
    if not isinstance(options, dict):
        raise CheckpointError(f"{path}: metadata 'options' must be a JSON object of constructor options")
    return arch, int(scale), options


def _identify(path: Path, sd, meta, name: str | None, scale: int | None) -> tuple[str, int, dict]:
    """(architecture, scale, options) of a checkpoint: metadata, the caller's name + scale, or detection."""
    from lightsr.models import get_spec

    if meta.get("format") == FORMAT:
        found_name, found_scale, found_options = _metadata_model(path, meta)
    elif name is not None and scale is not None:
        found_name, found_scale, found_options = name, int(scale), {}
    else:
        try:
            det = detect_architecture(sd)
        except CheckpointError as exc:
            raise CheckpointError(f"{path}: {exc}") from None
        found_name, found_scale, found_options = det.name, det.scale, dict(det.options)
    try:
        found_spec = get_spec(found_name)
    except KeyError as exc:
        raise CheckpointError(f"{path}: holds an {exc}") from None
    if name is not None and name != found_name:
        if get_spec(name).family != found_spec.family:
            raise CheckpointError(f"{path}: holds a {found_name} model, not {name}")
        found_name = name
    if scale is not None and int(scale) != found_scale:
        raise CheckpointError(f"{path}: holds a x{found_scale} model, not x{scale}")
    return found_name, found_scale, found_options


_FACTORIES = frozenset({"empty", "zeros", "ones", "full", "rand", "randn", "randint", "tensor", "as_tensor", "arange",
                        "eye", "linspace", "logspace", "empty_like", "zeros_like", "ones_like", "full_like",
                        "rand_like", "randn_like", "empty_strided"})


class _TooLarge(Exception):
    pass


class _SizeGuard(torch.overrides.TorchFunctionMode):
    """Counts the values of tensors created while a model is built; stops past ``limit``."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit, self.count = limit, 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if getattr(func, "__name__", "") in _FACTORIES and isinstance(out, torch.Tensor):
            self.count += out.numel()
            if self.count > self.limit:
                raise _TooLarge
        return out


def expected_state_dict(name: str, scale: int, options: Mapping, limit: int | None = None) -> dict[str, torch.Tensor]:
    """The state dict (meta tensors: shapes and dtypes, no memory) of ``create_model(name, scale, **options)``.

    Options are checked against the registry's types and ranges first; ``limit`` stops the build
    once the model would hold more values than that (crafted options never cost time or memory).
    Raises ``ValueError`` / ``TypeError`` with a one-line message."""
    from lightsr.models import create_model
    from lightsr.models.registry import check_options, get_spec

    spec = get_spec(name)
    if int(scale) not in spec.scales:
        raise ValueError(f"{name} supports scales {spec.scales}, not x{scale}")
    check_options(name, options)
    guard = _SizeGuard(limit if limit is not None else 1 << 62)
    try:
        with torch.device("meta"), guard:
            model = create_model(name, scale, **options)
    except _TooLarge:
        raise ValueError(f"these options describe a model of more than {guard.limit:,} values") from None
    except (TypeError, ValueError) as exc:
        raise type(exc)(_one_line(exc)) from None
    except Exception as exc:  # noqa: BLE001 - the options are inconsistent in a way the constructor did not word
        raise ValueError(f"{name} cannot be built with these options ({type(exc).__name__}: {_one_line(exc)})") from None
    return model.state_dict()


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

    Nothing is built before the file is known to fit: the metadata's options are checked against
    the registered types and ranges, the shapes they imply are computed on the ``meta`` device
    (no memory) and compared with the file's tensors, and NaN/Inf values are refused naming the
    first bad tensor. Every problem is a :class:`CheckpointError` with a one-line message.

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
    found_name, found_scale, found_options = _identify(path, sd, meta, name, scale)
    merged = {**found_options, **options}
    in_file = sum(v.numel() for v in sd.values())
    limit = 2 * in_file + (1 << 20) if strict else 2 * in_file + (64 << 20)
    try:
        expected = expected_state_dict(found_name, found_scale, merged, limit)
    except (TypeError, ValueError) as exc:
        more = f" (the file holds {in_file:,})" if "values" in str(exc) and "more than" in str(exc) else ""
        raise CheckpointError(f"{path}: cannot build {found_name} x{found_scale}: {_one_line(exc)}{more}") from None
    if strict:
        problem = _mismatch_report(_StateOnly(expected), sd)
        if problem:
            raise CheckpointError(f"{path}: does not fit {found_name} x{found_scale}: {problem}")
    check_finite({k: v for k, v in sd.items() if k in expected}, path)
    try:
        model = create_model(found_name, found_scale, **merged)
        model.load_state_dict(sd, strict=strict)
    except MemoryError:
        raise CheckpointError(f"{path}: not enough memory to build {found_name} x{found_scale}") from None
    except Exception as exc:  # noqa: BLE001 - e.g. a buffer whose values the model rejects
        raise CheckpointError(f"{path}: does not fit {found_name} x{found_scale}: {_one_line(exc)}") from None
    model.lightsr_source = str(path)
    return model.to(device).eval()


class _StateOnly:
    """Quacks like a module for :func:`_mismatch_report`: holds only a state dict."""

    def __init__(self, state: Mapping[str, torch.Tensor]):
        self._state = state

    def state_dict(self) -> Mapping[str, torch.Tensor]:
        return self._state
