"""Reading and writing real-world images for upscaling: every common kind, nothing lost.

:func:`read_image` turns a file into an :class:`ImageData` - an ``(H, W, C)`` NumPy array in its
*native* bit depth plus what must travel to the output:

==================================  ==========================================================
input                               what you get
==================================  ==========================================================
RGB / RGBA / L / LA (8-bit)         the same mode, ``uint8``
palette (``P``), with or w/o tRNS   ``RGBA`` if the palette has transparency, else ``RGB``
L or RGB with a tRNS colour key     ``LA`` / ``RGBA`` (alpha 0 where the key colour is)
16-bit gray / gray+alpha / RGB /    ``L`` / ``LA`` / ``RGB`` / ``RGBA`` as ``uint16`` - the
RGBA PNG, 16-bit gray/RGB(A) TIFF   full 16 bits (Pillow alone would truncate RGB to 8 bits)
bilevel (``1``)                     ``L``, ``uint8`` (0 / 255)
CMYK, YCbCr, LAB, HSV               ``RGB`` (converted by Pillow; a CMYK ICC profile is dropped)
32-bit float (``F``) TIFF           ``L``, ``float32`` as stored (expected in [0, 1])
==================================  ==========================================================

The EXIF orientation is applied to the pixels and the tag is reset to 1 in the EXIF block that is
carried to the output, together with the ICC profile. Bit depth is decided by the file's sample
format (the decoder's raw mode), never by pixel values: a dark 16-bit image stays 16-bit.

:func:`write_image` writes atomically (a temporary file in the target folder, flushed to disk,
then renamed over the target) so an interrupted run never leaves a half-written image; without
``overwrite`` an existing file is never replaced. 16-bit PNG and TIFF are encoded here (Pillow
cannot write 16-bit colour); everything else goes through Pillow.

Every problem with a file raises :class:`ImageError` with a one-line reason.
"""
from __future__ import annotations

import contextlib
import io
import os
import struct
import sys
import warnings
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = [
    "DEFAULT_MAX_PIXELS",
    "FORMATS",
    "ImageData",
    "ImageError",
    "apply_orientation",
    "atomic_output",
    "from_pil",
    "read_image",
    "to_pil",
    "write_image",
]

# Pillow raises DecompressionBombError above 2 x MAX_IMAGE_PIXELS (about 179 MP); we keep that limit
# by default but make it our own option so that it can be raised (``--max-pixels``).
DEFAULT_MAX_PIXELS = 2 * 89_478_485

# output format name -> (Pillow format, file extension, can hold alpha, can hold 16 bits)
FORMATS: dict[str, tuple[str, str, bool, bool]] = {
    "png": ("PNG", ".png", True, True),
    "jpg": ("JPEG", ".jpg", False, False),
    "webp": ("WEBP", ".webp", True, False),
    "bmp": ("BMP", ".bmp", True, False),
    "tiff": ("TIFF", ".tif", True, True),
}
FORMAT_ALIASES = {"jpeg": "jpg", "tif": "tiff", "JPEG": "jpg", "PNG": "png", "WEBP": "webp", "BMP": "bmp",
                  "TIFF": "tiff", "MPO": "jpg"}

ORIENTATION_TAG = 0x0112
_CHANNELS = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4}
_MODE_OF_CHANNELS = {v: k for k, v in _CHANNELS.items()}


class ImageError(Exception):
    """A file that cannot be read or written as an image; ``str(exc)`` is a one-line reason."""


