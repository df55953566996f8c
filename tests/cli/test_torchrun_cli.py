"""`lightsr upscale` and `lightsr eval` under torchrun: 2 real processes over gloo on the CPU.

Each input is processed by one rank (a video's segments by all), rank 0 prints one summary, the
exit code says whether any rank failed, and eval's table equals the single-process one exactly.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch.distributed as dist
from PIL import Image

import lightsr
from conftest import shared_path
from lightsr import parallel
from lightsr.cli import main
from lightsr.cli.upscale import Job, split_jobs
from lightsr.train.distributed import DistInfo

from video_clips import av, needs_av  # noqa: F401  (av: None without PyAV)
from video_clips import clip as _clip

needs_gloo = pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()),
                                reason="torch.distributed with the gloo backend is not available in this torch build")

def clip(path: Path, n: int = 6, size=(32, 24)) -> Path:
    return _clip(path, n, size, step=3)


def torchrun(*argv, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc_per_node 2 -m lightsr ARGV`` (--standalone: a free port on localhost)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "--max-restarts", "0", "-m", "lightsr", *map(str, argv)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    return subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    """A real lightsr model file, reduced so that the tests are fast (LAMNet operators, 1 block)."""
    import torch

    torch.manual_seed(0)
    model = lightsr.create_model("lamnet", 2, num_groups=1, num_blocks=1, dim=16)
    return lightsr.save_model(model, tmp_path_factory.mktemp("w") / "lamnet_tiny_x2.safetensors")


def _images(folder: Path, names: list[str]) -> None:
    rng = np.random.default_rng(1)
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        Image.fromarray(rng.integers(0, 256, size=(12, 15, 3), dtype=np.uint8)).save(folder / name)




def _frames(path: Path) -> tuple[list[int], np.ndarray]:
    with av.open(str(path)) as c:
        frames = list(c.decode(video=0))
        return [f.pts for f in frames], np.stack([f.to_ndarray(format="rgb24") for f in frames]).astype(int)


# ------------------------------------------------------------------------------------------------
def _fake_job(rank: int, world: int) -> parallel.Job:
    return parallel.Job(DistInfo(rank=rank, world_size=world, local_world_size=world), None, owns_group=False)


def test_split_jobs_gives_each_input_to_one_rank_and_keeps_same_stems_together():
    names = ["a.png", "a.jpg", "b.png", "c.png", "sub/a.png", "d.webp", "clip.mp4", "e.png"]
    jobs = [Job(Path("in") / n, Path(n)) for n in names]
    mine = [split_jobs(jobs, _fake_job(r, 2)) for r in range(2)]
    assert all(shared == [jobs[6]] for _, shared in mine)  # the video: shared by every rank
    taken = [j for own, _ in mine for j in own]
    assert sorted(str(j.rel) for j in taken) == sorted(n for n in names if n != "clip.mp4")  # each image once
    holder = {str(j.rel): r for r, (own, _) in enumerate(mine) for j in own}
    assert holder["a.png"] == holder["a.jpg"]  # both could write a_x4.png: the same rank checks the name
    assert {0, 1} == set(holder.values())
    assert split_jobs(jobs, _fake_job(0, 1)) == (jobs, [])  # one process: everything, in listing order
    own, shared = split_jobs(jobs, _fake_job(1, 2), preview=True)
    assert shared == []  # previews are small: one rank each, like images


def test_tile_memory_is_split_among_a_machines_cpu_processes():
    from lightsr.cli.upscale import Settings, _memory_budget
    from lightsr.inference.runner import default_budget

    settings = Settings(tile="auto", outdir=Path("o"), max_pixels=1, max_memory=None, max_download=None, quiet=True)
    assert _memory_budget(settings, _fake_job(0, 1)) is None  # one process: the Upscaler's own default
    split = _memory_budget(settings, _fake_job(1, 4))
    assert 0 < split <= default_budget(_fake_job(0, 4).device) // 4 * 1.5  # free memory moves a little between calls
    settings.max_memory = 123
    assert _memory_budget(settings, _fake_job(1, 4)) == 123  # --max-memory is per process, as given


# ------------------------------------------------------------------------------------------------
def _written(stdout: str) -> list[str]:
    return re.findall(r" -> (\S+) \(", stdout)


@needs_gloo
@needs_av
def test_upscale_two_processes_write_every_output_once(tmp_path, weights):
    src = tmp_path / "in"
    _images(src, [f"img{i}.png" for i in range(5)])
    clip(src / "clip.mp4", n=6)
    out = tmp_path / "out"
    proc = torchrun("upscale", src, "-o", out, "--weights", weights, "--threads", "1", "--segment-frames", "2",
                    cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "skip" not in proc.stdout + proc.stderr
    assert sorted(p.name for p in out.iterdir()) == sorted([f"img{i}_x2.png" for i in range(5)] + ["clip_x2.mp4"])
    written = _written(proc.stdout)
    assert sorted(Path(p).name for p in written) == sorted(p.name for p in out.iterdir())  # each said once
    assert proc.stdout.count("lightsr upscale: 6 written to") == 1  # one combined summary, by rank 0
    assert "2 processes" in proc.stdout
    assert "6 frames, 6 upscaled by 2 processes (4 + 2)" in proc.stdout  # 3 segments: ranks 0 and 1 took 2 and 1
    # the same clip in one process: the same frames and timestamps
    single = tmp_path / "single"
    assert main(["upscale", str(src / "clip.mp4"), "-o", str(single), "--weights", str(weights), "--threads", "1",
                 "--segment-frames", "2", "-q"]) == 0
    (pts2, frames2), (pts1, frames1) = _frames(out / "clip_x2.mp4"), _frames(single / "clip_x2.mp4")
    assert pts2 == pts1 and frames2.shape == frames1.shape == (6, 48, 64, 3)
    assert np.abs(frames2 - frames1).max() <= 1
    assert not any(p.name.startswith(".") for p in out.iterdir())  # no segment folder or part file left


@needs_gloo
@needs_av
def test_upscale_a_failure_on_any_rank_fails_the_job_with_one_line_each(tmp_path, weights):
    src = tmp_path / "in"
    _images(src, ["a.png", "b.png", "c.png"])
    (src / "bad.png").write_text("not an image\n")
    (src / "bad.mp4").write_text("not a video\n")  # every rank opens it: still one line
    out = tmp_path / "out"
    proc = torchrun("upscale", src, "-o", out, "--weights", weights, "--threads", "1", cwd=tmp_path)
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 2, proc.stderr[-3000:]
    assert any("bad.png" in e for e in errors) and any("bad.mp4: not a readable video" in e for e in errors)
    assert sorted(p.name for p in out.iterdir()) == ["a_x2.png", "b_x2.png", "c_x2.png"]
    assert proc.stderr.count("lightsr upscale: 3 written to") == 1 and "2 failed" in proc.stderr


# ------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def dlgsanet_weights(tmp_path_factory) -> Path:
    """A tiny random DLGSANet x4 (mechanism only): attention statistics are gathered too."""
    import torch

    torch.manual_seed(0)
    model = lightsr.create_model("dlgsanet_tiny", 4, groups=1, blocks=1)
    return lightsr.save_model(model, tmp_path_factory.mktemp("w") / "dlgsanet_tiny_x4.safetensors")


def _comparable(results: dict) -> dict:
    """results.json without what differs between runs (times, date)."""
    sets = {k: {f: v for f, v in s.items() if f != "seconds"} for k, s in results["sets"].items()}
    images = [{f: v for f, v in r.items() if f != "seconds"} for r in results["images"]]
    return {"sets": sets, "images": images, "model": results["model"], "options": results["options"]}


@needs_gloo
def test_eval_two_processes_give_the_single_process_table_exactly(tmp_path, dlgsanet_weights, monkeypatch):
    data = shared_path("datasets", "benchmark")
    common = ["eval", "--weights", dlgsanet_weights, "--data", data, "--sets", "Set5", "Set14", "--threads", "1",
              "--precision", "fp32", "--attention-stats", "--quiet"]
    one, two = tmp_path / "one", tmp_path / "two"
    assert main([*map(str, common), "-o", str(one)]) == 0
    proc = torchrun(*common, "-o", two, cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (two / "results.md").read_text() == (one / "results.md").read_text()
    a, b = (json.loads((d / "results.json").read_text()) for d in (one, two))
    assert _comparable(b) == _comparable(a)
    assert [b["sets"][s]["images"] for s in ("Set5", "Set14")] == [5, 14]
    assert b["sets"]["Set5"]["attention_positive_share"] is not None
    assert proc.stdout.count("| Method | Scale |") == 1  # the table printed once, by rank 0
