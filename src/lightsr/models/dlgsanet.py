"""DLGSANet: Lightweight Dynamic Local and Global Self-Attention Networks (Li et al., ICCV 2023).

Paper: ``../shared/papers/000_*.txt``; layer-by-layer facts of the official code:
``design/architectures.md`` section 1. Module and parameter names follow the official code so
that its BasicSR checkpoints load with ``strict=True``; class names follow the paper.

Structure (paper Fig. 2, Sec. 3)::

    x -> MeanShift -> overlap_embed (3x3 conv, no bias)            = F_0
      -> deep_feature_extraction: G x RHDTG, then 3x3 conv         = F_d ;  F = F_d + F_0
      -> upsample: 3x3 conv (C -> 3 s^2) + PixelShuffle(s) -> MeanShift^-1

    RHDTG (code: BuildBlock)  = [HDTB] x B, 3x3 conv, residual
    HDTB                       = MHDLSA layer + SparseGSA layer (each a pre-LN transformer layer
                                 with its own GDFN, so an HDTB holds two FFNs)
    MHDLSA (Eq. 2-3)           = 1x1 conv -> pixel-wise dynamic depth-wise 7x7 conv -> 1x1 conv;
                                 kernels from a hyper-network 1x1 (C->C/4) -> dw 7x7 -> 1x1 (-> 49 C/6)
    SparseGSA (Eq. 4)          = transposed (C x C) attention with ReLU instead of softmax, L2-normalised
                                 q/k and a learnable temperature; TLC windows in eval mode

Paper vs code, resolved as the code does (architectures.md 1.9): the "6 heads" of MHDLSA are
6 *channels per shared kernel* (C/6 kernel groups); the 572K/752K parameter counts of the paper
are the x3 builds.

Ablation switches (paper Tables 3, 5, 6): ``attention_activation`` in relu / softmax / sigmoid /
gelu and ``hdtb`` in ``local_global`` / ``local_local`` / ``global_global``.
"""
from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F

from lightsr.models.blocks import (
    Conv1x1,
    DepthwiseConv2d,
    GatedDconvFFN,
    LayerNorm2d,
    MeanShift,
    pixel_shuffle_head,
    pre_norm,
    writable,
)
from lightsr.ops import get_op, preferred_memory_format

__all__ = ["DLGSANet", "SparseGSA", "MHDLSA", "collect_attention_sparsity"]

TLC_KERNEL = {2: 96, 3: 72, 4: 48}  # official tlc_kernel per scale, in LR-feature pixels
ACTIVATIONS = ("relu", "softmax", "sigmoid", "gelu")
HDTB_TYPES = {"local_global": ("local", "global"), "local_local": ("local", "local"), "global_global": ("global", "global")}


