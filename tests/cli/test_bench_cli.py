"""``lightsr bench`` and the timing/memory helpers behind it (tiny inputs: seconds, not minutes)."""
from __future__ import annotations

import json

import pytest
import torch

from lightsr.bench import TimingStats, environment, format_environment, interleaved_timings, peak_memory
from lightsr.cli import main


def test_macs_only_table_and_json(tmp_path, capsys):
    out = tmp_path / "sub" / "macs.json"
    assert main(["bench", "--models", "lamnet", "imdn", "--scales", "4", "--no-latency", "--ntire", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "| lamnet | x4 | 849,136 | 320x180 | 48.67 | 47.52 | 55.38 |" in text
    assert "| imdn | x4 |" in text and "threads:" in text and "load average" in text
    data = json.loads(out.read_text())
    rows = {r["model"]: r for r in data["rows"]}
    assert rows["lamnet"]["macs_custom_ops_zero"] == 47_521_382_400
    assert rows["lamnet"]["macs_by_op"]["focal_attention"] == 1_150_156_800
    assert rows["imdn"]["macs"] == rows["imdn"]["macs_custom_ops_zero"]
    assert data["environment"]["torch"] == torch.__version__ and "cpu" in data["environment"]
    assert not list(out.parent.glob(".*.part"))  # atomic write left nothing behind


def test_latency_tlc_variants_and_memory(capsys):
    rc = main(["bench", "--models", "dlgsanet_tiny", "--scales", "2", "--lr-size", "20", "24",
               "--repeats", "2", "--threads", "1"])
    assert rc == 0
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("| dlgsanet_tiny")]
    assert len(lines) == 2 and "TLC on" in lines[0] and "TLC off" in lines[1]
    cells = [c.strip() for c in lines[0].strip("|").split("|")]
    assert cells[3] == "24x20" and cells[-2] == "2" and float(cells[-1]) >= 0  # runs, peak MB


def test_unknown_model_and_missing_scale(capsys):
    assert main(["bench", "--models", "nope", "--no-latency"]) == 2
    assert "unknown model" in capsys.readouterr().err


def test_dtype_with_autocast_is_refused(capsys):
    assert main(["bench", "--models", "imdn", "--precision", "bf16", "--dtype", "float16", "--no-latency"]) == 2
    err = capsys.readouterr().err
    assert err.strip() == "lightsr bench: --dtype casts the model; use it with --precision fp32"


def test_a_failed_timing_is_one_line_and_the_others_go_on(monkeypatch, capsys):
    import lightsr.cli.bench as bench

    real_time = bench._time

    def failing_for_imdn(args, setup, name, scale, lr):
        if name == "imdn":
            raise RuntimeError("simulated failure\nsecond line")
        return real_time(args, setup, name, scale, lr)

    monkeypatch.setattr(bench, "_time", failing_for_imdn)
    rc = main(["bench", "--models", "imdn", "pan", "--scales", "2", "--lr-size", "12", "16",
               "--repeats", "1", "--threads", "1", "--no-memory", "--precision", "fp32"])
    out, err = capsys.readouterr()
    assert rc == 1
    assert err.strip() == "lightsr bench: imdn x2: timing failed: RuntimeError: simulated failure"
    assert "| imdn |" not in out
    pan = [ln for ln in out.splitlines() if ln.startswith("| pan | x2 |")]
    assert len(pan) == 1 and pan[0].split("|")[-2].strip() == "1"  # the next model is still measured


def test_interleaved_timings_alternate_and_count():
    calls = []
    res = interleaved_timings({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, warmup=1, repeats=4)
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b", "b", "a"]  # warm-up, then alternating order
    assert res["a"].n == res["b"].n == 4
    auto = interleaved_timings({"x": lambda: None}, warmup=1, time_budget=0.0, min_repeats=3)
    assert auto["x"].n == 3


def test_timing_stats():
    t = TimingStats([0.1 * i for i in range(1, 11)])
    assert t.median == pytest.approx(0.55) and t.p90 == pytest.approx(0.9) and t.min == pytest.approx(0.1)
    assert TimingStats([1.0, 2.0, 3.0]).p90 == 3.0
    assert set(t.to_dict()) == {"n", "median_ms", "p90_ms", "mean_ms", "min_ms"}


def test_environment_mentions_threads_and_cpu():
    env = environment()
    assert env["torch_threads"] == torch.get_num_threads() and env["cpu"]
    assert "threads:" in format_environment(env)


def test_peak_memory_probe_runs_in_a_subprocess():
    small = peak_memory("imdn", 2, (16, 16), threads=1)
    big = peak_memory("imdn", 2, (128, 128), threads=1)
    assert small["method"].startswith("peak RSS") and big["peak_bytes"] > small["peak_bytes"]
    assert big["output_bytes"] == 3 * 256 * 256 * 4
