"""Smoke tests of benchmark scripts whose printed tables are quoted in docs/ (tiny sizes, one run)."""
from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while it executes
    spec.loader.exec_module(module)
    return module


def test_model_speed_profile_train_bound(capsys):
    pytest.importorskip("torch.profiler")
    ms = _load("model_speed")
    ms.main(["--threads", "1", "--models", "dlgsanet_tiny", "--no-inference", "--profile-train",
             "--train-batch", "1", "--train-patch", "12", "--repeats", "1", "--warmup", "0"])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| dlgsanet_tiny |")]
    assert len(rows) == 1
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    share = float(cells[1].rstrip("%")) / 100
    fast, ref = float(cells[5]), float(cells[6])
    speedup, bound = float(cells[7].rstrip("x")), float(cells[8].rstrip("x"))
    assert 0 < share < 1  # dlgsanet_tiny's dynamic convolution is a custom op
    assert speedup == pytest.approx(ref / fast, rel=0.02, abs=0.01)
    # free custom ops can only help: the bound is at least the measured speed-up
    assert bound >= speedup
    assert re.fullmatch(r"\d+ / (\d+|none \(impossible\))", cells[9])


def test_model_speed_op_times(capsys):
    """--op-times: every operator call of a step is timed on the fast path it takes without the
    timer (native kernels as ``native:<entry point>``, not aten's fallbacks); the shares of the
    by-operator table add up to at most 100%, and the timing hook is removed afterwards."""
    from lightsr.ops import _native

    ms = _load("model_speed")
    plain_run_rows = _native.run_rows
    ms.main(["--threads", "1", "--models", "dlgsanet_tiny", "--no-inference", "--op-times",
             "--train-batch", "2", "--train-patch", "12", "--repeats", "1", "--warmup", "0",
             "--op-rows", "500"])  # every row: which native calls make the top rows depends on the machine's load
    out = capsys.readouterr().out
    assert "## Operator times of one fast training step: dlgsanet_tiny, batch 2, LR patch 12x12" in out
    by_op = [line for line in out.splitlines() if line.count("|") == 4 and line.startswith("| ") and "%" in line]
    shares = [float(line.strip("|").split("|")[2].strip().rstrip("%")) for line in by_op]
    assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 100.5
    assert _native.run_rows is plain_run_rows
    natives = [line for line in out.splitlines() if line.startswith("| native:lightsr_")]
    if _native.available():  # the dynamic convolution's native kernels, timed as themselves
        assert any(line.startswith("| native:lightsr_dyn_") and " rows | " in line for line in natives), out
    else:
        assert not natives


def test_train_step_ab_interleaves_worker_processes(capsys):
    """Two variants (here both this tree) run one step per turn in their own processes; the table has
    a row per variant with the first as the 1.00x reference."""
    root = str(BENCH.parent)
    _load("train_step_ab").main(["--models", "dlgsanet_tiny", "--variant", f"a={root}", "--variant", f"b={root}",
                                 "--batch", "1", "--patch", "8", "--repeats", "2", "--warmup", "0"])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith(("| a |", "| b |"))]
    assert len(rows) == 2 and rows[0].endswith("| 1.00x |")
    assert re.fullmatch(r"\| b \| .+ \| \d+ \| \d+ \| \d+\.\d\dx \|", rows[1])


def test_native_ab_swaps_libraries_and_restores(capsys):
    """Both libraries (here this tree's twice) run every case; the ops get this tree's library back."""
    from lightsr.ops import _native

    if not _native.available():
        pytest.skip(f"no native library: {_native.build_error()}")
    lib = _native.library()
    _load("native_ab").main(["--before", str(BENCH.parent), "--repeats", "1", "--batch", "1", "--size", "9"])
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| FSA ")]
    lines = out.splitlines()
    assert len(rows) == 6 and len([r for r in lines if r.startswith("| dynamic conv")]) == 2 and all(re.search(r"\| \d+\.\d\d \| \d+\.\d\d \| \d+\.\d\dx \|$", r) for r in rows), out
    assert len([r for r in lines if r.startswith("| depth-wise 3x3 forward")]) == 2, out
    assert _native.library() is lib
    _load("native_ab").main(["--before", str(BENCH.parent), "--repeats", "1", "--batch", "1", "--size", "9",
                             "--only", "depth-wise"])
    lines = capsys.readouterr().out.splitlines()
    assert len([r for r in lines if r.startswith("| depth-wise 3x3 ")]) == 4, lines
    assert not [r for r in lines if r.startswith(("| FSA", "| dynamic"))], lines


