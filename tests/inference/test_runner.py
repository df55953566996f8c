"""The runner and the Upscaler around it: non-finite outputs, tiny inputs, memory limits, memory use."""
from __future__ import annotations

import subprocess
import sys
import tracemalloc

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import lightsr
from lightsr.inference import NonFiniteOutput, Upscaler
from lightsr.inference.runner import MIN_SIDE, ModelRunner, available_memory, cgroup_available


class Nearest(nn.Module):
    scale = 2

    def forward(self, x):
        return F.interpolate(x, scale_factor=2, mode="nearest")


class Poisoned(Nearest):
    """Returns NaN (or Inf) somewhere in every output, in any precision."""

    def __init__(self, value=float("nan")):
        super().__init__()
        self.value = value

    def forward(self, x):
        y = super().forward(x).clone()
        y[..., 0, 0] = self.value
        return y


# -- issue 22 item 2: a non-finite output is an error, never an image ------------------------------
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_output_raises_in_the_api(value):
    a = np.full((12, 10, 3), 128, np.uint8)
    with pytest.raises(NonFiniteOutput, match="NaN/Inf"):
        lightsr.upscale(a, Poisoned(value))
    with pytest.raises(NonFiniteOutput):
        lightsr.upscale(torch.rand(3, 12, 10), Poisoned(value), tile=16, tile_overlap=4)


def test_bf16_retry_in_fp32_then_raise():
    msgs = []
    up = Upscaler(Poisoned(), precision="bf16", device="cpu", warn=msgs.append)
    with pytest.raises(NonFiniteOutput):
        up(np.zeros((8, 8, 3), np.uint8))
    assert up.runner.stats.fp32_retries == 1 and any("recomputed in fp32" in m for m in msgs)


def test_overflowing_weights_raise_instead_of_black():
    """Weights scaled by 1e6 load (finite, plausible magnitudes) but overflow: NaN out -> error."""
    torch.manual_seed(0)
    model = lightsr.create_model("dlgsanet_tiny", 2, dim=12, groups=1, blocks=1, num_heads=2)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1e6)
    with pytest.raises(NonFiniteOutput):
        lightsr.upscale(np.full((16, 16, 3), 100, np.uint8), model)


# -- issue 22 item 11: a 1x1 input keeps its colour ----------------------------------------------------
def test_tiny_inputs_are_padded_by_edge_replication():
    """A 1x1 image is upscaled as the flat MIN_SIDE x MIN_SIDE image of its colour: a network with
    zero-padded convolutions no longer sees a pixel that is all border."""
    from lightsr.pretrained import DEFAULT_MODEL, default_weights

    if default_weights(DEFAULT_MODEL, 4) is None:
        pytest.skip("no shipped default weights in this build")
    up = Upscaler(DEFAULT_MODEL, 4, tile=0, device="cpu")
    colour = np.array([[[200, 10, 10]]], np.uint8)
    one = up(colour)
    flat = up(np.broadcast_to(colour, (MIN_SIDE, MIN_SIDE, 3)).copy())
    assert one.shape == (4, 4, 3)
    np.testing.assert_array_equal(one, flat[:4, :4])  # exactly the flat image's corner
    error = np.abs(one.reshape(-1, 3).mean(0) - colour[0, 0]).max()
    with torch.inference_mode():  # the network on the bare pixel, as before the fix
        bare = up.model(torch.from_numpy(colour).permute(2, 0, 1)[None].float() / 255)[0].mean((1, 2)) * 255
    bare_error = np.abs(bare.numpy() - colour[0, 0]).max()
    assert error <= 15 and error < bare_error / 3, (error, bare_error)  # the colour is kept
    calls = []

    class Recorder(Nearest):
        def forward(self, x):
            calls.append(tuple(x.shape[-2:]))
            return super().forward(x)

    out = ModelRunner(Recorder(), 2, "cpu")(torch.rand(3, 1, 5))
    assert calls == [(MIN_SIDE, MIN_SIDE)] and out.shape == (3, 2, 10)


# -- issue 22 item 10: container memory limits ------------------------------------------------------
def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_cgroup_v2_limit_with_nested_levels(tmp_path):
    root = tmp_path / "cg"
    _write(root / "cgroup.controllers", "cpu memory\n")
    _write(root / "job" / "memory.max", str(8 << 30))
    _write(root / "job" / "memory.current", str(3 << 30))
    _write(root / "job" / "memory.stat", f"anon 123\ninactive_file {1 << 30}\n")
    _write(root / "job" / "task" / "memory.max", "max\n")  # no limit at the leaf: the parent's applies
    _write(root / "job" / "task" / "memory.current", "0\n")
    _write(tmp_path / "proc" / "cgroup", "0::/job/task\n")
    # 8 GiB limit, 3 GiB charged of which 1 GiB is reclaimable cache -> 6 GiB left
    assert cgroup_available(str(root), str(tmp_path / "proc" / "cgroup")) == 6 << 30
    _write(tmp_path / "meminfo", f"MemTotal: 100 kB\nMemAvailable: {64 << 20} kB\n")
    free = available_memory(torch.device("cpu"), cgroup_root=str(root), proc_self=str(tmp_path / "proc"))
    assert free == 6 << 30  # min(64 GiB of the machine, 6 GiB of the container)


def test_cgroup_v1_limit(tmp_path):
    mem = tmp_path / "cg" / "memory"
    _write(mem / "memory.limit_in_bytes", str(9223372036854771712))  # the root: no limit
    _write(mem / "docker" / "abc" / "memory.limit_in_bytes", str(2 << 30))
    _write(mem / "docker" / "abc" / "memory.usage_in_bytes", str(512 << 20))
    _write(mem / "docker" / "abc" / "memory.stat", "total_inactive_file 0\n")
    _write(tmp_path / "proc" / "cgroup", "12:memory:/docker/abc\n0::/\n")
    assert cgroup_available(str(tmp_path / "cg"), str(tmp_path / "proc" / "cgroup")) == (2 << 30) - (512 << 20)


