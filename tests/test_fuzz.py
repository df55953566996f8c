"""Fuzz: corrupt and crafted weights files and images, generated here, through ``load_model``,
``lightsr upscale`` and ``lightsr eval``.

The contract (issue 22): only lightsr's own error types escape the Python API, every CLI failure is
a line without a traceback and a documented exit code, a failed run writes no output, and pickled
code never runs. Each case is recorded with its outcome; the summary (cases and failures of each
kind) is printed - run ``pytest tests/test_fuzz.py -s`` to see it.
"""
from __future__ import annotations

import io
import json
import pickle
import struct
import zipfile
import zlib
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

import lightsr
from lightsr.cli import main
from lightsr.cli.errors import user_errors

SEED = 22
RNG = np.random.default_rng(SEED)
MARKER_NAME = "pwned.txt"


# --------------------------------------------------------------------------------------------------
# the base model: small, so that every case costs milliseconds
# --------------------------------------------------------------------------------------------------
def _base_model():
    torch.manual_seed(0)
    return lightsr.create_model("dlgsanet_tiny", 2, dim=12, groups=1, blocks=1, num_heads=2)


def _safetensors_bytes(sd: dict, meta: dict) -> bytes:
    return st_save({k: v.contiguous() for k, v in sd.items()}, metadata=meta)


def _split_safetensors(data: bytes) -> tuple[dict, bytes]:
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def _join_safetensors(header: dict, payload: bytes) -> bytes:
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + payload


def _torch_bytes(obj, legacy: bool = False) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=not legacy)
    return buf.getvalue()


class _Evil:
    """Unpickling this would run code: a file named MARKER_NAME would appear."""

    def __init__(self, marker: Path, fn=None):
        self.marker, self.fn = str(marker), fn

    def __reduce__(self):
        import os

        if self.fn == "eval":
            return (eval, (f"open({self.marker!r}, 'w').write('x')",))
        return (os.system, (f"touch {self.marker}",))


