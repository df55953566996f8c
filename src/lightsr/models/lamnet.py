"""LAMNet: Linear Adaptive Mixer Network ("Unifying Dimensions: A Linear Adaptive Approach to
Lightweight Image Super-Resolution", Hu & Sun, 2024).

Paper: ``../shared/papers/003_*.txt``; official-code facts: ``design/architectures.md`` section 3.
Module and parameter names follow the official code (BasicSR checkpoints load strictly); class
names follow the paper.

Structure (paper Fig. 2)::

    x -> MeanShift -> shallow_feature_extraction (3x3 conv)                          = X_0
      -> deep_feature_extraction: N x LAM block, then 3x3 conv ;  X = deep(X_0) * alpha + X_0
      -> upsample: 3x3 conv (C -> 3 s^2) + PixelShuffle(s) -> MeanShift^-1

    LAM block    = [PreNorm(ULM token mixer), PreNorm(DGFN)] x n, output mixers(x) * alpha + x
    PreNorm(f)   = f(LN(x)) * alpha + x      (every residual has a learnable per-channel scale)
    ULM (Fig. 3) = proj_in -> split C into x1 | x2
                   CSM  (channel branch, on x1): 1x1 -> ReLU -> 1x1                     = x_c
                   LSAM (spatial branch, on x2): horizontal FSA then vertical FSA       = x_s
                        kernels: tanh(1x1(dw 1xP conv(x2))) and tanh(1x1(dw Px1 conv(FSA_h)))
                   IEM  (parameter-free exchange): x_c gated per pixel by a global descriptor
                        of x_s; x_s gated per channel by a descriptor of x_c
                   -> proj_out(concat)
    DGFN         = dual-gated FFN: GELU(x1) gates both x1 (self-gate) and x2 (cross-gate)

The official configs use **6** ULMs per LAM block (the paper text says 4): 4 x 6 gives exactly
849,136 parameters at x4 (paper: 849K); LAMNet-large is 5 x 6 (1,044,800; paper 1045K).

Ablation switches (paper Table 4): ``fsa_strides`` / ``fsa_steps`` (window 23 / 19 / 13),
``csm`` in csm / linear / none, ``iem`` on/off, ``ffn`` in dgfn / gdfn / ffn.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn

from lightsr.models.blocks import (
    Conv1x1,
    ConvFFN,
    DepthwiseConv2d,
    GatedDconvFFN,
    MeanShift,
    conv1x1_of_concat,
    pixel_shuffle_head,
    pre_norm,
    trunc_normal_init_,
    writable,
)
from lightsr.ops import build_kernel_map, get_op, patch_size_of, preferred_memory_format
from lightsr.ops._common import needs_grad

__all__ = ["LAMNet", "UnifiedLinearMixer"]

CSM_TYPES = ("csm", "linear", "none")
FFN_TYPES = ("dgfn", "gdfn", "ffn")


class LayerNormChannels(nn.Module):
    """Channels-first LayerNorm with official keys ``alpha`` / ``beta`` of shape (1, C, 1, 1)."""

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, dim, 1, 1))
        self.beta = nn.Parameter(torch.zeros(1, dim, 1, 1))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return get_op("layer_norm_2d")(x, self.alpha, self.beta, self.eps)

    def norm_parameters(self) -> tuple[torch.Tensor, torch.Tensor, float]:
        return self.alpha, self.beta, self.eps


class PreNormResidual(nn.Module):
    """y = fn(LN(x)) * alpha + x."""

    def __init__(self, dim: int, fn: nn.Module):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, dim, 1, 1))
        self.norm = LayerNormChannels(dim)
        self.fn = fn

    def forward(self, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """x + alpha * fn(LN(x)), in fn's last product; written into ``out`` when given (may be ``x``)."""
        y, x = pre_norm(self.norm, x)
        return self.fn(y, residual=x, scale=self.alpha, out=out)


