"""Benchmark folder layouts, filename templates, generated-LR cache, grayscale handling."""
from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

from conftest import shared_path
from lightsr.data.benchmark import BenchmarkSet, find_benchmark, read_image
from lightsr.data.imresize import imresize, modcrop

RNG = np.random.default_rng(0)


def _img(h, w, gray=False):
    return RNG.integers(0, 256, (h, w) if gray else (h, w, 3), dtype=np.uint8)


def _save(arr, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return arr


def _snapshot(folder):
    return sorted((str(p.relative_to(folder)), p.stat().st_mtime_ns) for p in folder.rglob("*"))


def test_edsr_layout_with_lr_files(tmp_path):
    root = tmp_path / "benchmark"
    hr = {n: _save(_img(34, 30), root / "Set5" / "HR" / f"{n}.png") for n in ("img10", "img2", "img1")}
    for n, a in hr.items():
        _save(imresize(modcrop(a, 4), 0.25), root / "Set5" / "LR_bicubic" / "X4" / f"{n}x4.png")
    ds = find_benchmark(root, "set5", 4, cache_dir=tmp_path / "cache")
    assert ds.name == "Set5" and ds.lr_origin == "files" and "EDSR" in ds.layout
    assert ds.names == ["img1", "img2", "img10"]  # natural order
    s = ds[0]
    assert s.hr.shape == (32, 28, 3) and s.lr.shape == (8, 7, 3) and s.lr_origin == "file"
    np.testing.assert_array_equal(s.hr, hr["img1"][:32, :28])
    assert not (tmp_path / "cache").exists()  # nothing generated


def test_hr_only_generates_and_caches_outside_dataset(tmp_path):
    root = tmp_path / "data"
    a = _save(_img(50, 41), root / "Urban100" / "HR" / "img001.png")
    before = _snapshot(root)
    cache = tmp_path / "cache"
    ds = find_benchmark(root, "Urban100", 3, cache_dir=cache)
    assert ds.lr_origin == "generated"
    s = ds[0]
    assert s.lr_origin == "generated" and s.hr.shape == (48, 39, 3)
    np.testing.assert_array_equal(s.lr, imresize(modcrop(a, 3), 1 / 3))
    files = list(cache.rglob("*.png"))
    assert len(files) == 1 and not list(cache.rglob("*.tmp"))
    assert ds[0].lr_origin == "cached"
    np.testing.assert_array_equal(ds[0].lr, s.lr)
    assert _snapshot(root) == before  # the dataset folder is never written
    # no cache: generated in memory, nothing written
    ds2 = find_benchmark(root, "Urban100", 3, cache_dir=tmp_path / "cache2", cache=False)
    assert ds2[0].lr_origin == "generated" and not (tmp_path / "cache2").exists()
    # a corrupt cache entry is regenerated
    files[0].write_bytes(b"not a png")
    assert ds[0].lr_origin == "generated"
    assert ds[0].lr_origin == "cached"


def test_cache_key_follows_hr_changes(tmp_path):
    root = tmp_path / "data"
    _save(_img(24, 24), root / "X" / "a.png")
    ds = find_benchmark(root / "X", None, 2, cache_dir=tmp_path / "c")
    first = ds[0].lr
    new = _save(_img(24, 24), root / "X" / "a.png")
    os.utime(root / "X" / "a.png", ns=(1, 1))
    ds = find_benchmark(root / "X", None, 2, cache_dir=tmp_path / "c")
    np.testing.assert_array_equal(ds[0].lr, imresize(new, 0.5))
    assert not np.array_equal(first, ds[0].lr)


def test_lr_source_modes(tmp_path):
    root = tmp_path / "b"
    for n in ("a", "b"):
        _save(_img(16, 16), root / "Set14" / "HR" / f"{n}.png")
    _save(_img(8, 8), root / "Set14" / "LR_bicubic" / "X2" / "ax2.png")
    ds = find_benchmark(root, "Set14", 2, cache_dir=tmp_path / "c")
    assert ds.lr_origin == "mixed" and [ds[i].lr_origin for i in range(2)] == ["file", "generated"]
    with pytest.raises(FileNotFoundError, match="1 of 2 LR images missing"):
        find_benchmark(root, "Set14", 2, lr_source="file")
    gen = find_benchmark(root, "Set14", 2, lr_source="generate", cache=False)
    assert gen[0].lr_origin == "generated"


def test_rcan_layout(tmp_path):
    root = tmp_path / "rcan"
    a = _save(_img(24, 24), root / "HR" / "Set5" / "x4" / "baby_HR_x4.png")
    lr = _save(imresize(a, 0.25), root / "LR" / "LRBI" / "Set5" / "x4" / "baby_LRBI_x4.png")
    ds = find_benchmark(root, "Set5", 4)
    assert "RCAN" in ds.layout and ds.names == ["baby"]
    np.testing.assert_array_equal(ds[0].lr, lr)


def test_basicsr_and_div2k_layouts(tmp_path):
    root = tmp_path / "basicsr"
    a = _save(_img(24, 36), root / "Set5" / "GTmod12" / "bird.png")
    _save(imresize(a, 0.5), root / "Set5" / "LRbicx2" / "bird.png")
    ds = find_benchmark(root, "Set5", 2)
    assert "BasicSR" in ds.layout and ds[0].lr_origin == "file" and ds.mod == 12
    div = tmp_path / "div"
    b = _save(_img(20, 20), div / "DIV2K_valid_HR" / "0801.png")
    _save(imresize(b, 0.5), div / "DIV2K_valid_LR_bicubic" / "X2" / "0801x2.png")
    for where in (div, div.parent):
        if where == div.parent:
            (where / "DIV2K").symlink_to(div)
        ds = find_benchmark(where, "DIV2K", 2)
        assert ds.names == ["0801"] and ds[0].lr_origin == "file"


def test_custom_templates(tmp_path):
    hr_dir, lr_dir = tmp_path / "gt", tmp_path / "lq"
    a = _save(_img(16, 16), hr_dir / "face_GT.png")
    _save(imresize(a, 0.5), lr_dir / "face_LQ_s2.png")
    _save(_img(16, 16), hr_dir / "notes.png")  # does not match the template: ignored
    ds = BenchmarkSet(hr_dir, 2, lr_dir=lr_dir, hr_template="{name}_GT", lr_template="{name}_LQ_s{scale}", name="Faces")
    assert ds.names == ["face"] and ds[0].lr_origin == "file"
    with pytest.raises(ValueError, match="must contain"):
        BenchmarkSet(hr_dir, 2, hr_template="GT")


def test_grayscale_kept_single_channel(tmp_path):
    root = tmp_path / "g"
    g = _save(_img(20, 20, gray=True), root / "Set14" / "HR" / "bridge.png")
    rgb_lr = np.repeat(imresize(g, 0.5)[..., None], 3, axis=2)
    _save(rgb_lr, root / "Set14" / "LR_bicubic" / "X2" / "bridgex2.png")  # LR saved as RGB
    s = find_benchmark(root, "Set14", 2)[0]
    assert s.gray and s.hr.ndim == 2 and s.lr.ndim == 2
    np.testing.assert_array_equal(s.lr, imresize(g, 0.5))


def test_read_image_modes(tmp_path):
    p = tmp_path / "p.png"
    Image.fromarray(_img(4, 4)).convert("P").save(p)
    arr, gray = read_image(p)
    assert arr.shape == (4, 4, 3) and not gray
    Image.fromarray(np.zeros((4, 4), np.uint16)).save(tmp_path / "d.png")
    with pytest.raises(ValueError, match="16-bit"):
        read_image(tmp_path / "d.png")
    (tmp_path / "bad.png").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="cannot read"):
        read_image(tmp_path / "bad.png")


