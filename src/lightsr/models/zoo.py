"""Registered models (names, variant settings, published sizes) and state-dict detectors.

Detection follows spandrel's pattern: a set of key names that every configuration of the
architecture has, then every constructor argument inferred from tensor shapes and key counts.
"""
from __future__ import annotations

import re
from typing import Mapping

import torch

from lightsr.models.dlgsanet import DLGSANet
from lightsr.models.lamnet import LAMNet
from lightsr.models.lgun import LGUN, MTS_RATIOS
from lightsr.models.registry import Detection, ModelSpec, register_detector, register_model

DLGSANET_PAPER = "Li et al., DLGSANet, ICCV 2023"
LAMNET_PAPER = "Hu & Sun, Unifying Dimensions (LAMNet), 2024"
LGUN_PAPER = "Xiao et al., LGUN, Sensors 2024"

DLGSANET_VARIANTS = {
    "dlgsanet_tiny": dict(dim=48, groups=3, blocks=3),
    "dlgsanet_light": dict(dim=48, groups=4, blocks=3),
    "dlgsanet": dict(dim=90, groups=6, blocks=4),
}
LAMNET_VARIANTS = {
    "lamnet": dict(num_groups=4, num_blocks=6),
    "lamnet_large": dict(num_groups=5, num_blocks=6),
}

# allowed option values (types come from the constructors): generous for research variants, but
# crafted metadata can never size a model beyond them (weights.load_model checks before building)
_COMMON_RANGES = dict(in_chans=(1, 4), dim=(1, 1024), ffn_expansion=(0.01, 16.0), img_range=(1e-3, 65535.0))
DLGSANET_RANGES = dict(_COMMON_RANGES, groups=(1, 64), blocks=(1, 64), num_heads=(1, 64), group_channels=(1, 1024),
                       kernel_size=(1, 63), tlc_kernel=(1, 4096))
LAMNET_RANGES = dict(_COMMON_RANGES, num_groups=(1, 64), num_blocks=(1, 64), num_heads=(1, 64),
                     fsa_strides=(1, 64), fsa_steps=(1, 64))
LGUN_RANGES = dict(_COMMON_RANGES, num_blocks=(1, 256), num_mlha=(0, 256), lkcs_dilation=(1, 16),
                   topk_ratios=(0.0, 1.0), topk_weight_init=(-1e3, 1e3), dgsa_heads=(1, 64), se_reduction=(1, 1024))

register_model(ModelSpec(
    "dlgsanet_tiny", "dlgsanet", DLGSANet, DLGSANET_VARIANTS["dlgsanet_tiny"],
    description="DLGSANet-tiny: 48 ch, 3 RHDTG x 3 HDTB", paper=DLGSANET_PAPER,
    official_params={2: 565_710, 3: 572_205, 4: 581_298}, paper_params={2: 572_000, 3: 572_000, 4: 572_000},
    option_ranges=DLGSANET_RANGES,
))
register_model(ModelSpec(
    "dlgsanet_light", "dlgsanet", DLGSANet, DLGSANET_VARIANTS["dlgsanet_light"],
    description="DLGSANet-light: 48 ch, 4 RHDTG x 3 HDTB", paper=DLGSANET_PAPER,
    official_params={2: 745_188, 3: 751_683, 4: 760_776}, paper_params={2: 752_000, 3: 752_000, 4: 752_000},
    option_ranges=DLGSANET_RANGES,
))
register_model(ModelSpec(
    "dlgsanet", "dlgsanet", DLGSANet, DLGSANET_VARIANTS["dlgsanet"],
    description="DLGSANet (full): 90 ch, 6 RHDTG x 4 HDTB", paper=DLGSANET_PAPER,
    official_params={2: 4_733_724, 3: 4_745_889, 4: 4_762_920}, paper_params={4: 4_760_000},
    option_ranges=DLGSANET_RANGES,
))
register_model(ModelSpec(
    "lgun", "lgun", LGUN, {},
    description="LGUN: 64 ch, 8 MLHA + 8 DGSA blocks (our reading of the paper; no official code)",
    paper=LGUN_PAPER, paper_params={2: 675_000, 3: 684_000, 4: 696_000},
    option_ranges=LGUN_RANGES,
))
register_model(ModelSpec(
    "lamnet", "lamnet", LAMNet, LAMNET_VARIANTS["lamnet"],
    description="LAMNet: 64 ch, 4 LAM blocks x 6 ULMs", paper=LAMNET_PAPER,
    official_params={2: 828_364, 3: 837_019, 4: 849_136}, paper_params={4: 849_000},
    option_ranges=LAMNET_RANGES,
))
register_model(ModelSpec(
    "lamnet_large", "lamnet", LAMNet, LAMNET_VARIANTS["lamnet_large"],
    description="LAMNet-large: 64 ch, 5 LAM blocks x 6 ULMs", paper=LAMNET_PAPER,
    official_params={2: 1_024_028, 3: 1_032_683, 4: 1_044_800}, paper_params={4: 1_045_000},
    option_ranges=LAMNET_RANGES,
))


