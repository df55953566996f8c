"""Parameters and multiply-accumulates (MACs) as lightweight-SR papers report them.

Papers print "FLOPs" / "Multi-Adds" for a **1280 x 720 output** (LR input 640x360 at x2,
427x240 at x3, 320x180 at x4) and mean MACs (one multiply-add = 1). The NTIRE efficient-SR
challenges use a 256x256 input instead. See ``docs/complexity.md``.

Counting is built on :class:`torch.utils.flop_counter.FlopCounterMode` (a dispatcher-level
counter: it sees every convolution and matrix product, including the attention matmuls of every
TLC window) and divides its FLOPs by two. lightsr's own operators are ``torch.library`` custom
ops (:mod:`lightsr.ops`) with exact formulas registered here, so the counter sees them as one
operator each instead of the element-wise aten ops inside:

=======================================  ==========================================================
operator                                 MACs
=======================================  ==========================================================
``lightsr::dynamic_dwconv``              K^2 * B*C*H*W (one multiply-add per tap and output)
``lightsr::dynamic_dwconv_fused``        the same + its 1x1 kernel generator B*H*W * C_h * G*K^2
``lightsr::focal_attention``             K_taps * B*C*H*W per direction (13 taps for LAMNet)
backward ops (training)                  grad input and grad weight each as the forward apply;
                                         the fused op also recomputes and back-propagates the 1x1
=======================================  ==========================================================

Not counted, as in ``FlopCounterMode`` and most papers: biases, normalisation, activations,
softmax, top-k selection, element-wise products and sums (residuals, gates, IEM), pooling and
the focal attention's box averages (additions: 1 + 3 per element and direction for the 2- and
4-pixel boxes of LAMNet, built by doubling). :func:`count_macs` runs on the ``meta`` device by
default: nothing is computed, counting a model takes about a second.
"""
from __future__ import annotations

import contextlib
import copy
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Iterable, Mapping, Sequence

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula

import lightsr.ops  # noqa: F401  (registers the custom ops)
from lightsr.ops import use_reference_ops

__all__ = [
    "HD_LR_SIZES",
    "NTIRE_LR_SIZE",
    "PAPER_MACS",
    "MacReport",
    "count_macs",
    "count_model_macs",
    "lr_size_for_hd",
]

# LR input for a 1280x720 output (x3: 1280/3 is not an integer; 427x240 as most papers)
HD_LR_SIZES: dict[int, tuple[int, int]] = {2: (360, 640), 3: (240, 427), 4: (180, 320)}
NTIRE_LR_SIZE: tuple[int, int] = (256, 256)


def lr_size_for_hd(scale: int) -> tuple[int, int]:
    """(H, W) of the LR input that gives (about) a 1280x720 output at ``scale``."""
    if scale in HD_LR_SIZES:
        return HD_LR_SIZES[scale]
    return (round(720 / scale), round(1280 / scale))


# --- formulas of the custom ops --------------------------------------------------------------
# FlopCounterMode calls a formula with the shapes of the tensor arguments (other arguments as
# they are) and expects FLOPs (= 2 MACs). Each formula also reports its parts to the innermost
# active ``_parts`` collector, so that reports can split e.g. the fused op into the dynamic
# convolution proper and its 1x1 kernel generator.
_PART_STACK: list[Counter] = []


def _emit(**parts: int) -> int:
    for collector in _PART_STACK:
        collector.update(parts)
    return 2 * sum(parts.values())


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


_ops = torch.ops.lightsr


@register_flop_formula(_ops.dynamic_dwconv)
def _dyn_flop(x_shape, w_shape, kernel_size, *args, out_shape=None, **kwargs) -> int:
    return _emit(dynamic_dwconv=kernel_size * kernel_size * _numel(x_shape))


@register_flop_formula(_ops.dynamic_dwconv_grad_input)
def _dyn_gin_flop(g_shape, w_shape, kernel_size, *args, out_shape=None, **kwargs) -> int:
    return _emit(dynamic_dwconv_backward=kernel_size * kernel_size * _numel(g_shape))


@register_flop_formula(_ops.dynamic_dwconv_grad_weight)
def _dyn_gw_flop(g_shape, x_shape, kernel_size, groups, *args, out_shape=None, **kwargs) -> int:
    return _emit(dynamic_dwconv_backward=kernel_size * kernel_size * _numel(x_shape))


@register_flop_formula(_ops.dynamic_dwconv_fused)
def _dyn_fused_flop(x_shape, h_shape, cw_shape, cb_shape, kernel_size, *args, out_shape=None, **kwargs) -> int:
    b, _, h, w = x_shape
    kernel_conv = b * h * w * int(cw_shape[0]) * int(cw_shape[1])
    return _emit(dynamic_dwconv=kernel_size * kernel_size * _numel(x_shape), dynamic_dwconv_kernel_conv=kernel_conv)


