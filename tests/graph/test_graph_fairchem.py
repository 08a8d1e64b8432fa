"""Our periodic graphs against fairchem's radius_graph_pbc (run in the fairchem side environment).

/work/fairchem-venv/bin/python -m pytest tests/graph/test_graph_fairchem.py -q
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

pytest.importorskip("fairchem.core")

import torch
from ase.build import add_adsorbate, bulk, fcc111
from fairchem.core.common.utils import radius_graph_pbc

from atomsift.graph import collate, radius_graph


def _fairchem(batch, cutoff: float, k: int, strict: bool) -> set[tuple]:
    data = SimpleNamespace(pos=batch.positions, natoms=batch.natoms, cell=batch.cell, pbc=batch.pbc)
    edge_index, offsets, _ = radius_graph_pbc(data, cutoff, k, enforce_max_neighbors_strictly=strict)
    return {(j, i, *s) for (j, i), s in zip(edge_index.T.tolist(), offsets.long().tolist())}


def _ours(batch, cutoff: float, k: int, strict: bool):
    g = radius_graph(batch, cutoff, k, strict=strict)
    return {(j, i, *s) for (j, i), s in zip(g.edge_index.T.tolist(), g.cell_offsets.tolist())}, g


def _crystal():
    return bulk("Cu", "fcc", 3.6, cubic=True)  # perfect: every shell is a set of exact ties


def _slab():
    slab = fcc111("Pt", (2, 2, 3), vacuum=7.0)
    add_adsorbate(slab, "O", 1.5, "fcc")
    slab.rattle(0.05, seed=4)
    return slab  # pbc (T, T, F)


@pytest.mark.parametrize("make", [_crystal, _slab])
def test_non_strict_matches_fairchem(make):
    batch = collate([make(), make()], dtype=torch.float32)
    ref = _fairchem(batch, 12.0, 30, strict=False)
    ours, _ = _ours(batch, 12.0, 30, strict=False)
    assert ours == ref


@pytest.mark.parametrize("make", [_crystal, _slab])
def test_strict_matches_fairchem_up_to_ties(make):
    """Same edges except where fairchem's float32 sort picks among exactly tied candidates."""
    batch = collate([make(), make()], dtype=torch.float32)
    ref = _fairchem(batch, 12.0, 30, strict=True)
    ours, g = _ours(batch, 12.0, 30, strict=True)
    assert len(ours) == len(ref)

    pos, cell = batch.positions.double(), batch.cell.double()

    def length(edge: tuple) -> float:
        j, i, *s = edge
        return float(torch.linalg.norm(pos[j] + torch.tensor(s, dtype=torch.float64) @ cell[batch.batch[j]] - pos[i]))

    # every edge in only one of the graphs ties (within float32 noise) with its target's 30th distance
    kth = {i: float(g.distance[g.edge_index[1] == i].max()) for i in range(batch.num_atoms)}
    for edge in ours ^ ref:
        assert abs(length(edge) - kth[edge[1]]) < 1e-4
    count_ours = torch.bincount(torch.tensor([e[1] for e in ours]), minlength=batch.num_atoms)
    count_ref = torch.bincount(torch.tensor([e[1] for e in ref]), minlength=batch.num_atoms)
    assert torch.equal(count_ours, count_ref)
