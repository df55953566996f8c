"""LGUN: Local Global Union Network for lightweight SISR (Xiao, Liao & Ren, Sensors 2024).

Paper: ``../shared/papers/001_*.txt``. **No official code exists**; this is our reading of the
paper. Every choice the paper leaves open is listed below with its reason (and in ``docs/lgun.md``).

Structure (paper Sec. 3.1, Eq. 1-2)::

    I_LR -> FE: 3x3 conv (3 -> C)                                   = F_embed
         -> NLM: N stacked LGU blocks (MLHA blocks first, DGSA blocks after)
         -> REC(NLM(F_embed) + F_embed): 3x3 conv (C -> 3 s^2) + PixelShuffle(s)

    shallow block (Eq. 1): X' = X + MLHA(Norm(X));  X'' = X' + FFN(Norm(X'))
    deep block    (Eq. 2): Z' = Z + DGSA(Norm(Z));  Z'' = Z' + FFN(Norm(Z'))

    MLHA (Sec. 3.3, Eq. 3-4), Linear - MLHA - Linear:
        F_in = Linear(X); split F_in into s parts x_1..x_s;
        y_1 = x_1;  y_i = LKCS_i(x_i + y_{i-1})  (i > 1)       (split - transform - fusion)
        F_MLHA = F_in * Concat(y_1, ..., y_s);  output Linear(F_MLHA)
        LKCS_i = DW-Conv k1 x k1 -> DW-D-Conv k2 x k2 (dilated) -> Conv k3 x k3, with
        (k1, k2, k3) = (3, 5, 1), (5, 7, 1), (7, 9, 1) for the three LKCS (Sec. 4.3).
    DGSA (Sec. 3.4, Eq. 5-9): transposed (channel) attention, q/k/v from linear projections;
        for each ratio r_n in (1/2, 2/3, 3/4) keep the top-k (k = r_n * d) entries of every row
        of the attention matrix (others -inf), softmax, and fuse DGSA = sum_n w_n DGSA_{k_n}
        with learnable w_n initialised to 0.1 (multi-stage token selection, MTS).
    FFN (Sec. 3.5, Eq. 10): Linear -> SAL -> GELU -> Linear, SAL = spatial awareness layer
        (depth-wise conv + squeeze-and-excitation).

Interpretations (the paper does not say; our choice and why):

1. **Block split**: 16 blocks, the first 8 use MLHA and the last 8 use DGSA. The paper says
   "in the shallow layers ... MLHA, in the deep layers ... DGSA" (Fig. 3 unavailable);
   an even split is the neutral reading. ``num_mlha`` changes it.
2. **MLHA split count**: s = 4 parts of C/4 = 16 channels, three LKCS for parts 2..4 (Eq. 4: y_1 = x_1
   has no LKCS, and the paper lists exactly three LKCS). C = 64 is not divisible by 3, which rules
   out one part per LKCS.
3. **DW-D-Conv dilation**: 2 for all LKCS (not given; VAN-style large-kernel attention uses a
   dilated depth-wise conv, 2 keeps the 9x9 kernel's reach (17 px) within a 64-px training patch).
4. **F_in**: the output of the first Linear (Eq. 3 modulates F_in itself, so part 1 is squared).
5. **DGSA q/k normalisation**: q and k are L2-normalised along the tokens with a learnable
   temperature per head (init 1), as in Restormer's MDTA / XCiT / DRSformer, instead of Eq. 6's
   1/sqrt(d_h): without it the C x C logits grow with the number of pixels, which contradicts the
   paper's claim of robustness to the token length. q/k/v come from a 1x1 conv followed by a 3x3
   depth-wise conv (MDTA), one head (d_h = C = 64).
6. **Top-k**: per row of the C x C matrix, k_n = int(d_h * r_n) = 32 / 42 / 48 for d_h = 64,
   following DRSformer's top-k sparse attention, the closest public design. The three softmaxed
   maps are fused before multiplying v (sum_n w_n S_n) v - identical to sum_n w_n (S_n v).
   Fig. 4 shows a 4-stage variant (1/2, 2/3, 3/4, 4/5); the text's 3 stages are the default.
7. **SAL**: 3x3 depth-wise conv followed by a squeeze-and-excitation gate (global average pool,
   1x1 conv to h/4, ReLU, 1x1 conv to h, sigmoid), FFN hidden h = 2C.
8. **Biases**: convolutions inside the LGU blocks are bias-free (Restormer convention, which DGSA
   inherits); the SE gate, the embedding conv and the reconstruction conv have biases.
9. **Reconstruction**: one 3x3 conv + PixelShuffle. The paper's x4 - x2 parameter gap (21K) is
   exactly that head's 20,772 difference ("minor channel adjustments ... in the reconstruction").
   No conv after the body (the paper's formula REC(NLM(F) + F) has none) and no mean shift.
10. **Norm**: channels-first LayerNorm with bias (Restormer WithBias).

Resulting sizes: 674,092 / 682,747 / 694,864 parameters for x2 / x3 / x4 (paper 675K / 684K /
696K, within 0.2%); 138.7 GMACs at 640x360 input without norms (paper 141.1G).

Ablation switches (paper Table 3): ``mlha=False`` (w/o MLHA: all blocks DGSA), ``dgsa=False``
(w/o DGSA: all blocks MLHA), ``stf=False`` (w/o STF: the three LKCS applied in sequence to the
whole feature, no split), ``topk_ratios=[]`` (w/o top-k: dense softmax), ``topk_ratios=[0.5]``
(single k), default = MTS, ``identical_lkcs=True`` (all LKCS (5, 7, 1)).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from lightsr.models.blocks import Conv1x1, DepthwiseConv2d, LayerNorm2d, pixel_shuffle_head, pre_norm, writable
from lightsr.ops import get_op, preferred_memory_format

__all__ = ["LGUN", "MLHA", "DGSA", "SAFFN"]

LKCS_KERNELS = ((3, 5, 1), (5, 7, 1), (7, 9, 1))
IDENTICAL_LKCS = ((5, 7, 1),) * 3
MTS_RATIOS = (1 / 2, 2 / 3, 3 / 4)


class LKCS(nn.Module):
    """Large kernel convolutional sequence: DW-Conv k1 -> DW-D-Conv k2 (dilation d) -> Conv k3."""

    def __init__(self, channels: int, kernels: Sequence[int], dilation: int = 2, bias: bool = False):
        super().__init__()
        k1, k2, k3 = (int(k) for k in kernels)
        self.dw = DepthwiseConv2d(channels, k1, padding=k1 // 2, bias=bias)
        self.dw_d = DepthwiseConv2d(channels, k2, padding=dilation * (k2 // 2), bias=bias, dilation=dilation)
        self.pw = Conv1x1(channels, channels, bias=bias) if k3 == 1 else nn.Conv2d(channels, channels, k3, padding=k3 // 2, bias=bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw(self.dw_d(self.dw(x)))


class MLHA(nn.Module):
    """Multi-order local hierarchical aggregation (Eq. 3-4), wrapped as Linear - MLHA - Linear."""

    def __init__(
        self,
        dim: int,
        lkcs_kernels: Sequence[Sequence[int]] = LKCS_KERNELS,
        dilation: int = 2,
        stf: bool = True,
        bias: bool = False,
    ):
        super().__init__()
        self.stf = stf
        self.parts = len(lkcs_kernels) + 1
        if stf and dim % self.parts:
            raise ValueError(f"dim {dim} must split into {self.parts} equal parts")
        width = dim // self.parts if stf else dim
        self.proj_in = Conv1x1(dim, dim, bias=bias)
        self.lkcs = nn.ModuleList(LKCS(width, k, dilation, bias) for k in lkcs_kernels)
        self.proj_out = Conv1x1(dim, dim, bias=bias)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """``residual + MLHA(x)`` (the residual added inside the last 1x1 product)."""
        f_in = self.proj_in(x)
        if self.stf:
            xs = f_in.chunk(self.parts, dim=1)
            ys = [xs[0]]  # y_1 = x_1
            add = get_op("add_maps")
            for x_i, lkcs in zip(xs[1:], self.lkcs):
                ys.append(lkcs(add(x_i, ys[-1])))  # y_i = LKCS_i(x_i + y_{i-1})
            weights = torch.cat(ys, dim=1)
        else:  # w/o STF: the same convolutions on the whole feature, in sequence
            weights = f_in
            for lkcs in self.lkcs:
                weights = lkcs(weights)
        return self.proj_out(f_in * weights, residual)  # F_MLHA = F_in (.) Concat(y_1..y_s)


class DGSA(nn.Module):
    """Dynamic global sparse attention with multi-stage token selection (Eq. 5-9).

    ``topk_ratios``: one attention map per ratio, fused with learnable weights (init
    ``weight_init``); an empty sequence gives dense softmax attention (w/o top-k).
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 1,
        topk_ratios: Sequence[float] = MTS_RATIOS,
        weight_init: float = 0.1,
        bias: bool = False,
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be a multiple of num_heads {num_heads}")
        self.num_heads = num_heads
        head_dim = dim // num_heads
        self.topk = [max(1, min(head_dim, int(head_dim * float(r)))) for r in topk_ratios]
        self.temperature = nn.Parameter(torch.ones(num_heads, 1, 1))
        self.qkv = Conv1x1(dim, dim * 3, bias=bias)
        self.qkv_dwconv = DepthwiseConv2d(dim * 3, 3, padding=1, bias=bias)
        self.stage_weights = nn.Parameter(torch.full((len(self.topk),), float(weight_init))) if self.topk else None
        self.project_out = Conv1x1(dim, dim, bias=bias)

    def attention(self, attn: torch.Tensor) -> torch.Tensor:
        """Fused attention map sum_n w_n softmax(T_{k_n}(attn)) (or softmax(attn) when dense)."""
        if not self.topk:
            return attn.softmax(dim=-1)
        fused = None
        for weight, k in zip(self.stage_weights, self.topk):
            if k >= attn.shape[-1]:
                masked = attn
            else:
                idx = attn.topk(k, dim=-1).indices
                masked = torch.full_like(attn, float("-inf")).scatter(-1, idx, attn.gather(-1, idx))
            term = masked.softmax(dim=-1) * weight
            fused = term if fused is None else fused + term
        return fused

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """``residual + DGSA(x)``: A = MTS(norm(q)^T norm(k) * temperature), out = A v (per head)."""
        qkv = self.qkv_dwconv(self.qkv(x))
        out = get_op("channel_attention")(qkv, self.num_heads, self.temperature, self.attention)
        return self.project_out(out, residual)


