"""Every shipped weights file has its OpenModelDB entry beside it, valid under OpenModelDB's rules
(open-model-database ``src/lib/schema.ts`` and the checks of ``src/lib/model-props.ts``), with the
file's own size and sha256 and the numbers of its model card."""
from __future__ import annotations

import hashlib
import json
import re

import pytest

import lightsr
from lightsr.integrations.hub import FAMILIES
from lightsr.models import get_spec
from lightsr.pretrained import HERE, available, default_weights

SHIPPED = available()
IDS = [f"{n}_x{s}" for n, s in SHIPPED]
DATE = re.compile(r"^\d{4}-(?:0[1-9]|1[012])-(?:0[1-9]|[12][0-9]|3[01])$")
OPTIONAL_INTS = ("trainingIterations", "trainingEpochs", "trainingBatchSize", "trainingHRSize", "datasetSize")


def _entry(name: str, scale: int) -> tuple[str, dict]:
    path = HERE / f"{name}_x{scale}.openmodeldb.json"
    assert path.is_file(), f"{path.name} is missing"
    text = path.read_text()
    return text, json.loads(text)


def _int_in(value, lo: int, hi: int | None = None) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= lo and (hi is None or value <= hi)


def _schema_errors(e: dict) -> list[str]:
    """OpenModelDB's required properties and their types, as its validator checks them."""
    errors = []
    req = {"name": str, "author": (str, list), "tags": list, "description": str, "date": str, "architecture": str,
           "scale": int, "inputChannels": int, "outputChannels": int, "resources": list, "images": list}
    errors += [f"{k}: missing or not {t}" for k, t in req.items() if not isinstance(e.get(k), t)]
    if errors:
        return errors
    checks = {
        "author": all(isinstance(a, str) and a for a in (e["author"] if isinstance(e["author"], list) else [e["author"]])),
        "tags": bool(e["tags"]) and all(isinstance(t, str) and t for t in e["tags"]),
        "description": e["description"] == e["description"].strip() and bool(e["description"]),
        "date": bool(DATE.match(e["date"])),
        "license": e.get("license") is None or isinstance(e["license"], str),
        "size": e.get("size") is None or (isinstance(e["size"], list) and all(isinstance(s, str) and s for s in e["size"])),
        "scale": _int_in(e["scale"], 1, 16),
        "inputChannels": _int_in(e["inputChannels"], 1, 4),
        "outputChannels": _int_in(e["outputChannels"], 1, 4),
        "resources": bool(e["resources"]),
        "trainingOTF": isinstance(e.get("trainingOTF", False), bool),
        "dataset": isinstance(e.get("dataset", ""), str),
    }
    checks.update({k: _int_in(e[k], 1) for k in OPTIONAL_INTS if k in e})
    for i, r in enumerate(e["resources"]):
        checks[f"resources[{i}]"] = (
            r.get("type") in ("pth", "onnx", "safetensors") and r.get("platform") in ("pytorch", "onnx", "ncnn")
            and _int_in(r.get("size"), 1) and bool(re.fullmatch(r"[0-9a-f]{64}", str(r.get("sha256")), re.I))
            and isinstance(r.get("urls"), list) and bool(r["urls"]) and all(isinstance(u, str) and u for u in r["urls"]))
    return errors + [f"{k}: invalid" for k, ok in checks.items() if not ok]


@pytest.mark.parametrize("name,scale", SHIPPED, ids=IDS)
def test_entry_has_every_required_field(name, scale):
    text, e = _entry(name, scale)
    assert _schema_errors(e) == []
    assert text == json.dumps(e, indent=4, ensure_ascii=False)  # OpenModelDB's own formatting (4 spaces)
    assert {"trainingIterations", "trainingBatchSize", "trainingHRSize", "dataset"} <= e.keys()


@pytest.mark.parametrize("name,scale", SHIPPED, ids=IDS)
def test_entry_describes_the_file_beside_it(name, scale):
    _, e = _entry(name, scale)
    path = default_weights(name, scale)
    data = path.read_bytes()
    (res,) = e["resources"]
    assert (res["type"], res["platform"], res["size"]) == ("safetensors", "pytorch", len(data))
    assert res["sha256"] == hashlib.sha256(data).hexdigest(), "sha256 differs: rerun benchmarks/model_card.py --openmodeldb-only"
    model = lightsr.load_model(path)
    assert (e["scale"], e["inputChannels"], e["outputChannels"]) == (model.scale, 3, 3)
    assert e["architecture"] == FAMILIES[get_spec(name).family].openmodeldb


@pytest.mark.parametrize("name,scale", SHIPPED, ids=IDS)
def test_description_quotes_the_cards_set5_and_b100(name, scale):
    _, e = _entry(name, scale)
    card = (HERE / f"{name}_x{scale}.md").read_text()
    row = next(line for line in card.splitlines() if "(these weights)" in line).split("|")
    header = next(line for line in card.splitlines() if line.startswith("| | Set5")).split("|")
    cells = {h.strip().split(" (")[0]: c.strip() for h, c in zip(header[2:], row[2:])}
    assert f"Set5 {cells['Set5']}" in e["description"] and f"B100 {cells['B100']}" in e["description"]
    total = re.search(r"In total \*\*([\d,]+) iterations", card).group(1)
    assert e["trainingIterations"] == int(total.replace(",", ""))
