"""State-dict layouts of the official DLGSANet / LAMNet code, written out from the documented key
list and shapes (``design/architectures.md`` sections 1.10 and 3.8) independently of our modules."""
from __future__ import annotations


def dlgsanet_layout(C: int, G: int, B: int, s: int) -> dict[str, tuple[int, ...]]:
    q = C // 4
    n = 49 * C // 6
    keys: dict[str, tuple[int, ...]] = {"overlap_embed.0.proj.weight": (C, 3, 3, 3)}
    for g in range(G):
        for j in range(B):
            L = f"deep_feature_extraction.{g}.body.{2 * j}."
            A = f"deep_feature_extraction.{g}.body.{2 * j + 1}."
            keys.update({
                L + "norm1.body.weight": (C,), L + "norm1.body.bias": (C,),
                L + "IDynamicDWConv.conv0.weight": (C, C, 1, 1),
                L + "IDynamicDWConv.conv.conv1.0.weight": (q, C, 1, 1), L + "IDynamicDWConv.conv.conv1.0.bias": (q,),
                L + "IDynamicDWConv.conv.conv1.1.weight": (q, 1, 7, 7), L + "IDynamicDWConv.conv.conv1.1.bias": (q,),
                L + "IDynamicDWConv.conv.conv2.0.weight": (n, q, 1, 1), L + "IDynamicDWConv.conv.conv2.0.bias": (n,),
                L + "IDynamicDWConv.conv1.weight": (C, C, 1, 1),
                L + "norm2.body.weight": (C,), L + "norm2.body.bias": (C,),
                L + "IDynamic_ffn.project_in.weight": (4 * C, C, 1, 1),
                L + "IDynamic_ffn.dwconv.weight": (4 * C, 1, 3, 3),
                L + "IDynamic_ffn.project_out.weight": (C, 2 * C, 1, 1),
                A + "norm3.body.weight": (C,), A + "norm3.body.bias": (C,),
                A + "restormer_attn.temperature": (6, 1, 1),
                A + "restormer_attn.qkv.weight": (3 * C, C, 1, 1),
                A + "restormer_attn.qkv_dwconv.weight": (3 * C, 1, 3, 3),
                A + "restormer_attn.project_out.weight": (C, C, 1, 1),
                A + "norm4.body.weight": (C,), A + "norm4.body.bias": (C,),
                A + "restormer_ffn.project_in.weight": (4 * C, C, 1, 1),
                A + "restormer_ffn.dwconv.weight": (4 * C, 1, 3, 3),
                A + "restormer_ffn.project_out.weight": (C, 2 * C, 1, 1),
            })
        T = f"deep_feature_extraction.{g}.body.{2 * B}."
        keys.update({T + "weight": (C, C, 3, 3), T + "bias": (C,)})
    keys.update({
        f"deep_feature_extraction.{G}.weight": (C, C, 3, 3), f"deep_feature_extraction.{G}.bias": (C,),
        "upsample.0.weight": (3 * s * s, C, 3, 3), "upsample.0.bias": (3 * s * s,),
    })
    return keys


def lamnet_layout(G: int, B: int, s: int, C: int = 64) -> dict[str, tuple[int, ...]]:
    h = C // 2
    keys: dict[str, tuple[int, ...]] = {
        "shallow_feature_extraction.weight": (C, 3, 3, 3), "shallow_feature_extraction.bias": (C,),
    }
    v = (1, C, 1, 1)
    for g in range(G):
        keys[f"deep_feature_extraction.{g}.alpha"] = v
        for j in range(B):
            M = f"deep_feature_extraction.{g}.mixers.{2 * j}."
            F = f"deep_feature_extraction.{g}.mixers.{2 * j + 1}."
            keys.update({
                M + "alpha": v, M + "norm.alpha": v, M + "norm.beta": v,
                M + "fn.kernel_map": (13, 2),
                M + "fn.proj_in.weight": (C, C, 1, 1), M + "fn.proj_in.bias": (C,),
                M + "fn.h_kernel.0.weight": (h, 1, 1, 23), M + "fn.h_kernel.0.bias": (h,),
                M + "fn.h_kernel.1.weight": (52, h, 1, 1), M + "fn.h_kernel.1.bias": (52,),
                M + "fn.v_kernel.0.weight": (h, 1, 23, 1), M + "fn.v_kernel.0.bias": (h,),
                M + "fn.v_kernel.1.weight": (52, h, 1, 1), M + "fn.v_kernel.1.bias": (52,),
                M + "fn.channel_branch.0.weight": (h // 2, h, 1, 1), M + "fn.channel_branch.0.bias": (h // 2,),
                M + "fn.channel_branch.2.weight": (h, h // 2, 1, 1), M + "fn.channel_branch.2.bias": (h,),
                M + "fn.proj_out.weight": (C, C, 1, 1), M + "fn.proj_out.bias": (C,),
                F + "alpha": v, F + "norm.alpha": v, F + "norm.beta": v,
                F + "fn.project_in.weight": (2 * C, C, 1, 1), F + "fn.project_in.bias": (2 * C,),
                F + "fn.dwconv.weight": (2 * C, 1, 3, 3), F + "fn.dwconv.bias": (2 * C,),
                F + "fn.project_out.weight": (C, 2 * C, 1, 1), F + "fn.project_out.bias": (C,),
            })
    keys.update({
        f"deep_feature_extraction.{G}.weight": (C, C, 3, 3), f"deep_feature_extraction.{G}.bias": (C,),
        "alpha": v,
        "upsample.0.weight": (3 * s * s, C, 3, 3), "upsample.0.bias": (3 * s * s,),
    })
    return keys


OFFICIAL = {
    "dlgsanet_tiny": lambda s: dlgsanet_layout(48, 3, 3, s),
    "dlgsanet_light": lambda s: dlgsanet_layout(48, 4, 3, s),
    "dlgsanet": lambda s: dlgsanet_layout(90, 6, 4, s),
    "lamnet": lambda s: lamnet_layout(4, 6, s),
    "lamnet_large": lambda s: lamnet_layout(5, 6, s),
}
