"""The graph a GemNet-OC run gives a generic-format dataset when its settings give none (docs/training.md)."""

from __future__ import annotations

import warnings

import ase.io
import numpy as np
import pytest
from ase.build import bulk, molecule
from ase.calculators.singlepoint import SinglePointCalculator

from atomsift.data import open_dataset
from atomsift.train.setup import MOLECULE_GRAPH, PERIODIC_GRAPH, default_graph


def _labelled(atoms):
    atoms.calc = SinglePointCalculator(atoms, energy=-1.0, forces=np.zeros((len(atoms), 3)))
    return atoms


def _write(path, frames):
    ase.io.write(path, [_labelled(a) for a in frames], format="extxyz")
    return open_dataset(path)


def test_periodic_cells_behind_a_molecule_are_warned_about(tmp_path):
    """The first structure picks the graph; periodic cells read as molecules would silently lose their
    images, so the run says how many disagree and how to set the graph."""
    mixed = _write(tmp_path / "mixed.extxyz", [molecule("H2O"), molecule("CH4"), bulk("Cu"), bulk("Cu") * 2])
    with pytest.warns(UserWarning, match=r"its first structure is a molecule.*2 of 4 structures checked are periodic"):
        assert default_graph(mixed, None, "gemnet_oc") == MOLECULE_GRAPH
    cells = _write(tmp_path / "cells.extxyz", [bulk("Cu"), bulk("Cu") * 2])
    molecules = _write(tmp_path / "molecules.extxyz", [molecule("H2O"), molecule("CH4")])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert default_graph(cells, None, "gemnet_oc") == PERIODIC_GRAPH
        assert default_graph(molecules, None, "gemnet_oc") == MOLECULE_GRAPH
        assert default_graph(mixed, None, "painn") is None  # PaiNN keeps its own graph: per-structure pbc