def information_exchange(x_c: torch.Tensor, x_s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """IEM (paper Sec. 3.3): parameter-free exchange between the channel and spatial branches.

    * spatial interaction: s = mean_HW(x_s) (B, C'); m = sigmoid(<s, x_c>_C / C') (B, 1, H, W);
      returns m * x_c;
    * channel interaction: t = mean_C(x_c) (B, H, W); n = sigmoid(<x_s, t>_HW / HW) (B, C', 1, 1);
      returns n * x_s.

    (:mod:`lightsr.ops.exchange`: the formula, and its fast paths on channels-last maps.)
    """
    return get_op("information_exchange")(x_c, x_s)


class UnifiedLinearMixer(nn.Module):
    """ULM token mixer = LSAM (focal separable attention) + CSM + IEM. Code name ``LSAMixer``."""

    def __init__(
        self,
        dim: int = 64,
        num_heads: int = 4,
        strides: Sequence[int] = (1, 2, 4),
        steps: Sequence[int] = (3, 2, 1),
        csm: str = "csm",
        iem: bool = True,
    ):
        super().__init__()
        if csm not in CSM_TYPES:
            raise ValueError(f"csm must be one of {CSM_TYPES}, got {csm!r}")
        half = dim // 2
        self.taps = build_kernel_map(strides, steps)
        n_taps = len(self.taps)
        patch = patch_size_of(self.taps)
        self.iem = iem
        # persistent int32 buffer, as in the official code (present in official checkpoints)
        self.register_buffer("kernel_map", torch.tensor(self.taps, dtype=torch.int32))
        self.proj_in = Conv1x1(dim, dim)
        self.h_kernel = nn.Sequential(
            DepthwiseConv2d(half, (1, patch), padding=(0, patch // 2)),
            Conv1x1(half, num_heads * n_taps),
            nn.Tanh(),
        )
        self.v_kernel = nn.Sequential(
            DepthwiseConv2d(half, (patch, 1), padding=(patch // 2, 0)),
            Conv1x1(half, num_heads * n_taps),
            nn.Tanh(),
        )
        if csm == "csm":  # Channel Selective Mixer: squeeze 1x1 -> ReLU -> 1x1
            # ReLU out of place: in place on the product's channels-last view, autograd's CopySlices hands
            # its backward an NCHW copy of the gradient (a mixed-layout threshold_backward: 40 ms of a step)
            self.channel_branch = nn.Sequential(Conv1x1(half, half // 2), nn.ReLU(), Conv1x1(half // 2, half))
        elif csm == "linear":
            self.channel_branch = nn.Sequential(Conv1x1(half, half))
        else:
            self.channel_branch = nn.Identity()
        self.proj_out = Conv1x1(dim, dim)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        key = prefix + "kernel_map"
        if key in state_dict and state_dict[key].shape == self.kernel_map.shape:
            if not torch.equal(state_dict[key].to(torch.int32).cpu(), self.kernel_map.cpu()):
                raise ValueError(
                    f"{key} in the checkpoint {state_dict[key].tolist()} differs from this model's "
                    f"FSA taps {self.taps}: build the model with the checkpoint's fsa_strides/fsa_steps"
                )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None,
                scale: torch.Tensor | None = None, out: torch.Tensor | None = None) -> torch.Tensor:
        """``residual + scale * ULM(x)`` (the residual added inside the last 1x1 products; into ``out``
        when given)."""
        fsa = get_op("focal_attention")
        x1, x2 = self.proj_in(x).chunk(2, dim=1)
        x_c = self.channel_branch(x1)
        # the kernel predictors end in tanh: the op applies it (fused in the native kernel)
        a = fsa(x2, _logits(self.h_kernel, x2), self.taps, dim=-1, activation="tanh")  # horizontal FSA
        x_s = fsa(a, _logits(self.v_kernel, a), self.taps, dim=-2, activation="tanh")  # vertical, kernel predicted from it
        if self.iem and needs_grad(x_c, x_s, self.proj_out.weight):
            # training: one product on the concatenation, which the exchange writes directly
            return self.proj_out(get_op("information_exchange_concat")(x_c, x_s), residual, scale, out=out)
        if self.iem:
            x_c, x_s = information_exchange(x_c, x_s)
        return conv1x1_of_concat(self.proj_out, x_c, x_s, residual, scale, out)  # proj_out(concat[x_c, x_s])


def _logits(predictor: nn.Sequential, x: torch.Tensor) -> torch.Tensor:
    """A kernel predictor (depth-wise conv, 1x1 conv, tanh) without its final tanh."""
    for i in range(len(predictor) - 1):  # indexing, not predictor[:-1]: no new Sequential per call
        x = predictor[i](x)
    return x


class LAMBlock(nn.Module):
    """Linear Adaptive Mixer block (code: ``LAMixerBlock``): mixers(x) * alpha + x."""

    def __init__(self, dim: int, num_blocks: int, make_mixer, make_ffn):
        super().__init__()
        self.alpha = nn.Parameter(torch.ones(1, dim, 1, 1))
        layers = []
        for _ in range(num_blocks):
            layers += [PreNormResidual(dim, make_mixer()), PreNormResidual(dim, make_ffn())]
        self.mixers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """mixers(x) * alpha + x; at inference each layer after the first adds its branch into its
        own input, which nothing else reads (see :func:`~lightsr.models.blocks.writable`)."""
        y = self.mixers[0](x)
        for layer in self.mixers[1:]:
            y = layer(y, out=writable(y))
        return torch.addcmul(x, y, self.alpha)


class LAMNet(nn.Module):
    """LAMNet (dim 64, 4 LAM blocks x 6 ULMs) and LAMNet-large (5 x 6).

    Args:
        scale: upscaling factor.
        dim: feature channels.
        num_groups: LAM blocks.
        num_blocks: ULM + DGFN pairs per LAM block.
        num_heads: FSA kernel groups (official ``num_head``).
        fsa_strides, fsa_steps: FSA tap layout (paper Table 4 notation; default [1,2,4] / [3,2,1],
            a 23-pixel window with 13 taps).
        csm: ``csm`` (paper), ``linear`` (a 1x1 conv) or ``none`` (identity).
        iem: use the information exchange module.
        ffn: ``dgfn`` (paper), ``gdfn`` (Restormer, hidden = dim * expansion) or ``ffn``
            (plain 1x1-GELU-1x1, hidden = 2 * dim * expansion).
        ffn_expansion: DGFN hidden = int(dim * ffn_expansion) (official 1.0).
    """

    def __init__(
        self,
        scale: int = 4,
        in_chans: int = 3,
        dim: int = 64,
        num_groups: int = 4,
        num_blocks: int = 6,
        num_heads: int = 4,
        fsa_strides: Sequence[int] = (1, 2, 4),
        fsa_steps: Sequence[int] = (3, 2, 1),
        csm: str = "csm",
        iem: bool = True,
        ffn: str = "dgfn",
        ffn_expansion: float = 1.0,
        img_range: float = 1.0,
    ):
        super().__init__()
        if ffn not in FFN_TYPES:
            raise ValueError(f"ffn must be one of {FFN_TYPES}, got {ffn!r}")
        self.scale = scale
        hidden = int(dim * ffn_expansion)

        def make_mixer() -> nn.Module:
            return UnifiedLinearMixer(dim, num_heads, tuple(fsa_strides), tuple(fsa_steps), csm, iem)

        def make_ffn() -> nn.Module:
            if ffn == "ffn":
                return ConvFFN(dim, 2 * hidden, bias=True)
            return GatedDconvFFN(dim, hidden, bias=True, dual_gate=(ffn == "dgfn"))

        self.mean_shift = MeanShift(img_range=img_range, channels=in_chans)
        self.shallow_feature_extraction = nn.Conv2d(in_chans, dim, 3, padding=1)
        self.deep_feature_extraction = nn.Sequential(
            *[LAMBlock(dim, num_blocks, make_mixer, make_ffn) for _ in range(num_groups)],
            nn.Conv2d(dim, dim, 3, padding=1),
        )
        self.alpha = nn.Parameter(torch.ones(1, dim, 1, 1))
        self.upsample = pixel_shuffle_head(dim, scale, in_chans)
        trunc_normal_init_(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mean_shift.sub(x.contiguous(memory_format=preferred_memory_format(x)))
        f0 = self.shallow_feature_extraction(x)
        f = torch.addcmul(f0, self.deep_feature_extraction(f0), self.alpha)  # deep(X_0) * alpha + X_0
        return self.mean_shift.add(self.upsample(f)).contiguous()
