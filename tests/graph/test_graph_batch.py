"""collate: Records and ase.Atoms into one AtomsBatch; validation of bad inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, fcc111, molecule
from ase.calculators.emt import EMT
from ase.calculators.singlepoint import SinglePointCalculator

from atomsift.data import Record, open_dataset
from atomsift.errors import DataError
from atomsift.graph import AtomsBatch, collate


def _record(n: int = 3, rid: str = "r0", **kw) -> Record:
    rng = np.random.default_rng(n)
    return Record(numbers=np.full(n, 6), positions=rng.normal(size=(n, 3)) * 2, id=rid, **kw)


def test_collate_records_from_bundled_dataset():
    ds = open_dataset("bundled:ethanol")
    recs = [ds[0], ds[1], ds[2]]
    batch = collate(recs)
    assert isinstance(batch, AtomsBatch)
    assert batch.num_structures == 3 and batch.num_atoms == 27
    assert batch.natoms.tolist() == [9, 9, 9]
    assert batch.batch.tolist() == [0] * 9 + [1] * 9 + [2] * 9
    assert batch.ids == [r.id for r in recs]
    assert batch.positions.dtype == torch.get_default_dtype()
    assert batch.numbers.dtype == torch.int64 and batch.tags.dtype == torch.int64
    assert torch.equal(batch.cell, torch.zeros(3, 3, 3, dtype=batch.cell.dtype))
    assert not batch.pbc.any()
    assert torch.allclose(batch.energy, torch.tensor([r.energy for r in recs], dtype=batch.energy.dtype))
    np.testing.assert_allclose(batch.forces[9:18].numpy(), recs[1].forces, rtol=1e-6)
    for key in recs[0].targets:
        assert batch.targets[key].shape == (3,)


def test_collate_periodic_records_and_tags():
    ds = open_dataset("bundled:oxides")
    batch = collate([ds[0], ds[1]], dtype=torch.float64)
    assert batch.pbc.all()
    np.testing.assert_allclose(batch.cell[1].numpy(), ds[1].cell)
    rec = _record(4, tags=np.array([0, 1, 2, 2]))
    assert collate([rec]).tags.tolist() == [0, 1, 2, 2]


def test_collate_ase_atoms_uses_stored_results_only():
    cu = bulk("Cu", "fcc", 3.6) * (2, 1, 1)
    cu.calc = SinglePointCalculator(cu, energy=-1.5, forces=np.ones((2, 3)))
    cu.set_tags([1, 2])
    cu.info["band_gap"] = 0.5
    h2o = molecule("H2O")
    h2o.calc = SinglePointCalculator(h2o, energy=2.0, forces=np.zeros((3, 3)))
    h2o.info["band_gap"] = 1.5
    batch = collate([cu, h2o], dtype=torch.float64)
    assert batch.energy.tolist() == [-1.5, 2.0]
    assert batch.forces.shape == (5, 3) and batch.forces[:2].eq(1).all()
    assert batch.tags.tolist() == [1, 2, 2, 2, 2]  # untagged structures get UNTAGGED = 2 (JMP)
    assert batch.targets["band_gap"].tolist() == [0.5, 1.5]
    assert batch.pbc.tolist() == [[True] * 3, [False] * 3]
    assert batch.ids == ["atoms/0", "atoms/1"]

    fresh = bulk("Cu", "fcc", 3.6)
    fresh.calc = EMT()  # has a calculator but no results: nothing may be computed
    batch = collate([fresh])
    assert batch.energy is None and batch.forces is None
    assert not fresh.calc.results


def test_mixed_records_and_atoms_and_round_trip():
    rec = _record(5, rid="mol/1", energy=1.0, forces=np.zeros((5, 3)))
    batch = collate([rec, rec.to_atoms()])
    assert batch.ids == ["mol/1", "mol/1"]
    assert torch.equal(batch.positions[:5], batch.positions[5:])
    assert batch.energy.tolist() == [1.0, 1.0]


def test_missing_labels_are_kept_with_masks():
    recs = [_record(3, energy=1.0, forces=np.ones((3, 3))), _record(4), _record(2, energy=-2.0)]
    recs[1].targets["gap"] = 0.5
    batch = collate(recs)
    assert batch.energy.tolist() == [1.0, 0.0, -2.0] and batch.energy_mask.tolist() == [True, False, True]
    assert batch.forces.shape == (9, 3) and batch.forces_mask.tolist() == [True, False, False]
    assert batch.forces[:3].eq(1).all() and batch.forces[3:].eq(0).all()
    assert batch.targets["gap"].tolist() == [0.0, 0.5, 0.0] and batch.target_masks["gap"].tolist() == [0, 1, 0]
    assert collate([_record(3)]).energy is None


def test_declared_per_atom_targets_and_shape_errors():
    recs = [_record(3), _record(2)]
    recs[0].targets["q"] = np.arange(3.0)
    recs[1].targets["q"] = np.arange(2.0)
    batch = collate(recs, atom_targets=["q"])
    assert batch.targets["q"].tolist() == [0, 1, 2, 0, 1] and batch.atom_targets == ("q",)
    assert "q" not in collate(recs).targets  # undeclared and shapes differ: not guessed per-atom
    with pytest.raises(DataError, match="one shape"):
        collate(recs, targets=["q"])
    recs[1].targets["q"] = np.arange(5.0)
    with pytest.raises(DataError, match="per-atom label 'q'"):
        collate(recs, atom_targets=["q"])


def test_sub_batch_and_graph_groups():
    from atomsift.graph import GraphSettings
    from atomsift.graph.batch import graph_groups, sub_batch

    recs = [_record(3, rid="a", energy=1.0), _record(4, rid="b"), _record(2, rid="c", energy=3.0)]
    mol, per = GraphSettings(8.0, 30, False), GraphSettings(12.0, 30, True)
    batch = collate(recs, dataset=[0, 1, 0], dataset_names=["m", "p"], dataset_graphs=[mol, per])
    groups = graph_groups(batch)
    assert [(g, i.tolist()) for g, i in groups] == [(mol, [0, 2]), (per, [1])]
    sub, atoms = sub_batch(batch, groups[0][1])
    assert sub.ids == ["a", "c"] and atoms.tolist() == [0, 1, 2, 7, 8] and sub.batch.tolist() == [0, 0, 0, 1, 1]
    assert sub.energy.tolist() == [1.0, 3.0] and sub.dataset.tolist() == [0, 0]
    same = collate(recs, dataset=[0, 0, 0], dataset_names=["m"], dataset_graphs=[mol])
    assert [(g, i) for g, i in graph_groups(same)] == [(mol, None)]
    assert graph_groups(collate(recs)) == [(None, None)]


def test_to_converts_floats_only():
    batch = collate([_record(3, energy=1.0, forces=np.zeros((3, 3)))], dtype=torch.float64)
    b32 = batch.to(dtype=torch.float32)
    assert b32.positions.dtype == b32.cell.dtype == b32.forces.dtype == torch.float32
    # per-structure labels stay float64: -1e4 eV has a float32 step of 1 meV (float32 collation keeps them too)
    assert b32.energy.dtype == torch.float64
    assert collate([_record(3, energy=-11180.1234567)], dtype=torch.float32).energy.item() == -11180.1234567
    labelled = _record(3, energy=1.0, targets={"gap": 0.5, "charges": np.zeros(3)})
    mixed = collate([labelled], dtype=torch.float64, atom_targets=["charges"]).to(dtype=torch.float32)
    assert (mixed.targets["gap"].dtype, mixed.targets["charges"].dtype) == (torch.float64, torch.float32)
    assert b32.numbers.dtype == b32.batch.dtype == b32.natoms.dtype == torch.int64
    assert b32.pbc.dtype == torch.bool
    assert batch.positions.dtype == torch.float64  # original untouched
    assert b32.to("cpu").positions.device.type == "cpu"


def test_slab_without_vacuum_vector_is_accepted():
    slab = fcc111("Cu", (2, 2, 2))  # pbc (T, T, F), third lattice vector zero
    assert np.allclose(slab.cell[2], 0)
    batch = collate([slab])
    assert batch.pbc.tolist() == [[True, True, False]]


def test_bad_inputs_raise_data_error_naming_the_record():
    bad = _record(3, rid="broken/7")
    bad.positions[1, 2] = np.nan
    with pytest.raises(DataError, match="broken/7"):
        collate([_record(2), bad])
    inf = _record(3, rid="inf/1")
    inf.positions[0, 0] = np.inf
    with pytest.raises(DataError, match="NaN or inf"):
        collate([inf])

    nocell = _record(3, rid="nocell/2", pbc=np.array([True, True, True]))
    with pytest.raises(DataError, match="nocell/2"):
        collate([nocell])
    flat = Atoms("Cu2", positions=[[0, 0, 0], [1, 1, 1]], cell=[[3, 0, 0], [6, 0, 0], [0, 0, 3]], pbc=True)
    with pytest.raises(DataError, match="linearly dependent"):
        collate([flat])

    empty = Record(numbers=np.zeros(0, dtype=np.int64), positions=np.zeros((0, 3)), id="empty/0")
    with pytest.raises(DataError, match="empty/0"):
        collate([empty])
    with pytest.raises(DataError):
        collate([])
    with pytest.raises(DataError, match="cannot batch"):
        collate([np.zeros((3, 3))])


def test_fixed_atoms_from_records_and_constraints():
    from ase.constraints import FixAtoms

    slab = fcc111("Cu", (2, 2, 2), vacuum=5.0)
    slab.set_constraint(FixAtoms(indices=[0, 1]))
    rec = _record(3, fixed=np.array([False, True, False]))
    batch = collate([slab, rec, _record(2)])
    assert batch.fixed.tolist() == [True, True] + [False] * 6 + [False, True, False] + [False, False]
    assert collate([_record(2)]).fixed is None
    assert collate([rec.to_atoms()]).fixed.tolist() == [False, True, False]