@register_flop_formula(_ops.dynamic_dwconv_fused_backward)
def _dyn_fused_bwd_flop(g_shape, x_shape, h_shape, cw_shape, cb_shape, kernel_size, *args, out_shape=None, **kwargs) -> int:
    b, _, h, w = x_shape
    conv = b * h * w * int(cw_shape[0]) * int(cw_shape[1])
    # recompute the kernels (1 conv), grad x and grad kernels (2 applies), grad hidden and grad conv weight (2 convs)
    return _emit(
        dynamic_dwconv_backward=2 * kernel_size * kernel_size * _numel(x_shape),
        dynamic_dwconv_kernel_conv_backward=3 * conv,
    )


@register_flop_formula(_ops.focal_attention)
def _fsa_flop(x_shape, k_shape, starts, lengths, dim, *args, out_shape=None, **kwargs) -> int:
    return _emit(focal_attention=len(starts) * _numel(x_shape))


@register_flop_formula(_ops.focal_attention_backward)
def _fsa_bwd_flop(g_shape, xp_shape, kc_shape, starts, lengths, dim, *args, out_shape=None, **kwargs) -> int:
    # grad input (scatter k * grad) and grad kernel (grad * box mean, summed over the group): one apply each
    return _emit(focal_attention_backward=2 * len(starts) * _numel(g_shape))


def _conv_backward_flop(grad_out_shape, x_shape, w_shape, bias, stride, padding, dilation, transposed, output_padding, groups, output_mask, out_shape=None, **kwargs) -> int:
    """Convolution backward with groups taken into account.

    (torch's built-in formula multiplies grouped / depth-wise convolutions by the number of
    groups: a depth-wise 3x3 backward counted 9x its forward.) Grad input and grad weight each
    cost one forward: (batch x output pixels x C_out) x (C_in / groups x kh x kw).
    """
    if transposed:  # forward maps x (B, C_in, ...) with w (C_in, C_out / g, kh, kw)
        forward = _numel(x_shape) * _numel(w_shape[1:])
    else:
        forward = _numel(grad_out_shape) * _numel(w_shape[1:])
    return 2 * forward * (int(bool(output_mask[0])) + int(bool(output_mask[1])))


# Parts that a tracer-based counter (fvcore, thop, ptflops, the papers' scripts) cannot see: the
# arithmetic inside lightsr's custom ops. The 1x1 kernel generator of the fused dynamic conv is a
# plain convolution in the official code, so it stays with the visible convolutions.
CUSTOM_OP_PARTS = ("dynamic_dwconv", "focal_attention", "dynamic_dwconv_backward", "focal_attention_backward")


@dataclass
class MacReport:
    """MACs of one forward (or forward + backward) pass, with a breakdown.

    ``by_op`` maps an operator family to its MACs: ``conv`` (all aten convolutions), ``matmul``
    (mm / bmm / addmm / baddbmm / SDPA: attention and TLC windows), and the custom-op parts
    ``dynamic_dwconv`` (the K x K apply), ``dynamic_dwconv_kernel_conv`` (its 1x1 kernel
    generator, a convolution in the official code), ``focal_attention`` (both directions).
    """

    macs: int
    by_op: dict[str, int]
    input_size: tuple[int, ...]
    params: int
    notes: list[str] = field(default_factory=list)

    @property
    def custom_macs(self) -> int:
        """MACs inside lightsr's custom ops (invisible to tracer-based counters)."""
        return sum(v for k, v in self.by_op.items() if k in CUSTOM_OP_PARTS)

    @property
    def tracer_visible_macs(self) -> int:
        """What a counter that treats the custom ops as 0 reports (fvcore / the papers' scripts)."""
        return self.macs - self.custom_macs

    def gmacs(self, visible_only: bool = False) -> float:
        return (self.tracer_visible_macs if visible_only else self.macs) / 1e9

    def to_dict(self) -> dict:
        d = asdict(self)
        d["custom_macs"] = self.custom_macs
        d["tracer_visible_macs"] = self.tracer_visible_macs
        return d


_ATEN_FAMILIES = {
    "convolution": "conv",
    "convolution_backward": "conv_backward",
    "mm": "matmul",
    "bmm": "matmul",
    "addmm": "matmul",
    "baddbmm": "matmul",
    "_scaled_dot_product_efficient_attention": "matmul",
    "_scaled_dot_product_flash_attention": "matmul",
    "_scaled_dot_product_cudnn_attention": "matmul",
    "_scaled_dot_product_flash_attention_for_cpu": "matmul",
}


def _family(op) -> str | None:
    name = str(op)
    if name.startswith("lightsr."):
        return None  # reported by its parts
    base = name.split(".")[-1]
    return _ATEN_FAMILIES.get(base, base)


@contextlib.contextmanager
def _collect_parts():
    parts: Counter = Counter()
    _PART_STACK.append(parts)
    try:
        yield parts
    finally:
        _PART_STACK.remove(parts)


def _as_meta(model: nn.Module) -> nn.Module:
    if all(p.device.type == "meta" for p in model.parameters()):
        return model
    return copy.deepcopy(model).to("meta")


