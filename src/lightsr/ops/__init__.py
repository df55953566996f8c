"""Custom operators of the three architectures, each with a plain reference implementation.

===============================  ====================================  ======================================
operator                         fast (used by the models)             reference (test oracle)
===============================  ====================================  ======================================
dynamic depth-wise conv          :func:`dynamic_dwconv`                :func:`dynamic_dwconv_reference`
... fused with its 1x1 kernel    :func:`dynamic_dwconv_fused`          :func:`dynamic_dwconv_fused_reference`
focal separable attention        :func:`focal_attention`               :func:`focal_attention_reference`
test-time local converter        :func:`tlc`                           :func:`tlc_reference`
channels-first LayerNorm         :func:`layer_norm_2d`                 :func:`layer_norm_2d_reference`
... and its residual (pre-norm)  :func:`layer_norm_2d_residual`        :func:`layer_norm_2d_residual_reference`
depth-wise conv                  :func:`depthwise_conv2d`              :func:`depthwise_conv2d_reference`
depth-wise conv + FFN gate       :func:`gated_depthwise_conv2d`        :func:`gated_depthwise_conv2d_reference`
1x1 conv (+ residual)            :func:`pointwise_conv`                :func:`pointwise_conv_reference`
channel (transposed) attention   :func:`channel_attention`             :func:`channel_attention_reference`
... on TLC windows, averaged     :func:`tlc_channel_attention`         :func:`tlc_channel_attention_reference`
GELU of a per-channel scaling    :func:`scale_gelu`                    :func:`scale_gelu_reference`
per-channel mean over pixels     :func:`spatial_mean`                  :func:`spatial_mean_reference`
per-pixel mean over channels     :func:`channel_mean`                  :func:`channel_mean_reference`
sum of two maps                  :func:`add_maps`                      :func:`add_maps_reference`
LAMNet's information exchange    :func:`information_exchange`          :func:`information_exchange_reference`
... its branches concatenated    :func:`information_exchange_concat`   :func:`information_exchange_concat_reference`
===============================  ====================================  ======================================

All run on CPU and CUDA, in float32, bfloat16 and float16, and support autograd. On the CPU the
fast ops run native C kernels where they pay (``native/*.c``, compiled on first use with the
system C compiler into one library by :mod:`lightsr.ops._native`; no compiler or
``LIGHTSR_NATIVE=0``: the PyTorch implementations, tested equal): the channels-last depth-wise
convolutions with the FFN gates fused (float32 and bfloat16 storage), the loops of the dynamic
convolution, the focal attention, the LayerNorm, LAMNet's information exchange (float32 training),
the channel attention of 8-channel heads (whole map or TLC windows) and, on bf16 with AVX512-BF16,
of wider heads (LGUN), and two bf16 adds; the 1x1 convolutions, the bf16 means (SE, IEM) and the other channel attentions are BLAS
products on channels-last rows with no layout copy. Every other device runs PyTorch. The dynamic convolution and the focal attention
are ``torch.library`` custom ops (``torch.ops.lightsr.*``) with hand-written backwards and
fake (meta) kernels, so that :mod:`lightsr.complexity` counts their MACs exactly and on the
``meta`` device (the 1x1 and depth-wise ops fall back to aten convolutions under the counter, which
counts those). In plain eager execution (no dispatch mode, no profiler, not compiling) the
wrappers call the same implementation directly, which spares the custom op's first-call import
of ``torch._dynamo`` (about 2 s of every ``lightsr upscale``). While an exporter traces a model
(``torch.jit.trace``, ``torch.onnx.export``, ``torch.export``) the wrappers record plain-aten composites instead
(:func:`dynamic_dwconv_composite`, :func:`focal_attention_composite`, aten convolutions), which exporters know.

:func:`use_reference_ops` switches every model to the reference versions (the benchmarks time
fast against reference in one run with it). With the fast ops on CPU the models also run in
the channels-last memory layout (:func:`preferred_memory_format`), where depth-wise
convolutions are 2-7x faster and the LayerNorm needs no copy; the reference path is the plain
NCHW one.
"""
from __future__ import annotations

import contextlib

import torch

from lightsr.ops._common import exporting
from lightsr.ops.channel_attention import (
    channel_attention,
    channel_attention_reference,
    tlc_channel_attention,
    tlc_channel_attention_reference,
)
from lightsr.ops.depthwise_conv import (
    depthwise_conv2d,
    depthwise_conv2d_reference,
    gated_depthwise_conv2d,
    gated_depthwise_conv2d_reference,
    scale_gelu,
    scale_gelu_reference,
)
from lightsr.ops.dynamic_dwconv import (
    dynamic_dwconv,
    dynamic_dwconv_composite,
    dynamic_dwconv_fused,
    dynamic_dwconv_fused_reference,
    dynamic_dwconv_reference,
)
from lightsr.ops.elementwise import add_maps, add_maps_reference
from lightsr.ops.exchange import (
    information_exchange,
    information_exchange_concat,
    information_exchange_concat_reference,
    information_exchange_reference,
)
from lightsr.ops.focal_attention import (
    build_kernel_map,
    focal_attention,
    focal_attention_composite,
    focal_attention_reference,
    patch_size_of,
)
from lightsr.ops.layer_norm import (
    layer_norm_2d,
    layer_norm_2d_reference,
    layer_norm_2d_residual,
    layer_norm_2d_residual_reference,
)
from lightsr.ops.pointwise import pointwise_conv, pointwise_conv_reference
from lightsr.ops.reduce import channel_mean, channel_mean_reference, spatial_mean, spatial_mean_reference
from lightsr.ops.tlc import tlc, tlc_reference, tlc_windows

