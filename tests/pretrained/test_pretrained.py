"""Weights from URLs: cached once, sha256-checked, atomic, and offline afterwards."""
from __future__ import annotations

import functools
import hashlib
import http.server
import threading

import pytest

from lightsr import create_model, load_model, save_model
from lightsr.pretrained import available, default_weights, fetch, resolve_weights


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHTSR_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "weights"


@pytest.fixture
def served(tmp_path):
    """A weights file served over HTTP on localhost; yields (url, sha256, stop)."""
    root = tmp_path / "www"
    root.mkdir()
    path = save_model(create_model("lgun", 2), root / "lgun_x2.safetensors")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/lgun_x2.safetensors"
    yield url, digest, server.shutdown
    server.shutdown()


def test_http_download_is_cached_and_then_offline(served, cache):
    url, digest, stop = served
    path = resolve_weights(f"{url}#sha256={digest}")
    assert path.parent == cache and hashlib.sha256(path.read_bytes()).hexdigest() == digest
    assert load_model(path).lightsr_config["name"] == "lgun"
    stop()  # the network is gone: the cached, verified file is used
    assert resolve_weights(f"{url}#sha256={digest}") == path
    assert not [p for p in cache.iterdir() if p.suffix == ".part"]


def test_sha256_mismatch_is_rejected_and_not_kept(served, cache):
    url, digest, _ = served
    wrong = "0" * 64
    with pytest.raises(ValueError, match="sha256 mismatch"):
        fetch(url, wrong, progress=False)
    assert not cache.exists() or not list(cache.iterdir())


def test_file_url_and_bad_fragment(tmp_path, cache):
    path = save_model(create_model("lamnet", 2), tmp_path / "w.safetensors")
    got = resolve_weights(path.as_uri())
    assert got.read_bytes() == path.read_bytes()
    with pytest.raises(ValueError, match="sha256="):
        resolve_weights(path.as_uri() + "#md5=abc")


def test_unreachable_url_is_a_clear_error(cache):
    with pytest.raises(OSError, match="download failed"):
        fetch("http://127.0.0.1:9/nothing.safetensors", progress=False, timeout=2)


def test_local_paths_and_defaults(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        resolve_weights(tmp_path / "missing.safetensors")
    for name, scale in available():
        assert default_weights(name, scale) is not None
        assert resolve_weights(None, name, scale) == default_weights(name, scale)
    with pytest.raises(FileNotFoundError, match="no pretrained weights"):
        resolve_weights("default", "lamnet_large", 3)