# --------------------------------------------------------------------------------------------------
# weights cases: (kind, name, bytes, suffix)
# --------------------------------------------------------------------------------------------------
def weights_cases(tmp: Path) -> list[tuple[str, str, bytes, str]]:
    model = _base_model()
    sd = {k: v.detach().clone() for k, v in model.state_dict().items()}
    meta = {"format": "lightsr", "format_version": "1", "arch": "dlgsanet_tiny", "scale": "2",
            "options": json.dumps(model.lightsr_config["options"], sort_keys=True), "lightsr_version": "0.1.0"}
    good = _safetensors_bytes(sd, meta)
    cases: list[tuple[str, str, bytes, str]] = [("valid", "the base file", good, ".safetensors")]
    keys = list(sd)

    # 1. truncations and byte flips of a valid safetensors file
    for i, cut in enumerate(sorted(RNG.integers(1, len(good) - 1, size=40))):
        cases.append(("truncated safetensors", f"cut at {cut}", good[:cut], ".safetensors"))
    header_len = int.from_bytes(good[:8], "little") + 8
    for i in range(50):
        data = bytearray(good)
        where = int(RNG.integers(0, header_len if i % 2 == 0 else len(good)))
        for j in range(int(RNG.integers(1, 6))):
            data[min(where + j, len(data) - 1)] = int(RNG.integers(0, 256))
        cases.append(("flipped safetensors", f"bytes at {where}", bytes(data), ".safetensors"))

    # 2. crafted metadata
    base_opts = json.loads(meta["options"])
    metas = {
        "dim 2400": {"options": json.dumps({**base_opts, "dim": 2400})},
        "dim 4800": {"options": json.dumps({**base_opts, "dim": 4800})},
        "groups 10^6": {"options": json.dumps({**base_opts, "groups": 10**6})},
        "blocks 64 groups 64": {"options": json.dumps({**base_opts, "groups": 64, "blocks": 64})},
        "dim -1": {"options": json.dumps({**base_opts, "dim": -1})},
        "dim 0": {"options": json.dumps({**base_opts, "dim": 0})},
        "dim string": {"options": json.dumps({**base_opts, "dim": "12"})},
        "dim float": {"options": json.dumps({**base_opts, "dim": 12.5})},
        "dim list": {"options": json.dumps({**base_opts, "dim": [12]})},
        "dim null": {"options": json.dumps({**base_opts, "dim": None})},
        "dim bool": {"options": json.dumps({**base_opts, "dim": True})},
        "dim 1e300": {"options": json.dumps({**base_opts, "dim": 1e300})},
        "ffn nan": {"options": '{"ffn_expansion": NaN}'},
        "ffn inf": {"options": '{"ffn_expansion": Infinity}'},
        "kernel 0": {"options": json.dumps({**base_opts, "kernel_size": 0})},
        "kernel even": {"options": json.dumps({**base_opts, "kernel_size": 6})},
        "group channels 5": {"options": json.dumps({**base_opts, "group_channels": 5})},
        "heads 5": {"options": json.dumps({**base_opts, "num_heads": 5})},
        "hdtb unknown": {"options": json.dumps({**base_opts, "hdtb": "nope"})},
        "activation unknown": {"options": json.dumps({**base_opts, "attention_activation": "x" * 1000})},
        "tlc string": {"options": json.dumps({**base_opts, "tlc": "yes"})},
        "unknown option": {"options": json.dumps({**base_opts, "evil": 1})},
        "scale option": {"options": json.dumps({**base_opts, "scale": 4})},
        "options not json": {"options": "{dim: 12"},
        "options list": {"options": "[1, 2]"},
        "options string": {"options": '"dim"'},
        "options deep": {"options": "[" * 100000 + "]" * 100000},
        "options empty": {"options": ""},
        "arch unknown": {"arch": "resnet50"},
        "arch empty": {"arch": ""},
        "arch other family": {"arch": "lamnet"},
        "arch peer": {"arch": "imdn"},
        "scale text": {"scale": "four"},
        "scale zero": {"scale": "0"},
        "scale huge": {"scale": "1000000000"},
        "scale negative": {"scale": "-2"},
        "scale float": {"scale": "2.0"},
        "scale other": {"scale": "4"},
        "scale unicode digit": {"scale": "\uff12"},
        "format version 99": {"format_version": "99"},
        "format version text": {"format_version": "one"},
        "no arch": {"arch": None},
        "no scale": {"scale": None},
    }
    for name, change in metas.items():
        m = {**meta, **{k: v for k, v in change.items() if v is not None}}
        for k, v in change.items():
            if v is None:
                m.pop(k)
        cases.append(("crafted metadata", name, _safetensors_bytes(sd, m), ".safetensors"))

    # 3. crafted tensors (valid files, wrong content)
    def with_sd(change) -> bytes:
        new = {k: v.clone() for k, v in sd.items()}
        change(new)
        return _safetensors_bytes(new, meta)

    k0, klast = keys[0], keys[-1]
    tensor_cases = {
        "nan in first tensor": lambda d: d[k0].view(-1).__setitem__(0, float("nan")),
        "nan in last tensor": lambda d: d[klast].view(-1).__setitem__(-1, float("nan")),
        "inf": lambda d: d[keys[len(keys) // 2]].view(-1).__setitem__(0, float("inf")),
        "-inf": lambda d: d[keys[3]].view(-1).__setitem__(0, float("-inf")),
        "scaled 1e30": lambda d: [v.mul_(1e30) for v in d.values() if v.is_floating_point()],
        "scaled 1e10": lambda d: [v.mul_(1e10) for v in d.values() if v.is_floating_point()],
        "scaled 1e3": lambda d: [v.mul_(1e3) for v in d.values() if v.is_floating_point()],
        "all zero": lambda d: [v.zero_() for v in d.values()],
        "int tensor": lambda d: d.__setitem__(k0, d[k0].to(torch.int32)),
        "bool tensor": lambda d: d.__setitem__(k0, d[k0] > 0),
        "float16": lambda d: d.__setitem__(k0, d[k0].half()),
        "float64": lambda d: d.__setitem__(k0, d[k0].double()),
        "bfloat16 all": lambda d: [d.__setitem__(k, v.bfloat16()) for k, v in list(d.items())],
        "wrong shape": lambda d: d.__setitem__(k0, torch.zeros(3, 3)),
        "transposed": lambda d: d.__setitem__(k0, d[k0].transpose(0, 1).contiguous()),
        "scalar": lambda d: d.__setitem__(k0, torch.tensor(1.0)),
        "empty": lambda d: d.__setitem__(k0, torch.zeros(0)),
        "huge extra tensor": lambda d: d.__setitem__("extra.weight", torch.zeros(1 << 20)),
        "missing tensor": lambda d: d.pop(klast),
        "missing all but one": lambda d: [d.pop(k) for k in keys[1:]],
        "renamed tensor": lambda d: d.__setitem__("x" + k0, d.pop(k0)),
        "module prefix": lambda d: [d.__setitem__("module." + k, d.pop(k)) for k in keys],
        "duplicate under prefix": lambda d: d.__setitem__("module." + k0, d[k0].clone()),
    }
    for name, change in tensor_cases.items():
        cases.append(("crafted tensors", name, with_sd(change), ".safetensors"))

    # 4. not weights at all, named .pth / .safetensors
    jpeg = io.BytesIO()
    Image.new("RGB", (16, 16), (200, 10, 10)).save(jpeg, "JPEG")
    png = io.BytesIO()
    Image.new("RGB", (16, 16)).save(png, "PNG")
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("readme.txt", "hello")
    foreign = {
        "text": b"root:x:0:0:root:/root:/bin/bash\n" * 10,
        "html": b"<!DOCTYPE html><html><body>404 not found</body></html>",
        "jpeg": jpeg.getvalue(),
        "png": png.getvalue(),
        "zip": zipped.getvalue(),
        "gzip": zlib.compress(b"x" * 1000, wbits=31),
        "random 7 bytes": RNG.bytes(7),
        "random 1 KB": RNG.bytes(1024),
        "random 64 KB": RNG.bytes(65536),
        "zeros": bytes(4096),
        "ansi escapes": b"\x1b[31mred\x1b[0m\n" * 20,
        "one byte": b"\x80",
        "pickle magic only": b"\x80\x02",
        "safetensors header only": (100).to_bytes(8, "little") + b"{",
        "safetensors huge header len": (10**12).to_bytes(8, "little") + b"{}",
    }
    for name, data in foreign.items():
        for suffix in (".pth", ".safetensors"):
            cases.append(("not weights", f"{name} as {suffix}", data, suffix))

    # 5. torch.save / pickle files: wrong content, pickled code, corruption
    marker = tmp / MARKER_NAME
    pth = _torch_bytes({"params": sd})
    legacy = _torch_bytes({"params": sd}, legacy=True)
    pickles = {
        "list": _torch_bytes([1, 2, 3]),
        "int": _torch_bytes(7),
        "string": _torch_bytes("weights"),
        "none": _torch_bytes(None),
        "dict of ints": _torch_bytes({"a": 1, "b": 2}),
        "dict of lists": _torch_bytes({"params": [torch.zeros(2)]}),
        "params not a dict": _torch_bytes({"params": torch.zeros(2)}),
        "int keys": _torch_bytes({0: torch.zeros(2), 1: torch.ones(3)}),
        "nested 3": _torch_bytes({"state_dict": {"model": {"params": sd}}}),
        "empty dict": _torch_bytes({}),
        "sparse tensor": _torch_bytes({"w": torch.zeros(4, 4).to_sparse()}),
        "complex tensor": _torch_bytes({"w": torch.zeros(4, dtype=torch.complex64)}),
        "dlgsanet 1-d embed": _torch_bytes({"overlap_embed.0.proj.weight": torch.zeros(12),
                                            "upsample.0.weight": torch.zeros(12, 12, 3, 3),
                                            "deep_feature_extraction.0.body.0.x": torch.zeros(1)}),
        "dlgsanet dim 0": _torch_bytes({"overlap_embed.0.proj.weight": torch.zeros(0, 3, 3, 3),
                                        "upsample.0.weight": torch.zeros(12, 0, 3, 3),
                                        "deep_feature_extraction.0.body.0.x": torch.zeros(1)}),
        "lamnet bad kernel map": _torch_bytes({"shallow_feature_extraction.weight": torch.zeros(8, 3, 3, 3),
                                               "alpha": torch.zeros(1), "upsample.0.weight": torch.zeros(12, 8, 3, 3),
                                               "deep_feature_extraction.0.mixers.0.fn.kernel_map": torch.zeros(3)}),
        "lgun scalars": _torch_bytes({"embed.weight": torch.tensor(1.0), "upsample.0.weight": torch.tensor(2.0),
                                      "body.0.norm1.weight": torch.zeros(1), "body.0.ffn.se.fc1.weight": torch.zeros(1)}),
        "resnet": _torch_bytes({"conv1.weight": torch.zeros(8, 3, 3, 3), "fc.weight": torch.zeros(10, 8)}),
        "legacy format": legacy,
        "os.system": pickle.dumps({"params": {"w": _Evil(marker)}}, protocol=2),
        "eval": pickle.dumps({"params": {"w": _Evil(marker, "eval")}}, protocol=4),
        "os.system in zip": _torch_zip_with(pth, pickle.dumps({"params": _Evil(marker)}, protocol=2)),
    }
    for name, data in pickles.items():
        cases.append(("pth content", name, data, ".pth"))
    for cut in sorted(RNG.integers(1, len(pth) - 1, size=15)):
        cases.append(("truncated pth", f"cut at {cut}", pth[:cut], ".pth"))
    for cut in sorted(RNG.integers(1, len(legacy) - 1, size=10)):
        cases.append(("truncated pth", f"legacy cut at {cut}", legacy[:cut], ".pth"))
    for i in range(25):
        data = bytearray(pth if i % 3 else legacy)
        where = int(RNG.integers(0, len(data)))
        for j in range(int(RNG.integers(1, 8))):
            data[min(where + j, len(data) - 1)] ^= int(RNG.integers(1, 256))
        cases.append(("flipped pth", f"bytes at {where}", bytes(data), ".pth"))
    return cases


def _torch_zip_with(pth: bytes, data_pkl: bytes) -> bytes:
    """A torch zip checkpoint whose data.pkl was replaced (pickled code inside the modern format)."""
    src = zipfile.ZipFile(io.BytesIO(pth))
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_STORED) as z:
        for info in src.infolist():
            z.writestr(info, data_pkl if info.filename.endswith("data.pkl") else src.read(info))
    return out.getvalue()


# --------------------------------------------------------------------------------------------------
# image cases: (kind, name, bytes, suffix)
# --------------------------------------------------------------------------------------------------
def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _png(w: int, h: int, depth: int = 8, colour: int = 2, body: bytes | None = None, extra: bytes = b"") -> bytes:
    ihdr = struct.pack(">IIBBBBB", w, h, depth, colour, 0, 0, 0)
    if body is None:
        body = zlib.compress(b"".join(b"\x00" + bytes(min(w, 64) * 3) for _ in range(min(h, 64))))  # small: crafted
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + extra + _png_chunk(b"IDAT", body) + _png_chunk(b"IEND", b"")


def image_cases() -> list[tuple[str, str, bytes, str]]:
    pixels = RNG.integers(0, 256, size=(24, 20, 3), dtype=np.uint8)
    encoded = {}
    for fmt, suffix in (("PNG", ".png"), ("JPEG", ".jpg"), ("WEBP", ".webp"), ("TIFF", ".tif"), ("BMP", ".bmp"),
                        ("GIF", ".gif")):
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, fmt)
        encoded[suffix] = buf.getvalue()
    cases: list[tuple[str, str, bytes, str]] = []
    for suffix, data in encoded.items():
        cases.append(("valid image", suffix, data, suffix))
        for cut in sorted(set(RNG.integers(1, len(data) - 1, size=5).tolist())):
            cases.append(("truncated image", f"{suffix} cut at {cut}", data[:cut], suffix))
        for i in range(5):
            flipped = bytearray(data)
            where = int(RNG.integers(0, min(len(data), 200) if i < 3 else len(data)))
            for j in range(int(RNG.integers(1, 6))):
                flipped[min(where + j, len(flipped) - 1)] = int(RNG.integers(0, 256))
            cases.append(("flipped image", f"{suffix} bytes at {where}", bytes(flipped), suffix))
    crafted = {
        "png 0x0": _png(0, 0),
        "png 1x1": _png(1, 1, body=zlib.compress(b"\x00\xff\x00\x00")),
        "png 1x500": _png(1, 500, body=zlib.compress(b"\x00\x80\x80\x80" * 500)),
        "png 100000x100000 header": _png(100000, 100000),
        "png 20000x1 header": _png(20000, 1),
        "png 2^31 width": _png(2**31 - 1, 1),
        "png bad crc": _png(8, 8)[:-20] + b"\x00\x00\x00\x00" + _png(8, 8)[-16:],
        "png bad depth": _png(8, 8, depth=7),
        "png bad colour type": _png(8, 8, colour=5),
        "png empty idat": _png(8, 8, body=b""),
        "png garbage idat": _png(8, 8, body=RNG.bytes(100)),
        "png bomb header": _png(15000, 15000, body=zlib.compress(bytes(45001))),  # 225 MP: refused unread
        "png huge iccp": _png(8, 8, extra=_png_chunk(b"iCCP", b"icc\x00\x00" + zlib.compress(RNG.bytes(5000)))),
        "png bad exif": _png(8, 8, extra=_png_chunk(b"eXIf", b"MM\x00*" + RNG.bytes(40))),
        "png 16-bit": _png(6, 6, depth=16, body=zlib.compress(b"".join(b"\x00" + RNG.bytes(36) for _ in range(6)))),
        "empty file": b"",
        "text": b"this is not an image\n",
        "html": b"<html><body>hi</body></html>",
        "random": RNG.bytes(3000),
        "jpeg header only": b"\xff\xd8\xff\xe0\x00\x10JFIF\x00",
        "gif header only": b"GIF89a\x10\x00\x10\x00",
        "bmp negative size": b"BM" + struct.pack("<IHHI", 70, 0, 0, 54) + struct.pack("<IiiHHIIiiII", 40, -8, -8, 1, 24, 0, 0, 0, 0, 0, 0) + bytes(16),
        "tiff bad ifd": b"II*\x00" + struct.pack("<I", 10**9),
    }
    for name, data in crafted.items():
        cases.append(("crafted image", name, data, ".png" if not name.startswith(("bmp", "tiff", "gif", "jpeg")) else
                      {"bmp": ".bmp", "tif": ".tif", "gif": ".gif", "jpe": ".jpg"}[name[:3]]))
    pal = io.BytesIO()
    Image.fromarray(pixels).convert("P").save(pal, "PNG", transparency=3)
    cases.append(("valid image", "palette with transparency", pal.getvalue(), ".png"))
    anim = io.BytesIO()
    frames = [Image.fromarray(np.roll(pixels, i, axis=0)) for i in range(3)]
    frames[0].save(anim, "GIF", save_all=True, append_images=frames[1:])
    cases.append(("valid image", "animated gif", anim.getvalue(), ".gif"))
    return cases


