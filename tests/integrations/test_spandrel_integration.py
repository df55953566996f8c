"""lightsr.integrations.spandrel: official-layout BasicSR checkpoints and lightsr safetensors load
through ``spandrel.ModelLoader`` as lightsr's own models and give lightsr's outputs.

spandrel (installed with ``pip install --no-deps spandrel==0.4.2 einops``) imports torchvision when
it is imported; where no working torchvision exists (this CPU torch has none), the fixture puts a
minimal stand-in into ``sys.modules`` for this module's tests only and removes it afterwards,
together with spandrel, einops and the integration module.
"""
from __future__ import annotations

import enum
import importlib
import importlib.util
import sys
import types
from pathlib import Path

import pytest
import torch

import lightsr
from lightsr.pretrained import available, default_weights
from lightsr.weights import save_basicsr_checkpoint

TESTS = Path(__file__).resolve().parents[1]
SHIPPED = available()

if importlib.util.find_spec("spandrel") is None:
    pytest.skip("spandrel is not installed (pip install --no-deps spandrel==0.4.2 einops)", allow_module_level=True)
if importlib.util.find_spec("einops") is None:
    pytest.skip("spandrel needs einops at import (pip install einops)", allow_module_level=True)


def _official_layout():
    spec = importlib.util.spec_from_file_location("official_layout_for_spandrel", TESTS / "models" / "official_layout.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.OFFICIAL


def _torchvision_stand_in() -> dict[str, types.ModuleType]:
    """The three names spandrel 0.4 imports from torchvision; calling them raises (LaMa, RestoreFormer only)."""

    def unavailable(*args, **kwargs):
        raise RuntimeError("torchvision stand-in of lightsr's tests: not available")

    functional = types.ModuleType("torchvision.transforms.functional")
    functional.InterpolationMode = enum.Enum("InterpolationMode", "NEAREST BILINEAR BICUBIC")
    functional.rotate = functional.normalize = unavailable
    transforms = types.ModuleType("torchvision.transforms")
    transforms.functional = functional
    root = types.ModuleType("torchvision")
    root.transforms = transforms
    return {"torchvision": root, "torchvision.transforms": transforms, "torchvision.transforms.functional": functional}


STAND_IN_SCOPE = {"spandrel", "torchvision", "einops"}  # what the fixture imports and then removes again


@pytest.fixture(scope="module")
def sp():
    """spandrel with lightsr registered; sys.modules restored after this module's tests."""
    before = set(sys.modules)
    try:
        import torchvision  # noqa: F401  (a real one, where it works)
    except Exception:
        for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
            del sys.modules[name]
        sys.modules.update(_torchvision_stand_in())
    try:
        import spandrel

        import lightsr.integrations.spandrel as integration

        yield types.SimpleNamespace(spandrel=spandrel, integration=integration)
    finally:
        for name in set(sys.modules) - before:
            if name.split(".")[0] in STAND_IN_SCOPE or name == "lightsr.integrations.spandrel":
                del sys.modules[name]
        if "lightsr.integrations.spandrel" not in before:
            vars(sys.modules["lightsr.integrations"]).pop("spandrel", None)


def _reference(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return model.eval()(x).clamp(0, 1)


def _official_checkpoint(tmp_path: Path, name: str, scale: int) -> Path:
    """A BasicSR checkpoint in the official key layout: params and a different params_ema (the EMA
    must win), with DataParallel's ``module.`` prefix."""
    layout = _official_layout()[name](scale)
    base = lightsr.create_model(name, scale).state_dict()
    assert {k: tuple(v.shape) for k, v in base.items()} == layout  # the official layout, key for key
    gen = torch.Generator().manual_seed(scale)

    def perturbed():
        return {f"module.{k}": v + 0.01 * torch.randn(v.shape, generator=gen) if v.is_floating_point() and "kernel_map" not in k else v
                for k, v in base.items()}

    return save_basicsr_checkpoint(tmp_path / f"{name}_x{scale}.pth", perturbed(), perturbed())


OFFICIAL_CASES = [("dlgsanet_light", 4), ("dlgsanet", 4), ("lamnet", 4), ("dlgsanet_tiny", 2), ("lamnet_large", 3)]


@pytest.mark.parametrize("name,scale", OFFICIAL_CASES, ids=[f"{n}_x{s}" for n, s in OFFICIAL_CASES])
def test_official_checkpoint_loads_through_spandrel(sp, tmp_path, name, scale):
    path = _official_checkpoint(tmp_path, name, scale)
    desc = sp.spandrel.ModelLoader().load_from_file(path)
    ours = lightsr.load_model(path)
    assert type(desc.model) is type(ours) and desc.model.lightsr_config == ours.lightsr_config
    assert (desc.scale, desc.input_channels, desc.output_channels, desc.purpose) == (scale, 3, 3, "SR")
    assert desc.tags[0] == name
    x = torch.rand(1, 3, 12, 15)
    out = desc(x)
    assert out.shape == (1, 3, 12 * scale, 15 * scale)
    torch.testing.assert_close(out, _reference(ours, x), rtol=0, atol=1e-6)


@pytest.mark.parametrize("name,scale", SHIPPED, ids=[f"{n}_x{s}" for n, s in SHIPPED])
def test_shipped_safetensors_load_through_spandrel_with_their_options(sp, name, scale):
    """spandrel drops safetensors metadata; the shipped files still get their options (x4: TLC off),
    so a 56-pixel input (TLC windows are 48 px at x4) gives exactly lightsr's output."""
    path = default_weights(name, scale)
    desc = sp.spandrel.ModelLoader().load_from_file(path)
    ours = lightsr.load_model(path)
    assert desc.model.lightsr_config == ours.lightsr_config
    if hasattr(ours, "tlc_enabled"):
        assert desc.model.tlc_enabled == ours.tlc_enabled
    x = torch.rand(1, 3, 56, 52)
    torch.testing.assert_close(desc(x), _reference(ours, x), rtol=0, atol=1e-6)


def test_lightsr_safetensors_of_lgun_and_options_from_shapes(sp, tmp_path):
    """A lightsr file of a non-default configuration: hyper-parameters come from tensor shapes."""
    model = lightsr.create_model("lgun", 2, dim=32, num_blocks=4)
    path = lightsr.save_model(model, tmp_path / "lgun_small.safetensors")
    desc = sp.spandrel.ModelLoader().load_from_file(path)
    assert desc.model.lightsr_config["options"] == {"dim": 32, "num_blocks": 4}
    assert desc.tags == ["lgun", "32nf", "4nb"] and desc.scale == 2
    x = torch.rand(1, 3, 9, 11)
    torch.testing.assert_close(desc(x), _reference(model, x), rtol=0, atol=1e-6)


def test_descriptor_declares_precision_tiling_and_sizes(sp):
    spandrel = sp.spandrel
    loader = spandrel.ModelLoader()
    tiling = {}
    for name in ("dlgsanet_tiny", "lamnet", "lgun"):
        desc = loader.load_from_state_dict(lightsr.create_model(name, 4).state_dict())
        assert desc.architecture.id == {"dlgsanet_tiny": "DLGSANet", "lamnet": "LAMNet", "lgun": "LGUN"}[name]
        assert desc.supports_half and desc.supports_bfloat16 and desc.size_requirements.none
        tiling[name] = desc.tiling
        out = desc.bfloat16()(torch.rand(1, 3, 3, 2, dtype=torch.bfloat16))  # odd, tiny sizes: no padding needed
        assert out.dtype == torch.bfloat16 and out.shape == (1, 3, 12, 8) and torch.isfinite(out).all()
    assert tiling == {"dlgsanet_tiny": spandrel.ModelTiling.DISCOURAGED, "lamnet": spandrel.ModelTiling.SUPPORTED,
                      "lgun": spandrel.ModelTiling.SUPPORTED}


def test_register_is_idempotent_and_fills_other_registries(sp):
    spandrel, integration = sp.spandrel, sp.integration
    assert all(arch in spandrel.MAIN_REGISTRY for arch in ("DLGSANet", "LAMNet", "LGUN"))
    assert integration.register() == []  # already there
    fresh = spandrel.ArchRegistry()
    assert [s.architecture.id for s in integration.register(fresh)] == ["DLGSANet", "LAMNet", "LGUN"]
    sd = lightsr.create_model("lamnet", 2).state_dict()
    assert fresh.load(sd).architecture.id == "LAMNet"


def test_other_checkpoints_are_not_claimed(sp):
    """A peer model (IMDN) and a broken DLGSANet dict are not taken for lightsr architectures."""
    imdn = lightsr.create_model("imdn", 4).state_dict()
    broken = {k: v for k, v in lightsr.create_model("dlgsanet_tiny", 4).state_dict().items() if "restormer_attn" not in k}
    for arch in sp.integration.ARCHITECTURES.values():
        assert not arch.detect(imdn) and not arch.detect(broken)


def test_missing_spandrel_is_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "spandrel", None)
    monkeypatch.delitem(sys.modules, "lightsr.integrations.spandrel", raising=False)
    with pytest.raises(ImportError, match=r"^lightsr.integrations.spandrel needs spandrel: pip install 'lightsr\[spandrel\]'$"):
        importlib.import_module("lightsr.integrations.spandrel")
