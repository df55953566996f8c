"""Pretrained weights: the files shipped inside the package, and weights fetched from a URL.

Shipped files are named ``<model>_x<scale>.safetensors``, each with a model card
``<model>_x<scale>.md`` (training data, iterations, hardware, measured PSNR/SSIM).
:func:`default_weights` returns the shipped file for a model and scale, or ``None``.

:func:`resolve_weights` turns what a user passes to ``--weights`` into a local file:

* a path to a lightsr safetensors file or any checkpoint :func:`lightsr.load_model` reads;
* ``default`` (or nothing): the shipped weights of the model and scale;
* an ``http(s)://`` or ``file://`` URL, optionally with ``#sha256=<hex>``: downloaded once into the
  cache (``$LIGHTSR_CACHE`` or ``~/.cache/lightsr``), written atomically, its sha256 checked; later
  calls use the cached file and never touch the network.
"""
from __future__ import annotations

import hashlib
import os
import re
import tempfile
import urllib.parse
import urllib.request
from pathlib import Path

__all__ = ["DEFAULT_MODEL", "available", "cache_dir", "default_weights", "fetch", "resolve_weights"]

HERE = Path(__file__).resolve().parent
DEFAULT_MODEL = "dlgsanet_tiny"  # the CPU trade-off: README "Shipped weights" (why) and docs/bench_x4.md


def default_weights(model: str, scale: int) -> Path | None:
    """The weights shipped for ``model`` at ``scale``, or ``None``."""
    path = HERE / f"{model}_x{int(scale)}.safetensors"
    return path if path.is_file() else None


def available() -> list[tuple[str, int]]:
    """(model, scale) pairs with shipped weights."""
    out = []
    for p in sorted(HERE.glob("*_x[0-9].safetensors")):
        name, _, scale = p.stem.rpartition("_x")
        out.append((name, int(scale)))
    return out


def cache_dir() -> Path:
    return Path(os.environ.get("LIGHTSR_CACHE", Path.home() / ".cache" / "lightsr")) / "weights"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def fetch(url: str, sha256: str | None = None, *, progress: bool = True, timeout: float = 60.0) -> Path:
    """Download ``url`` into the cache (once), check its sha256, return the local path.

    The cached file is named after its URL; with ``sha256`` given, a cached file is reused only if
    it has that hash, and a download with another hash is rejected (and not kept).
    """
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https", "file"):
        raise ValueError(f"unsupported URL scheme in {url!r} (http, https or file)")
    name = Path(urllib.parse.unquote(parsed.path)).name or "weights"
    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    target = cache_dir() / f"{key}-{name}"
    if sha256 is not None:
        sha256 = sha256.lower()
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise ValueError(f"sha256 must be 64 hex digits, got {sha256!r}")
    if target.is_file() and (sha256 is None or _sha256(target) == sha256):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".part", dir=target.parent)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            bar = None
            if progress:
                from tqdm import tqdm

                bar = tqdm(total=total, unit="B", unit_scale=True, desc=f"downloading {name}", leave=False)
            while True:
                chunk = resp.read(1 << 20)
                if not chunk:
                    break
                out.write(chunk)
                if bar is not None:
                    bar.update(len(chunk))
            if bar is not None:
                bar.close()
        got = _sha256(tmp)
        if sha256 is not None and got != sha256:
            raise ValueError(f"{url}: sha256 mismatch (expected {sha256}, got {got}); file discarded")
        os.replace(tmp, target)
    except OSError as exc:
        raise OSError(f"{url}: download failed ({exc})") from None
    finally:
        tmp.unlink(missing_ok=True)
    return target


def resolve_weights(weights: str | os.PathLike | None, model: str | None = None, scale: int | None = None) -> Path:
    """Local file for a ``--weights`` value (path, ``default``/None, or URL with optional ``#sha256=``)."""
    if weights is None or str(weights) == "default":
        if model is None or scale is None:
            raise ValueError("default weights need a model name and a scale")
        path = default_weights(model, scale)
        if path is None:
            shipped = ", ".join(f"{n} x{s}" for n, s in available()) or "none"
            raise FileNotFoundError(
                f"no pretrained weights are shipped for {model} x{scale} (shipped: {shipped}); pass --weights FILE"
            )
        return path
    text = str(weights)
    if re.match(r"^(https?|file)://", text):
        url, _, fragment = text.partition("#")
        sha = None
        if fragment:
            m = re.fullmatch(r"sha256=([0-9a-fA-F]{64})", fragment)
            if not m:
                raise ValueError(f"URL fragment must be #sha256=<64 hex digits>, got #{fragment}")
            sha = m.group(1)
        return fetch(url, sha)
    path = Path(text).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    return path

