"""Model zoo: DLGSANet (tiny / light / full), LGUN, LAMNet (base / large), and peer baselines.

>>> from lightsr.models import create_model, list_models
>>> model = create_model("lamnet", scale=4)
"""
from lightsr.models.registry import (
    Detection,
    ModelSpec,
    count_parameters,
    create_model,
    get_spec,
    list_models,
    register_detector,
    register_model,
)

__all__ = [
    "Detection",
    "ModelSpec",
    "count_parameters",
    "create_model",
    "get_spec",
    "list_models",
    "register_detector",
    "register_model",
]