@dataclass
class ImageData:
    """Decoded pixels in their native depth plus the metadata to carry to the output.

    Attributes:
        pixels: ``(H, W, C)`` array, C = 1 (L), 2 (LA), 3 (RGB) or 4 (RGBA); ``uint8``, ``uint16``
            or ``float32`` (values in [0, 1]).
        icc_profile: ICC profile bytes (carried to the output).
        exif: EXIF block with the orientation reset to 1 (``None`` when the source had none).
        format: source format as Pillow names it (``PNG``, ``JPEG`` ...), ``None`` for arrays.
        frames: number of frames of the source (only the first is used).
        notes: remarks worth a line to the user (first frame of an animation, dropped CMYK profile).
    """

    pixels: np.ndarray
    icc_profile: bytes | None = None
    exif: bytes | None = None
    format: str | None = None
    frames: int = 1
    notes: list[str] = field(default_factory=list)

    @property
    def mode(self) -> str:
        return _MODE_OF_CHANNELS[self.pixels.shape[2]]

    @property
    def has_alpha(self) -> bool:
        return self.pixels.shape[2] in (2, 4)

    @property
    def bits(self) -> int:
        return {np.dtype(np.uint8): 8, np.dtype(np.uint16): 16}.get(self.pixels.dtype, 32)

    @property
    def size(self) -> tuple[int, int]:
        """(width, height), as Pillow reports it."""
        return self.pixels.shape[1], self.pixels.shape[0]


# ------------------------------------------------------------------------------------------------
# reading
# ------------------------------------------------------------------------------------------------
@contextlib.contextmanager
def _pillow_limits_off():
    """Disable Pillow's own decompression-bomb check (we apply ``max_pixels`` ourselves)."""
    previous = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield
    finally:
        Image.MAX_IMAGE_PIXELS = previous