# --------------------------------------------------------------------------------------------------
# the checks
# --------------------------------------------------------------------------------------------------
class Record:
    def __init__(self):
        self.cases: Counter = Counter()
        self.outcomes: dict[str, Counter] = defaultdict(Counter)
        self.failures: list[str] = []

    def add(self, stage: str, kind: str, outcome: str, problem: str | None = None, name: str = "") -> None:
        self.cases[(stage, kind)] += 1
        self.outcomes[(stage, kind)][outcome] += 1
        if problem:
            self.failures.append(f"{stage} / {kind} / {name}: {problem}")

    def summary(self) -> str:
        lines = ["", f"fuzz summary (seed {SEED}): stage / kind: cases -> outcomes"]
        for key in sorted(self.cases):
            outs = ", ".join(f"{k} {v}" for k, v in sorted(self.outcomes[key].items()))
            lines.append(f"  {key[0]:<10} {key[1]:<24} {self.cases[key]:>4} -> {outs}")
        lines.append(f"  total {sum(self.cases.values())} cases, {len(self.failures)} contract failures")
        return "\n".join(lines)


@pytest.fixture(scope="module")
def record():
    rec = Record()
    yield rec
    print(rec.summary())


def _escaped(exc: BaseException) -> str:
    """What escaped, and from where (the innermost frame), for the failure list."""
    import traceback

    frame = traceback.extract_tb(exc.__traceback__)[-1]
    return f"{type(exc).__name__} escaped: {exc} ({Path(frame.filename).name}:{frame.lineno})"


