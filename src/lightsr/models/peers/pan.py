"""PAN: Pixel Attention Network (Zhao, Kong, He, Qiao, Dong; ECCV Workshops / AIM 2020).

Written from the paper's description and the layout of the released checkpoints
(``PANx{2,3,4}_DF2K.pth``: 261,403 parameters at x2 / x3, 272,419 at x4):

* pixel attention (PA): a 1x1 conv and a sigmoid give a 3-D (C x H x W) attention map that
  multiplies the features;
* shallow features: 3x3 conv (``conv_first``), 3 -> 40;
* 16 SC-PA blocks (``SCPA_trunk``): two 1x1 convs (bias-free) split the 40 channels into two
  20-channel branches, each after LeakyReLU; the first branch is a plain 3x3 conv (``k1``), the
  second a pixel-attention convolution (``PAConv``: the 3x3 conv ``k3`` gated by a sigmoid of the
  1x1 conv ``k2``, followed by the 3x3 conv ``k4``); both branches pass LeakyReLU, are
  concatenated and fused by a bias-free 1x1 conv (``conv3``), plus the block input;
* ``trunk_conv`` (3x3) plus the shallow features;
* U-PA reconstruction: nearest-neighbour upsampling, 3x3 conv (``upconv``), PA, LeakyReLU, 3x3
  conv (``HRconv``), LeakyReLU - once by the full factor for x2 / x3, twice by 2 for x4 - then a
  3x3 conv to RGB (``conv_last``) added to the bilinear upsampling of the input.

LeakyReLU slope 0.2. Input and output are RGB in [0, 1]. The x2 and x3 checkpoints have identical
shapes, so the scale of those files cannot be read from the weights: pass it when loading.
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from lightsr.models.registry import Detection, ModelSpec, register_detector, register_model

__all__ = ["PAN", "SCPA", "PixelAttention", "PAConv", "detect_pan"]

PAPER = "Zhao et al., Efficient Image Super-Resolution Using Pixel Attention, ECCVW (AIM) 2020"
LRELU_SLOPE = 0.2


class PixelAttention(nn.Module):
    """x * sigmoid(conv1x1(x)) - a separate weight for every channel and pixel."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(self.conv(x))


