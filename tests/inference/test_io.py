"""Image reading/writing for upscaling: every kind, 16-bit exactness, EXIF, ICC, bad files, atomicity."""
from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageCms, ImageOps

from lightsr.inference import io as lio
from lightsr.inference.io import ImageData, ImageError, read_image, write_image

RNG = np.random.default_rng(0)


def _plain_png16(path: Path, arr: np.ndarray) -> None:
    """An independent minimal 16-bit PNG encoder (filter type 0) to test decoding against."""
    h, w, c = arr.shape
    ct = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    raw = b"".join(b"\x00" + arr[i].astype(">u2").tobytes() for i in range(h))

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, ct, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
def test_16bit_png_decoded_exactly(tmp_path, channels):
    arr = RNG.integers(0, 65536, size=(13, 17, channels), dtype=np.uint16)
    arr[0, 0] = 1  # dark values must not decide the depth
    _plain_png16(tmp_path / "a.png", arr)
    data = read_image(tmp_path / "a.png")
    assert data.pixels.dtype == np.uint16 and data.bits == 16
    np.testing.assert_array_equal(data.pixels, arr)


def test_dark_16bit_png_stays_16bit(tmp_path):
    arr = RNG.integers(0, 200, size=(8, 9, 3), dtype=np.uint16)  # max < 256: a heuristic would say 8-bit
    _plain_png16(tmp_path / "dark.png", arr)
    data = read_image(tmp_path / "dark.png")
    assert data.pixels.dtype == np.uint16
    np.testing.assert_array_equal(data.pixels, arr)


@pytest.mark.parametrize("channels", [1, 2, 3, 4])
@pytest.mark.parametrize("fmt", ["png", "tiff"])
def test_16bit_round_trip(tmp_path, channels, fmt):
    if fmt == "tiff" and channels == 2:
        pytest.skip("Pillow cannot read 16-bit gray+alpha TIFF")
    arr = RNG.integers(0, 65536, size=(70, 33, channels), dtype=np.uint16)
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    out = write_image(tmp_path / f"x.{fmt}", ImageData(arr, icc_profile=icc), fmt)
    back = read_image(out)
    assert back.pixels.dtype == np.uint16
    np.testing.assert_array_equal(back.pixels, arr)
    assert back.icc_profile == icc


def test_pillow_16bit_gray_tiff_and_png(tmp_path):
    arr = RNG.integers(0, 65536, size=(10, 12), dtype=np.uint16)
    for name in ("g.tif", "g.png"):
        Image.fromarray(arr).save(tmp_path / name)
        back = read_image(tmp_path / name)
        assert back.mode == "L" and back.pixels.dtype == np.uint16
        np.testing.assert_array_equal(back.pixels[..., 0], arr)


def test_modes(tmp_path):
    rgb = RNG.integers(0, 256, size=(6, 7, 3), dtype=np.uint8)
    cases = {
        "rgb.png": (Image.fromarray(rgb), "RGB"),
        "rgba.png": (Image.fromarray(np.dstack([rgb, rgb[..., 0]])), "RGBA"),
        "la.png": (Image.fromarray(np.dstack([rgb[..., 0], rgb[..., 1]])), "LA"),
        "l.png": (Image.fromarray(rgb[..., 0]), "L"),
        "bilevel.png": (Image.fromarray(rgb[..., 0] > 128), "L"),
        "p.png": (Image.fromarray(rgb).convert("P"), "RGB"),
        "cmyk.jpg": (Image.fromarray(rgb).convert("CMYK"), "RGB"),
    }
    for name, (im, mode) in cases.items():
        im.save(tmp_path / name)
        assert read_image(tmp_path / name).mode == mode, name


def test_palette_with_trns_becomes_rgba(tmp_path):
    im = Image.new("P", (4, 3))
    im.putpalette([255, 0, 0, 0, 255, 0] + [0] * 762)
    im.putpixel((0, 0), 1)
    im.info["transparency"] = 0  # index 0 fully transparent
    im.save(tmp_path / "p.png", transparency=0)
    data = read_image(tmp_path / "p.png")
    assert data.mode == "RGBA"
    assert data.pixels[0, 0, 3] == 255 and data.pixels[1, 1, 3] == 0
    assert tuple(data.pixels[0, 0, :3]) == (0, 255, 0)