def _one_line_ok(text: str) -> str | None:
    if "\n" in text.strip():
        return "message spans several lines"
    if "\x1b" in text:
        return "message holds ANSI escape codes"
    return None


def _cli_problem(rc: int, err: str, allowed=(0, 1, 2)) -> str | None:
    if rc not in allowed:
        return f"exit code {rc}"
    if "Traceback" in err:
        return "traceback printed: " + err.strip().splitlines()[-1]
    if "internal error" in err:
        return "internal error: " + err.strip().splitlines()[-1]
    if "\x1b" in err:
        return "ANSI escape codes on stderr"
    return None


def test_weights_through_load_model_and_upscale(tmp_path, record, capsys, monkeypatch):
    monkeypatch.setenv("LIGHTSR_CACHE", str(tmp_path / "cache"))
    own = user_errors()
    image = tmp_path / "img.png"
    Image.fromarray(RNG.integers(0, 256, size=(10, 9, 3), dtype=np.uint8)).save(image)
    cases = weights_cases(tmp_path)
    assert len(cases) >= 250
    for i, (kind, name, data, suffix) in enumerate(cases):
        path = tmp_path / "w" / f"case{i:03d}{suffix}"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(data)
        # the Python API
        try:
            lightsr.load_model(path)
            outcome, problem = "loaded", None
        except own as exc:
            outcome, problem = type(exc).__name__, _one_line_ok(str(exc))
        except Exception as exc:  # noqa: BLE001 - what the fuzz looks for
            outcome, problem = type(exc).__name__, _escaped(exc)
        record.add("load_model", kind, outcome, problem, name)
        # the command line
        out = tmp_path / "out" / f"case{i:03d}"
        capsys.readouterr()
        rc = main(["upscale", str(image), "-o", str(out), "--weights", str(path), "--quiet"])
        err = capsys.readouterr().err
        problem = _cli_problem(rc, err)
        written = sorted(p.name for p in out.rglob("*")) if out.exists() else []
        if rc != 0 and written:
            problem = problem or f"exit {rc} but wrote {written}"
        if rc == 0:
            got = np.asarray(Image.open(out / "img_x2.png"))
            if got.shape != (20, 18, 3):
                problem = problem or f"wrong output shape {got.shape}"
        if any(p.endswith(".part") for p in written):
            problem = problem or "a .part file was left"
        record.add("upscale", kind, f"exit {rc}", problem, name)
    assert not (tmp_path / MARKER_NAME).exists(), "pickled code was executed"
    assert not record.failures, "\n".join(record.failures[:20])


