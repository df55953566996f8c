"""``train.amp``: which autocast dtype a run uses on its device, and why.

* ``none``: float32.
* ``bf16``: forward and loss under ``torch.autocast(<device>, torch.bfloat16)``, on the CPU as on
  CUDA; no GradScaler (bf16 has float32's exponent range). The weights, gradients and optimiser
  state stay float32.
* ``fp16``: CUDA only, with a GradScaler; on the CPU the run trains in float32 (with a warning).
* ``auto``: bf16 where it pays, else none. On a CPU that means native bf16 (AVX512-BF16 or AMX,
  :func:`lightsr.inference.policy.native_bf16`): elsewhere bf16 is emulated and slower than
  float32. On CUDA it means a GPU that computes bf16 (compute capability 8.0 and later).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

__all__ = ["AmpChoice", "cuda_bf16", "resolve_amp"]

_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class AmpChoice:
    """The resolved ``train.amp``: ``name`` (none / bf16 / fp16), and the note to log (``""``: none);
    ``warn``: the note is a warning (the setting does not do what it says here)."""

    name: str
    note: str = ""
    warn: bool = False

    @property
    def dtype(self) -> torch.dtype | None:
        return _DTYPES[self.name]

    @property
    def grad_scaler(self) -> bool:
        return self.name == "fp16"


def cuda_bf16() -> bool:
    """The current CUDA GPU computes bf16 natively (not emulated)."""
    if not torch.cuda.is_available():
        return False
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # torch before 2.4: no emulation argument
        return bool(torch.cuda.is_bf16_supported())


def _native_bf16_cpu() -> bool:
    from lightsr.inference.policy import native_bf16

    return native_bf16()


def resolve_amp(setting: str, device: torch.device) -> AmpChoice:
    """``train.amp`` (none / bf16 / fp16 / auto) on ``device`` -> the precision the run uses."""
    cuda = device.type == "cuda"
    if setting == "auto":
        return _resolve_auto(cuda)
    if setting == "fp16" and not cuda:
        return AmpChoice("none", "train.amp=fp16 applies to CUDA only; training in float32 on the CPU", warn=True)
    if setting == "bf16" and not cuda and not _native_bf16_cpu():
        return AmpChoice("bf16", "train.amp=bf16: this CPU has no native bf16 (avx512_bf16 / amx_bf16): "
                                 "bf16 is emulated and likely slower than float32 (train.amp=auto picks float32 here)",
                         warn=True)
    if setting in ("bf16", "fp16"):
        return AmpChoice(setting, f"train.amp={setting}: forward and loss under autocast ({device.type})")
    return AmpChoice("none")


def _resolve_auto(cuda: bool) -> AmpChoice:
    if cuda:
        if cuda_bf16():
            return AmpChoice("bf16", "train.amp=auto: bf16 autocast (this GPU computes bf16)")
        return AmpChoice("none", "train.amp=auto: float32 (this GPU has no native bf16)")
    if _native_bf16_cpu():
        return AmpChoice("bf16", "train.amp=auto: bf16 autocast (this CPU computes bf16 natively: "
                                 "avx512_bf16 / amx_bf16)")
    return AmpChoice("none", "train.amp=auto: float32 (this CPU has no native bf16 - avx512_bf16 / amx_bf16 - "
                             "and emulated bf16 is slower)")
