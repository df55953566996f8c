"""Weights I/O: safetensors round trip, official BasicSR checkpoints (strict, detected), clear errors."""
from __future__ import annotations

import collections
import os
import pickle

import pytest
import torch

import lightsr
from lightsr import CheckpointError, create_model, load_model, save_model
from lightsr.weights import detect_architecture, read_checkpoint, save_basicsr_checkpoint

OURS = ["dlgsanet_tiny", "dlgsanet_light", "dlgsanet", "lgun", "lamnet", "lamnet_large"]


def _randomise(model):
    """Non-default values everywhere (so a wrong load cannot pass by accident)."""
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05 + (1.0 if p.dim() <= 1 or p.shape[0] == 1 else 0.0))
    return model


def _out(model, x):
    with torch.no_grad():
        return model.eval()(x)


@pytest.mark.parametrize("name", OURS)
def test_safetensors_round_trip(name, tmp_path):
    model = _randomise(create_model(name, 3))
    path = save_model(model, tmp_path / f"{name}.safetensors", metadata={"note": "unit test"})
    again = load_model(path)
    assert again.lightsr_config == model.lightsr_config
    x = torch.rand(1, 3, 13, 11)
    assert torch.equal(_out(model, x), _out(again, x))
    _, meta = read_checkpoint(path)
    assert meta["arch"] == name and meta["scale"] == "3" and meta["note"] == "unit test"


def test_safetensors_keeps_options(tmp_path):
    model = create_model("lamnet", 2, csm="linear", iem=False, fsa_strides=[1, 2], fsa_steps=[3, 3])
    again = load_model(save_model(model, tmp_path / "m.safetensors"))
    assert again.lightsr_config["options"] == {"csm": "linear", "iem": False, "fsa_strides": [1, 2], "fsa_steps": [3, 3]}
    x = torch.rand(1, 3, 9, 9)
    assert torch.equal(_out(model, x), _out(again, x))
    model = create_model("dlgsanet_tiny", 2, attention_activation="softmax", tlc=False)
    again = load_model(save_model(model, tmp_path / "d.safetensors"))
    assert all(a.activation == "softmax" and not a.tlc for a in again.modules() if hasattr(a, "activation"))


def test_save_is_atomic_and_leaves_no_temp_files(tmp_path):
    save_model(create_model("lgun", 2), tmp_path / "w.safetensors")
    assert sorted(os.listdir(tmp_path)) == ["w.safetensors"]


@pytest.mark.parametrize("scale", [2, 3, 4])
@pytest.mark.parametrize("name", ["dlgsanet_tiny", "dlgsanet_light", "dlgsanet", "lamnet", "lamnet_large"])
def test_official_basicsr_checkpoint_loads_strictly_and_is_detected(name, scale, tmp_path):
    """A .pth in the official layout (module. prefix, params + params_ema) loads strictly, is
    detected as the right variant and scale, and reproduces the model it came from."""
    model = _randomise(create_model(name, scale))
    ema = {f"module.{k}": v.clone() for k, v in model.state_dict().items()}
    plain = {f"module.{k}": torch.zeros_like(v) if v.is_floating_point() else v.clone()
             for k, v in model.state_dict().items()}
    path = tmp_path / f"{name}_x{scale}.pth"
    torch.save({"params": plain, "params_ema": ema}, path)
    loaded = load_model(path)  # params_ema preferred, as BasicSR/spandrel
    assert loaded.lightsr_config["name"] == name
    assert loaded.lightsr_config["scale"] == scale
    assert loaded.lightsr_config["options"] == {}
    x = torch.rand(1, 3, 12, 14)
    assert torch.equal(_out(model, x), _out(loaded, x))
    with pytest.raises(CheckpointError):
        load_model(path, key="missing_key")


def test_params_key_choice(tmp_path):
    a, b = _randomise(create_model("lamnet", 2)), create_model("lamnet", 2)
    path = save_basicsr_checkpoint(tmp_path / "net_g_100.pth", b.state_dict(), a.state_dict())
    x = torch.rand(1, 3, 8, 8)
    assert torch.equal(_out(load_model(path), x), _out(a, x))
    assert torch.equal(_out(load_model(path, key="params"), x), _out(b, x))