class SqueezeExcitation(nn.Module):
    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        self.fc1 = Conv1x1(channels, channels // reduction)
        self.fc2 = Conv1x1(channels // reduction, channels)

    def gate(self, x: torch.Tensor) -> torch.Tensor:
        """The per-channel scale sigmoid(fc2(relu(fc1(mean(x))))), (B, C, 1, 1)."""
        s = get_op("spatial_mean")(x)
        return torch.sigmoid(self.fc2(F.relu(self.fc1(s))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


class SAFFN(nn.Module):
    """FFN with spatial awareness layer (Eq. 10): Linear -> SAL (dw 3x3 + SE) -> GELU -> Linear."""

    def __init__(self, dim: int, expansion: float = 2.0, se_reduction: int = 4, bias: bool = False):
        super().__init__()
        hidden = int(dim * expansion)
        self.project_in = Conv1x1(dim, hidden, bias=bias)
        self.dwconv = DepthwiseConv2d(hidden, 3, padding=1, bias=bias)
        self.se = SqueezeExcitation(hidden, se_reduction)
        self.project_out = Conv1x1(hidden, dim, bias=bias)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None,
                out: torch.Tensor | None = None) -> torch.Tensor:
        """``residual + FFN(x)`` (the residual added inside the last 1x1 product; into ``out`` when given)."""
        d = self.dwconv(self.project_in(x))
        return self.project_out(get_op("scale_gelu")(d, self.se.gate(d)), residual, out=out)  # GELU(SE(d)) in one pass


class LGUBlock(nn.Module):
    """One LGU block: pre-norm token mixer (MLHA or DGSA) + pre-norm FFN (Eq. 1 / Eq. 2)."""

    def __init__(self, dim: int, mixer: nn.Module, ffn: nn.Module):
        super().__init__()
        self.norm1 = LayerNorm2d(dim)
        self.mixer = mixer
        self.norm2 = LayerNorm2d(dim)
        self.ffn = ffn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.mixer(*pre_norm(self.norm1, x))  # x + mixer(Norm(x))
        y, x = pre_norm(self.norm2, x)
        return self.ffn(y, x, out=writable(x))  # x + FFN(Norm(x)), in place at inference


class LGUN(nn.Module):
    """LGUN, 16 blocks x 64 channels. See the module docstring for every interpretation.

    Args:
        scale: upscaling factor.
        dim: channels (64).
        num_blocks: LGU blocks (16).
        num_mlha: how many of the first blocks use MLHA (the rest use DGSA); default half.
        mlha / dgsa: ablations "w/o MLHA" (all DGSA) and "w/o DGSA" (all MLHA).
        stf: split-transform-fusion in MLHA (ablation "w/o STF").
        identical_lkcs: all LKCS with kernels (5, 7, 1) (ablation "identical LKCS").
        lkcs_dilation: dilation of the DW-D-Conv.
        topk_ratios: MTS ratios; ``[]`` = dense softmax, one ratio = single top-k.
        dgsa_heads: attention heads of DGSA.
        ffn_expansion, se_reduction: FFN hidden width and SE squeeze ratio.
    """

    def __init__(
        self,
        scale: int = 4,
        in_chans: int = 3,
        dim: int = 64,
        num_blocks: int = 16,
        num_mlha: int | None = None,
        mlha: bool = True,
        dgsa: bool = True,
        stf: bool = True,
        identical_lkcs: bool = False,
        lkcs_dilation: int = 2,
        topk_ratios: Sequence[float] = MTS_RATIOS,
        topk_weight_init: float = 0.1,
        dgsa_heads: int = 1,
        ffn_expansion: float = 2.0,
        se_reduction: int = 4,
    ):
        super().__init__()
        if not (mlha or dgsa):
            raise ValueError("LGUN needs at least one of mlha / dgsa")
        self.scale = scale
        if not dgsa:
            num_mlha = num_blocks
        elif not mlha:
            num_mlha = 0
        elif num_mlha is None:
            num_mlha = num_blocks // 2
        if not 0 <= num_mlha <= num_blocks:
            raise ValueError(f"num_mlha must be in [0, {num_blocks}]")
        kernels = IDENTICAL_LKCS if identical_lkcs else LKCS_KERNELS

        def block(i: int) -> LGUBlock:
            if i < num_mlha:
                mixer = MLHA(dim, kernels, lkcs_dilation, stf)
            else:
                mixer = DGSA(dim, dgsa_heads, tuple(topk_ratios), topk_weight_init)
            return LGUBlock(dim, mixer, SAFFN(dim, ffn_expansion, se_reduction))

        self.embed = nn.Conv2d(in_chans, dim, 3, padding=1)
        self.body = nn.Sequential(*[block(i) for i in range(num_blocks)])
        self.upsample = pixel_shuffle_head(dim, scale, in_chans)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.embed(x.contiguous(memory_format=preferred_memory_format(x)))
        return self.upsample(self.body(f) + f).contiguous()
