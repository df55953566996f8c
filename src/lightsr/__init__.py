"""lightsr: lightweight single-image super-resolution toolkit.

Models (DLGSANet, LGUN, LAMNet and peer baselines), paper-exact evaluation, training,
complexity benchmarks and robust image upscaling.

>>> import lightsr
>>> model = lightsr.create_model("dlgsanet_light", scale=4)
>>> lightsr.save_model(model, "model.safetensors")
>>> same = lightsr.load_model("model.safetensors")
"""
from __future__ import annotations

__version__ = "0.1.0"

from lightsr.models import count_parameters, create_model, list_models
from lightsr.weights import CheckpointError, load_model, save_model

__all__ = [
    "CheckpointError",
    "__version__",
    "count_parameters",
    "create_model",
    "list_models",
    "load_model",
    "save_model",
]

# heavier entry points, imported on first use
_LAZY = {
    "upscale": ("lightsr.inference", "upscale"),
    "upscale_video": ("lightsr.video", "upscale_video"),
    "evaluate": ("lightsr.evaluation", "evaluate"),
    "Upscaler": ("lightsr.inference", "Upscaler"),
}
# sub-packages reachable as attributes after a bare `import lightsr` (lightsr.inference.Upscaler ...)
_SUBMODULES = frozenset({"bench", "cli", "complexity", "data", "evaluation", "export", "inference", "metrics",
                         "models", "ops", "pretrained", "train", "video", "weights"})


def __getattr__(name: str):
    import importlib

    if name in _LAZY:
        module, attr = _LAZY[name]
        value = getattr(importlib.import_module(module), attr)
        globals()[name] = value
        return value
    if name in _SUBMODULES:
        return importlib.import_module(f"lightsr.{name}")  # the import binds it as an attribute too
    raise AttributeError(f"module 'lightsr' has no attribute {name!r}")
