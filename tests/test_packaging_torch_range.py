"""Packaging (issue 8): `[project] dependencies` states a torch range, the exact pin lives in constraints.txt."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
specifiers = pytest.importorskip("packaging.specifiers")
requirements = pytest.importorskip("packaging.requirements")


def torch_requirement():
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    found = [requirements.Requirement(d) for d in deps if requirements.Requirement(d).name == "torch"]
    assert len(found) == 1, "pyproject.toml should name torch once in [project] dependencies"
    return found[0]


def test_torch_is_a_range_and_the_pin_is_in_constraints():
    req = torch_requirement()
    assert req.specifier, "torch needs a lower bound the code supports"
    assert not any(s.operator in ("==", "===") for s in req.specifier), "an exact torch pin blocks users' own builds"
    assert req.specifier.contains("2.3.0") and not req.specifier.contains("2.2.2")
    assert req.specifier.contains("2.99.0+cu128"), "local CUDA builds (+cuXXX) must satisfy the range"
    pins = [
        ln.split("==", 1)[1].strip()
        for ln in (ROOT / "constraints.txt").read_text().splitlines()
        if ln.startswith("torch==")
    ]
    assert len(pins) == 1, "constraints.txt (used by make demo / make test) pins torch exactly"
    assert req.specifier.contains(pins[0]), f"constraints.txt's torch {pins[0]} is outside {req.specifier}"


def test_installed_torch_is_in_range():
    torch = pytest.importorskip("torch")
    assert torch_requirement().specifier.contains(torch.__version__, prereleases=True)