def test_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="cannot find set"):
        find_benchmark(tmp_path, "Set5", 2)
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no HR images"):
        BenchmarkSet(tmp_path / "empty", 2)
    _save(_img(8, 8), tmp_path / "s" / "a.png")
    with pytest.raises(ValueError, match="multiple of the scale"):
        BenchmarkSet(tmp_path / "s", 4, mod=6)
    # an HR smaller than LR x scale is reported on access
    _save(_img(8, 8), tmp_path / "t" / "HR" / "a.png")
    _save(_img(8, 8), tmp_path / "t" / "LR_bicubic" / "X2" / "ax2.png")
    with pytest.raises(ValueError, match="smaller than LR"):
        find_benchmark(tmp_path, "t", 2)[0]


def test_shared_layout_uses_true_lr_only():
    root = shared_path("datasets", "benchmark")
    s5 = find_benchmark(root, "Set5", 4)
    assert len(s5) == 5 and s5.lr_origin == "files"
    b100 = find_benchmark(root, "BSD100", 4, cache=False)  # alias
    assert b100.name == "B100" and len(b100) == 100
    assert b100.lr_origin == "generated"  # LR_bicubic_replicate is not a MATLAB reference
    s14 = find_benchmark(root, "Set14", 3)
    assert sum(s14[i].gray for i in range(len(s14))) == 1  # bridge
