"""Validation with the evaluation conventions: the SR output is quantised to uint8 (clamp, x255,
round) and compared with the HR image by PSNR / SSIM on the BT.601 Y channel, ``crop_border`` pixels
(default: the scale) shaved from every side, averaged over images. In distributed runs each rank
evaluates every ``world_size``-th image and the sums are reduced."""
from __future__ import annotations

from typing import Callable, Mapping

import numpy as np
import torch
import torch.nn as nn

from lightsr.train import distributed as D

__all__ = ["evaluate", "metric_functions"]


def metric_functions(metrics: Mapping, scale: int) -> dict[str, Callable[[np.ndarray, np.ndarray], float]]:
    """``{name: fn(sr_uint8, hr_uint8)}`` from ``val.metrics`` entries (``MetricConfig``)."""
    from lightsr import metrics as M

    out = {}
    for name, m in metrics.items():
        crop = scale if m.crop_border is None else int(m.crop_border)
        fn = M.psnr if m.type in ("calculate_psnr", "psnr") else M.ssim
        out[name] = (lambda f, c, y: (lambda sr, hr: f(sr, hr, crop_border=c, y_channel=y)))(fn, crop, m.test_y_channel)
    return out


@torch.no_grad()
def evaluate(
    model: nn.Module,
    dataset,
    metric_fns: Mapping[str, Callable[[np.ndarray, np.ndarray], float]],
    device: torch.device,
    *,
    rank: int = 0,
    world_size: int = 1,
    channels_last: bool = False,
    on_image: Callable[[str, np.ndarray], None] | None = None,
    progress: bool = False,
) -> dict[str, float]:
    """Mean of each metric over ``dataset`` (items ``(name, lq_uint8, gt_uint8)``)."""
    from tqdm import tqdm

    from lightsr.metrics import to_uint8

    was_training = model.training
    model.eval()
    sums = {k: 0.0 for k in metric_fns}
    count = 0
    indices = range(rank, len(dataset), world_size)
    for i in tqdm(indices, desc="validating", unit="img", leave=False, disable=not progress, dynamic_ncols=True):
        name, lq, gt = dataset[i]
        x = torch.from_numpy(np.ascontiguousarray(lq.transpose(2, 0, 1))).float().div_(255.0)[None].to(device)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        sr = to_uint8(model(x)[0].float().cpu())
        if sr.shape != gt.shape:
            raise RuntimeError(f"validation image {name}: model output {sr.shape} but HR {gt.shape}")
        for k, fn in metric_fns.items():
            sums[k] += float(fn(sr, gt))
        count += 1
        if on_image is not None:
            on_image(name, sr)
    if was_training:
        model.train()
    keys = list(sums)
    totals = D.all_reduce_sum([sums[k] for k in keys] + [float(count)], device)
    n = totals[-1]
    return {k: totals[j] / n for j, k in enumerate(keys)} if n else {}