def test_bare_state_dict_and_dataparallel_prefix(tmp_path):
    m = _randomise(create_model("lgun", 4))
    torch.save(collections.OrderedDict((f"module.{k}", v) for k, v in m.state_dict().items()), tmp_path / "bare.pth")
    loaded = load_model(tmp_path / "bare.pth")
    assert loaded.lightsr_config["name"] == "lgun" and loaded.lightsr_config["scale"] == 4


@pytest.mark.parametrize("opt", [dict(hdtb="local_local"), dict(dim=36, groups=2, blocks=1)])
def test_detection_of_non_standard_dlgsanet(opt, tmp_path):
    m = create_model("dlgsanet_tiny", 2, **opt)
    det = detect_architecture(m.state_dict())
    rebuilt = create_model(det.name, det.scale, **det.options)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in m.state_dict().items()}


@pytest.mark.parametrize("opt", [dict(csm="none"), dict(ffn="gdfn"), dict(ffn="ffn"), dict(fsa_strides=[1], fsa_steps=[6]),
                                 dict(num_groups=2, num_blocks=3)])
def test_detection_of_lamnet_ablations(opt):
    m = create_model("lamnet", 3, **opt)
    det = detect_architecture(m.state_dict())
    rebuilt = create_model(det.name, det.scale, **det.options)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in m.state_dict().items()}


@pytest.mark.parametrize("opt", [dict(mlha=False), dict(dgsa=False), dict(stf=False), dict(identical_lkcs=True), dict(topk_ratios=[])])
def test_detection_of_lgun_ablations(opt):
    m = create_model("lgun", 2, **opt)
    det = detect_architecture(m.state_dict())
    rebuilt = create_model(det.name, det.scale, **det.options)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in m.state_dict().items()}


def test_kernel_map_mismatch_is_refused(tmp_path):
    m = create_model("lamnet", 2)
    sd = m.state_dict()
    sd["deep_feature_extraction.0.mixers.0.fn.kernel_map"] = torch.zeros(13, 2, dtype=torch.int32)
    torch.save({"params": sd}, tmp_path / "bad.pth")
    with pytest.raises((CheckpointError, ValueError), match="kernel_map"):
        load_model(tmp_path / "bad.pth")


# --- errors ----------------------------------------------------------------------------------
def _one_line(exc: pytest.ExceptionInfo) -> str:
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def test_truncated_checkpoint(tmp_path):
    path = tmp_path / "net.pth"
    torch.save({"params": create_model("lamnet", 2).state_dict()}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError) as exc:
        load_model(path)
    assert "truncated or corrupt" in _one_line(exc)


def test_truncated_safetensors(tmp_path):
    path = save_model(create_model("lgun", 2), tmp_path / "m.safetensors")
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(CheckpointError) as exc:
        load_model(path)
    assert "safetensors" in _one_line(exc)


def test_foreign_checkpoint_names_what_was_expected(tmp_path):
    torch.save({"conv1.weight": torch.zeros(8, 3, 3, 3), "fc.weight": torch.zeros(10, 8)}, tmp_path / "resnet.pth")
    with pytest.raises(CheckpointError) as exc:
        load_model(tmp_path / "resnet.pth")
    msg = _one_line(exc)
    assert "unrecognised checkpoint" in msg and "overlap_embed.0.proj.weight" in msg and "conv1.weight" in msg


def test_incomplete_checkpoint_reports_missing_keys(tmp_path):
    sd = create_model("dlgsanet_tiny", 4).state_dict()
    del sd["deep_feature_extraction.1.body.2.IDynamic_ffn.dwconv.weight"]
    sd["extra.weight"] = torch.zeros(1)
    torch.save({"params": sd}, tmp_path / "partial.pth")
    with pytest.raises(CheckpointError) as exc:
        load_model(tmp_path / "partial.pth")
    msg = _one_line(exc)
    assert "1 missing" in msg and "1 unexpected" in msg and "dlgsanet_tiny x4" in msg


