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


# -- issue 22 -------------------------------------------------------------------------------------------
@pytest.fixture
def endless():
    """An HTTP server whose file never ends (no Content-Length) and one that announces 3 GB."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            self.send_response(200)
            if self.path.endswith("announced.pth"):
                self.send_header("Content-Length", str(3 << 30))
                self.end_headers()
                return
            self.end_headers()
            chunk = b"\x80\x02" + bytes(1 << 16)
            try:
                while True:
                    self.wfile.write(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_downloads_are_capped_and_leave_nothing(endless, cache):
    """Item 9: a download that never ends stops at the cap; nothing is cached, no .part is left."""
    from lightsr.pretrained import DownloadError

    with pytest.raises(DownloadError, match="more than the download limit of 2.1 MB"):
        fetch(f"{endless}/endless.pth", progress=False, max_bytes=2 << 20)
    with pytest.raises(DownloadError, match=r"the file \(3.2 GB\) is more than the download limit"):
        fetch(f"{endless}/announced.pth", progress=False)  # refused from its Content-Length, unread
    assert list(cache.iterdir()) == []


def test_not_weights_are_never_cached(tmp_path, cache):
    """Item 4: `--weights file:///etc/passwd` gave a traceback and stayed in the cache."""
    from lightsr.pretrained import DownloadError

    text = tmp_path / "passwd"
    text.write_text("root:x:0:0:root:/root:/bin/bash\n")
    with pytest.raises(DownloadError, match="not a weights file: it is a text file; nothing was cached"):
        resolve_weights(text.as_uri())
    assert list(cache.iterdir()) == []


def test_stale_download_parts_are_removed(served, cache):
    import os
    import time

    url, digest, _ = served
    cache.mkdir(parents=True)
    stale = cache / ".0123456789abcdef-lgun_x2.safetensors.abcd1234.part"  # left by a SIGKILL mid-download
    stale.write_bytes(bytes(1000))
    old = time.time() - 3600
    os.utime(stale, (old, old))
    path = fetch(url, digest, progress=False)
    assert not stale.exists() and sorted(p.name for p in cache.iterdir()) == [path.name]


def test_parse_size():
    from lightsr.pretrained import parse_size

    assert parse_size("500M") == 500 << 20 and parse_size("2G") == 2 << 30 and parse_size("1.5GB") == int(1.5 * (1 << 30))
    assert parse_size("800k") == 800 << 10 and parse_size(3) == 3 << 20 and parse_size("7") == 7 << 20
    for bad in ("lots", "-1G", "0", "1X"):
        with pytest.raises(ValueError):
            parse_size(bad)
