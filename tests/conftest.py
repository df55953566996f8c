"""Shared fixtures. ``../shared`` (benchmark images, peer weights) is optional: tests that need it
skip with a clear reason when it is absent. ``LIGHTSR_SHARED`` overrides its location."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
# Unit tests run small tensors: one intra-op thread avoids OpenMP hand-off costs (which explode on a
# loaded machine) and keeps results independent of the core count. LIGHTSR_TEST_THREADS overrides.
torch.set_num_threads(int(os.environ.get("LIGHTSR_TEST_THREADS", "1")))

SHARED = Path(os.environ.get("LIGHTSR_SHARED", REPO.parent / "shared")).resolve()


def shared_path(*parts: str) -> Path:
    """Path inside ../shared, or skip the calling test with the reason it is missing."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"needs {path} (the ../shared folder beside the repository, or LIGHTSR_SHARED)")
    return path


@pytest.fixture
def shared_dir() -> Path:
    return shared_path()


@pytest.fixture(autouse=True)
def _deterministic_seed():
    torch.manual_seed(0)
    yield


@pytest.fixture
def outputs_per_thread_count():
    """``run(fn, counts=(1, 3))``: ``fn()`` without autograd under each torch thread count in turn
    (the native kernels split their rows by it); the outputs. The thread count is restored."""
    def run(fn, counts=(1, 3)):
        threads, outs = torch.get_num_threads(), []
        try:
            for n in counts:
                torch.set_num_threads(n)
                with torch.no_grad():
                    outs.append(fn())
        finally:
            torch.set_num_threads(threads)
        return outs

    return run
