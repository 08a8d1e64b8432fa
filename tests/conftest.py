"""Shared fixtures. Real-format files live in the repository: tests/data (release-format fixtures, with
their provenance in tests/data/PROVENANCE.md) and the package's bundled data (src/atomsift/data/bundled)."""

from __future__ import annotations

from pathlib import Path

import pytest

from atomsift.data.bundled import bundled_dir

DATA = Path(__file__).resolve().parent / "data"
"""tests/data: ANI-1x, SPICE and QM9 fixtures in their release formats, and the GemNet-OC parity reference."""


@pytest.fixture(scope="session")
def test_data() -> Path:
    """tests/data (shipped with the repository)."""
    return DATA


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The folder of the bundled real data files (rMD17 ethanol, acac MD, PBE oxides, adsorbates, OC20 frame)."""
    return bundled_dir()


@pytest.fixture(autouse=True)
def _fresh_model_warnings():
    """GemNet-OC says each data warning once per process: give every test a fresh process's state."""
    from atomsift.models.backbones.gemnet_oc.utils import WARNED

    WARNED.clear()
    yield
    WARNED.clear()