# ------------------------------------------------------------------------------------------
# helpers for detectors
def _indices(sd: Mapping[str, torch.Tensor], prefix: str) -> list[int]:
    """Sorted distinct integers N of keys ``prefix + 'N.'...``."""
    pat = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m.group(1)) for k in sd for m in [pat.match(k)] if m})


def _scale_from_head(weight: torch.Tensor, in_chans: int) -> int:
    for s in (1, 2, 3, 4, 5, 6, 8):
        if weight.shape[0] == in_chans * s * s:
            return s
    raise ValueError(f"reconstruction conv with {weight.shape[0]} outputs is not {in_chans} x s^2")


def _variant(variants: dict[str, dict], found: dict, fallback: str) -> tuple[str, dict]:
    """The named variant whose settings match ``found``; otherwise ``fallback`` plus overrides."""
    for name, settings in variants.items():
        if all(found.get(k) == v for k, v in settings.items()):
            return name, {k: v for k, v in found.items() if k not in settings}
    base = variants[fallback]
    return fallback, {k: v for k, v in found.items() if base.get(k, object()) != v}


def _drop_defaults(cls, options: dict) -> dict:
    import inspect

    defaults = {k: p.default for k, p in inspect.signature(cls).parameters.items()}
    out = {}
    for k, v in options.items():
        d = defaults.get(k)
        if isinstance(d, tuple):
            d = list(d)
        if isinstance(v, tuple):
            v = list(v)
        if k not in defaults or d != v:
            out[k] = v
    return out


# ------------------------------------------------------------------------------------------
def detect_dlgsanet(sd: Mapping[str, torch.Tensor]) -> Detection | None:
    if not {"overlap_embed.0.proj.weight", "upsample.0.weight"} <= sd.keys():
        return None
    if not any(k.startswith("deep_feature_extraction.0.body.0.") for k in sd):
        return None
    emb = sd["overlap_embed.0.proj.weight"]
    dim, in_chans = int(emb.shape[0]), int(emb.shape[1])
    group_ids = _indices(sd, "deep_feature_extraction.")
    groups = len(group_ids) - 1  # the last index is the body's tail conv
    layer_ids = _indices(sd, "deep_feature_extraction.0.body.")
    blocks = (len(layer_ids) - 1) // 2

    def kind(j: int) -> str:
        return "local" if f"deep_feature_extraction.0.body.{j}.norm1.body.weight" in sd else "global"

    hdtb = {("local", "global"): "local_global", ("local", "local"): "local_local",
            ("global", "global"): "global_global"}[(kind(0), kind(1))]
    found: dict = dict(dim=dim, groups=groups, blocks=blocks, hdtb=hdtb, in_chans=in_chans)
    local = next((f"deep_feature_extraction.0.body.{j}." for j in layer_ids if kind(j) == "local"), None)
    glob = next((f"deep_feature_extraction.0.body.{j}." for j in layer_ids[:-1] if kind(j) == "global"), None)
    if local:
        k = int(sd[local + "IDynamicDWConv.conv.conv1.1.weight"].shape[-1])
        n_kernels = int(sd[local + "IDynamicDWConv.conv.conv2.0.weight"].shape[0]) // (k * k)
        found.update(kernel_size=k, group_channels=dim // n_kernels,
                     ffn_expansion=sd[local + "IDynamic_ffn.project_in.weight"].shape[0] / (2 * dim))
    if glob:
        found["num_heads"] = int(sd[glob + "restormer_attn.temperature"].shape[0])
        found["ffn_expansion"] = sd[glob + "restormer_ffn.project_in.weight"].shape[0] / (2 * dim)
    scale = _scale_from_head(sd["upsample.0.weight"], in_chans)
    name, options = _variant(DLGSANET_VARIANTS, found, "dlgsanet_light")
    return Detection(name, scale, _drop_defaults(DLGSANet, options))