class RestormerLayerNorm(nn.Module):
    """Official key layout ``<norm>.body.weight`` / ``<norm>.body.bias`` around a channels-first LN."""

    def __init__(self, dim: int):
        super().__init__()
        self.body = LayerNorm2d(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def norm_parameters(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        return self.body.norm_parameters()


class DynamicDWConv(nn.Module):
    """Pixel-wise dynamic depth-wise convolution with its weight-generating hyper-network (Eq. 3).

    Code name ``IDynamicDWConv``. ``group_channels`` channels share one generated K x K kernel.
    """

    def __init__(self, channels: int, kernel_size: int = 7, group_channels: int = 6, reduction: int = 4):
        super().__init__()
        if channels % group_channels:
            raise ValueError(f"dim {channels} must be a multiple of dynamic group channels {group_channels}")
        hidden = channels // reduction
        self.kernel_size = kernel_size
        self.conv1 = nn.Sequential(
            Conv1x1(channels, hidden),
            DepthwiseConv2d(hidden, kernel_size, padding=kernel_size // 2),
        )
        self.conv2 = nn.Sequential(Conv1x1(hidden, kernel_size**2 * (channels // group_channels)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # weight = conv2(conv1(x)): (B, G*K*K, H, W), the raw linear output. The fused op applies
        # conv2 strip by strip and never materialises the (8x larger than x) kernel tensor; the
        # reference op runs conv2 then the unfold formulation.
        conv = self.conv2[0]
        return get_op("dynamic_dwconv_fused")(x, self.conv1(x), conv.weight, conv.bias, self.kernel_size)


class MHDLSA(nn.Module):
    """Multi-head dynamic local self-attention (Eq. 2): 1x1 -> dynamic dw conv -> 1x1, no biases.

    Code name ``IDynamicDWConvBlock``.
    """

    def __init__(self, dim: int, kernel_size: int = 7, group_channels: int = 6):
        super().__init__()
        self.conv0 = Conv1x1(dim, dim, bias=False)
        self.conv = DynamicDWConv(dim, kernel_size, group_channels)
        self.conv1 = Conv1x1(dim, dim, bias=False)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """``residual + MHDLSA(x)`` (the residual added inside the last 1x1 product)."""
        return self.conv1(self.conv(self.conv0(x)), residual)


class SparseGSA(nn.Module):
    """Sparse global self-attention (Eq. 4): A = ReLU(Q^T K / alpha) over channels, per head.

    q, k, v come from a 1x1 conv and a 3x3 depth-wise conv (no biases); q and k are L2-normalised
    along the pixel axis; ``temperature`` (one per head, init 1) scales the C/h x C/h attention.
    In eval mode with ``tlc`` on, the attention is computed on TLC windows of ``tlc_kernel``
    pixels (after the depth-wise conv, before ``project_out``), as the official code does.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 6,
        activation: str = "relu",
        tlc: bool = True,
        tlc_kernel: int = 48,
    ):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"attention_activation must be one of {ACTIVATIONS}, got {activation!r}")
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be a multiple of num_heads {num_heads}")
        self.num_heads = num_heads
        self.activation = activation
        self.tlc = tlc
        self.tlc_kernel = tlc_kernel
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = Conv1x1(dim, dim * 3, bias=False)
        self.qkv_dwconv = DepthwiseConv2d(dim * 3, 3, padding=1, bias=False)
        self.project_out = Conv1x1(dim, dim, bias=False)
        self.sparsity_log: list[torch.Tensor] | None = None  # see collect_attention_sparsity

    def _activate(self, attn: torch.Tensor) -> torch.Tensor:
        if self.activation == "relu":
            return F.relu(attn)
        if self.activation == "softmax":
            return attn.softmax(dim=-1)
        if self.activation == "sigmoid":
            return torch.sigmoid(attn)
        return F.gelu(attn)

    def _attention_map(self, logits: torch.Tensor) -> torch.Tensor:
        attn = self._activate(logits)
        if self.sparsity_log is not None:
            self.sparsity_log.append((attn > 0).float().mean(dim=(-2, -1)).flatten().detach().cpu())
        return attn

    def attend(self, qkv: torch.Tensor) -> torch.Tensor:
        """(N, 3C, h, w) -> (N, C, h, w): the global channel attention of one image or window."""
        return get_op("channel_attention")(qkv, self.num_heads, self.temperature, self._attention_map)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """``residual + SparseGSA(x)`` (the residual added inside the last 1x1 product)."""
        qkv = self.qkv_dwconv(self.qkv(x))
        if self.tlc and not self.training:  # the attention on TLC windows, averaged
            out = get_op("tlc_channel_attention")(qkv, self.num_heads, self.temperature, self._attention_map,
                                                  self.tlc_kernel)
        else:
            out = self.attend(qkv)
        # the attention's output is channels-last on the fast CPU path (NCHW on the reference path)
        return self.project_out(out.contiguous(memory_format=preferred_memory_format(x)), residual)


class LocalLayer(nn.Module):
    """MHDLSA transformer layer (code: ``IDynamicLayerBlock``): x += MHDLSA(LN(x)); x += GDFN(LN(x))."""

    def __init__(self, dim: int, kernel_size: int, group_channels: int, ffn_expansion: float):
        super().__init__()
        self.norm1 = RestormerLayerNorm(dim)
        self.IDynamicDWConv = MHDLSA(dim, kernel_size, group_channels)
        self.norm2 = RestormerLayerNorm(dim)
        self.IDynamic_ffn = GatedDconvFFN(dim, int(dim * ffn_expansion), bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.IDynamicDWConv(*pre_norm(self.norm1, x))  # x + MHDLSA(LN(x))
        y, x = pre_norm(self.norm2, x)
        return self.IDynamic_ffn(y, x, out=writable(x))  # x + GDFN(LN(x)), in place at inference


class GlobalLayer(nn.Module):
    """SparseGSA transformer layer (code: ``SparseAttentionLayerBlock``): x += GSA(LN(x)); x += GDFN(LN(x))."""

    def __init__(self, dim: int, num_heads: int, ffn_expansion: float, activation: str, tlc: bool, tlc_kernel: int):
        super().__init__()
        self.norm3 = RestormerLayerNorm(dim)
        self.restormer_attn = SparseGSA(dim, num_heads, activation, tlc, tlc_kernel)
        self.norm4 = RestormerLayerNorm(dim)
        self.restormer_ffn = GatedDconvFFN(dim, int(dim * ffn_expansion), bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.restormer_attn(*pre_norm(self.norm3, x))  # x + SparseGSA(LN(x))
        y, x = pre_norm(self.norm4, x)
        return self.restormer_ffn(y, x, out=writable(x))  # x + GDFN(LN(x)), in place at inference


class RHDTG(nn.Module):
    """Residual hybrid dynamic-Transformer group (code: ``BuildBlock``): body(x) + x.

    ``body`` = [HDTB layer 1, HDTB layer 2] x blocks, then a 3x3 conv (index ``2 * blocks``).
    """

    def __init__(self, dim: int, blocks: int, make_layer):
        super().__init__()
        layers = [make_layer(kind) for _ in range(blocks) for kind in ("first", "second")]
        self.body = nn.Sequential(*layers, nn.Conv2d(dim, dim, 3, padding=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x) + x


class OverlapPatchEmbed(nn.Module):
    """Shallow feature extraction: 3x3 conv without bias (key ``overlap_embed.0.proj.weight``)."""

    def __init__(self, in_chans: int, dim: int):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, dim, 3, padding=1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class DLGSANet(nn.Module):
    """DLGSANet. Variants: tiny (dim 48, 3 x 3), light (48, 4 x 3), full (90, 6 x 4).

    Args:
        scale: upscaling factor.
        dim: feature channels C.
        groups: number of RHDTGs.
        blocks: HDTBs per RHDTG.
        num_heads: heads of SparseGSA.
        group_channels: channels sharing one dynamic kernel in MHDLSA (official ``idynamic_num_heads``).
        kernel_size: dynamic kernel size K (official ``window_size``).
        ffn_expansion: GDFN hidden = int(dim * ffn_expansion).
        attention_activation: relu (SparseGSA) / softmax (GSA) / sigmoid / gelu - paper Tables 5-6.
        hdtb: ``local_global`` (paper), ``local_local`` or ``global_global`` - paper Table 3.
        tlc: use the test-time local converter in eval mode.
        tlc_kernel: TLC window in LR pixels (default 96 / 72 / 48 for x2 / x3 / x4).
    """

    def __init__(
        self,
        scale: int = 4,
        in_chans: int = 3,
        dim: int = 48,
        groups: int = 4,
        blocks: int = 3,
        num_heads: int = 6,
        group_channels: int = 6,
        kernel_size: int = 7,
        ffn_expansion: float = 2.0,
        attention_activation: str = "relu",
        hdtb: str = "local_global",
        tlc: bool = True,
        tlc_kernel: int | None = None,
        img_range: float = 1.0,
    ):
        super().__init__()
        if hdtb not in HDTB_TYPES:
            raise ValueError(f"hdtb must be one of {tuple(HDTB_TYPES)}, got {hdtb!r}")
        self.scale = scale
        tlc_kernel = int(tlc_kernel) if tlc_kernel else TLC_KERNEL.get(scale, 48)
        first, second = HDTB_TYPES[hdtb]

        def make_layer(position: str) -> nn.Module:
            kind = first if position == "first" else second
            if kind == "local":
                return LocalLayer(dim, kernel_size, group_channels, ffn_expansion)
            return GlobalLayer(dim, num_heads, ffn_expansion, attention_activation, tlc, tlc_kernel)

        self.mean_shift = MeanShift(img_range=img_range, channels=in_chans)
        self.overlap_embed = nn.Sequential(OverlapPatchEmbed(in_chans, dim))
        self.deep_feature_extraction = nn.Sequential(
            *[RHDTG(dim, blocks, make_layer) for _ in range(groups)],
            nn.Conv2d(dim, dim, 3, padding=1),
        )
        self.upsample = pixel_shuffle_head(dim, scale, in_chans)

    # --- TLC control -------------------------------------------------------------------------
    def attention_layers(self) -> Iterator[SparseGSA]:
        return (m for m in self.modules() if isinstance(m, SparseGSA))

    @property
    def tlc_enabled(self) -> bool:
        """Whether the test-time local converter is on (the state `set_tlc` sets)."""
        return any(m.tlc for m in self.attention_layers())

    def set_tlc(self, enabled: bool, kernel: int | None = None) -> "DLGSANet":
        """Switch the test-time local converter on/off (and optionally change its window)."""
        for m in self.attention_layers():
            m.tlc = bool(enabled)
            if kernel:
                m.tlc_kernel = int(kernel)
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mean_shift.sub(x.contiguous(memory_format=preferred_memory_format(x)))
        f0 = self.overlap_embed(x)
        f = self.deep_feature_extraction(f0) + f0
        return self.mean_shift.add(self.upsample(f)).contiguous()


@contextlib.contextmanager
def collect_attention_sparsity(model: nn.Module):
    """Record the share of positive entries of every SparseGSA attention map (paper Eq. 6, Table 5).

    Yields a list that fills with one float tensor per attention call (one value per map = per
    image/window and head); ``torch.cat(log).mean()`` is the average sparsity.
    """
    layers = [m for m in model.modules() if isinstance(m, SparseGSA)]
    log: list[torch.Tensor] = []
    for m in layers:
        m.sparsity_log = log
    try:
        yield log
    finally:
        for m in layers:
            m.sparsity_log = None
