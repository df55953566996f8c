"""Building blocks shared by several architectures.

* channels-first LayerNorm (Restormer's "WithBias" LayerNorm, used by all three papers),
* the gated depth-wise-conv feed-forward networks: Restormer's GDFN (DLGSANet) and LAMNet's
  dual-gated DGFN, plus a plain conv FFN for ablations,
* the one-step pixel-shuffle reconstruction head and the RGB mean shift,
* ``nn.Conv2d`` subclasses (same parameters and state-dict keys) that route 1x1 and depth-wise
  convolutions through the selected ops (:func:`lightsr.ops.pointwise_conv`,
  :func:`lightsr.ops.depthwise_conv2d`): matrix products and native kernels on the CPU.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.modules import module as _nn_module

from lightsr.ops import get_op
from lightsr.ops._common import needs_grad
from lightsr.ops.layer_norm import layer_norm_2d, layer_norm_2d_reference  # noqa: F401 (re-exported)

DIV2K_RGB_MEAN = (0.4488, 0.4371, 0.4040)


class LayerNorm2d(nn.Module):
    """Channels-first LayerNorm with ``weight`` / ``bias`` of shape ``(C,)``."""

    def __init__(self, channels: int, eps: float = 1e-5):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return get_op("layer_norm_2d")(x, self.weight, self.bias, self.eps)

    def norm_parameters(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        """(weight, bias, eps), for :func:`pre_norm`."""
        return self.weight, self.bias, self.eps


def pre_norm(norm: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(norm(x), x)``: the two inputs of a pre-norm residual block ``x + f(norm(x))``. A channels-first
    LayerNorm (``norm_parameters()``) without hooks goes through ``get_op("layer_norm_2d_residual")``:
    in float32 CPU training the norm's native backward then adds the residual's gradient into x's in
    its own pass (autograd would sum the two gradients in another pass over the map). Modules with
    hooks are called (the hooks see them run)."""
    if _hooked(norm):
        return norm(x), x
    weight, bias, eps = norm.norm_parameters()
    return get_op("layer_norm_2d_residual")(x, weight, bias, eps)


def _hooked(module: nn.Module) -> bool:
    if getattr(_nn_module, "_global_forward_hooks", None) or getattr(_nn_module, "_global_forward_pre_hooks", None):
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())


class DepthwiseConv2d(nn.Conv2d):
    """``nn.Conv2d(c, c, k, padding=p, dilation=d, groups=c)`` (same parameters and keys) computed
    with ``get_op("depthwise_conv2d")``."""

    def __init__(self, channels: int, kernel_size, padding, bias: bool = True, dilation=1):
        super().__init__(channels, channels, kernel_size, padding=padding, dilation=dilation, groups=channels, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return get_op("depthwise_conv2d")(x, self.weight, self.bias, self.padding, self.dilation)


class Conv1x1(nn.Conv2d):
    """``nn.Conv2d(c_in, c_out, 1)`` (same parameters and keys) computed with ``get_op("pointwise_conv")``;
    ``forward(x, residual, scale)`` returns ``residual + scale * conv(x)`` in one product (written
    into ``out``, a band of a larger image, when given: inference)."""

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True):
        super().__init__(in_channels, out_channels, 1, bias=bias)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None,
                scale: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
        return get_op("pointwise_conv")(x, self.weight, self.bias, residual, scale, out=out)


def writable(x: torch.Tensor) -> torch.Tensor | None:
    """``x`` when a residual layer may write its result into it, else None (pass as ``out=``).

    At inference (no autograd) the output of a layer's first residual branch is read only by the
    second branch (its input, through the norm, and its residual): the second branch can then add
    its product into it in place, with no copy of the residual stream. A forward hook that keeps
    that intermediate output sees it updated. With autograd on, the norm's backward needs it: None.
    """
    return None if torch.is_grad_enabled() else x


