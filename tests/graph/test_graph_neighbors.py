"""radius_graph against ASE's neighbor_list; max_neighbors rules; gradients; dtypes; chunking."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, fcc111, molecule
from ase.neighborlist import neighbor_list

from atomsift.errors import DataError
from atomsift.graph import collate, edge_vectors, limit_neighbors, radius_graph
from atomsift.graph import neighbors as nb

F64 = torch.float64


def _ase_edges(atoms: Atoms, cutoff: float) -> dict[tuple, float]:
    """{(source j, target i, S): distance} from ASE (i centre, j neighbour)."""
    i, j, d, S = neighbor_list("ijdS", atoms, cutoff)
    return {(int(b), int(a), *map(int, s)): float(x) for a, b, x, s in zip(i, j, d, S)}


def _our_edges(graph, first: int = 0, last: int | None = None) -> dict[tuple, float]:
    out = {}
    for (j, i), s, d in zip(graph.edge_index.T.tolist(), graph.cell_offsets.tolist(), graph.distance.tolist()):
        if i >= first and (last is None or i < last):
            out[(j - first, i - first, *s)] = d
    return out


def _structures() -> dict[str, Atoms]:
    benzene = molecule("C6H6")
    cubic = bulk("Cu", "fcc", 3.6, cubic=True) * (2, 2, 2)
    cubic.rattle(0.05, seed=1)
    triclinic = Atoms(
        "SiO2Mg",
        scaled_positions=[[0.1, 0.2, 0.3], [0.6, 0.1, 0.8], [0.3, 0.7, 0.5], [0.9, 0.9, 0.1]],
        cell=[[4.5, 0.0, 0.0], [1.3, 5.1, 0.0], [-0.9, 1.1, 4.7]],
        pbc=True,
    )
    small = bulk("Na", "bcc", 4.2)  # primitive cell, 3.6 A vectors: many images at 8 A
    small.positions += [[7.3, -11.0, 2.2]]  # far outside its cell: offsets must follow
    tiny = Atoms("He", positions=[[0.2, 0.1, 0.3]], cell=[2.1, 2.3, 2.5], pbc=True)
    slab = fcc111("Pt", (2, 2, 3), vacuum=6.0)
    slab.rattle(0.05, seed=3)
    slab.positions[0] -= 1.7 * slab.cell[0]  # unwrapped atom
    flat = fcc111("Cu", (2, 2, 2))  # pbc (T, T, F) with a zero third vector
    return {
        "benzene": benzene,
        "cubic": cubic,
        "triclinic": triclinic,
        "small": small,
        "tiny": tiny,
        "slab": slab,
        "flat": flat,
    }


STRUCTURES = _structures()


@pytest.mark.parametrize("name", list(STRUCTURES))
def test_matches_ase(name: str):
    atoms = STRUCTURES[name]
    ref = _ase_edges(atoms, 8.0)
    graph = radius_graph(collate([atoms], dtype=F64), 8.0)
    ours = _our_edges(graph)
    assert set(ours) == set(ref)
    assert max(abs(ours[k] - ref[k]) for k in ref) < 1e-6
    assert graph.num_neighbors.sum() == graph.num_edges
    assert graph.edge_index.dtype == graph.cell_offsets.dtype == torch.int64


def test_mixed_batch_matches_ase_per_structure():
    structures = list(STRUCTURES.values())
    batch = collate(structures, dtype=F64)
    graph = radius_graph(batch, 8.0)
    starts = np.concatenate([[0], np.cumsum([len(a) for a in structures])])
    assert graph.num_edges == sum(len(_ase_edges(a, 8.0)) for a in structures)
    for atoms, first, last in zip(structures, starts[:-1], starts[1:]):
        ours = _our_edges(graph, int(first), int(last))
        ref = _ase_edges(atoms, 8.0)
        assert set(ours) == set(ref)
        assert max(abs(ours[k] - ref[k]) for k in ref) < 1e-6


def test_edges_sorted_by_target_then_distance():
    graph = radius_graph(collate(list(STRUCTURES.values()), dtype=F64), 6.0)
    target, dist = graph.edge_index[1], graph.distance
    assert (target[1:] >= target[:-1]).all()
    same = target[1:] == target[:-1]
    assert (dist[1:][same] >= dist[:-1][same] - 1e-7).all()


def test_pbc_override():
    cubic = STRUCTURES["cubic"]
    batch = collate([cubic], dtype=F64)
    as_molecule = radius_graph(batch, 5.0, pbc=False)
    assert (as_molecule.cell_offsets == 0).all()
    assert as_molecule.num_edges == len(_ase_edges(Atoms(cubic.numbers, cubic.positions), 5.0))
    with pytest.raises(DataError, match="no cell"):
        radius_graph(collate([molecule("H2O")]), 5.0, pbc=True)


@pytest.mark.parametrize("name", ["cubic", "triclinic", "slab", "benzene"])
def test_max_neighbors_keeps_the_nearest(name: str):
    atoms = STRUCTURES[name]
    k = 7
    graph = radius_graph(collate([atoms], dtype=F64), 8.0, k)
    i, d = neighbor_list("id", atoms, 8.0)
    for centre in range(len(atoms)):
        expected = np.sort(d[i == centre])[:k]
        got = graph.distance[graph.edge_index[1] == centre].numpy()
        np.testing.assert_allclose(got, expected, atol=1e-9)
    assert graph.num_neighbors.max() <= k


def test_strict_ties_are_deterministic():
    cu = bulk("Cu", "fcc", 3.6, cubic=True)  # perfect crystal: shells of 12, 6, 24 equal distances
    batch = collate([cu], dtype=F64)
    g1 = radius_graph(batch, 8.0, 30)
    g2 = radius_graph(batch, 8.0, 30)
    assert torch.equal(g1.edge_index, g2.edge_index) and torch.equal(g1.cell_offsets, g2.cell_offsets)
    assert g1.num_neighbors.tolist() == [30] * 4
    # a translation inside the cell changes float rounding of the tied distances, not the result
    moved = cu.copy()
    moved.positions += [0.1234, 0.0567, 0.0891]
    g3 = radius_graph(collate([moved], dtype=F64), 8.0, 30)
    assert torch.equal(g1.edge_index, g3.edge_index) and torch.equal(g1.cell_offsets, g3.cell_offsets)
    # ties are broken by source index, then by offset (x, y, z lexicographic)
    ch4 = molecule("CH4")  # C first, then 4 equidistant H
    g = radius_graph(collate([ch4], dtype=F64), 3.0, 2)
    assert g.edge_index[0][g.edge_index[1] == 0].tolist() == [1, 2]


def test_sort_is_independent_of_candidate_order():
    atoms = bulk("Cu", "fcc", 3.6, cubic=True)
    batch = collate([atoms], dtype=F64)
    pos, cell = batch.positions, batch.cell
    target, source, offsets, dist = nb._find_pairs(pos, cell, batch.pbc, batch, 8.0)
    order = nb._sort_edges(target, source, offsets, dist)
    reference = torch.cat([target[order, None], source[order, None], offsets[order]], dim=1)
    for seed in range(3):
        perm = torch.randperm(target.numel(), generator=torch.Generator().manual_seed(seed))
        t, s, o, d = target[perm], source[perm], offsets[perm], dist[perm]
        again = nb._sort_edges(t, s, o, d)
        assert torch.equal(torch.cat([t[again, None], s[again, None], o[again]], dim=1), reference)


def test_non_strict_follows_fairchem_rule():
    # centre atom 0 at the origin, neighbours along x at 1.0, 2.0, 3.0, 3.005 and 3.1 A
    atoms = Atoms("H6", positions=[[x, 0, 0] for x in (0.0, 1.0, -2.0, 3.0, -3.005, 3.1)])
    batch = collate([atoms], dtype=F64)

    def kept(k: int, strict: bool) -> list[float]:
        g = radius_graph(batch, 3.5, k, strict=strict)
        return sorted(round(v, 4) for v in g.distance[g.edge_index[1] == 0].tolist())

    assert kept(2, True) == [1.0, 2.0]
    # non-strict: keep d^2 <= d_(k+1)^2 + 0.01 A^2, d_(k+1) the (k+1)-th nearest (so >= k+1 edges)
    assert kept(1, False) == [1.0, 2.0]
    assert kept(2, False) == [1.0, 2.0, 3.0]  # 3.005^2 = 9.030 > 3.0^2 + 0.01
    assert kept(3, False) == [1.0, 2.0, 3.0, 3.005]  # 3.1^2 = 9.61 > 3.005^2 + 0.01
    assert kept(5, False) == kept(5, True) == [1.0, 2.0, 3.0, 3.005, 3.1]  # not crowded: all kept
    # limit_neighbors on plain distances (fairchem GemNet-OC sub-graphs): d <= d_(k+1) + 0.01 A
    g = radius_graph(batch, 3.5)
    mask = limit_neighbors(g.edge_index[1], g.distance, batch.num_atoms, 2, strict=False, squared=False)
    sel = g.select(mask)
    assert sorted(round(v, 4) for v in sel.distance[sel.edge_index[1] == 0].tolist()) == [1.0, 2.0, 3.0, 3.005]
    assert sel.num_neighbors.sum() == sel.num_edges


def test_gradient_matches_finite_differences():
    atoms = STRUCTURES["triclinic"]
    batch = collate([atoms], dtype=F64)
    batch.positions.requires_grad_(True)
    graph = radius_graph(batch, 6.0, 12)
    assert not graph.edge_index.requires_grad and not graph.cell_offsets.requires_grad
    (grad,) = torch.autograd.grad(graph.distance.sum(), batch.positions)

    def total(pos: torch.Tensor) -> float:
        _, d = edge_vectors(pos, batch.cell, batch.batch, graph.edge_index, graph.cell_offsets)
        return float(d.sum())

    eps = 1e-6
    fd = torch.zeros_like(grad)
    base = batch.positions.detach()
    for a in range(base.shape[0]):
        for c in range(3):
            plus, minus = base.clone(), base.clone()
            plus[a, c] += eps
            minus[a, c] -= eps
            fd[a, c] = (total(plus) - total(minus)) / (2 * eps)
    torch.testing.assert_close(grad, fd, atol=1e-6, rtol=1e-6)
    # vector is r_j + S @ cell - r_i
    j, i = graph.edge_index
    expected = base[j] + graph.cell_offsets.to(F64) @ batch.cell[0] - base[i]
    torch.testing.assert_close(graph.vector.detach(), expected)


def test_float32_gives_the_same_graph():
    structures = [STRUCTURES[n] for n in ("cubic", "triclinic", "slab", "benzene")]
    g64 = radius_graph(collate(structures, dtype=F64), 7.0, 20)
    g32 = radius_graph(collate(structures, dtype=torch.float32), 7.0, 20)
    assert g32.distance.dtype == g32.vector.dtype == torch.float32

    # the same edges; the order may differ among near-ties (float32 inputs break exact symmetries)
    def edges(g):
        return {tuple(e) for e in torch.cat([g.edge_index.T, g.cell_offsets], dim=1).tolist()}

    assert edges(g64) == edges(g32)
    key64 = {tuple(e): d for e, d in zip(torch.cat([g64.edge_index.T, g64.cell_offsets], 1).tolist(), g64.distance)}
    for e, d in zip(torch.cat([g32.edge_index.T, g32.cell_offsets], 1).tolist(), g32.distance.double()):
        assert abs(float(d) - float(key64[tuple(e)])) < 1e-5


def test_chunking_does_not_change_the_result(monkeypatch):
    structures = list(STRUCTURES.values())
    batch = collate(structures, dtype=F64)
    whole = radius_graph(batch, 8.0, 25)
    monkeypatch.setattr(nb, "_PAIR_CHUNK", 7)
    monkeypatch.setattr(nb, "_CANDIDATE_CHUNK", 50)
    chunked = radius_graph(batch, 8.0, 25)
    assert torch.equal(whole.edge_index, chunked.edge_index)
    assert torch.equal(whole.cell_offsets, chunked.cell_offsets)


def test_edge_cases():
    single = collate([Atoms("H", positions=[[0, 0, 0]])])
    g = radius_graph(single, 5.0, 10)
    assert g.edge_index.shape == (2, 0) and g.vector.shape == (0, 3) and g.num_neighbors.tolist() == [0]
    # an atom's own periodic images are neighbours
    tiny = radius_graph(collate([STRUCTURES["tiny"]], dtype=F64), 2.2)
    assert tiny.num_edges == 2 and (tiny.edge_index == 0).all()
    with pytest.raises(ValueError):
        radius_graph(single, 0.0)


def test_batched_equals_one_by_one():
    structures = list(STRUCTURES.values())
    batch = collate(structures, dtype=F64)
    for strict in (True, False):
        together = radius_graph(batch, 8.0, 10, strict=strict)
        first = 0
        for atoms in structures:
            alone = radius_graph(collate([atoms], dtype=F64), 8.0, 10, strict=strict)
            mine = (together.edge_index[1] >= first) & (together.edge_index[1] < first + len(atoms))
            assert torch.equal(together.edge_index[:, mine] - first, alone.edge_index)
            assert torch.equal(together.cell_offsets[mine], alone.cell_offsets)
            first += len(atoms)