def test_cuda_check_runs_on_cpu(capsys):
    """cuda_check.py is what a GPU lease runs (benchmarks/gpu_session.sh); CI has no GPU, so its
    logic is exercised on the CPU: every op row and the model row are printed and within bounds."""
    cc = _load("cuda_check")
    # float32 only: the bounds for bf16/fp16 are set for CUDA's kernels (the CPU's differ)
    rc = cc.main(["--device", "cpu", "--ops", "--dtypes", "float32", "--models", "--models-list", "imdn"])
    out = capsys.readouterr().out
    assert rc == 0 and "correctness failures: 0" in out, out[-3000:]
    op_rows = [line for line in out.splitlines() if re.match(r"\| (dynamic_dwconv|layer_norm|depthwise|tlc|focal)", line)]
    assert len(op_rows) == 10 * len(cc.SIZES) and not any("FAIL" in r or "ERROR" in r for r in op_rows)
    assert sum(line.startswith("| imdn |") and line.rstrip().endswith("| ok |") for line in out.splitlines()) == 2


def test_cuda_check_ops_variants_switch_and_restore(monkeypatch):
    """The Triton variant swaps the models' op table and restores it; its wrappers pass keyword
    arguments on (LAMNet calls the focal attention with dim=, activation=) and, on a CPU without
    triton's interpreter, fall back to today's ops: the same outputs."""
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    import torch

    from lightsr import ops
    from lightsr.models import create_model

    cc = _load("cuda_check")
    before = dict(ops._FAST)
    model = create_model("lamnet", 2, num_groups=1, num_blocks=1).eval()
    x = torch.rand(1, 3, 6, 7)
    with torch.no_grad(), cc.ops_variant("ops"):
        want = model(x)
    with torch.no_grad(), cc.ops_variant("triton"):
        assert ops._FAST["focal_attention"] is not before["focal_attention"]
        got = model(x)
    assert ops._FAST == before and torch.equal(got, want)
    assert not cc.dispatch_wired(torch.device("cpu"))


def test_cuda_check_speed_tables_on_cpu(capsys):
    """--infer-speed and --train-table print one row per model on the CPU (no Triton, graphs fall
    back): IMDN is the yardstick (ratio 1.00), the step table has the reference and today's ops."""
    cc = _load("cuda_check")
    rc = cc.main(["--device", "cpu", "--infer-speed", "--models-list", "dlgsanet_tiny", "imdn", "--infer-size", "8", "8",
                  "--dtypes", "float32", "--repeats", "1", "--train-table", "--train-batch", "1", "--train-patch", "8"])
    out = capsys.readouterr().out
    assert rc == 0, out[-3000:]
    infer = {line.split("|")[1].strip(): line for line in out.splitlines() if re.match(r"\| (imdn|dlgsanet_tiny) \| float32", line)}
    assert set(infer) == {"imdn", "dlgsanet_tiny"} and infer["imdn"].rstrip().endswith("| 1.00 |")
    assert "CUDA graphs need a CUDA device" in out  # the graph column ran eagerly, and says so
    step = [line for line in out.splitlines() if line.startswith("| dlgsanet_tiny |") and line.count("|") == 8]
    assert len(step) == 1 and re.search(r"\| \d+\.\d\dx \|", step[0])  # reference, ops, speed-up, 2 launch cells, kernels


@pytest.mark.slow
def test_gpu_session_dry_run(tmp_path):
    """`bash benchmarks/gpu_session.sh --dry-run`: the whole lease script on the CPU at toy sizes
    (Triton under its interpreter when installed, CUDA graphs falling back to eager) exits 0 and
    leaves every table; with ../shared also the training cycle's weights and resume state."""
    if shutil.which("bash") is None or shutil.which("timeout") is None:
        pytest.skip("needs bash and coreutils' timeout")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHON"] = sys.executable
    out = tmp_path / "out"
    r = subprocess.run(["bash", "benchmarks/gpu_session.sh", "--dry-run", "--out", str(out)], cwd=BENCH.parent, env=env,
                       capture_output=True, text=True, timeout=3600)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-2000:]
    for name in ("correctness", "inference", "train_step"):
        assert (out / f"{name}.md").is_file() and (out / f"{name}.json").is_file(), name
    assert "correctness failures: 0" in (out / "correctness.md").read_text()
    assert "| dlgsanet_tiny |" in (out / "train_step.md").read_text()
    shared = Path(os.environ.get("LIGHTSR_SHARED", BENCH.parents[1] / "shared"))
    if (shared / "datasets" / "train").is_dir():
        assert (out / "net_g_latest.safetensors").is_file() and (out / "resume.tgz").is_file()