def test_wrong_shape_reported(tmp_path):
    sd = create_model("lamnet", 4).state_dict()
    sd["deep_feature_extraction.0.mixers.0.fn.proj_in.weight"] = torch.zeros(64, 64, 3, 3)
    torch.save(sd, tmp_path / "shape.pth")
    with pytest.raises(CheckpointError, match="wrong shape"):
        load_model(tmp_path / "shape.pth")


def test_empty_and_missing_files(tmp_path):
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(CheckpointError, match="empty"):
        load_model(tmp_path / "empty.pth")
    with pytest.raises(CheckpointError, match="no such file"):
        load_model(tmp_path / "nope.pth")


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_pickled_code_is_never_executed(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"params": {"w": _Evil()}}, f, protocol=2)
    with pytest.raises(CheckpointError, match="refused"):
        load_model(path)


def test_scale_and_name_mismatch(tmp_path):
    path = save_model(create_model("lamnet", 2), tmp_path / "l.safetensors")
    with pytest.raises(CheckpointError, match="x2"):
        load_model(path, scale=4)
    with pytest.raises(CheckpointError, match="not dlgsanet"):
        load_model(path, name="dlgsanet")
    with pytest.raises(CheckpointError, match="does not fit lamnet_large x2"):
        load_model(path, name="lamnet_large")


def test_public_api():
    assert callable(lightsr.load_model) and callable(lightsr.save_model) and lightsr.__version__


# --- issue 22: validated before anything is built ------------------------------------------------------
def _tiny():
    torch.manual_seed(0)
    return create_model("dlgsanet_tiny", 2, dim=12, groups=1, blocks=1, num_heads=2)


def _with_metadata(tmp_path, name: str, **changes) -> "os.PathLike":
    from safetensors.torch import save_file

    from lightsr.weights import read_checkpoint

    src = save_model(_tiny(), tmp_path / "base.safetensors")
    sd, meta = read_checkpoint(src)
    meta.update({k: v for k, v in changes.items() if v is not None})
    for k in [k for k, v in changes.items() if v is None]:
        meta.pop(k)
    save_file(sd, tmp_path / name, metadata=meta)
    return tmp_path / name


@pytest.mark.parametrize("options, message", [
    ({"dim": 2400}, "option dim: 2400 is outside the allowed range"),
    ({"dim": "48"}, "option dim: expected an integer"),
    ({"groups": 64, "blocks": 64}, "describe a model of more than"),  # in range, but far larger than the file
    ({"tlc": 1}, "option tlc: expected true or false"),
    ({"evil": 1}, "unknown option(s) evil"),
])
def test_crafted_metadata_is_refused_before_building(tmp_path, monkeypatch, options, message):
    """Issue 22 item 3: options are checked against the registry's types and ranges, and the shapes
    they imply are computed on the meta device, before any real model exists."""
    import json

    import lightsr.models as models

    path = _with_metadata(tmp_path, "crafted.safetensors", options=json.dumps(options))
    built = []
    original = models.create_model

    def tracking(*args, **kwargs):
        model = original(*args, **kwargs)
        built.append(next(iter(model.parameters())).device.type)
        return model

    monkeypatch.setattr(models, "create_model", tracking)
    with pytest.raises(CheckpointError) as exc:
        load_model(path)
    assert message in _one_line(exc) and str(path) in str(exc.value)
    assert "cpu" not in built  # nothing was built for real


@pytest.mark.parametrize("changes, message", [
    ({"arch": None}, "without an 'arch' entry"),
    ({"arch": "resnet"}, "unknown model 'resnet'"),
    ({"scale": "four"}, "metadata 'scale' must be a small whole number"),
    ({"options": "{dim"}, "'options' is not valid JSON"),
    ({"options": "[1]"}, "must be a JSON object"),
    ({"format_version": "7"}, "written by a newer lightsr"),
])
def test_broken_metadata_is_one_clear_line(tmp_path, changes, message):
    """Issue 22 item 4: e.g. `error: 'arch'` (a KeyError) became a sentence."""
    with pytest.raises(CheckpointError) as exc:
        load_model(_with_metadata(tmp_path, "m.safetensors", **changes))
    assert message in _one_line(exc)