def _looks_like_text(head: bytes) -> bool:
    if not head:
        return False
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return all(b >= 9 for b in head)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def read_image(path: str | os.PathLike, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> ImageData:
    """Read an image file into an :class:`ImageData` (see the module docstring for the mapping).

    Raises :class:`ImageError` (one-line reason, without the path) for empty, truncated,
    corrupt, non-image, unsupported or too large (``max_pixels``; ``None`` = no limit) files.
    """
    path = Path(path)
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise ImageError(f"cannot read: {exc.strerror or _one_line(exc)}") from None
    if not path.is_file():
        raise ImageError("not a regular file")
    if size == 0:
        raise ImageError("empty file (0 bytes)")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise ImageError(f"cannot read: {exc.strerror or _one_line(exc)}") from None
    return decode_image(data, max_pixels=max_pixels)


def decode_image(data: bytes, *, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> ImageData:
    """:func:`read_image` for bytes already in memory."""
    if not data:
        raise ImageError("empty file (0 bytes)")
    with _pillow_limits_off():
        try:
            im = Image.open(io.BytesIO(data))
        except Image.UnidentifiedImageError:
            if _looks_like_text(data[:512]):
                raise ImageError("not an image (looks like a text file)") from None
            raise ImageError("not an image, or an image format Pillow cannot read") from None
        except MemoryError:
            raise ImageError("not enough memory to open this image") from None
        except Exception as exc:  # noqa: BLE001 - Pillow's plugins raise many types (TypeError ...) on crafted files
            raise ImageError(f"corrupt image header ({_one_line(exc)})") from None
        w, h = im.size
        if w <= 0 or h <= 0:
            raise ImageError(f"invalid image size {w}x{h}")
        if max_pixels is not None and w * h > max_pixels:
            raise ImageError(
                f"{w}x{h} = {w * h / 1e6:.1f} megapixels exceeds the limit of {max_pixels / 1e6:.1f} "
                f"megapixels (decompression-bomb guard; raise it with --max-pixels / max_pixels=)"
            )
        try:
            return _decode_opened(im)
        except ImageError:
            raise
        except MemoryError:
            raise ImageError(f"not enough memory to decode a {w}x{h} image") from None
        except Exception as exc:  # noqa: BLE001 - Pillow's decoders raise many types on crafted files
            msg = _one_line(exc)
            if "truncated" in msg.lower() or isinstance(exc, EOFError):
                raise ImageError(f"truncated image file ({msg})") from None
            raise ImageError(f"corrupt image data ({msg})") from None


def _rawmode(im: Image.Image) -> str | None:
    if not getattr(im, "tile", None):
        return None
    args = im.tile[0][3]
    if isinstance(args, str):
        return args
    if isinstance(args, tuple) and args and isinstance(args[0], str):
        return args[0]
    return None


def _with_rawmode(tile, rawmode: str):
    codec, extents, offset, args = tile[0], tile[1], tile[2], tile[3]
    args = rawmode if isinstance(args, str) else (rawmode, *args[1:])
    try:
        return tile._replace(args=args)
    except AttributeError:  # older Pillow: plain tuples
        return (codec, extents, offset, args)


def _decode_with(data_im: Image.Image, rawmode: str) -> np.ndarray:
    """Decode the (not yet loaded) image again with another raw mode; returns the 8-bit array."""
    fp = data_im.fp
    fp.seek(0)
    again = Image.open(fp)
    if hasattr(again, "n_frames") and getattr(data_im, "tell", lambda: 0)() != 0:  # pragma: no cover
        again.seek(data_im.tell())
    again.tile = [_with_rawmode(t, rawmode) for t in again.tile]
    again.load()
    return np.asarray(again)


def _decode_16bit_colour(im: Image.Image, rawmode: str) -> np.ndarray | None:
    """Full 16-bit samples of an RGB(A) or gray+alpha 16-bit image, via Pillow's own decoders.

    Pillow decodes 16-bit colour to 8 bits by keeping the high byte of each sample. Decoding the
    same data a second time with the raw mode of the opposite byte order keeps the *low* bytes;
    the two together are the exact 16-bit samples (the PNG/TIFF unfiltering and decompression are
    Pillow's, so this is as fast and as complete as Pillow's 8-bit decode). A 16-bit gray+alpha
    PNG has the byte layout of an 8-bit RGBA one and is decoded as such.
    """
    base, _, suffix = rawmode.partition(";")
    if rawmode == "LA;16B":  # PNG gray+alpha 16-bit: bytes L_hi L_lo A_hi A_lo per pixel
        raw = _decode_with(im, "RGBA").astype(np.uint16)
        return np.stack([raw[..., 0] << 8 | raw[..., 1], raw[..., 2] << 8 | raw[..., 3]], axis=-1)
    if suffix not in ("16B", "16L", "16N") or base not in ("RGB", "RGBA", "RGBX", "RGBa"):
        return None
    if suffix == "16N":  # native byte order (libtiff decodes to it)
        suffix = "16L" if sys.byteorder == "little" else "16B"
    other = f"{base};{'16L' if suffix == '16B' else '16B'}"
    hi = _decode_with(im, rawmode).astype(np.uint16)
    lo = _decode_with(im, other).astype(np.uint16)
    out = hi << 8 | lo
    if base == "RGBa":  # premultiplied alpha stored: unpremultiply in 16 bits
        a = out[..., 3:4].astype(np.float64)
        rgb = np.where(a > 0, out[..., :3] * 65535.0 / np.maximum(a, 1), 0)
        out = np.concatenate([np.clip(np.rint(rgb), 0, 65535).astype(np.uint16), out[..., 3:4]], axis=-1)
    if im.mode == "RGB":
        out = out[..., :3]
    return out


def _colour_key_alpha(pixels: np.ndarray, key) -> np.ndarray:
    """Alpha channel for a tRNS colour key (alpha 0 where the pixel equals the key colour)."""
    key = np.atleast_1d(np.asarray(key, dtype=np.int64))
    if pixels.shape[2] != key.size:
        return pixels
    hit = np.all(pixels == key.astype(pixels.dtype), axis=2, keepdims=True)
    full = np.iinfo(pixels.dtype).max
    alpha = np.where(hit, 0, full).astype(pixels.dtype)
    return np.concatenate([pixels, alpha], axis=2)


def from_pil(im: Image.Image) -> tuple[np.ndarray, list[str]]:
    """Pixels of a Pillow image as ``(H, W, C)`` uint8 / uint16 / float32, plus notes.

    Not-yet-loaded images opened from 16-bit colour files keep their full 16 bits; a loaded
    in-memory image gives what Pillow holds (8 bits per colour channel).
    """
    notes: list[str] = []
    mode = im.mode
    rawmode = _rawmode(im) if getattr(im, "fp", None) is not None else None
    trns = im.info.get("transparency")
    if rawmode is not None and mode in ("RGB", "RGBA") and ("16" in rawmode):
        arr = _decode_16bit_colour(im, rawmode)
        if arr is not None:
            if mode == "RGB" and trns is not None and isinstance(trns, tuple):
                arr = _colour_key_alpha(arr, trns)
            return arr, notes
    im.load()
    if mode in ("I;16", "I;16B", "I;16L", "I;16N"):
        arr = np.asarray(im).astype(np.uint16)[..., None]
        if trns is not None and isinstance(trns, int):
            arr = _colour_key_alpha(arr, trns)
        return arr, notes
    if mode == "I":
        arr = np.asarray(im)
        if arr.min() < 0 or arr.max() > 65535:
            notes.append("32-bit integer samples outside 0..65535 were clipped to 16 bits")
        arr = np.clip(arr, 0, 65535).astype(np.uint16)[..., None]
        if trns is not None and isinstance(trns, int):
            arr = _colour_key_alpha(arr, trns)
        return arr, notes
    if mode == "F":
        return np.asarray(im, dtype=np.float32)[..., None].copy(), notes
    if mode == "1":
        return np.asarray(im.convert("L"))[..., None], notes
    if mode in ("P", "PA"):
        has_alpha = mode == "PA" or trns is not None
        return np.asarray(im.convert("RGBA" if has_alpha else "RGB")), notes
    if mode == "L":
        arr = np.asarray(im)[..., None]
        if trns is not None and isinstance(trns, int):
            arr = _colour_key_alpha(arr, trns)
        return arr, notes
    if mode == "LA":
        return np.asarray(im), notes
    if mode == "La":
        return np.asarray(im.convert("LA")), notes
    if mode == "RGB":
        arr = np.asarray(im)
        if trns is not None and isinstance(trns, tuple):
            arr = _colour_key_alpha(arr, trns)
        return arr, notes
    if mode == "RGBA":
        return np.asarray(im), notes
    if mode in ("RGBa", "RGBX"):
        return np.asarray(im.convert("RGBA" if mode == "RGBa" else "RGB")), notes
    if mode in ("CMYK", "YCbCr", "LAB", "HSV"):
        if mode == "CMYK":
            notes.append("CMYK converted to RGB (its ICC profile, which describes CMYK, is not carried over)")
        return np.asarray(im.convert("RGB")), notes
    raise ImageError(f"unsupported pixel mode {mode!r}")


def apply_orientation(pixels: np.ndarray, orientation: int) -> np.ndarray:
    """Apply an EXIF orientation (1-8) to ``(H, W, C)`` pixels, as a viewer would display them."""
    if orientation == 2:
        out = pixels[:, ::-1]
    elif orientation == 3:
        out = pixels[::-1, ::-1]
    elif orientation == 4:
        out = pixels[::-1]
    elif orientation == 5:
        out = pixels.transpose(1, 0, 2)
    elif orientation == 6:
        out = np.rot90(pixels, -1)
    elif orientation == 7:
        out = np.rot90(pixels, 2).transpose(1, 0, 2)
    elif orientation == 8:
        out = np.rot90(pixels, 1)
    else:
        return pixels
    return np.ascontiguousarray(out)


def _exif_of(im: Image.Image) -> tuple[int, bytes | None]:
    """(orientation, EXIF bytes with the orientation reset to 1 or None if the file had no EXIF)."""
    try:
        exif = im.getexif()
    except Exception:  # a broken EXIF block must not make a good image unreadable
        return 1, None
    try:
        orientation = int(exif.get(ORIENTATION_TAG, 1) or 1)
    except (TypeError, ValueError):
        orientation = 1
    if "exif" not in im.info:  # e.g. TIFF: getexif() holds the TIFF structure tags, not EXIF
        return orientation, None
    if ORIENTATION_TAG in exif:
        exif[ORIENTATION_TAG] = 1
    try:
        return orientation, exif.tobytes()
    except Exception:
        return orientation, None


def _decode_opened(im: Image.Image) -> ImageData:
    frames = int(getattr(im, "n_frames", 1) or 1)
    fmt = im.format
    pixels, notes = from_pil(im)  # first: reading EXIF may load (and close) the image
    orientation, exif = _exif_of(im)
    icc = im.info.get("icc_profile") or None
    if im.mode == "CMYK":
        icc = None
    if frames > 1:
        notes.append(f"{frames} frames: only the first is upscaled")
    pixels = apply_orientation(pixels, orientation)
    if pixels.dtype == np.float32:
        bad = ~np.isfinite(pixels)
        if bad.any():
            raise ImageError("float image holds NaN or infinite values")
    return ImageData(pixels=pixels, icc_profile=icc, exif=exif, format=fmt, frames=frames, notes=notes)


def to_pil(pixels: np.ndarray) -> Image.Image:
    """``(H, W, C)`` uint8 / uint16 (gray only) / float32 (gray only) -> Pillow image."""
    c = pixels.shape[2]
    if pixels.dtype == np.uint8:  # Pillow infers L / LA / RGB / RGBA from the shape
        return Image.fromarray(np.ascontiguousarray(pixels[..., 0] if c == 1 else pixels))
    if pixels.dtype == np.uint16 and c == 1:  # -> I;16
        return Image.fromarray(np.ascontiguousarray(pixels[..., 0]).astype("<u2"))
    if pixels.dtype == np.float32 and c == 1:  # -> F
        return Image.fromarray(np.ascontiguousarray(pixels[..., 0]))
    raise ValueError(f"Pillow has no image mode for {c} channels of {pixels.dtype}")


# ------------------------------------------------------------------------------------------------
# writing
# ------------------------------------------------------------------------------------------------
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _exif_payload(exif: bytes) -> bytes:
    return exif[6:] if exif.startswith(b"Exif\x00\x00") else exif


def write_png16(f, pixels: np.ndarray, icc_profile: bytes | None = None, exif: bytes | None = None,
                level: int = 6, band: int = 256) -> None:
    """Encode a 16-bit PNG (gray, gray+alpha, RGB, RGBA) to a binary file object, in bands of rows."""
    h, w, c = pixels.shape
    colour_type = {1: 0, 2: 4, 3: 2, 4: 6}[c]
    f.write(b"\x89PNG\r\n\x1a\n")
    f.write(_png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour_type, 0, 0, 0)))
    if icc_profile:
        f.write(_png_chunk(b"iCCP", b"ICC profile\x00\x00" + zlib.compress(icc_profile)))
    if exif:
        f.write(_png_chunk(b"eXIf", _exif_payload(exif)))
    comp = zlib.compressobj(level)
    prev = np.zeros((w * c * 2,), np.uint8)
    for y0 in range(0, h, band):
        rows = np.ascontiguousarray(pixels[y0 : y0 + band].astype(">u2")).view(np.uint8).reshape(-1, w * c * 2)
        # PNG "Up" filter (type 2): each byte minus the byte above, modulo 256
        above = np.concatenate([prev[None], rows[:-1]], axis=0)
        filtered = rows - above  # uint8 arithmetic wraps modulo 256
        prev = rows[-1].copy()
        block = np.empty((rows.shape[0], rows.shape[1] + 1), np.uint8)
        block[:, 0] = 2
        block[:, 1:] = filtered
        data = comp.compress(block.tobytes())
        if data:
            f.write(_png_chunk(b"IDAT", data))
    f.write(_png_chunk(b"IDAT", comp.flush()))
    f.write(_png_chunk(b"IEND", b""))


