"""IMDN: Information Multi-distillation Network (Hui, Gao, Yang, Wang; ACM Multimedia 2019).

Written from the paper's description and the layout of the released checkpoints
(``IMDN_x{2,3,4}.pth``: 92 tensors, ``module.`` prefix, 694,404 / 703,059 / 715,176 parameters):

* shallow features: one 3x3 conv (``fea_conv``), 3 -> 64;
* six information multi-distillation blocks (``IMDB1`` .. ``IMDB6``). Each is a progressive
  refinement module: a 3x3 conv followed by LeakyReLU, whose output is split into a distilled
  quarter (16 channels, kept) and a coarse remainder (48 channels, refined further), three times;
  a fourth 3x3 conv maps the last remainder to 16 channels. The four distilled parts are
  concatenated (64 channels), re-weighted by contrast-aware channel attention (CCA: per-channel
  standard deviation + mean, then 1x1 squeeze to 4 -> ReLU -> 1x1 -> sigmoid) and fused by a 1x1
  conv (``c5``), plus the block input;
* the six block outputs are concatenated and fused by a 1x1 conv with LeakyReLU (``c``), then a
  3x3 conv (``LR_conv``) plus the shallow features (global residual);
* reconstruction: 3x3 conv to ``3 * s^2`` channels and pixel shuffle (``upsampler``).

LeakyReLU slope 0.05. Input and output are RGB in [0, 1] (no mean shift).
"""
from __future__ import annotations

from typing import Mapping

import torch
import torch.nn as nn
import torch.nn.functional as F

from lightsr.models.registry import Detection, ModelSpec, register_detector, register_model

__all__ = ["IMDN", "IMDB", "ContrastChannelAttention", "detect_imdn"]

PAPER = "Hui et al., Lightweight Image Super-Resolution with Information Multi-distillation Network, ACM MM 2019"
LRELU_SLOPE = 0.05


class ContrastChannelAttention(nn.Module):
    """CCA: channel weights from the contrast (spatial std + mean) of each feature map."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        squeezed = channels // reduction
        self.conv_du = nn.Sequential(
            nn.Conv2d(channels, squeezed, 1),
            nn.ReLU(inplace=True),
            nn.Conv2d(squeezed, channels, 1),
            nn.Sigmoid(),
        )

    @staticmethod
    def contrast(x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(2, 3), keepdim=True)
        std = (x - mean).pow(2).mean(dim=(2, 3), keepdim=True).sqrt()  # population std
        return std + mean

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.conv_du(self.contrast(x))


class IMDB(nn.Module):
    """Information multi-distillation block (progressive refinement + CCA + 1x1 fusion + residual)."""

    def __init__(self, channels: int = 64, distilled: int | None = None):
        super().__init__()
        self.distilled = distilled if distilled is not None else channels // 4
        self.remaining = channels - self.distilled
        self.c1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.c2 = nn.Conv2d(self.remaining, channels, 3, padding=1)
        self.c3 = nn.Conv2d(self.remaining, channels, 3, padding=1)
        self.c4 = nn.Conv2d(self.remaining, self.distilled, 3, padding=1)
        self.cca = ContrastChannelAttention(self.distilled * 4)
        self.c5 = nn.Conv2d(self.distilled * 4, channels, 1)

    def _split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.split(x, (self.distilled, self.remaining), dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d1, r1 = self._split(F.leaky_relu(self.c1(x), LRELU_SLOPE))
        d2, r2 = self._split(F.leaky_relu(self.c2(r1), LRELU_SLOPE))
        d3, r3 = self._split(F.leaky_relu(self.c3(r2), LRELU_SLOPE))
        d4 = self.c4(r3)
        fused = self.c5(self.cca(torch.cat([d1, d2, d3, d4], dim=1)))
        return fused + x


class IMDN(nn.Module):
    """IMDN (x2 / x3 / x4). Parameter names follow the released checkpoints.

    Args:
        scale: upscaling factor.
        channels: feature channels (64).
        num_blocks: number of IMDBs (6).
        in_chans: image channels (3).
    """

    def __init__(self, scale: int = 4, channels: int = 64, num_blocks: int = 6, in_chans: int = 3):
        super().__init__()
        self.scale = scale
        self.num_blocks = num_blocks
        self.fea_conv = nn.Conv2d(in_chans, channels, 3, padding=1)
        for i in range(1, num_blocks + 1):
            self.add_module(f"IMDB{i}", IMDB(channels))
        self.c = nn.Sequential(nn.Conv2d(channels * num_blocks, channels, 1), nn.LeakyReLU(LRELU_SLOPE, inplace=True))
        self.LR_conv = nn.Conv2d(channels, channels, 3, padding=1)
        self.upsampler = nn.Sequential(nn.Conv2d(channels, in_chans * scale * scale, 3, padding=1), nn.PixelShuffle(scale))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fea = self.fea_conv(x)
        outs = []
        h = fea
        for i in range(1, self.num_blocks + 1):
            h = getattr(self, f"IMDB{i}")(h)
            outs.append(h)
        body = self.LR_conv(self.c(torch.cat(outs, dim=1))) + fea
        return self.upsampler(body)


def detect_imdn(sd: Mapping[str, torch.Tensor]) -> Detection | None:
    if not {"fea_conv.weight", "IMDB1.c1.weight", "IMDB1.cca.conv_du.0.weight", "c.0.weight",
            "LR_conv.weight", "upsampler.0.weight"} <= sd.keys():
        return None
    fea = sd["fea_conv.weight"]
    channels, in_chans = int(fea.shape[0]), int(fea.shape[1])
    num_blocks = 0
    while f"IMDB{num_blocks + 1}.c1.weight" in sd:
        num_blocks += 1
    out = int(sd["upsampler.0.weight"].shape[0])
    scale = next((s for s in (1, 2, 3, 4, 5, 6, 8) if out == in_chans * s * s), None)
    if scale is None:
        raise ValueError(f"upsampler conv with {out} outputs is not {in_chans} x s^2")
    options = {k: v for k, v in dict(channels=channels, num_blocks=num_blocks, in_chans=in_chans).items()
               if v != {"channels": 64, "num_blocks": 6, "in_chans": 3}[k]}
    return Detection("imdn", scale, options)


register_model(ModelSpec(
    "imdn", "imdn", IMDN, {},
    description="IMDN (peer baseline): 64 ch, 6 IMDBs with contrast-aware channel attention",
    paper=PAPER,
    official_params={2: 694_404, 3: 703_059, 4: 715_176},
    paper_params={2: 694_000, 3: 703_000, 4: 715_000},
    peer=True,
))
register_detector("imdn", detect_imdn)