def test_crafted_dim_refused_with_little_memory(tmp_path):
    """Issue 22 item 3: the shipped-size file with options dim=2400 / 4800 once cost 5 GB (and would
    exhaust 24 GB); refused now within a fresh process's small footprint (peak RSS < 1 GB)."""
    import json
    import subprocess
    import sys

    paths = [_with_metadata(tmp_path, f"d{d}.safetensors", options=json.dumps({"dim": d})) for d in (2400, 4800)]
    paths.append(_with_metadata(tmp_path, "g.safetensors", options=json.dumps({"groups": 64, "blocks": 64, "dim": 1024})))
    # VmHWM, not ru_maxrss: ru_maxrss carries the parent's (pytest's) high-water mark across fork + exec
    code = ("import sys, lightsr\n"
            "for p in sys.argv[1:]:\n"
            "    try:\n        lightsr.load_model(p)\n    except lightsr.CheckpointError:\n        print('refused')\n"
            "print(next(int(l.split()[1]) for l in open('/proc/self/status') if l.startswith('VmHWM:')))\n")
    proc = subprocess.run([sys.executable, "-c", code, *map(str, paths)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.split()
    assert lines[:3] == ["refused"] * 3
    assert int(lines[3]) < 1 << 20, f"peak RSS {int(lines[3]) / 1024:.0f} MB"  # VmHWM is in KiB


@pytest.mark.parametrize("value", [float("nan"), float("inf"), 1e30])
def test_non_finite_weights_are_refused_naming_the_tensor(tmp_path, value):
    """Issue 22 item 2: NaN / Inf (or absurd magnitudes) are refused at load, naming the first bad tensor."""
    model = _tiny()
    name = "deep_feature_extraction.0.body.0.IDynamicDWConv.conv0.weight"
    with torch.no_grad():
        model.state_dict()[name].view(-1)[5] = value
    path = save_model(model, tmp_path / "bad.safetensors")
    with pytest.raises(CheckpointError) as exc:
        load_model(path)
    assert f"tensor {name!r}" in _one_line(exc) and "refusing to load" in str(exc.value)
    torch.save({"params": model.state_dict()}, tmp_path / "bad.pth")  # the .pth path too
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_model(tmp_path / "bad.pth")


@pytest.mark.parametrize("content, what", [
    (b"root:x:0:0:root:/root:/bin/bash\n", "it is a text file"),
    (b"\xff\xd8\xff\xe0\x00\x10JFIF\x00" + bytes(100), "it is a JPEG image"),
    (b"<!DOCTYPE html><html>404</html>", "it is an HTML/XML page"),
    (b"PK\x03\x04" + bytes(100), "zip"),
])
def test_files_that_are_not_weights_are_named(tmp_path, content, what):
    """Issue 22 item 4: a text file as .pth said `error: 101`; a JPEG said "pickled objects other
    than tensors", cut mid-sentence, with ANSI codes."""
    path = tmp_path / "w.pth"
    path.write_bytes(content)
    with pytest.raises(CheckpointError) as exc:
        load_model(path)
    msg = _one_line(exc)
    assert what in msg and "\x1b" not in msg and msg.endswith(")")


def test_pickled_code_refusal_names_the_global(tmp_path):
    path = tmp_path / "evil.pth"
    with open(path, "wb") as f:
        pickle.dump({"params": {"w": _Evil()}}, f, protocol=2)
    with pytest.raises(CheckpointError) as exc:
        load_model(path)
    msg = _one_line(exc)
    assert "system" in msg and "never runs pickled code" in msg and "\x1b" not in msg


def test_weights_files_get_the_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        st = save_model(_tiny(), tmp_path / "m.safetensors")
        pth = save_basicsr_checkpoint(tmp_path / "m.pth", _tiny().state_dict())
    finally:
        os.umask(old)
    assert st.stat().st_mode & 0o777 == 0o644 and pth.stat().st_mode & 0o777 == 0o644