def count_macs(
    model: nn.Module,
    input_size: Sequence[int] = (1, 3, 180, 320),
    *,
    device: str | torch.device = "meta",
    train: bool = False,
    backward: bool = False,
) -> MacReport:
    """MACs of ``model`` on an input of ``input_size`` (B, C, H, W).

    ``device="meta"`` (default) counts without computing (the model is copied to the meta
    device; the original is untouched). ``train=False`` counts eval mode (DLGSANet's TLC
    windows on, as the official test code runs); ``backward=True`` adds the backward pass of a
    training step (the model is put in train mode unless ``train`` is given).
    """
    params = sum(p.numel() for p in model.parameters())
    device = torch.device(device)
    work = _as_meta(model) if device.type == "meta" else model
    was_training = work.training
    work.train(train or backward)
    x = torch.rand(*input_size, device=device) if device.type != "meta" else torch.empty(*input_size, device="meta")
    counter = FlopCounterMode(display=False, custom_mapping={torch.ops.aten.convolution_backward: _conv_backward_flop})
    try:
        with use_reference_ops(False), _collect_parts() as parts:
            if backward:
                x.requires_grad_(False)
                with counter:
                    work(x).sum().backward()
            else:
                with torch.no_grad(), counter:
                    work(x)
    finally:
        work.train(was_training)
    by_op: Counter = Counter()
    for op, flops in counter.get_flop_counts().get("Global", {}).items():
        fam = _family(op)
        if fam is not None:
            by_op[fam] += flops // 2
    by_op.update(parts)
    total = counter.get_total_flops() // 2
    if sum(by_op.values()) != total:  # every op must be accounted for in the breakdown
        raise AssertionError(f"MAC breakdown {dict(by_op)} does not add up to {total}")
    return MacReport(macs=int(total), by_op={k: int(v) for k, v in sorted(by_op.items())}, input_size=tuple(input_size), params=params)


def count_model_macs(
    name: str,
    scale: int,
    lr_size: Sequence[int] | None = None,
    *,
    tlc: bool | None = None,
    options: Mapping | None = None,
    backward: bool = False,
    batch: int = 1,
) -> MacReport:
    """MACs of registered model ``name`` at ``scale`` (default input: the 1280x720-output LR size).

    Built directly on the meta device (no weights are allocated). ``tlc`` switches DLGSANet's
    test-time local converter (default: as the model is built, i.e. on in eval mode).
    """
    from lightsr.models import create_model

    h, w = lr_size if lr_size is not None else lr_size_for_hd(scale)
    with torch.device("meta"):
        model = create_model(name, scale, **dict(options or {}))
    notes = []
    if tlc is not None and hasattr(model, "set_tlc"):
        model.set_tlc(tlc)
        notes.append(f"TLC {'on' if tlc else 'off'}")
    report = count_macs(model, (batch, 3, h, w), backward=backward)
    report.notes.extend(notes)
    return report


# --- numbers printed in the papers (GMACs for a 1280x720 output) ------------------------------
# source strings name the table; every number was read from ../shared/papers (see docs/complexity.md)
_D = "DLGSANet paper"
_L = "LAMNet paper Table 3"
PAPER_MACS: dict[tuple[str, int], list[tuple[float, str]]] = {
    ("dlgsanet", 2): [(1097.0, f"{_D} Table 1")],
    ("dlgsanet", 3): [(486.0, f"{_D} Table 1")],
    ("dlgsanet", 4): [(274.0, f"{_D} Table 1")],
    ("dlgsanet_tiny", 2): [(128.1, f"{_D} Table 2")],
    ("dlgsanet_tiny", 3): [(56.8, f"{_D} Table 2")],
    ("dlgsanet_light", 2): [(170.0, f"{_D} Table 2"), (175.4, _L)],
    ("dlgsanet_light", 3): [(75.4, f"{_D} Table 2"), (78.2, _L)],
    ("dlgsanet_light", 4): [(44.8, _L)],
    ("lamnet", 2): [(185.0, _L)],
    ("lamnet", 3): [(83.11, _L)],
    ("lamnet", 4): [(47.5, _L)],
    ("lamnet_large", 2): [(229.0, _L)],
    ("lamnet_large", 3): [(103.0, _L)],
    ("lamnet_large", 4): [(58.4, _L)],
    ("lgun", 2): [(141.1, "LGUN paper Table 2")],
    ("lgun", 3): [(63.5, "LGUN paper Table 2")],
    ("lgun", 4): [(36.4, "LGUN paper Table 2")],
    ("imdn", 2): [(158.8, f"{_D} Table 2 / {_L}")],
    ("imdn", 3): [(71.5, f"{_D} Table 2 / {_L}")],
    ("imdn", 4): [(40.9, _L)],
}


def paper_macs(name: str, scale: int) -> list[tuple[float, str]]:
    return list(PAPER_MACS.get((name, int(scale)), []))


def format_gmacs(macs: int | float) -> str:
    return f"{macs / 1e9:.2f}"


def breakdown_line(report: MacReport, names: Iterable[str] | None = None) -> str:
    """``conv 43.25G + matmul 0.59G + dynamic_dwconv 1.63G`` (GMACs, largest first)."""
    items = sorted(report.by_op.items(), key=lambda kv: -kv[1])
    if names is not None:
        items = [kv for kv in items if kv[0] in set(names)]
    return " + ".join(f"{k} {v / 1e9:.2f}G" for k, v in items if v)