__all__ = [
    "OPS",
    "add_maps",
    "add_maps_reference",
    "build_kernel_map",
    "channel_attention",
    "channel_attention_reference",
    "channel_mean",
    "channel_mean_reference",
    "depthwise_conv2d",
    "depthwise_conv2d_reference",
    "dynamic_dwconv",
    "dynamic_dwconv_composite",
    "dynamic_dwconv_fused",
    "dynamic_dwconv_fused_reference",
    "dynamic_dwconv_reference",
    "focal_attention",
    "focal_attention_composite",
    "focal_attention_reference",
    "gated_depthwise_conv2d",
    "gated_depthwise_conv2d_reference",
    "get_op",
    "information_exchange",
    "information_exchange_concat",
    "information_exchange_concat_reference",
    "information_exchange_reference",
    "layer_norm_2d",
    "layer_norm_2d_reference",
    "layer_norm_2d_residual",
    "layer_norm_2d_residual_reference",
    "patch_size_of",
    "pointwise_conv",
    "pointwise_conv_reference",
    "preferred_memory_format",
    "scale_gelu",
    "scale_gelu_reference",
    "spatial_mean",
    "spatial_mean_reference",
    "tlc",
    "tlc_channel_attention",
    "tlc_channel_attention_reference",
    "tlc_reference",
    "tlc_windows",
    "use_reference_ops",
    "using_reference_ops",
]

_FAST = {
    "channel_attention": channel_attention,
    "dynamic_dwconv": dynamic_dwconv,
    "dynamic_dwconv_fused": dynamic_dwconv_fused,
    "focal_attention": focal_attention,
    "tlc": tlc,
    "tlc_channel_attention": tlc_channel_attention,
    "layer_norm_2d": layer_norm_2d,
    "layer_norm_2d_residual": layer_norm_2d_residual,
    "depthwise_conv2d": depthwise_conv2d,
    "gated_depthwise_conv2d": gated_depthwise_conv2d,
    "pointwise_conv": pointwise_conv,
    "scale_gelu": scale_gelu,
    "spatial_mean": spatial_mean,
    "channel_mean": channel_mean,
    "add_maps": add_maps,
    "information_exchange": information_exchange,
    "information_exchange_concat": information_exchange_concat,
}
_REFERENCE = {
    "channel_attention": channel_attention_reference,
    "dynamic_dwconv": dynamic_dwconv_reference,
    "dynamic_dwconv_fused": dynamic_dwconv_fused_reference,
    "focal_attention": focal_attention_reference,
    "tlc": tlc_reference,
    "tlc_channel_attention": tlc_channel_attention_reference,
    "layer_norm_2d": layer_norm_2d_reference,
    "layer_norm_2d_residual": layer_norm_2d_residual_reference,
    "depthwise_conv2d": depthwise_conv2d_reference,
    "gated_depthwise_conv2d": gated_depthwise_conv2d_reference,
    "pointwise_conv": pointwise_conv_reference,
    "scale_gelu": scale_gelu_reference,
    "spatial_mean": spatial_mean_reference,
    "channel_mean": channel_mean_reference,
    "add_maps": add_maps_reference,
    "information_exchange": information_exchange_reference,
    "information_exchange_concat": information_exchange_concat_reference,
}
OPS: tuple[str, ...] = tuple(_FAST)
_state = {"reference": False}


def get_op(name: str):
    """The implementation of op ``name`` currently selected (fast unless inside :func:`use_reference_ops`)."""
    return (_REFERENCE if _state["reference"] else _FAST)[name]


def using_reference_ops() -> bool:
    return _state["reference"]


@contextlib.contextmanager
def use_reference_ops(enabled: bool = True):
    """Context manager: models call the reference ops instead of the fast ones while active."""
    previous = _state["reference"]
    _state["reference"] = enabled
    try:
        yield
    finally:
        _state["reference"] = previous


def preferred_memory_format(x: torch.Tensor) -> torch.memory_format:
    """Layout the models compute in: channels-last for 4-D CPU tensors with the fast ops, else NCHW.

    On CPU, oneDNN's depth-wise convolutions run 2-7x faster on channels-last tensors and the
    channels-first LayerNorm becomes a single native call without copies. The custom ops accept
    either layout. GPUs keep NCHW (not measured here).
    """
    if not _state["reference"] and x.dim() == 4 and x.device.type == "cpu" and not exporting():
        return torch.channels_last
    return torch.contiguous_format
