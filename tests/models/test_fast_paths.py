"""The fast CPU path of every model avoids aten's slow paths: no ``_slow_conv2d`` (im2col) call in a
forward or a training step's backward, at one thread and batch 1, where aten picks it for every 1x1
convolution. (aten also picks it for a dense 3x3 convolution at batch 1 on fewer than 20,480 input
values - the RGB input of an image under 83 x 83 pixels - where it is the faster one; the test
input is larger.) The fast path's outputs and gradients equal the reference path's (tests/models)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.profiler import profile

from lightsr.models import create_model

MODELS = ["dlgsanet_tiny", "dlgsanet_light", "dlgsanet", "lgun", "lamnet", "lamnet_large"]


def _op_names(fn) -> set[str]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with profile() as prof:
            fn()
    finally:
        torch.set_num_threads(threads)
    return {e.name for e in prof.events()}


@pytest.mark.parametrize("name", MODELS)
def test_no_slow_convolution_in_inference_or_training(name):
    torch.manual_seed(0)
    model = create_model(name, 4)
    x = torch.rand(1, 3, 84, 84)  # 3 x 84 x 84 > 20480 values: aten's own size rule for dense 3x3 convs

    def inference():
        with torch.inference_mode():
            model.eval()(x)

    def training_step():
        model.train()
        F.l1_loss(model(torch.rand(2, 3, 16, 16)), torch.rand(2, 3, 64, 64)).backward()

    names = _op_names(inference) | _op_names(training_step)
    slow = sorted(n for n in names if "slow_conv" in n or "thnn_conv" in n)
    assert not slow, slow


def _graph_nodes(out: torch.Tensor) -> set[str]:
    """The names of every autograd node behind ``out``."""
    seen, todo, names = set(), [out.grad_fn], set()
    while todo:
        node = todo.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        names.add(type(node).__name__)
        todo.extend(n for n, _ in node.next_functions)
    return names


@pytest.mark.parametrize("name", MODELS)
def test_training_graph_has_no_in_place_op_on_a_view(name):
    """An in-place op on a view (ReLU on a channels-last product's view, say) puts a CopySlices node in
    the graph, which hands the op's backward an NCHW-contiguous copy of the gradient: a copy and a
    mixed-layout backward (LAMNet's CSM ReLU: about 40x slower than on matching layouts)."""
    torch.manual_seed(0)
    model = create_model(name, 2).train()
    nodes = _graph_nodes(model(torch.rand(2, 3, 12, 12)))
    assert "CopySlices" not in nodes and "AsStridedBackward0" not in nodes, sorted(nodes)


@pytest.mark.parametrize("name", ["dlgsanet_tiny", "lamnet"])
@pytest.mark.parametrize("b,h,w", [(1, 37, 23), (2, 20, 31)])
def test_ffn_inference_strips_equal_the_whole_image(name, b, h, w, monkeypatch):
    """The gated FFNs run inference in bands of rows (plus the depth-wise halo): the same numbers as
    the whole image at once, for odd heights, a last band of one row and batch > 1."""
    from lightsr.models import blocks

    torch.manual_seed(0)
    model = create_model(name, 2).eval()
    x = torch.rand(b, 3, h, w)
    with torch.inference_mode():
        monkeypatch.setattr(blocks, "WHOLE_PIXELS", 10**9)
        whole = model(x)
        monkeypatch.setattr(blocks, "WHOLE_PIXELS", 0)
        monkeypatch.setattr(blocks, "STRIP_PIXELS", 3 * w)  # 3-row bands: many band borders
        calls = []
        real = blocks.GatedDconvFFN._forward_strips
        monkeypatch.setattr(blocks.GatedDconvFFN, "_forward_strips",
                            lambda self, *a: calls.append(1) or real(self, *a))
        banded = model(x)
    assert calls and torch.equal(banded, whole)


@pytest.mark.parametrize("name", MODELS)
def test_pre_norm_blocks_hand_the_residual_gradient_to_the_norm(name):
    """Every pre-norm block's residual comes back from the norm's autograd node (its native backward adds
    the residual's gradient: no separate sum of the two), and gradients equal the reference ops'; a
    forward hook on a norm still sees it run."""
    from lightsr.ops import _native, use_reference_ops

    if not _native.available():
        pytest.skip(f"native kernels not built: {_native.build_error()}")
    torch.manual_seed(0)
    model = create_model(name, 2).train()
    x, target = torch.rand(2, 3, 12, 12), torch.rand(2, 3, 24, 24)
    out = model(x)
    assert "TrainedLayerNormResidualBackward" in _graph_nodes(out)
    F.l1_loss(out, target).backward()
    fast = {k: p.grad.clone() for k, p in model.named_parameters()}
    model.zero_grad()
    with use_reference_ops():
        F.l1_loss(model(x), target).backward()
    for k, p in model.named_parameters():
        torch.testing.assert_close(fast[k], p.grad, atol=1e-4 * max(1.0, p.grad.abs().max().item()), rtol=1e-3)
    norms = [m for m in model.modules() if hasattr(m, "norm_parameters")]
    seen = []
    norms[0].register_forward_hook(lambda *a: seen.append(1))
    model(x)
    assert seen