def write_tiff16(f, pixels: np.ndarray, icc_profile: bytes | None = None, rows_per_strip: int = 64) -> None:
    """Encode a 16-bit little-endian TIFF (Deflate + horizontal predictor), gray / RGB with optional alpha."""
    h, w, c = pixels.shape
    f.write(b"II*\x00" + struct.pack("<I", 0))  # IFD offset patched at the end
    offsets, counts = [], []
    for y0 in range(0, h, rows_per_strip):
        strip = pixels[y0 : y0 + rows_per_strip].astype(np.int32)
        pred = strip.copy()
        pred[:, 1:] = strip[:, 1:] - strip[:, :-1]  # predictor 2 (horizontal differencing) per sample
        data = zlib.compress((pred & 0xFFFF).astype("<u2").tobytes(), 6)
        offsets.append(f.tell())
        counts.append(len(data))
        f.write(data)
        if f.tell() % 2:
            f.write(b"\x00")
    extra_values: list[tuple[int, int, list | bytes]] = []  # (tag, type, values)
    photometric = 1 if c in (1, 2) else 2
    tags: list[tuple[int, int, list | bytes]] = [
        (256, 4, [w]), (257, 4, [h]), (258, 3, [16] * c), (259, 3, [8]), (262, 3, [photometric]),
        (273, 4, offsets), (274, 3, [1]), (277, 3, [c]), (278, 4, [rows_per_strip]), (279, 4, counts),
        (284, 3, [1]), (317, 3, [2]), (339, 3, [1] * c),
    ]
    if c in (2, 4):
        tags.append((338, 3, [2]))  # extra sample = unassociated alpha
    if icc_profile:
        tags.append((34675, 7, icc_profile))
    tags.sort(key=lambda t: t[0])
    del extra_values
    # lay out out-of-line values after the IFD
    size_of = {3: 2, 4: 4, 7: 1}
    fmt_of = {3: "H", 4: "I"}
    ifd_pos = f.tell()
    data_pos = ifd_pos + 2 + 12 * len(tags) + 4
    entries, blobs = [], []
    for tag, typ, values in tags:
        count = len(values)
        raw = bytes(values) if typ == 7 else struct.pack(f"<{count}{fmt_of[typ]}", *values)
        if len(raw) <= 4:
            entries.append(struct.pack("<HHI", tag, typ, count) + raw.ljust(4, b"\x00"))
        else:
            entries.append(struct.pack("<HHII", tag, typ, count, data_pos))
            blobs.append(raw + (b"\x00" if len(raw) % 2 else b""))
            data_pos += len(blobs[-1])
        assert size_of[typ] * count == len(raw)
    f.write(struct.pack("<H", len(tags)) + b"".join(entries) + struct.pack("<I", 0) + b"".join(blobs))
    f.seek(4)
    f.write(struct.pack("<I", ifd_pos))
    f.seek(0, os.SEEK_END)


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, *, overwrite: bool = False):
    """Yield a temporary binary file beside ``path``; on success it is synced and renamed to ``path``.

    On any error (or Ctrl-C) the temporary file is removed and ``path`` is untouched. Without
    ``overwrite``, an existing ``path`` is never replaced (:class:`FileExistsError`). The temporary
    file (``.<name>.<random>.part``) is locked while it is written, so that
    :func:`lightsr.inference.partfiles.remove_stale_parts` removes it only once its writer is gone
    (a run killed with SIGKILL); it gets the usual permissions (``0666 & ~umask``).
    """
    from lightsr.inference.partfiles import part_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if not overwrite and path.exists():
        raise FileExistsError(f"{path} exists")
    with part_file(path) as (f, tmp):
        yield f
        f.flush()
        os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # atomic and never replaces an existing file
            except FileExistsError:
                raise FileExistsError(f"{path} exists") from None
            except OSError:  # file system without hard links
                if path.exists():
                    raise FileExistsError(f"{path} exists") from None
                os.replace(tmp, path)


