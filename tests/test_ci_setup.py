"""CI tests every feature (issue 22 item 12): the README's test command, the one .ci/run runs,
installs every optional extra a CPU-only machine can run."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib", reason="reading pyproject.toml needs Python >= 3.11 (tomllib)")

REPO = Path(__file__).resolve().parents[1]
# extras CI cannot install, and why (their tests skip with this reason)
NOT_IN_CI = {"spandrel": "needs torchvision, which has no build for the pinned CPU torch: the test command installs "
                         "it with --no-deps and its tests supply a stand-in torchvision"}


def _extras() -> dict[str, list[str]]:
    return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]


def _names(requirements: list[str]) -> set[str]:
    return {re.split(r"[<>=!\[ ;]", r, maxsplit=1)[0].lower() for r in requirements}


def test_ci_extra_holds_every_optional_feature():
    extras = _extras()
    ci = _names(extras["ci"])
    assert {"pytest", "onnx", "onnxruntime", "matplotlib", "tensorboard"} <= ci
    for name, reqs in extras.items():
        if name in ("ci", "all", "test") or name in NOT_IN_CI:
            continue
        assert _names(reqs) <= ci, f"extra {name!r} is not installed by CI (add it to the ci extra or to NOT_IN_CI)"


def test_readme_test_command_is_what_ci_runs():
    readme = (REPO / "README.md").read_text()
    commands = [line for line in readme.splitlines() if line.startswith("python3 -m venv") and "pytest" in line]
    assert len(commands) == 1
    assert '-e ".[ci]"' in commands[0] and "torch==2.13.0" in commands[0]
    assert "pip install -q --no-deps spandrel" in commands[0]  # the spandrel tests run in CI too
    ci = (REPO / ".ci" / "run").read_text()
    assert commands[0] in ci
