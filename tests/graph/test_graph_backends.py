"""The vesin backend of radius_graph gives the torch search's graph edge for edge; the backend switch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, fcc111, molecule

from atomsift.data import open_dataset
from atomsift.errors import ConfigError
from atomsift.graph import collate, radius_graph
from atomsift.graph import neighbors as nb
from atomsift.graph import vesin_backend as vb

pytest.importorskip("vesin")

F64 = torch.float64


def _structures() -> list[Atoms]:
    """Molecules, rattled and perfect crystals (exact ties), tiny cells with many images, slabs."""
    rattled = bulk("Cu", "fcc", 3.6, cubic=True) * (2, 1, 1)
    rattled.rattle(0.05, seed=1)
    triclinic = Atoms(
        "SiO2Mg",
        scaled_positions=[[0.1, 0.2, 0.3], [0.6, 0.1, 0.8], [0.3, 0.7, 0.5], [0.9, 0.9, 0.1]],
        cell=[[4.5, 0.0, 0.0], [1.3, 5.1, 0.0], [-0.9, 1.1, 4.7]],
        pbc=True,
    )
    small = bulk("Na", "bcc", 4.2)  # primitive cell: many images
    small.positions += [[7.3, -11.0, 2.2]]  # far outside its cell
    tiny = Atoms("He", positions=[[0.2, 0.1, 0.3]], cell=[2.1, 2.3, 2.5], pbc=True)
    rock = bulk("MgO", "rocksalt", 4.2, cubic=True)  # perfect oxide: shells of exactly equal distances
    cubic = Atoms("Po", positions=[[0, 0, 0]], cell=[3.0, 3.0, 3.0], pbc=True)  # shells at exactly 3, 3*sqrt(2)
    slab = fcc111("Pt", (2, 2, 3), vacuum=6.0)
    slab.positions[0] -= 1.7 * slab.cell[0]
    flat = fcc111("Cu", (2, 2, 2))  # pbc (T, T, F), zero third vector
    return [molecule("C6H6"), molecule("CH4"), rattled, triclinic, small, tiny, rock, cubic, slab, flat]


def test_large_structures_same_graph():
    big = bulk("MgO", "rocksalt", 4.2, cubic=True) * (4, 4, 4)  # 512 atoms, perfect: many exact ties
    rattled = big.copy()
    rattled.rattle(0.05, seed=5)
    cluster = rattled.copy()
    cluster.pbc = False
    batch = collate([big, rattled, cluster], dtype=F64)
    for max_neighbors, strict in ((None, True), (30, True), (12, False)):
        args = (batch, 6.0, max_neighbors)
        _same(radius_graph(*args, strict=strict, backend="torch"), radius_graph(*args, strict=strict, backend="vesin"))


def _same(a, b) -> None:
    assert torch.equal(a.edge_index, b.edge_index)
    assert torch.equal(a.cell_offsets, b.cell_offsets)
    assert torch.equal(a.distance, b.distance)
    assert torch.equal(a.num_neighbors, b.num_neighbors)


@pytest.mark.parametrize("cutoff", [3.0, 6.0, 8.0])
@pytest.mark.parametrize("max_neighbors", [None, 1, 6, 30])
@pytest.mark.parametrize("strict", [True, False])
def test_vesin_graph_is_the_torch_graph(cutoff: float, max_neighbors: int | None, strict: bool):
    batch = collate(_structures(), dtype=F64)
    for pbc in (None, False):
        torch_graph = radius_graph(batch, cutoff, max_neighbors, pbc=pbc, strict=strict, backend="torch")
        vesin_graph = radius_graph(batch, cutoff, max_neighbors, pbc=pbc, strict=strict, backend="vesin")
        assert torch_graph.num_edges > 0
        _same(torch_graph, vesin_graph)


def test_one_pair_finder_per_structure_kind():
    # exact ties and pairs at exactly the cutoff (3 A in the simple cubic cell) are found by both finders
    batch = collate(_structures(), dtype=F64)
    pos, cell, pbc = batch.positions, batch.cell, batch.pbc
    found = []
    for finder in (nb._find_pairs, vb.find_pairs_vesin):
        target, source, offsets, dist = finder(pos, cell, pbc, batch, 3.0)
        order = nb._sort_edges(target, source, offsets, dist)
        found.append((target[order], source[order], offsets[order], dist[order]))
    for a, b in zip(*found):
        assert torch.equal(a, b)
    first = sum(len(a) for a in _structures()[:7])  # the simple cubic cell's atom
    assert int((found[0][0] == first).sum()) == 6


@pytest.mark.parametrize(
    ("name", "settings"), [("bundled:oxides", (12.0, 30, True)), ("bundled:ethanol", (8.0, 30, False))]
)
def test_bundled_data_same_graph(name: str, settings: tuple):
    cutoff, k, pbc = settings
    ds = open_dataset(name)
    batch = collate([ds[i] for i in range(0, min(len(ds), 200), 5)], dtype=torch.float32)
    for max_neighbors, strict in ((None, True), (k, True), (k, False)):
        args = (batch, cutoff, max_neighbors)
        _same(
            radius_graph(*args, pbc=pbc, strict=strict, backend="torch"),
            radius_graph(*args, pbc=pbc, strict=strict, backend="vesin"),
        )


def test_gradients_flow_through_vesin_graphs():
    atoms = bulk("MgO", "rocksalt", 4.2)
    atoms.rattle(0.02, seed=2)
    batch = collate([atoms], dtype=F64)
    batch.positions.requires_grad_(True)
    g = radius_graph(batch, 5.0, 12, backend="vesin")
    (g.distance**2).sum().backward()
    assert batch.positions.grad is not None and batch.positions.grad.abs().sum() > 0


def test_backend_choice(monkeypatch):
    periodic = collate([bulk("Cu", "fcc", 3.6)], dtype=F64)
    calls = []
    real = vb.find_pairs_vesin

    def counting(*args):
        calls.append(1)
        return real(*args)

    monkeypatch.setattr(nb, "find_pairs_vesin", counting)
    radius_graph(periodic, 5.0)  # auto: CPU and periodic -> vesin
    assert len(calls) == 1
    two = collate([bulk("Cu", "fcc", 3.6)] * 2, dtype=F64)
    radius_graph(two, 5.0, pbc=False)  # auto: a batch of small molecules -> torch
    radius_graph(periodic, 5.0, backend="torch")
    assert len(calls) == 1
    radius_graph(periodic, 5.0, pbc=False)  # auto: one structure -> vesin
    assert len(calls) == 2
    calls.clear()
    radius_graph(periodic, 5.0)
    assert len(calls) == 1
    cluster = bulk("MgO", "rocksalt", 4.2, cubic=True) * (3, 3, 3)  # 216 atoms
    radius_graph(collate([cluster, cluster], dtype=F64), 5.0, pbc=False)  # auto: large molecules -> vesin
    assert len(calls) == 2
    calls.clear()
    radius_graph(periodic, 5.0)
    assert len(calls) == 1
    monkeypatch.setenv("ATOMSIFT_NEIGHBOR_BACKEND", "torch")
    radius_graph(periodic, 5.0)
    assert len(calls) == 1
    monkeypatch.setenv("ATOMSIFT_NEIGHBOR_BACKEND", "vesin")
    radius_graph(two, 5.0, pbc=False)
    assert len(calls) == 2
    monkeypatch.setenv("ATOMSIFT_NEIGHBOR_BACKEND", "fast")
    with pytest.raises(ConfigError, match="ATOMSIFT_NEIGHBOR_BACKEND"):
        radius_graph(periodic, 5.0)
    with pytest.raises(ConfigError, match="auto, torch, vesin"):
        radius_graph(periodic, 5.0, backend="cells")
    # without vesin installed: auto falls back to torch, asking for vesin is an error
    monkeypatch.delenv("ATOMSIFT_NEIGHBOR_BACKEND")
    monkeypatch.setattr(vb, "vesin_available", lambda: False)
    radius_graph(periodic, 5.0)
    assert len(calls) == 2
    with pytest.raises(ConfigError, match="pip install vesin"):
        radius_graph(periodic, 5.0, backend="vesin")


def test_empty_and_single_atom():
    lone = collate([Atoms("H", positions=[[0, 0, 0]])], dtype=F64)
    g = radius_graph(lone, 5.0, 10, backend="vesin")
    assert g.num_edges == 0 and g.num_neighbors.tolist() == [0]
    tiny = collate([Atoms("He", positions=[[0.2, 0.1, 0.3]], cell=[2.1, 2.3, 2.5], pbc=True)], dtype=F64)
    assert radius_graph(tiny, 2.2, backend="vesin").num_edges == 2
    assert np.allclose(radius_graph(tiny, 2.2, backend="vesin").distance.numpy(), [2.1, 2.1])
