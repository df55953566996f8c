"""lightsr.parallel: sharding by rank, gathering to rank 0, the failure verdict - locally and with two
real processes launched by torchrun over gloo on the CPU."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch.distributed as dist

from lightsr import parallel
from lightsr.inference.policy import usable_cores


@pytest.mark.parametrize("n,world", [(7, 2), (5, 3), (2, 4), (0, 2), (6, 1)])
def test_shards_cover_the_sorted_list_once_and_merge_back(n, world):
    items = [f"img_{i:02d}.png" for i in range(n)][::-1]  # listing order differs from sorted order
    shards = [parallel.shard(items, r, world) for r in range(world)]
    assert sorted(x for s in shards for x in s) == sorted(items)
    assert max(map(len, shards)) - min(map(len, shards)) <= 1
    results = [[(x, r) for x in s] for r, s in enumerate(shards)]
    assert [x for x, _ in parallel.merge(results)] == sorted(items)


def test_shard_and_merge_reject_what_does_not_fit():
    with pytest.raises(ValueError, match="rank 2 is outside a world of 2"):
        parallel.shard([1, 2], 2, 2)
    with pytest.raises(ValueError, match="do not fit a round-robin shard"):
        parallel.merge([[1], [2, 3]])  # rank 1 returned more results than items


def test_without_torchrun_everything_is_local(monkeypatch):
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(var, raising=False)
    with parallel.start("cpu") as job:
        assert (job.rank, job.world_size, job.is_main, job.threads, job.owns_group) == (0, 1, True, None, False)
        assert not dist.is_initialized()
        assert job.shard(["b", "a", "c"]) == ["a", "b", "c"]
        assert job.gather([1, 2, 3]) == [1, 2, 3] and job.gather_object("x") == ["x"] and job.broadcast("y") == "y"
        job.barrier()
        assert (job.finish(False), job.finish(True)) == (0, 1)


WORKER = textwrap.dedent('''
    import json, os, sys
    from pathlib import Path

    import torch
    import torch.distributed as dist

    from lightsr import parallel

    out = Path(sys.argv[1])
    items = [f"img_{i}.png" for i in range(7)][::-1]
    with parallel.start("cpu", threads=None) as job:
        assert dist.is_initialized() and dist.get_backend() == "gloo"
        listing = job.broadcast(items if job.is_main else None)  # one listing for every rank
        assert listing == items
        mine = job.shard(listing)
        for name in mine:
            with open(out / name, "x") as f:  # "x": a second write of the same output fails
                f.write(str(job.rank))
        everything = job.gather([(name, job.rank) for name in mine])
        failed = os.environ.get("FAIL_RANK") == str(job.rank)
        if job.is_main:
            summary = {"results": everything, "world": job.world_size, "threads": torch.get_num_threads(),
                       "local_world": job.info.local_world_size, "any_failed": job.any(failed)}
        else:
            job.any(failed)
        code = job.finish(failed)
    if job.is_main:
        summary["group_closed"] = not dist.is_initialized()
        (out / "summary.json").write_text(json.dumps(summary))
    sys.exit(code)
''')


def _torchrun(tmp_path, fail_rank: str | None):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    out = tmp_path / ("out_fail" if fail_rank else "out")
    out.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FAIL_RANK": fail_rank or ""}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "--max-restarts", "0", str(script), str(out)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").is_file() else None
    return proc, out, summary


def test_two_processes_under_torchrun_each_item_once_and_one_summary(tmp_path):
    proc, out, summary = _torchrun(tmp_path, None)
    assert proc.returncode == 0, proc.stderr[-2000:]
    written = sorted(p.name for p in out.glob("img_*.png"))
    assert written == sorted(f"img_{i}.png" for i in range(7))
    assert {(p.name, p.read_text()) for p in out.glob("img_*.png")} == {(n, str(r)) for n, r in summary["results"]}
    assert [n for n, _ in summary["results"]] == written and {r for _, r in summary["results"]} == {0, 1}
    assert (summary["world"], summary["local_world"], summary["any_failed"], summary["group_closed"]) == (2, 2, False, True)
    assert 1 <= summary["threads"] <= max(1, usable_cores() // 2)  # the idle cores split between 2 processes


def test_a_failing_rank_makes_the_job_fail_after_rank_0s_summary(tmp_path):
    proc, _, summary = _torchrun(tmp_path, "1")
    assert proc.returncode != 0
    assert summary is not None and summary["any_failed"] is True and len(summary["results"]) == 7
