"""Training never hangs (issue 22 item 1): a failing checkpoint write or data worker stops the
workers, lands in train.log, exits 1 within seconds; the last complete checkpoint resumes
bit-identically. Also the resume hint (item 6), config errors (item 7) and file modes (item 11)."""
from __future__ import annotations

import os
import shlex
import shutil
import stat
import subprocess
import sys
import textwrap

import pytest

from train_helpers import assert_same_tensors, env, load_pth, tiny_config, write_config

HANG_LIMIT_S = 60  # a run that has not exited by then hangs (the issue: forever)


def _run_patched(patch: str, *argv: str) -> subprocess.CompletedProcess:
    """``lightsr train`` in a fresh process after ``patch`` (Python source) ran in it."""
    code = textwrap.dedent(patch) + "\nimport sys\nfrom lightsr.cli import main\nsys.exit(main(sys.argv[1:]))\n"
    return subprocess.run([sys.executable, "-c", code, *argv], env=env(), capture_output=True, text=True,
                          timeout=HANG_LIMIT_S)


FULL_DISK_AT_20 = """
import errno
import lightsr.train.trainer as trainer
original = trainer.atomic_torch_save
def full_disk(obj, path):
    if str(path).endswith("20.state"):  # the state file of iteration 20: the disk is full
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1536 vs 1430")
    return original(obj, path)
trainer.atomic_torch_save = full_disk
"""


def test_checkpoint_write_failure_exits_and_resumes_bit_identically(tmp_path):
    from lightsr.cli import main

    # reference: uninterrupted (a data worker, checkpoints every 5 iterations)
    ref = write_config(tiny_config(tmp_path, "ref"), tmp_path / "ref.yaml")
    assert main(["train", str(ref), "--quiet"]) == 0

    cfg = write_config(tiny_config(tmp_path, "base"), tmp_path / "run.yaml")
    argv = ["train", str(cfg), "name=failing", f"path.experiments_root={tmp_path / 'runs' / 'failing'}"]
    proc = _run_patched(FULL_DISK_AT_20, *argv)  # subprocess.TimeoutExpired here = the hang is back
    root = tmp_path / "runs" / "failing"
    assert proc.returncode == 1, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if " ERROR " in line]
    assert len(errors) == 1 and "Traceback" not in proc.stderr
    assert "training failed: RuntimeError: [enforce fail at inline_container.cc:672]" in errors[0]
    assert "at iteration 20" in errors[0] and "the last complete checkpoint is iteration 15" in errors[0]
    # the hint resumes *this* run: the same overrides, quoted for the shell
    hint = errors[0].split("continue with `")[1].split("`")[0]
    assert hint == f"lightsr train {cfg} name=failing path.experiments_root={tmp_path / 'runs' / 'failing'} --resume auto"
    log = (root / "train.log").read_text()
    assert "training failed" in log and "Traceback (most recent call last)" in log and "full_disk" in log
    assert not (root / "training_states" / "20.state").exists()
    assert not [p for p in root.rglob("*") if p.name.endswith(".tmp")]  # no temporary file left

    # resume from the last good checkpoint with the printed command: bit-identical to the reference
    assert main(shlex.split(hint)[1:] + ["--quiet"]) == 0
    for it in (40,):
        a, b = load_pth(root / "models" / f"net_g_{it}.pth"), load_pth(tmp_path / "runs" / "ref" / "models" / f"net_g_{it}.pth")
        assert_same_tensors(a["params"], b["params"])
        assert_same_tensors(a["params_ema"], b["params_ema"])


def test_data_worker_failure_exits_within_seconds(tmp_path):
    patch = """
    import os
    from lightsr.data.train_dataset import SRTrainDataset
    original = SRTrainDataset.__getitem__
    calls = []
    def flaky(self, key):
        calls.append(1)
        if len(calls) > 30 and os.getpid() != PARENT:  # in the data worker, after a few batches
            raise OSError(5, "Input/output error", "/data/hr/im03.png")
        return original(self, key)
    PARENT = os.getpid()
    SRTrainDataset.__getitem__ = flaky
    """
    cfg = write_config(tiny_config(tmp_path, "worker"), tmp_path / "w.yaml")
    proc = _run_patched(patch, "train", str(cfg))
    assert proc.returncode == 1, proc.stderr
    assert "training failed" in proc.stderr and "Input/output error" in proc.stderr and "Traceback" not in proc.stderr
    assert "training failed" in (tmp_path / "runs" / "worker" / "train.log").read_text()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("unshare") is None, reason="needs unshare(1) to mount a private tmpfs")
