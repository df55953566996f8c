"""lightsr.allocator: glibc malloc tuning (process-wide, so checked in a child process)."""
from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest

GLIBC = sys.platform.startswith("linux") and platform.libc_ver()[0] == "glibc"

CHILD = r"""
import resource, torch
from lightsr.allocator import malloc_tuned, tune_malloc
torch.set_num_threads(1)

def faults(n=20, numel=3_000_000):
    r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        a = torch.ones(numel)  # 12 MB: above glibc's initial mmap threshold
        del a
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0

assert not malloc_tuned()
before = faults()
assert tune_malloc() is {expect} and tune_malloc() is {expect} and malloc_tuned() is {expect}
faults()  # the first one after tuning faults its pages in once
after = faults()
big_before = faults(3, 12_000_000)  # 48 MB: above the largest mmap threshold glibc accepts (32 MiB)
big_after = faults(5, 12_000_000)
print(before, after, big_before, big_after)
"""


def test_tune_malloc_stops_page_faults_on_reallocation():
    out = subprocess.run([sys.executable, "-c", CHILD.replace("{expect}", str(GLIBC))], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    before, after, big_before, big_after = map(int, out.stdout.split())
    if not GLIBC:
        pytest.skip("malloc tuning is glibc-only (a no-op here, as checked)")
    # glibc's dynamic threshold already reuses some blocks; tuned, a 12 MB block is never faulted in again
    assert after < 100 <= before or after < before // 10, (before, after)
    # nor a 48 MB one (no block gets its own mapping): faulted in once (11,719 pages), then reused
    assert big_after < 500, (big_before, big_after)


def test_environment_switch_keeps_glibc_defaults():
    """LIGHTSR_MALLOC_TUNING=0: nothing changed (a machine short of memory rather than time)."""
    code = "from lightsr.allocator import malloc_tuned, tune_malloc; assert tune_malloc() is False and not malloc_tuned()"
    env = {**os.environ, "LIGHTSR_MALLOC_TUNING": "0"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