def test_rgb_and_gray_colour_key_trns(tmp_path):
    rgb = np.zeros((3, 3, 3), np.uint8)
    rgb[1, 1] = (10, 20, 30)
    Image.fromarray(rgb).save(tmp_path / "k.png", transparency=(0, 0, 0))
    data = read_image(tmp_path / "k.png")
    assert data.mode == "RGBA" and data.pixels[1, 1, 3] == 255 and data.pixels[0, 0, 3] == 0
    gray = np.full((3, 3), 7, np.uint8)
    gray[0, 0] = 9
    Image.fromarray(gray).save(tmp_path / "g.png", transparency=7)
    data = read_image(tmp_path / "g.png")
    assert data.mode == "LA" and data.pixels[0, 0, 1] == 255 and data.pixels[1, 1, 1] == 0


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_matches_pillow(tmp_path, orientation):
    im = Image.fromarray(RNG.integers(0, 256, size=(6, 10, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[lio.ORIENTATION_TAG] = orientation
    im.save(tmp_path / "o.png", exif=exif.tobytes())
    data = read_image(tmp_path / "o.png")
    expected = np.asarray(ImageOps.exif_transpose(Image.open(tmp_path / "o.png")))
    np.testing.assert_array_equal(data.pixels, expected)
    reset = Image.Exif()
    reset.load(data.exif)
    assert reset.get(lio.ORIENTATION_TAG) == 1


def test_bad_files_give_one_line_reasons(tmp_path):
    (tmp_path / "zero.png").write_bytes(b"")
    (tmp_path / "text.png").write_text("just some notes\n")
    (tmp_path / "noise.bin").write_bytes(bytes(RNG.integers(0, 256, 300, dtype=np.uint8)))
    buf = io.BytesIO()
    Image.fromarray(RNG.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    (tmp_path / "trunc.png").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    buf = io.BytesIO()
    Image.fromarray(RNG.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)).save(buf, "JPEG")
    (tmp_path / "trunc.jpg").write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    reasons = {}
    for name in ("zero.png", "text.png", "noise.bin", "trunc.png", "trunc.jpg"):
        with pytest.raises(ImageError) as err:
            read_image(tmp_path / name)
        reasons[name] = str(err.value)
        assert "\n" not in reasons[name] and reasons[name]
    assert "empty" in reasons["zero.png"]
    assert "text" in reasons["text.png"]
    assert "truncated" in reasons["trunc.png"] or "corrupt" in reasons["trunc.png"]


def test_decompression_bomb_limit(tmp_path):
    # a PNG header claiming 30000 x 30000 pixels, with almost no data
    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)

    def chunk(t, d):
        return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xFFFFFFFF)

    (tmp_path / "bomb.png").write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))
    with pytest.raises(ImageError, match="decompression-bomb"):
        read_image(tmp_path / "bomb.png")
    Image.new("RGB", (50, 40)).save(tmp_path / "small.png")
    with pytest.raises(ImageError, match="max-pixels"):
        read_image(tmp_path / "small.png", max_pixels=1000)
    assert read_image(tmp_path / "small.png", max_pixels=2000).size == (50, 40)


@pytest.mark.parametrize("fmt", ["png", "jpg", "webp", "bmp", "tiff"])
def test_write_formats_carry_icc(tmp_path, fmt):
    icc = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    arr = RNG.integers(0, 256, size=(9, 11, 3), dtype=np.uint8)
    out = write_image(tmp_path / f"a.{fmt}", ImageData(arr, icc_profile=icc), fmt)
    with Image.open(out) as im:
        assert im.size == (11, 9) and im.mode == "RGB"
        if fmt != "bmp":
            assert im.info.get("icc_profile") == icc


def test_write_is_atomic_and_never_clobbers(tmp_path, monkeypatch):
    target = tmp_path / "out.png"
    target.write_bytes(b"precious")
    arr = np.zeros((4, 4, 3), np.uint8)
    with pytest.raises(FileExistsError):
        write_image(target, ImageData(arr), "png")
    assert target.read_bytes() == b"precious"

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        write_image(target, ImageData(arr), "png", overwrite=True)
    assert target.read_bytes() == b"precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.png"]  # no temporary left behind
