"""Shared fixtures of the operator tests."""
from __future__ import annotations

import pytest
import torch


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