def test_container_sees_its_cgroup_as_the_root(tmp_path):
    """Inside a container /proc/self/cgroup names a path that does not exist in its namespace."""
    root = tmp_path / "cg"
    _write(root / "cgroup.controllers", "memory\n")
    _write(root / "memory.max", str(1 << 30))
    _write(root / "memory.current", str(1 << 28))
    _write(tmp_path / "cgroup", "0::/kubepods/pod1/ctr\n")
    assert cgroup_available(str(root), str(tmp_path / "cgroup")) == (1 << 30) - (1 << 28)


def test_no_cgroup_limit(tmp_path):
    root = tmp_path / "cg"
    _write(root / "cgroup.controllers", "memory\n")
    _write(root / "memory.max", "max\n")
    _write(tmp_path / "cgroup", "0::/\n")
    assert cgroup_available(str(root), str(tmp_path / "cgroup")) is None
    assert cgroup_available(str(tmp_path / "missing"), str(tmp_path / "missing")) is None


def _traced_tiled_upscale(a: np.ndarray) -> tuple[np.ndarray, int]:
    """Upscale ``a`` x2 with nearest neighbours in 128-pixel tiles; the output and the Python heap's peak."""
    up = Upscaler(Nearest(), tile=128, tile_overlap=8)
    tracemalloc.start()
    try:
        out = up(a)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return out, peak


def test_the_input_is_converted_tile_by_tile():
    """Only one tile of the input exists in float32 at a time: upscaling a 1200x1000 image costs its
    output array plus small change, not a float32 copy of the whole image (14 MB here)."""
    a = np.random.default_rng(0).integers(0, 256, size=(1200, 1000, 3), dtype=np.uint8)
    out, peak = _traced_tiled_upscale(a)
    np.testing.assert_array_equal(out, a.repeat(2, 0).repeat(2, 1))
    assert peak < out.nbytes + (4 << 20), f"peak {peak / 2**20:.1f} MiB for a {out.nbytes / 2**20:.1f} MiB output"


def test_alpha_is_converted_tile_by_tile_too():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, size=(600, 500, 4), dtype=np.uint8)
    out, peak = _traced_tiled_upscale(a)
    assert out.shape == (1200, 1000, 4) and peak < out.nbytes + (4 << 20)


def test_bare_import_reaches_the_inference_package():
    """Issue 22 item 11: `import lightsr` then `lightsr.inference.Upscaler` (no AttributeError)."""
    code = "import lightsr; print(lightsr.inference.Upscaler.__name__, lightsr.Upscaler is lightsr.inference.Upscaler)"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["Upscaler", "True"]


def test_memory_probe_is_cached_on_disk(tmp_path, monkeypatch):
    """The probe (a Python dispatch mode: its first use imports torch._dynamo, seconds) runs once per
    model configuration, precision and software version; later processes read the cache."""
    import lightsr
    from lightsr.inference import runner as R

    monkeypatch.setenv("LIGHTSR_CACHE", str(tmp_path))
    calls = []
    real = R.ModelRunner._probe
    monkeypatch.setattr(R.ModelRunner, "_probe", lambda self, p: calls.append(p) or real(self, p))
    first = R.ModelRunner(lightsr.create_model("dlgsanet_tiny", 4), 4, "cpu").bytes_per_pixel()
    again = R.ModelRunner(lightsr.create_model("dlgsanet_tiny", 4), 4, "cpu").bytes_per_pixel()
    assert calls == [64] and again == first > 0
    assert (tmp_path / "memory_probe.json").exists()
    R.ModelRunner(lightsr.create_model("dlgsanet_tiny", 2), 2, "cpu").bytes_per_pixel()  # another config
    assert calls == [64, 64]
    plain = torch.nn.Sequential(torch.nn.Conv2d(3, 12, 3, padding=1), torch.nn.PixelShuffle(2))
    R.ModelRunner(plain, 2, "cpu").bytes_per_pixel()
    R.ModelRunner(plain, 2, "cpu").bytes_per_pixel()  # not a lightsr model: never cached
    assert calls == [64, 64, 64, 64]


def test_memory_probe_sees_the_fast_paths():
    """The probe's dispatch mode is transparent to lightsr's ops: they run their native paths (as
    in real use) and the tensors they allocate are counted."""
    from lightsr.inference.runner import _PeakTensorMemory
    from lightsr.ops._common import observed
    from torch.utils.flop_counter import FlopCounterMode

    with _PeakTensorMemory() as tracker:
        assert not observed()
        torch.empty(1000)
    assert tracker.peak >= 4000
    with FlopCounterMode(display=False):
        assert observed()  # the MAC counter still sees aten convolutions


def test_cuda_graphs_switch_falls_back_on_the_cpu():
    """--cuda-graphs on the CPU: one warning saying why, and the same output as without."""
    import lightsr
    from lightsr.inference import Upscaler

    torch.manual_seed(0)
    net = lightsr.create_model("dlgsanet_tiny", 2).eval()
    msgs = []
    img = torch.randint(0, 256, (12, 17, 3), dtype=torch.uint8).numpy()
    with_graphs = Upscaler(net, tile=0, precision="fp32", device="cpu", cuda_graphs=True, warn=msgs.append)
    plain = Upscaler(net, tile=0, precision="fp32", device="cpu")
    assert any("cuda_graphs: not used" in m for m in msgs)
    assert (with_graphs.upscale_pixels(img) == plain.upscale_pixels(img)).all()
