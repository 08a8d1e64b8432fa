"""Shared fixtures for model tests: small real structures and symmetry operations on them.

Structures are `ase.Atoms` carrying their record id in `atoms.info["atomsift_id"]` (so `collate` names them):
  - `ethanol`: three rMD17 ethanol frames (molecules, 9 atoms) from bundled:ethanol;
  - `oxides`: two small periodic oxides (3 and 6 atoms) from bundled:oxides;
  - `silicon`: a rattled 2-atom primitive diamond cell (lattice vectors 3.84 A, so a 4-5 A cutoff reaches
    several periodic images of every atom);
  - `triclinic`: a rattled, sheared 4-atom cell, periodic in all three directions.
`rocksalt(rattle)` builds a rotated cubic MgO cell, full of collinear triplets unless rattled.
`geometry` bundles the symmetry operations (rotate, translate, permute, supercell) as plain functions.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
from ase import Atoms
from ase.build import bulk

from atomsift.data import open_dataset


def _with_id(atoms: Atoms, record_id: str) -> Atoms:
    atoms.info["atomsift_id"] = record_id
    atoms.calc = None
    return atoms


@pytest.fixture(scope="session")
def ethanol() -> list[Atoms]:
    """Three ethanol molecules (C2H6O) from bundled:ethanol."""
    ds = open_dataset("bundled:ethanol")
    return [_with_id(ds[i].to_atoms(), f"ethanol/{ds[i].id}") for i in (0, 100, 500)]


@pytest.fixture(scope="session")
def oxides() -> list[Atoms]:
    """Two small periodic oxides from bundled:oxides (the first with 3 atoms, the first with 6), rattled by
    0.03 A: relaxed crystals hold exactly collinear triplets, where GemNet-OC's angles are singular."""
    ds = open_dataset("bundled:oxides")
    chosen: dict[int, Atoms] = {}
    for i in range(len(ds)):
        rec = ds[i]
        if rec.natoms in (3, 6) and rec.natoms not in chosen:
            atoms = rec.to_atoms()
            atoms.rattle(stdev=0.03, seed=rec.natoms)
            chosen[rec.natoms] = _with_id(atoms, f"oxides/{rec.id}")
        if len(chosen) == 2:
            break
    return [chosen[3], chosen[6]]


@pytest.fixture(scope="session")
def silicon() -> Atoms:
    """A rattled primitive diamond-silicon cell: 2 atoms, lattice vectors of 3.84 A."""
    atoms = bulk("Si", "diamond", a=5.43)
    atoms.rattle(stdev=0.1, seed=3)
    return _with_id(atoms, "silicon/rattled")


@pytest.fixture(scope="session")
def triclinic() -> Atoms:
    """A rattled, sheared periodic cell with four atoms of three elements."""
    cell = np.array([[3.9, 0.0, 0.0], [1.1, 3.7, 0.0], [0.6, -0.8, 4.2]])
    frac = np.array([[0.0, 0.0, 0.0], [0.5, 0.5, 0.0], [0.5, 0.0, 0.5], [0.1, 0.6, 0.4]])
    atoms = Atoms(numbers=[8, 22, 8, 1], scaled_positions=frac, cell=cell, pbc=True)
    atoms.rattle(stdev=0.05, seed=5)
    return _with_id(atoms, "triclinic/rattled")


def rotate(atoms: Atoms, rotation: np.ndarray) -> Atoms:
    """Rotate positions and cell by the 3x3 matrix R (r -> R r)."""
    out = atoms.copy()
    out.positions = atoms.positions @ rotation.T
    if atoms.cell.rank > 0:
        out.set_cell(atoms.cell.array @ rotation.T, scale_atoms=False)
    out.info = dict(atoms.info)
    return out


def translate(atoms: Atoms, shift: np.ndarray, wrap: bool = False) -> Atoms:
    """Shift every atom by `shift` (A); with wrap=True, map atoms back into the cell afterwards."""
    out = atoms.copy()
    out.positions = atoms.positions + np.asarray(shift)
    if wrap:
        out.wrap()
    out.info = dict(atoms.info)
    return out


def permute(atoms: Atoms, order: np.ndarray) -> Atoms:
    """Reorder atoms: atom k of the result is atom order[k] of the input."""
    out = atoms[np.asarray(order)]
    out.info = dict(atoms.info)
    return out


def supercell(atoms: Atoms, reps: tuple[int, int, int] = (2, 2, 2)) -> Atoms:
    """Repeat a periodic cell; the copies of atom a are a, a + N, a + 2N, ... (ase.Atoms.repeat order)."""
    out = atoms.repeat(reps)
    out.info = dict(atoms.info)
    out.info["atomsift_id"] = f"{atoms.info.get('atomsift_id', 'atoms')}/x{'x'.join(map(str, reps))}"
    return out


def _rocksalt(rattle: float = 0.0) -> Atoms:
    """Cubic MgO (every atom has neighbours on lines through it), turned off the axes, tags 2, rattled by `rattle`
    A. Along x, y, z the cross products of collinear edges round to exactly 0 and GemNet-OC's huge per-quadruplet
    gradient terms cancel by the cell's symmetry; in any other orientation they round to ~1e-8 and do not."""
    atoms = bulk("MgO", "rocksalt", a=4.21, cubic=True)
    atoms.rotate(37, (1, 2, 3), rotate_cell=True)
    if rattle:
        atoms.rattle(rattle, seed=3)
    atoms.set_tags(2)
    return atoms


@pytest.fixture(scope="session")
def rocksalt():
    """`rocksalt(rattle=0.0)`: the symmetric cell of the collinear-triplet tests (exact, or rattled)."""
    return _rocksalt


@pytest.fixture(scope="session")
def geometry() -> SimpleNamespace:
    """Symmetry operations on ase.Atoms: rotate(atoms, R), translate(atoms, t, wrap), permute(atoms, order),
    supercell(atoms, reps)."""
    return SimpleNamespace(rotate=rotate, translate=translate, permute=permute, supercell=supercell)