def test_model_card_reads_each_stage_recipe(tmp_path):
    """A run folder's config, logs and device line become one row of a card's training table:
    batch x crop, loss (L1 when the config names none), peak lr, iterations, time, best Set5."""
    mc = _load("model_card")
    for name, loss in (("l1", None), ("mse", "MSELoss")):
        run = tmp_path / name
        run.mkdir()
        pixel = f"  pixel_opt: {{type: {loss}}}\n" if loss else ""
        (run / "config.yaml").write_text(
            "scale: 4\ndatasets:\n  train: {batch_size: 8, lq_size: 48}\n"
            f"train:\n  optim_g: {{type: Adam, lr: !!float 1e-4}}\n{pixel}")
        (run / "train_log.csv").write_text("iter,elapsed_s\n20,30.0\n40,61.5\n")
        (run / "val_log.csv").write_text("iter,dataset,psnr,ssim,best\n20,Set5,31.40,0.88,1\n40,Set5,31.38,0.88,0\n")
        (run / "train.log").write_text(
            "2026-11-30 18:11:17 INFO run r: dlgsanet_tiny x4 (581,298 parameters) on cpu x 2 process(es), 1 threads each\n")
        r = mc.read_run(run)
        assert r["recipe"] == {"batch": 8, "lq": 48, "lr": 1e-4, "loss": "MSE" if loss else "L1"}
        assert (r["iters"], r["elapsed_s"], r["best"]["iter"], r["device"]) == (40, 61.5, "20", "CPU, 2 procs")
    with open(run / "train.log", "a") as f:  # resumed with another process count: both are named
        f.write("2026-11-30 19:00:00 INFO run r: dlgsanet_tiny x4 (581,298 parameters) on cpu x 1 process(es), 1 threads each\n")
    assert mc.read_run(run)["device"] == "CPU, 2 then 1 procs"


def test_model_card_openmodeldb_entries_are_what_the_script_writes():
    """Each shipped <model>_x<s>.openmodeldb.json is what `model_card.py --openmodeldb-only` makes from
    the weights, the card and the runs it lists (date and URL as committed)."""
    import json

    from lightsr.pretrained import HERE, available, default_weights

    mc = _load("model_card")
    for name, scale in available():
        committed = json.loads((HERE / f"{name}_x{scale}.openmodeldb.json").read_text())
        card = (HERE / f"{name}_x{scale}.md").read_text()
        made = mc.openmodeldb_entry(default_weights(name, scale), card, committed["resources"][0]["urls"], committed["date"])
        if "datasetSize" not in made:  # counted from ../shared/datasets/train, absent here
            committed.pop("datasetSize", None)
        assert made == committed, f"{name} x{scale}: rerun benchmarks/model_card.py --openmodeldb-only"


def test_model_card_writes_openmodeldb_json_beside_the_weights(tmp_path):
    import json

    import lightsr

    mc = _load("model_card")
    weights = lightsr.save_model(lightsr.create_model("lamnet", 2, num_groups=1, num_blocks=1),
                                 tmp_path / "lamnet_x2.safetensors")
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.yaml").write_text("scale: 2\ndatasets:\n  train: {batch_size: 4, lq_size: 40, dataroot_gt: [imgs]}\n")
    (run / "train_log.csv").write_text("iter,elapsed_s\n10,5.0\n30,7200.0\n")
    card = ("| | Set5 (5) | Set14 (14) | B100 (100) |\n|---|---|---|---|\n"
            "| **lightsr lamnet x2 (these weights)** | 35.10/0.9400 | 31.00/0.8800 | 30.20/0.8600 |\n"
            "| bicubic (measured, same convention) | 33.67/0.9303 | 30.32/0.8699 | 29.56/0.8434 |\n"
            f"python benchmarks/model_card.py --weights x \\\n    --run {run} \\\n")
    out = mc.write_openmodeldb(weights, card, ["https://example.org/lamnet_x2.safetensors"], "2026-12-05")
    assert out == tmp_path / "lamnet_x2.openmodeldb.json"
    e = json.loads(out.read_text())
    assert (e["name"], e["architecture"], e["scale"], e["size"]) == ("lightsr LAMNet", "lamnet", 2, ["64nf", "1ng", "1nb"])
    assert (e["trainingIterations"], e["trainingBatchSize"], e["trainingHRSize"]) == (30, 4, 80)
    assert "datasetSize" not in e  # its folder is not here
    assert "Set5 35.10/0.9400 and B100 30.20/0.8600; bicubic 33.67/0.9303 and 29.56/0.8434" in e["description"]
    assert e["resources"][0]["size"] == weights.stat().st_size and e["date"] == "2026-12-05"


