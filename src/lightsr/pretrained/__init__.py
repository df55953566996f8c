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

Downloads are capped at ``max_bytes`` (default :data:`DEFAULT_MAX_DOWNLOAD`, 1 GiB; ``--max-download``
on the command line); a file that is not weights at all (a web page, a text file) is refused and
never cached; the ``.part`` files of downloads killed mid-way are removed by the next download.
"""
from __future__ import annotations

import hashlib
import os
import re
import urllib.parse
import urllib.request
from pathlib import Path

__all__ = ["DEFAULT_MAX_DOWNLOAD", "DEFAULT_MODEL", "DownloadError", "available", "cache_dir", "default_weights",
           "fetch", "parse_size", "resolve_weights"]

HERE = Path(__file__).resolve().parent
DEFAULT_MODEL = "dlgsanet_tiny"  # the CPU trade-off: README "Shipped weights" (why) and docs/bench_x4.md
DEFAULT_MAX_DOWNLOAD = 1 << 30  # bytes; lightweight SR weights are a few MB, the largest peers < 100 MB


class DownloadError(OSError, ValueError):
    """A download that failed, was too large, or did not hold weights (message is one line)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else "download failed"


def parse_size(text: str | int | float) -> int:
    """``"500M"``, ``"2G"``, ``"1.5GB"``, ``"800k"`` or a plain number of MiB -> bytes (ValueError otherwise)."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        value, unit = float(text), "M"
    else:
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([kKmMgGtT]?)(?:i?[bB])?\s*", str(text))
        if not m:
            raise ValueError(f"not a size: {text!r} (e.g. 500M, 2G)")
        value, unit = float(m.group(1)), (m.group(2) or "M").upper()
    size = int(value * {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}[unit])
    if size <= 0:
        raise ValueError(f"a download limit must be positive, got {text!r}")
    return size


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


def _looks_like_weights(path: Path) -> str | None:
    """None when ``path`` starts like a weights file, else what it is (for the error message)."""
    from lightsr.weights import sniff

    try:
        kind, what = sniff(path)
    except OSError as exc:
        return f"unreadable ({exc.strerror or exc})"
    return None if kind != "other" else what


def fetch(url: str, sha256: str | None = None, *, progress: bool = True, timeout: float = 60.0,
          max_bytes: int | None = None) -> Path:
    """Download ``url`` into the cache (once), check its sha256, return the local path.

    The cached file is named after its URL; with ``sha256`` given, a cached file is reused only if
    it has that hash, and a download with another hash is rejected (and not kept). A download
    larger than ``max_bytes`` (default :data:`DEFAULT_MAX_DOWNLOAD`) is stopped, and one that is
    not a weights file (an HTML error page ...) is refused; neither is cached. Failures raise
    :class:`DownloadError`.
    """
    from lightsr.inference.partfiles import part_file, remove_stale_parts

    parsed = urllib.parse.urlparse(url)
    if parsed.scheme not in ("http", "https", "file"):
        raise DownloadError(f"unsupported URL scheme in {url!r} (http, https or file)")
    name = Path(urllib.parse.unquote(parsed.path)).name or "weights"
    key = hashlib.sha256(url.encode()).hexdigest()[:16]
    target = cache_dir() / f"{key}-{name}"
    limit = DEFAULT_MAX_DOWNLOAD if max_bytes is None else int(max_bytes)
    if sha256 is not None:
        sha256 = sha256.lower()
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise DownloadError(f"sha256 must be 64 hex digits, got {sha256!r}")
    if target.is_file() and (sha256 is None or _sha256(target) == sha256) and _looks_like_weights(target) is None:
        return target
    remove_stale_parts(target.parent)
    try:
        with part_file(target) as (out, tmp):
            _download(url, out, name, limit, progress, timeout)
            out.flush()
            os.fsync(out.fileno())
            what = _looks_like_weights(tmp)
            if what is not None:
                raise DownloadError(f"{url}: not a weights file: it is {what}; nothing was cached")
            got = _sha256(tmp)
            if sha256 is not None and got != sha256:
                raise DownloadError(f"{url}: sha256 mismatch (expected {sha256}, got {got}); file discarded")
            os.replace(tmp, target)
    except DownloadError:
        raise
    except OSError as exc:
        reason = getattr(exc, "reason", None) or exc.strerror or exc
        raise DownloadError(f"{url}: download failed ({reason})") from None
    return target


def _download(url: str, out, name: str, limit: int, progress: bool, timeout: float) -> None:
    from lightsr.inference.progress import Progress, format_bytes

    def too_large(size: str) -> DownloadError:
        return DownloadError(f"{url}: {size} is more than the download limit of {format_bytes(limit)} "
                             f"(raise it with --max-download SIZE, max_bytes= in Python); nothing was cached")

    with urllib.request.urlopen(url, timeout=timeout) as resp:
        total = int(resp.headers.get("Content-Length") or 0) or None
        if total is not None and total > limit:
            raise too_large(f"the file ({format_bytes(total)})")
        done = 0
        with Progress(total, f"downloading {name}", unit="B", bytes=True, enabled=progress, leave=False) as bar:
            while True:
                chunk = resp.read(1 << 20)
                if not chunk:
                    break
                done += len(chunk)
                if done > limit:
                    raise too_large("the download")
                out.write(chunk)
                bar.set(done)


def resolve_weights(weights: str | os.PathLike | None, model: str | None = None, scale: int | None = None, *,
                    progress: bool = True, max_bytes: int | None = None) -> Path:
    """Local file for a ``--weights`` value (path, ``default``/None, or URL with optional ``#sha256=``).

    ``progress`` and ``max_bytes`` apply to downloads (see :func:`fetch`)."""
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
                raise DownloadError(f"URL fragment must be #sha256=<64 hex digits>, got #{fragment}")
            sha = m.group(1)
        return fetch(url, sha, progress=progress, max_bytes=max_bytes)
    path = Path(text).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    return path