def test_weights_through_eval(tmp_path, record, capsys, monkeypatch):
    monkeypatch.setenv("LIGHTSR_CACHE", str(tmp_path / "cache"))
    data = tmp_path / "bench" / "Set5"
    data.mkdir(parents=True)
    Image.fromarray(RNG.integers(0, 256, size=(26, 24, 3), dtype=np.uint8)).save(data / "a.png")  # SSIM needs 11x11
    cases = weights_cases(tmp_path)
    for i, (kind, name, blob, suffix) in enumerate(cases[::4]):  # every fourth case: eval is the slower path
        path = tmp_path / "w" / f"case{i:03d}{suffix}"
        path.parent.mkdir(exist_ok=True)
        path.write_bytes(blob)
        out = tmp_path / "results" / f"case{i:03d}"
        capsys.readouterr()
        rc = main(["eval", "--weights", str(path), "--data", str(tmp_path / "bench"), "--sets", "Set5", "-o", str(out),
                   "--quiet", "--cache-dir", str(tmp_path / "lr")])
        err = capsys.readouterr().err
        problem = _cli_problem(rc, err)
        if rc != 0 and (out / "results.md").exists():
            problem = problem or f"exit {rc} but results.md was written"
        if kind == "valid" and rc != 0:
            problem = problem or f"valid weights: exit {rc}"
        if rc == 0:
            table = json.loads((out / "results.json").read_text())
            if not np.isfinite(table["sets"]["Set5"]["psnr"]):
                problem = problem or "a non-finite PSNR was written"
        record.add("eval", kind, f"exit {rc}", problem, name)
    assert not (tmp_path / MARKER_NAME).exists(), "pickled code was executed"
    assert not record.failures, "\n".join(record.failures[:20])