def test_model_card_bf16_sets(monkeypatch):
    """The card's bf16 row: every set where bf16 is native, Set5 alone where it is emulated (an order of
    magnitude slower), an explicit list as given; cells of sets it skipped read '-'."""
    from lightsr.inference import policy

    mc = _load("model_card")
    monkeypatch.setattr(policy, "native_bf16", lambda: False)
    assert mc._bf16_sets(["auto"]) == ["Set5"]
    monkeypatch.setattr(policy, "native_bf16", lambda: True)
    assert mc._bf16_sets(["auto"]) == mc.SETS
    assert mc._bf16_sets(["Set14", "B100"]) == ["Set14", "B100"]

    class Res:
        sets = [type("S", (), {"name": "Set5", "psnr": 30.0})()]

    assert mc._psnr_of(Res, "Set5") == 30.0 and mc._psnr_of(Res, "B100") is None


def _fake_run(root: Path, name: str, scale: int, elapsed: list[tuple[int, float]], psnr: list[tuple[int, float]]) -> Path:
    run = root / name
    run.mkdir()
    (run / "config.yaml").write_text(f"scale: {scale}\n")
    (run / "train_log.csv").write_text("iter,elapsed_s\n" + "".join(f"{i},{s}\n" for i, s in elapsed))
    (run / "val_log.csv").write_text("iter,dataset,psnr,ssim,best\n" + "".join(f"{i},Set5,{p},0.9,1\n" for i, p in psnr))
    (run / "train.log").write_text("INFO run r: m x2 (1 parameters) on cpu x 2 process(es), 1 threads each\n")
    return run


def test_quality_per_time_chains_and_time_matching(tmp_path, capsys):
    """Cumulative hours run across a card's stages (an x2 stage counts under x4 weights), the hours at
    the point's own scale are kept apart, a chain whose x2 stages only repeat another's is shown once,
    and the time-matched tables pick the best point within the earliest stop and the first at the target."""
    qpt = _load("quality_per_time")
    a2 = _fake_run(tmp_path, "a_x2", 2, [(100, 1800.0), (200, 3600.0)], [(100, 34.0), (200, 35.0)])
    a4 = _fake_run(tmp_path, "a_x4", 4, [(100, 1800.0), (200, 3600.0)], [(100, 29.5), (200, 30.0)])
    b4 = _fake_run(tmp_path, "b_x4", 4, [(100, 1800.0), (200, 2700.0)], [(100, 29.0), (200, 29.6)])
    b2 = _fake_run(tmp_path, "b_x2", 2, [(50, 900.0), (100, 1800.0)], [(50, 33.0), (100, 34.5)])
    cards = []
    for name, runs in (("a_x2", [a2]), ("a_x4", [a2, a4]), ("b_x4", [b4]), ("b_x2", [b2])):
        cards.append(tmp_path / f"{name}.md")
        cards[-1].write_text("".join(f"    --run {r} \\\n" for r in runs))
    points, stages = qpt.chain_points(qpt.card_runs(cards[1]))
    assert [(p.run, p.hours, p.scale_hours) for p in points] == [
        ("a_x2", 0.5, 0.5), ("a_x2", 1.0, 1.0), ("a_x4", 1.5, 0.5), ("a_x4", 2.0, 1.0)]
    assert stages[-1] == ("a_x4", "CPU, 2 procs", 2.0)
    assert qpt.main(["--cards", *map(str, cards)]) == 0
    out = capsys.readouterr().out
    x2 = out.split("## x2: time-matched")[1].split("##")[0]
    # a_x4's x2 stage is a_x2's: one row for it; the horizon is b_x2's 0.5 h, the target its 34.5 dB
    assert [line.split("|")[1].strip() for line in x2.splitlines() if line.startswith("| a_") or line.startswith("| b_")] \
        == ["a_x2", "b_x2"]
    assert "| a_x2 | 1.00 | 35.00 | 34.00 (`a_x2` @100) | 1.00 h (1.00 h), 35.00 dB |" in x2
    x4 = out.split("## x4: time-matched")[1]
    # b_x4 stops at 0.75 h, before a_x4's x2 stage ends; the target is b_x4's last 29.60 dB
    assert "| a_x4 | 2.00 | 30.00 | - (no x4 point yet) | 2.00 h (1.00 h), 30.00 dB |" in x4
    assert "| b_x4 | 0.75 | 29.60 | 29.60 (`b_x4` @200) | 0.75 h (0.75 h), 29.60 dB |" in x4
    # a chain that no card lists (a race from scratch), beside a card; a malformed --chain is refused
    assert qpt.main(["--cards", str(cards[2]), "--chain", f"race={a2},{a4}"]) == 0
    out = capsys.readouterr().out
    assert "## race\n" in out and "| race | 2.00 | 30.00 |" in out and "## a_x4\n" not in out
    with pytest.raises(SystemExit):
        qpt.main(["--chain", "race"])