def test_full_tmpfs_exits_non_zero(tmp_path):
    """The issue's case on a real 16 MB tmpfs (user namespace; skipped where that is not allowed)."""
    cfg = tiny_config(tmp_path, "tmpfs", total_iter=60)
    cfg["path"]["experiments_root"] = str(tmp_path / "mnt" / "run")
    cfg["logger"].update(save_checkpoint_freq=10, keep_checkpoints=0)
    path = write_config(cfg, tmp_path / "t.yaml")
    (tmp_path / "mnt").mkdir()
    script = (f"mount -t tmpfs -o size=16m tmpfs {tmp_path / 'mnt'} && "
              f"head -c {16 * 1024 * 1024 - 600 * 1024} /dev/zero > {tmp_path / 'mnt' / 'filler'} && "
              f"{sys.executable} -m lightsr train {path}")
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True)
    if probe.returncode != 0:
        pytest.skip("user namespaces are not allowed here")
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", script], env=env(), capture_output=True, text=True,
                          timeout=HANG_LIMIT_S)
    assert proc.returncode == 1, proc.stderr
    assert "No space left on device" in proc.stderr and "the last complete checkpoint is iteration" in proc.stderr


# -- item 6: the resume hint keeps the overrides ----------------------------------------------------
def test_resume_hint_keeps_overrides(tmp_path, capsys):
    from lightsr.cli import main
    from lightsr.train.config import load_config
    from lightsr.train.trainer import resume_command

    path = write_config(tiny_config(tmp_path, "t"), tmp_path / "t.yaml")
    cfg = load_config(path, ["name=X", "train.optim_g.lr=1e-4", "datasets.train.dataroot_gt=a b"])
    assert resume_command(cfg) == (f"lightsr train {path} name=X train.optim_g.lr=1e-4 "
                                   f"'datasets.train.dataroot_gt=a b' --resume auto")
    from lightsr.train.config import dump_config

    assert "overrides" not in dump_config(cfg)  # the overrides are how the config was given, not part of it
    argv = ["train", str(path), "train.total_iter=5", "--quiet"]
    assert main(argv) == 0
    assert main(argv[:-1]) == 2  # the run folder holds checkpoints: the message names the whole command
    assert f"continue with `lightsr train {path} train.total_iter=5 --resume auto`" in capsys.readouterr().err


# -- item 7: config values that gave tracebacks ---------------------------------------------------------
@pytest.mark.parametrize("override, message", [
    ("datasets.train.batch_size=0", "datasets.train.batch_size: must be positive, got 0"),
    ("datasets.train.batch_size=-4", "datasets.train.batch_size: must be positive, got -4"),
    ("train.optim_g.lr=nan", "train.optim_g.lr: expected a finite number, got nan"),
    ("train.optim_g.lr=inf", "train.optim_g.lr: expected a finite number, got inf"),
    ("train.ema_decay=.nan", "train.ema_decay: expected a finite number, got nan"),
    ("train.grad_clip_norm=-inf", "train.grad_clip_norm: expected a finite number, got -inf"),
])
def test_bad_numbers_are_config_errors(tmp_path, capsys, override, message):
    from lightsr.cli import main

    path = write_config(tiny_config(tmp_path, "t"), tmp_path / "t.yaml")
    assert main(["train", str(path), override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_no_config_value_gives_a_traceback(tmp_path):
    """A small fuzz of the numeric keys: every value is accepted or a ConfigError, nothing else."""
    from lightsr.train.config import ConfigError, load_config

    path = write_config(tiny_config(tmp_path, "t"), tmp_path / "t.yaml")
    keys = ["scale", "manual_seed", "datasets.train.batch_size", "datasets.train.lq_size", "datasets.train.num_worker_per_gpu",
            "datasets.train.dataset_enlarge_ratio", "train.total_iter", "train.warmup_iter", "train.ema_decay",
            "train.optim_g.lr", "train.optim_g.eps", "train.optim_g.weight_decay", "train.optim_g.betas",
            "train.grad_clip_norm", "train.num_threads", "train.scheduler.milestones", "train.scheduler.gamma",
            "logger.print_freq", "logger.save_checkpoint_freq", "logger.keep_checkpoints", "val.val_freq",
            "network_g.dim", "network_g.groups", "network_g.num_heads"]
    values = ["0", "-1", "nan", "inf", "1e400", "x", "[]", "[nan, 1]", "null", "true", "{}", "1.5", "99999999999999999999"]
    for key in keys:
        for value in values:
            try:
                load_config(path, [f"{key}={value}"])
            except ConfigError as exc:
                assert "\n" not in str(exc)


# -- item 11: files of a run get the usual permissions ---------------------------------------------------
def test_run_files_are_not_private(tmp_path):
    from lightsr.cli import main

    cfg = tiny_config(tmp_path, "modes", total_iter=10)
    cfg["val"]["val_freq"] = 5
    cfg["val"]["save_img"] = True
    old = os.umask(0o022)
    try:
        assert main(["train", str(write_config(cfg, tmp_path / "m.yaml")), "--quiet"]) == 0
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "runs" / "modes").rglob("*") if p.is_file()]
    assert any(p.suffix == ".state" for p in files) and any(p.suffix == ".png" for p in files)
    private = [str(p.relative_to(tmp_path)) for p in files if stat.S_IMODE(p.stat().st_mode) != 0o644]
    assert private == []