def test_images_through_upscale_and_eval(tmp_path, record, capsys, monkeypatch):
    from lightsr.inference import Upscaler
    from lightsr.inference.io import read_image

    monkeypatch.setenv("LIGHTSR_CACHE", str(tmp_path / "cache"))
    weights = lightsr.save_model(_base_model(), tmp_path / "tiny.safetensors")
    up = Upscaler(weights=weights, tile="auto", warn=lambda m: None)
    own = user_errors()
    cases = image_cases()
    assert len(cases) >= 80
    folder = tmp_path / "in"
    folder.mkdir()
    bench = tmp_path / "bench" / "Set5"
    bench.mkdir(parents=True)
    for i, (kind, name, data, suffix) in enumerate(cases):
        (folder / f"case{i:03d}{suffix}").write_bytes(data)
        (bench / f"case{i:03d}{suffix}").write_bytes(data)
        try:  # the Python API: read, then upscale
            img = read_image(folder / f"case{i:03d}{suffix}", max_pixels=10**6)
            out = up.upscale_image(img)
            ok = out.pixels.shape[:2] == (img.pixels.shape[0] * 2, img.pixels.shape[1] * 2)
            outcome, problem = "upscaled", None if ok else "wrong output size"
        except own as exc:
            outcome, problem = type(exc).__name__, _one_line_ok(str(exc))
        except Exception as exc:  # noqa: BLE001
            outcome, problem = type(exc).__name__, _escaped(exc)
        record.add("upscale API", kind, outcome, problem, name)

    # one CLI batch over all of them: one line per bad file, the good ones written, nothing partial
    capsys.readouterr()
    out = tmp_path / "out"
    rc = main(["upscale", str(folder), "-o", str(out), "--weights", str(weights), "--max-pixels", "1000000", "--quiet"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    written = {p.name for p in out.iterdir()} if out.exists() else set()
    for i, (kind, name, _, suffix) in enumerate(cases):
        stem = f"case{i:03d}"
        lines = [line for line in errors if f"{stem}{suffix}" in line]
        outputs = [w for w in written if w.startswith(stem + "_x2")]
        problem = None
        if len(lines) + len(outputs) != 1:
            problem = f"{len(lines)} error line(s) and {len(outputs)} output(s)"
        record.add("upscale CLI", kind, "written" if outputs else "refused", problem, name)
    problem = _cli_problem(rc, err, allowed=(1,))
    if any(w.endswith(".part") or w.startswith(".") for w in written):
        problem = problem or "temporary files left"
    record.add("upscale CLI", "whole batch", f"exit {rc}", problem)

    # the same files as a benchmark set: bad images are failures of the set, never a traceback
    capsys.readouterr()
    rc = main(["eval", "--weights", str(weights), "--data", str(tmp_path / "bench"), "--sets", "Set5",
               "-o", str(tmp_path / "res"), "--quiet", "--cache-dir", str(tmp_path / "lr")])
    err = capsys.readouterr().err
    record.add("eval", "image set", f"exit {rc}", _cli_problem(rc, err, allowed=(1,)))
    assert not (tmp_path / "res" / "results.md").exists()  # failures: no partial table written
    assert not record.failures, "\n".join(record.failures[:20])