class PAConv(nn.Module):
    """Pixel-attention convolution: k4(k3(x) * sigmoid(k2(x)))."""

    def __init__(self, channels: int, kernel_size: int = 3):
        super().__init__()
        pad = kernel_size // 2
        self.k2 = nn.Conv2d(channels, channels, 1)
        self.k3 = nn.Conv2d(channels, channels, kernel_size, padding=pad, bias=False)
        self.k4 = nn.Conv2d(channels, channels, kernel_size, padding=pad, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.k4(self.k3(x) * torch.sigmoid(self.k2(x)))


class SCPA(nn.Module):
    """Self-calibrated block with pixel attention (two half-width branches, 1x1 fusion, residual)."""

    def __init__(self, channels: int = 40, reduction: int = 2):
        super().__init__()
        half = channels // reduction
        self.conv1_a = nn.Conv2d(channels, half, 1, bias=False)
        self.conv1_b = nn.Conv2d(channels, half, 1, bias=False)
        self.k1 = nn.Sequential(nn.Conv2d(half, half, 3, padding=1, bias=False))
        self.PAConv = PAConv(half)
        self.conv3 = nn.Conv2d(half * reduction, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = F.leaky_relu(self.conv1_a(x), LRELU_SLOPE)
        b = F.leaky_relu(self.conv1_b(x), LRELU_SLOPE)
        a = F.leaky_relu(self.k1(a), LRELU_SLOPE)
        b = F.leaky_relu(self.PAConv(b), LRELU_SLOPE)
        return self.conv3(torch.cat([a, b], dim=1)) + x


class PAN(nn.Module):
    """PAN (x2 / x3 / x4). Parameter names follow the released checkpoints.

    Args:
        scale: upscaling factor (2, 3 or 4; x4 uses two x2 U-PA stages).
        channels: trunk channels ``nf`` (40).
        up_channels: reconstruction channels ``unf`` (24).
        num_blocks: SC-PA blocks (16).
        in_chans: image channels (3).
    """

    def __init__(self, scale: int = 4, channels: int = 40, up_channels: int = 24, num_blocks: int = 16, in_chans: int = 3):
        super().__init__()
        if scale not in (2, 3, 4):
            raise ValueError(f"PAN supports x2, x3 and x4, not x{scale}")
        self.scale = scale
        self.conv_first = nn.Conv2d(in_chans, channels, 3, padding=1)
        self.SCPA_trunk = nn.Sequential(*[SCPA(channels) for _ in range(num_blocks)])
        self.trunk_conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.upconv1 = nn.Conv2d(channels, up_channels, 3, padding=1)
        self.att1 = PixelAttention(up_channels)
        self.HRconv1 = nn.Conv2d(up_channels, up_channels, 3, padding=1)
        if scale == 4:
            self.upconv2 = nn.Conv2d(up_channels, up_channels, 3, padding=1)
            self.att2 = PixelAttention(up_channels)
            self.HRconv2 = nn.Conv2d(up_channels, up_channels, 3, padding=1)
        self.conv_last = nn.Conv2d(up_channels, in_chans, 3, padding=1)

    @staticmethod
    def _upa(x: torch.Tensor, factor: int, up: nn.Module, att: nn.Module, hr: nn.Module) -> torch.Tensor:
        x = up(F.interpolate(x, scale_factor=factor, mode="nearest"))
        x = F.leaky_relu(att(x), LRELU_SLOPE)
        return F.leaky_relu(hr(x), LRELU_SLOPE)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fea = self.conv_first(x)
        fea = fea + self.trunk_conv(self.SCPA_trunk(fea))
        if self.scale == 4:
            fea = self._upa(fea, 2, self.upconv1, self.att1, self.HRconv1)
            fea = self._upa(fea, 2, self.upconv2, self.att2, self.HRconv2)
        else:
            fea = self._upa(fea, self.scale, self.upconv1, self.att1, self.HRconv1)
        base = F.interpolate(x, scale_factor=self.scale, mode="bilinear", align_corners=False)
        return self.conv_last(fea) + base


def detect_pan(sd: Mapping[str, torch.Tensor]) -> Detection | None:
    if not {"conv_first.weight", "SCPA_trunk.0.conv1_a.weight", "SCPA_trunk.0.PAConv.k2.weight",
            "trunk_conv.weight", "upconv1.weight", "att1.conv.weight", "HRconv1.weight", "conv_last.weight"} <= sd.keys():
        return None
    first = sd["conv_first.weight"]
    found = dict(channels=int(first.shape[0]), in_chans=int(first.shape[1]),
                 up_channels=int(sd["upconv1.weight"].shape[0]))
    num_blocks = 0
    while f"SCPA_trunk.{num_blocks}.conv1_a.weight" in sd:
        num_blocks += 1
    found["num_blocks"] = num_blocks
    defaults = {"channels": 40, "in_chans": 3, "up_channels": 24, "num_blocks": 16}
    options = {k: v for k, v in found.items() if v != defaults[k]}
    if "upconv2.weight" in sd:
        return Detection("pan", 4, options)
    raise ValueError("PAN x2 and x3 checkpoints have identical shapes; pass the scale (e.g. --scale 3 / scale=3) "
                     "together with the model name 'pan'")


register_model(ModelSpec(
    "pan", "pan", PAN, {},
    description="PAN (peer baseline): 40 ch, 16 SC-PA blocks, U-PA reconstruction",
    paper=PAPER,
    official_params={2: 261_403, 3: 261_403, 4: 272_419},
    paper_params={4: 272_000},
    peer=True,
))
register_detector("pan", detect_pan)
