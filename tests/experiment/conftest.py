"""Experiment tests: Lightning's chatter and known-harmless warnings off (as the CLI does)."""

from __future__ import annotations

import warnings

import pytest


@pytest.fixture(autouse=True)
def _quiet():
    from atomsift.cli.train import _quiet_lightning

    with warnings.catch_warnings():
        _quiet_lightning()
        yield