def _strides_steps(kernel_map: torch.Tensor) -> tuple[list[int], list[int]]:
    right = sorted((int(s), int(n)) for s, n in kernel_map.tolist() if int(s) > 0)
    strides: list[int] = []
    steps: list[int] = []
    for _, n in right:
        if strides and strides[-1] == n:
            steps[-1] += 1
        else:
            strides.append(n)
            steps.append(1)
    return strides, steps


def detect_lamnet(sd: Mapping[str, torch.Tensor]) -> Detection | None:
    need = {"shallow_feature_extraction.weight", "alpha", "upsample.0.weight",
            "deep_feature_extraction.0.mixers.0.fn.kernel_map"}
    if not need <= sd.keys():
        return None
    sfe = sd["shallow_feature_extraction.weight"]
    dim, in_chans = int(sfe.shape[0]), int(sfe.shape[1])
    num_groups = len(_indices(sd, "deep_feature_extraction.")) - 1
    num_blocks = len(_indices(sd, "deep_feature_extraction.0.mixers.")) // 2
    mixer = "deep_feature_extraction.0.mixers.0.fn."
    ffn = "deep_feature_extraction.0.mixers.1.fn."
    kmap = sd[mixer + "kernel_map"]
    strides, steps = _strides_steps(kmap)
    heads = int(sd[mixer + "h_kernel.1.weight"].shape[0]) // int(kmap.shape[0])
    if mixer + "channel_branch.2.weight" in sd:
        csm = "csm"
    elif mixer + "channel_branch.0.weight" in sd:
        csm = "linear"
    else:
        csm = "none"
    p_in = int(sd[ffn + "project_in.weight"].shape[0])
    if ffn + "dwconv.weight" in sd:
        hidden = p_in // 2
        kind = "dgfn" if int(sd[ffn + "project_out.weight"].shape[1]) == 2 * hidden else "gdfn"
    else:
        hidden, kind = p_in // 2, "ffn"
    found = dict(dim=dim, in_chans=in_chans, num_groups=num_groups, num_blocks=num_blocks, num_heads=heads,
                 fsa_strides=strides, fsa_steps=steps, csm=csm, ffn=kind, ffn_expansion=hidden / dim)
    scale = _scale_from_head(sd["upsample.0.weight"], in_chans)
    name, options = _variant(LAMNET_VARIANTS, found, "lamnet")
    return Detection(name, scale, _drop_defaults(LAMNet, options))


def detect_lgun(sd: Mapping[str, torch.Tensor]) -> Detection | None:
    if not {"embed.weight", "upsample.0.weight", "body.0.norm1.weight", "body.0.ffn.se.fc1.weight"} <= sd.keys():
        return None
    emb = sd["embed.weight"]
    dim, in_chans = int(emb.shape[0]), int(emb.shape[1])
    blocks = _indices(sd, "body.")
    mlha_ids = [i for i in blocks if f"body.{i}.mixer.proj_in.weight" in sd]
    found: dict = dict(dim=dim, in_chans=in_chans, num_blocks=len(blocks), num_mlha=len(mlha_ids))
    if mlha_ids:
        p = f"body.{mlha_ids[0]}.mixer.lkcs."
        found["stf"] = int(sd[p + "0.dw.weight"].shape[0]) != dim
        kernels = [int(sd[f"{p}{i}.dw.weight"].shape[-1]) for i in _indices(sd, p)]
        found["identical_lkcs"] = len(set(kernels)) == 1
    dgsa_ids = [i for i in blocks if i not in mlha_ids]
    if dgsa_ids:
        p = f"body.{dgsa_ids[0]}.mixer."
        found["dgsa_heads"] = int(sd[p + "temperature"].shape[0])
        n_stages = int(sd[p + "stage_weights"].shape[0]) if p + "stage_weights" in sd else 0
        if n_stages != len(MTS_RATIOS):
            found["topk_ratios"] = [0.5] if n_stages == 1 else list(MTS_RATIOS[:n_stages]) if n_stages else []
    hidden = int(sd["body.0.ffn.project_in.weight"].shape[0])
    found["ffn_expansion"] = hidden / dim
    found["se_reduction"] = hidden // int(sd["body.0.ffn.se.fc1.weight"].shape[0])
    if found["num_mlha"] == found["num_blocks"] // 2:
        found.pop("num_mlha")
    scale = _scale_from_head(sd["upsample.0.weight"], in_chans)
    return Detection("lgun", scale, _drop_defaults(LGUN, found))


register_detector("dlgsanet", detect_dlgsanet)
register_detector("lamnet", detect_lamnet)
register_detector("lgun", detect_lgun)