def normalise_format(fmt: str) -> str:
    key = FORMAT_ALIASES.get(fmt, FORMAT_ALIASES.get(fmt.lower(), fmt.lower()))
    if key not in FORMATS:
        raise ValueError(f"unknown image format {fmt!r}; choose one of {', '.join(FORMATS)}")
    return key


def to_8bit(pixels: np.ndarray) -> np.ndarray:
    """uint16 / float32 -> uint8 with rounding (used when a format cannot hold more bits)."""
    if pixels.dtype == np.uint8:
        return pixels
    if pixels.dtype == np.uint16:
        return ((pixels.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    return np.clip(np.rint(pixels * 255.0), 0, 255).astype(np.uint8)


def to_16bit(pixels: np.ndarray) -> np.ndarray:
    if pixels.dtype == np.uint16:
        return pixels
    if pixels.dtype == np.uint8:
        return pixels.astype(np.uint16) * 257
    return np.clip(np.rint(pixels * 65535.0), 0, 65535).astype(np.uint16)


def write_image(
    path: str | os.PathLike,
    image: ImageData,
    fmt: str = "png",
    *,
    quality: int = 95,
    overwrite: bool = False,
) -> Path:
    """Write ``image`` atomically as ``fmt`` (png, jpg, webp, bmp, tiff), carrying ICC and EXIF.

    16-bit (and float) pixels are written as 16-bit PNG / TIFF; the caller decides what to do when
    the format cannot hold 16 bits or alpha (:data:`FORMATS` says) - this function converts to
    8 bits for 8-bit formats and refuses alpha in JPEG.
    """
    fmt = normalise_format(fmt)
    pil_format, _, alpha_ok, deep_ok = FORMATS[fmt]
    pixels = image.pixels
    if image.has_alpha and not alpha_ok:
        raise ImageError(f"{pil_format} cannot store an alpha channel")
    if pixels.dtype == np.float32 and deep_ok and fmt == "tiff" and pixels.shape[2] == 1:
        deep = "float"
    elif pixels.dtype != np.uint8 and deep_ok:
        deep = "16"
        pixels = to_16bit(pixels)
    else:
        deep = None
        pixels = to_8bit(pixels)
    path = Path(path)
    with atomic_output(path, overwrite=overwrite) as f:
        if deep == "16" and fmt == "png":
            write_png16(f, pixels, image.icc_profile, image.exif)
        elif deep == "16" and fmt == "tiff":
            write_tiff16(f, pixels, image.icc_profile)
        else:
            im = to_pil(pixels)
            kwargs: dict = {}
            if image.icc_profile and fmt != "bmp":
                kwargs["icc_profile"] = image.icc_profile
            if image.exif and fmt in ("jpg", "png", "webp"):
                kwargs["exif"] = image.exif
            if fmt == "jpg":
                kwargs.update(quality=int(quality), subsampling="4:4:4" if quality >= 90 else "4:2:0", optimize=True)
            elif fmt == "webp":
                kwargs.update(quality=int(quality), method=4)
            elif fmt == "tiff":
                kwargs.update(compression="tiff_deflate")
            elif fmt == "png":
                kwargs.update(compress_level=6)
            im.save(f, format=pil_format, **kwargs)
    return path


def with_pixels(image: ImageData, pixels: np.ndarray) -> ImageData:
    """A copy of ``image`` (metadata) holding new ``pixels``."""
    return replace(image, pixels=pixels, notes=list(image.notes))

