"""Paper graph settings per dataset and reader format."""

from __future__ import annotations

import dataclasses

import pytest

from atomsift.data.registry import FORMATS
from atomsift.errors import ConfigError
from atomsift.graph import DATASET_GRAPHS, GraphSettings, graph_settings_for


def test_paper_settings():
    assert graph_settings_for("ani1x") == GraphSettings(8.0, 30, False)
    assert graph_settings_for("Transition1x") == GraphSettings(8.0, 30, False)
    assert graph_settings_for("oc20") == graph_settings_for("oc22") == GraphSettings(12.0, 30, True)
    assert graph_settings_for("rmd17") == GraphSettings(7.0, 100, False)
    assert graph_settings_for("md22") == GraphSettings(12.0, 30, False)
    assert graph_settings_for("qm9") == GraphSettings(8.0, 30, False)
    assert graph_settings_for("qmof") == GraphSettings(19.0, 30, True)
    assert graph_settings_for("matbench") == GraphSettings(12.0, 30, True)
    assert graph_settings_for("spice") == GraphSettings(12.0, 30, False)


def test_format_names_and_aliases():
    for name in DATASET_GRAPHS:
        assert name in FORMATS or name in {"oc20", "oc22", "md22", "md17", "qm9"}
    assert graph_settings_for("oc-lmdb") == graph_settings_for("OC20_LMDB") == graph_settings_for("oc20")
    assert graph_settings_for("t1x") == graph_settings_for("transition1x")
    assert graph_settings_for("sgdml") == graph_settings_for("md22")
    assert graph_settings_for("qm9pack") == graph_settings_for("qm9-xyz") == graph_settings_for("qm9")


def test_unknown_name_lists_known_ones():
    with pytest.raises(ConfigError, match="ani1x.*oc20"):
        graph_settings_for("extxyz")


def test_settings_are_frozen_and_validated():
    s = graph_settings_for("oc20")
    with pytest.raises(dataclasses.FrozenInstanceError):
        s.cutoff = 6.0  # type: ignore[misc]
    with pytest.raises(ConfigError):
        GraphSettings(-1.0, 30, False)
    with pytest.raises(ConfigError):
        GraphSettings(6.0, 0, False)
