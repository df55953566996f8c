"""lightsr.train.graph_step: the switches, the clean fallback where CUDA graphs cannot run (this
CPU), and on a CUDA machine the graphed step and forward against eager."""
from __future__ import annotations

import logging

import pytest
import torch
import torch.nn.functional as F

from lightsr.models import create_model
from lightsr.train.graph_step import GraphedForward, GraphedStep, fixed_shape_tuning

CUDA = torch.cuda.is_available()


def _model(device="cpu"):
    torch.manual_seed(0)
    return create_model("dlgsanet_tiny", 2).to(device).train()


def _batch(device="cpu", seed=1, size=10):
    g = torch.Generator().manual_seed(seed)
    lq = torch.rand(2, 3, size, size, generator=g)
    return lq.to(device), torch.rand(2, 3, 2 * size, 2 * size, generator=g).to(device)


def _eager_reference(model, lq, gt, scale=1.0):
    model.zero_grad(set_to_none=True)
    loss = F.l1_loss(model(lq).float(), gt)
    (loss * scale).backward()
    return loss.detach(), [p.grad.clone() for p in model.parameters()]


def test_cpu_falls_back_to_the_same_step():
    model = _model()
    step = GraphedStep(model, F.l1_loss, enabled=True)
    assert not step.captures and "CUDA" in step.fallback_reason
    lq, gt = _batch()
    want_loss, want_grads = _eager_reference(model, lq, gt)
    model.zero_grad(set_to_none=True)
    loss = step(lq, gt)
    assert torch.equal(loss, want_loss) and loss.requires_grad is False
    for p, g in zip(model.parameters(), want_grads):
        assert torch.equal(p.grad, g)
    assert step.graph is None and step.replays == 0


def test_switched_off_and_grad_scaler():
    """enabled=False is eager; a GradScaler's scale multiplies the gradients, not the returned loss."""
    model = _model()
    lq, gt = _batch()
    want_loss, want_grads = _eager_reference(model, lq, gt, scale=8.0)
    model.zero_grad(set_to_none=True)
    step = GraphedStep(model, F.l1_loss, scaler=torch.amp.GradScaler("cpu", init_scale=8.0), enabled=False)
    assert step.fallback_reason == "switched off"
    assert torch.equal(step(lq, gt), want_loss)
    for p, g in zip(model.parameters(), want_grads):
        torch.testing.assert_close(p.grad, g, rtol=1e-6, atol=0)


def test_forward_falls_back_under_inference_mode():
    model = _model().eval()
    graphed = GraphedForward(model, "cpu")
    assert not graphed.captures
    x = _batch()[0]
    y = graphed(x)
    with torch.inference_mode():  # the same path (inference-only kernels may round differently from autograd's)
        want = model(x)
    assert y.is_inference() and torch.equal(y, want) and not graphed.graphs


def test_fixed_shape_tuning_restores_the_flag():
    before = torch.backends.cudnn.benchmark
    with fixed_shape_tuning(not before):
        assert torch.backends.cudnn.benchmark is (not before)
    assert torch.backends.cudnn.benchmark is before


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device (CUDA graphs)")
def test_cuda_graphed_step_matches_eager(caplog):
    model = _model("cuda")
    step = GraphedStep(model, F.l1_loss)
    assert step.captures
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    for seed in (1, 2, 3):  # capture, then replays on new data after optimiser steps
        lq, gt = _batch("cuda", seed)
        twin = _model("cuda")
        twin.load_state_dict(model.state_dict())
        want_loss, want_grads = _eager_reference(twin, lq, gt)
        opt.zero_grad(set_to_none=True)  # what the trainer does: the step puts the graph's gradients back
        loss = step(lq, gt)
        torch.testing.assert_close(loss, want_loss, rtol=1e-4, atol=1e-6)
        for p, g in zip(model.parameters(), want_grads):
            torch.testing.assert_close(p.grad, g, rtol=1e-3, atol=1e-6)
        opt.step()
    assert step.replays == 3
    with caplog.at_level(logging.WARNING, logger="lightsr.train"):
        lq, gt = _batch("cuda", 4, size=12)
        step(lq, gt)  # another shape: eager, with one warning
    assert step.replays == 3 and "runs eagerly" in caplog.text


@pytest.mark.skipif(not CUDA, reason="needs a CUDA device (CUDA graphs)")
def test_cuda_graphed_forward_matches_eager():
    model = _model("cuda").eval()
    graphed = GraphedForward(model, "cuda", max_shapes=1)
    for seed in (1, 2):
        x = _batch("cuda", seed)[0]
        with torch.inference_mode():
            want = model(x)
        torch.testing.assert_close(graphed(x), want, rtol=1e-4, atol=1e-5)
    assert len(graphed.graphs) == 1
    x = _batch("cuda", 3, size=12)[0]
    graphed(x)
    assert len(graphed.graphs) == 1  # over max_shapes: eager