def conv1x1_of_concat(conv: nn.Conv2d, a: torch.Tensor, b: torch.Tensor, residual: torch.Tensor | None = None,
                      scale: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
    """``residual + scale * conv(concat[a, b], dim=1)`` for a 1x1 ``conv``; at inference as two products
    ``W[:, :Ca] a`` and ``W[:, Ca:] b``, the second accumulating into the first's output in place
    (no concat copy; written into ``out`` when given, which may be ``residual``)."""
    w, ca = conv.weight, a.shape[1]
    op = get_op("pointwise_conv")
    if needs_grad(a, b, w):
        # training: one product on the concatenation; its forward and backward on C_a + C_b channels
        # beat two thin products' (LAMNet's 32 + 32 -> 64), the copy included
        return op(torch.cat([a, b], dim=1), w, conv.bias, residual, scale, out=out)
    first = op(a, w[:, :ca], conv.bias, residual, scale, out=out)
    return op(b, w[:, ca:], None, first, scale, out=writable(first))


class GatedDconvFFN(nn.Module):
    """Gated depth-wise-conv feed-forward network.

    ``project_in`` (1x1, C -> 2h) -> ``dwconv`` (3x3 depth-wise) -> split into x1, x2 -> gate ->
    ``project_out`` (1x1 -> C), with ``h = hidden``.

    * ``dual_gate=False``: Restormer's GDFN, gate = GELU(x1) * x2, project_out h -> C.
    * ``dual_gate=True``: LAMNet's DGFN, g = GELU(x1) and gate = concat[g * x1, g * x2]
      (self-gate + cross-gate), project_out 2h -> C.
    """

    def __init__(self, dim: int, hidden: int, bias: bool, dual_gate: bool = False):
        super().__init__()
        self.dual_gate = dual_gate
        self.project_in = Conv1x1(dim, hidden * 2, bias=bias)
        self.dwconv = DepthwiseConv2d(hidden * 2, 3, padding=1, bias=bias)
        self.project_out = Conv1x1(hidden * 2 if dual_gate else hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None,
                scale: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
        """``residual + scale * FFN(x)`` (the layer's residual added inside the last product), written
        into ``out`` when given (inference; may be ``residual`` itself, see :func:`writable`)."""
        if _strips_pay(x):
            return self._forward_strips(x, residual, scale, out)
        return self._forward(x, residual, scale, out)

    def _forward(self, x, residual, scale, out=None):
        # dwconv, split, GELU and the gate(s) in one op (one native pass on the CPU)
        gate = "dual" if self.dual_gate else "gelu"
        gated = get_op("gated_depthwise_conv2d")(self.project_in(x), self.dwconv.weight, self.dwconv.bias,
                                                 self.dwconv.padding, gate)
        return self.project_out(gated, residual, scale, out=out)

    def _forward_strips(self, x, residual, scale, out=None):
        """Inference on bands of rows: the hidden tensor (2h channels: 4x the input) is made and used
        a band at a time (plus the depth-wise kernel's halo rows, whose own outputs are dropped) and
        never exists whole: no image-sized allocation (fresh, page-faulting memory in every layer)
        and no trip of it through main memory. The same numbers as :meth:`_forward`: every output
        row sees the same inputs."""
        b, _, h, w = x.shape
        rows = max(1, STRIP_PIXELS // w)
        halo = self.dwconv.padding[0]
        gate = "dual" if self.dual_gate else "gelu"
        for r0 in range(0, h, rows):
            r1 = min(h, r0 + rows)
            a0, a1 = max(0, r0 - halo), min(h, r1 + halo)
            hidden = self.project_in(x[:, :, a0:a1])
            gated = get_op("gated_depthwise_conv2d")(hidden, self.dwconv.weight, self.dwconv.bias,
                                                     self.dwconv.padding, gate)[:, :, r0 - a0 : r1 - a0]
            band = None if residual is None else residual[:, :, r0:r1]
            if out is None:
                dtype = torch.promote_types(gated.dtype, residual.dtype) if residual is not None else gated.dtype
                out = torch.empty((b, self.project_out.out_channels, h, w), dtype=dtype, device=x.device,
                                  memory_format=torch.channels_last)
            self.project_out(gated, band, scale, out=out[:, :, r0:r1])  # the product writes the band in place
        return out


# The FFNs' inference strips: maps of more than WHOLE_PIXELS run in bands of STRIP_PIXELS pixels
# (whole rows), smaller maps whole. Bands bound the hidden tensor's memory on large inputs (the CLI's
# tiles of ~660 px), but each recomputes the depth-wise halo rows and runs its products on fewer rows:
# with malloc tuned, bands of 8192 pixels were 1.07-1.14x slower than the whole map at 320x180 and
# 640x360 on a Zen 4 EPYC (fp32 and bf16: benchmarks/model_speed.py --ffn-bands). The memory it
# costs is within the auto-tiler's estimate (measured on maps small enough to run whole): peak RSS of
# a 1280x720 -> x4 upscale 1.30 GiB with bands on every tile, 1.52 GiB with the edge tiles whole
# (benchmarks/upscale_memory.py, dlgsanet_tiny, 2 threads).
WHOLE_PIXELS = 262144  # 512 x 512 (hidden tensor of 192 channels: 192 MiB in float32)
STRIP_PIXELS = 8192


def _strips_pay(x: torch.Tensor) -> bool:
    """Inference on a channels-last CPU tensor of more than WHOLE_PIXELS pixels, with the fast ops."""
    from lightsr.ops import using_reference_ops
    from lightsr.ops._common import exporting

    return (not (torch.is_grad_enabled() and x.requires_grad) and x.device.type == "cpu" and x.dim() == 4
            and x.stride(1) == 1 and x.shape[1] > 1 and x.shape[2] * x.shape[3] > WHOLE_PIXELS
            and not using_reference_ops() and not exporting())


class ConvFFN(nn.Module):
    """Plain point-wise FFN: 1x1 (C -> h) -> GELU -> 1x1 (h -> C)."""

    def __init__(self, dim: int, hidden: int, bias: bool = True):
        super().__init__()
        self.project_in = Conv1x1(dim, hidden, bias=bias)
        self.project_out = Conv1x1(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None,
                scale: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
        return self.project_out(F.gelu(self.project_in(x)), residual, scale, out=out)


class ReconstructionHead(nn.Sequential):
    """conv 3x3 + PixelShuffle, always in float32: under bf16/fp16 autocast the image itself would
    otherwise come out rounded to 8 bits of mantissa (up to half a uint8 level near white: about
    0.02 dB of Set5 PSNR), for 3% of a model's multiply-adds."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        device = x.device.type
        if device in ("cpu", "cuda") and torch.is_autocast_enabled(device):
            with torch.autocast(device, enabled=False):
                return super().forward(x.float())
        return super().forward(x)


def pixel_shuffle_head(dim: int, scale: int, out_channels: int = 3) -> nn.Sequential:
    """One-step reconstruction: conv 3x3 (dim -> out * s^2) + PixelShuffle(s). Keys ``0.weight``, ``0.bias``."""
    return ReconstructionHead(
        nn.Conv2d(dim, out_channels * scale * scale, 3, padding=1),
        nn.PixelShuffle(scale),
    )


class MeanShift(nn.Module):
    """``(x - mean) * img_range`` / ``y / img_range + mean`` with a non-persistent mean buffer.

    The official DLGSANet/LAMNet code keeps the mean as a plain attribute (not in the state dict);
    a non-persistent buffer keeps it out of the state dict too but follows ``.to(device, dtype)``.
    """

    def __init__(self, rgb_mean=DIV2K_RGB_MEAN, img_range: float = 1.0, channels: int = 3):
        super().__init__()
        mean = torch.tensor(rgb_mean if channels == 3 else [0.0] * channels, dtype=torch.float32)
        self.register_buffer("mean", mean.view(1, -1, 1, 1), persistent=False)
        self.img_range = float(img_range)

    def sub(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) * self.img_range

    def add(self, x: torch.Tensor) -> torch.Tensor:
        return x / self.img_range + self.mean


def trunc_normal_init_(module: nn.Module, std: float = 0.02) -> None:
    """timm/BasicSR-style init: conv and linear weights ~ N(0, std) truncated to [-2, 2], biases 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.trunc_normal_(m.weight, std=std, a=-2.0, b=2.0)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
