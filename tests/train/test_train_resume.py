"""Never lose work: a run killed with SIGKILL and resumed ends bit-identical to an uninterrupted one."""
from __future__ import annotations

import csv
import os
import signal
import subprocess
import time

import pytest
import torch
from safetensors.torch import load_file

from train_helpers import assert_same_tensors, env, lightsr_cmd, load_pth, run_lightsr, tiny_config, write_config


def _final(root, it):
    weights = load_pth(root / "models" / f"net_g_{it}.pth")
    state = torch.load(root / "training_states" / f"{it}.state", weights_only=True)
    return weights, state


def _wait_for(path, proc, timeout=90):
    t0 = time.time()
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"training ended (rc {proc.returncode}) before {path.name} appeared:\n{proc.stderr.read()}")
        if time.time() - t0 > timeout:
            proc.kill()
            raise AssertionError(f"{path} did not appear within {timeout}s")
        time.sleep(0.02)


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_sigkill_then_resume_is_bit_identical(tmp_path, capsys):
    from lightsr.cli import main

    total = 40
    # reference: one uninterrupted run (in this process: also checks that the Python API works)
    ref_cfg = write_config(tiny_config(tmp_path, "ref"), tmp_path / "ref.yaml")
    threads = torch.get_num_threads()
    assert main(["train", str(ref_cfg), "--quiet"]) == 0
    assert torch.get_num_threads() == threads and not torch.are_deterministic_algorithms_enabled()
    ref_root = tmp_path / "runs" / "ref"

    # the same run, killed with SIGKILL after its checkpoint at iteration 10, then resumed
    cfg = write_config(tiny_config(tmp_path, "killed"), tmp_path / "killed.yaml")
    root = tmp_path / "runs" / "killed"
    proc = subprocess.Popen(lightsr_cmd("train", str(cfg)), env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    _wait_for(root / "training_states" / "10.state", proc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (root / "training_states" / f"{total}.state").exists(), "the run finished before it was killed"

    # starting again without --resume refuses to overwrite the run
    capsys.readouterr()
    assert main(["train", str(cfg)]) == 2
    assert "already holds checkpoints" in capsys.readouterr().err

    # a kill in the middle of an atomic write leaves its temporary file (here made sure of): resuming removes it
    (root / "models" / ".net_g_latest.safetensors.zz9_zz9z.tmp").write_bytes(b"partial")
    resumed = run_lightsr("train", str(cfg), "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming at iteration" in resumed.stderr

    ref_w, ref_state = _final(ref_root, total)
    got_w, got_state = _final(root, total)
    assert_same_tensors(ref_w["params"], got_w["params"])
    assert_same_tensors(ref_w["params_ema"], got_w["params_ema"])
    for a, b in zip(ref_state["optimizer"]["state"].values(), got_state["optimizer"]["state"].values()):
        assert_same_tensors(a, b)
    assert ref_state["best"] == got_state["best"]
    assert_same_tensors(load_file(ref_root / "models" / "net_g_latest.safetensors"),
                        load_file(root / "models" / "net_g_latest.safetensors"))

    # the logs describe one history: same iterations, same losses as the uninterrupted run
    def rows(r, name):
        with open(r / name, newline="") as f:
            return [(row["iter"], row.get("loss") or row.get("psnr")) for row in csv.DictReader(f)]

    assert rows(root, "train_log.csv") == rows(ref_root, "train_log.csv")
    assert rows(root, "val_log.csv") == rows(ref_root, "val_log.csv")
    # last K=2 complete sets kept, no temporary files anywhere
    assert sorted(p.name for p in (root / "training_states").iterdir()) == ["35.state", "40.state"]
    assert not [p for p in root.rglob(".*") if p.is_file()]

    # resuming a finished run is a no-op
    capsys.readouterr()
    assert main(["train", str(cfg), "--resume", "auto"]) == 0
    assert "nothing to do" in capsys.readouterr().err


@pytest.mark.skipif(not hasattr(signal, "SIGTERM"), reason="needs POSIX signals")
@pytest.mark.parametrize("target", ["process", "group"])
def test_sigterm_writes_a_checkpoint_and_exits_cleanly(tmp_path, target):
    """SIGTERM to the main process, or to its whole process group, DataLoader worker included
    (``kill -- -PGID``, systemd, SLURM): the worker must not die first and take the run down."""
    cfg = tiny_config(tmp_path, "term", total_iter=100000)
    cfg["logger"]["save_checkpoint_freq"] = 100000
    assert cfg["datasets"]["train"]["num_worker_per_gpu"] >= 1
    path = write_config(cfg, tmp_path / "term.yaml")
    root = tmp_path / "runs" / "term"
    proc = subprocess.Popen(lightsr_cmd("train", str(path)), env=env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    _wait_for(root / "train_log.csv", proc)  # training has started
    time.sleep(0.5)  # a few more iterations: the worker is busy making batches
    if target == "group":
        os.killpg(proc.pid, signal.SIGTERM)
    else:
        proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "Traceback" not in err and "--resume auto" in err
    states = list((root / "training_states").glob("*.state"))
    assert len(states) == 1
    it = int(states[0].stem)
    assert 0 < it < 100000
    assert (root / "models" / f"net_g_{it}.safetensors").is_file()
    # the workers, which ignore SIGTERM, are shut down with the run: nothing is left in its group
    deadline = time.time() + 20
    while True:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        assert time.time() < deadline, "a DataLoader worker outlived the stopped run"
        time.sleep(0.1)
