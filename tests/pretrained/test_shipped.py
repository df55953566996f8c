"""The weights shipped inside the package: each loads, has its model card, and beats bicubic."""
from __future__ import annotations

import pytest
from safetensors import safe_open

import lightsr
from lightsr.pretrained import DEFAULT_MODEL, HERE, available, default_weights

SHIPPED = available()


def test_something_ships_for_the_default_model():
    assert any(name == DEFAULT_MODEL for name, _ in SHIPPED)


@pytest.mark.parametrize("name,scale", SHIPPED, ids=[f"{n}_x{s}" for n, s in SHIPPED])
def test_shipped_file_metadata_card(name, scale):
    path = default_weights(name, scale)
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    assert (meta["arch"], int(meta["scale"])) == (name, scale)
    assert meta["weights"] == "params_ema" and int(meta["iteration"]) > 0
    model = lightsr.load_model(path)
    assert model.lightsr_config["name"] == name and model.scale == scale
    card = (HERE / f"{name}_x{scale}.md").read_text()
    for needed in ("Set5", "B100", "Urban100", "Manga109", "bicubic", "paper", "iterations", "benchmarks/model_card.py"):
        assert needed in card, f"model card of {name} x{scale} lacks {needed!r}"


@pytest.mark.parametrize("name,scale", SHIPPED, ids=[f"{n}_x{s}" for n, s in SHIPPED])
def test_shipped_weights_beat_bicubic(name, scale):
    from conftest import shared_path
    from lightsr.data.benchmark import find_benchmark

    root = shared_path("datasets", "benchmark")
    bench = find_benchmark(root, "Set5", scale)
    model = lightsr.load_model(default_weights(name, scale))
    ours = lightsr.evaluate(model, bench, limit=1, progress=False)["Set5"].psnr
    bic = lightsr.evaluate("bicubic", bench, scale=scale, limit=1, progress=False)["Set5"].psnr
    assert ours > bic + 0.3, (ours, bic)


@pytest.mark.parametrize("name,scale", SHIPPED, ids=[f"{n}_x{s}" for n, s in SHIPPED])
def test_model_card_set5_is_what_eval_measures(name, scale):
    """The card's Set5 cell is reproduced by evaluating the file as `lightsr eval --weights` does
    (options from its metadata, e.g. DLGSANet's TLC): a card cannot drift from its weights."""
    import re

    from conftest import shared_path
    from lightsr.data.benchmark import find_benchmark

    card = (HERE / f"{name}_x{scale}.md").read_text()
    row = next(line for line in card.splitlines() if "(these weights)" in line)
    header = next(line for line in card.splitlines() if line.startswith("| | Set5"))
    assert header.split("|")[2].strip().startswith("Set5")
    psnr, ssim = map(float, re.fullmatch(r"\s*([\d.]+)/([\d.]+)\s*", row.split("|")[2]).groups())
    bench = find_benchmark(shared_path("datasets", "benchmark"), "Set5", scale)
    res = lightsr.evaluate(lightsr.load_model(default_weights(name, scale)), bench, progress=False)["Set5"]
    assert (round(res.psnr, 2), round(res.ssim, 4)) == (psnr, ssim)


@pytest.mark.parametrize("name,scale", SHIPPED, ids=[f"{n}_x{s}" for n, s in SHIPPED])
def test_bf16_set5_within_0_02_db_of_fp32(name, scale):
    """bf16 (CPU autocast, what ``--precision bf16`` / ``auto`` runs) costs at most 0.02 dB of Set5
    PSNR for every shipped file, and precision.json (what ``auto`` reads) records that measurement."""
    from conftest import shared_path
    from lightsr.data.benchmark import find_benchmark
    from lightsr.inference.policy import bf16_measurement

    bench = find_benchmark(shared_path("datasets", "benchmark"), "Set5", scale)
    model = lightsr.load_model(default_weights(name, scale))
    fp32 = lightsr.evaluate(model, bench, progress=False)["Set5"].psnr
    low = lightsr.evaluate(model, bench, precision="bf16", progress=False)["Set5"].psnr
    assert abs(low - fp32) <= 0.02, (fp32, low)
    recorded = bf16_measurement(default_weights(name, scale))
    assert recorded is not None, "run benchmarks/model_card.py --precision-only for this file"
    assert recorded["within_tolerance"] and recorded["set5_fp32"] == pytest.approx(fp32, abs=1e-3)
    card = (HERE / f"{name}_x{scale}.md").read_text()
    assert "**bf16** (`--precision bf16`" in card
