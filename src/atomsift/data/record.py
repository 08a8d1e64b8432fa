"""The canonical record every reader yields, and its validation."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from ase.data import chemical_symbols

from atomsift.errors import DataError

MAX_Z = len(chemical_symbols) - 1
"""Largest atomic number the code knows (ASE's table; 118, Og)."""

_GRAM_EPS = 1e-10  # Gram determinant of unit lattice vectors below this = degenerate


def periodic_vectors_ok(cell: np.ndarray, pbc: np.ndarray) -> bool:
    """True when the lattice vectors along periodic directions are nonzero and independent.

    Vectors along non-periodic directions may be zero (ASE builds slabs that way).
    """
    rows = np.asarray(cell, dtype=np.float64)[np.asarray(pbc, dtype=bool)]
    lengths = np.linalg.norm(rows, axis=1)
    if rows.shape[0] == 0:
        return True
    if np.any(lengths <= 1e-8):
        return False
    unit = rows / lengths[:, None]
    return bool(np.linalg.det(unit @ unit.T) > _GRAM_EPS)


@dataclass
class Record:
    """One structure with its labels, in eV, eV/A and A.

    Attributes:
        numbers: (N,) int64 atomic numbers.
        positions: (N, 3) float64 Cartesian positions, A.
        cell: (3, 3) float64 lattice vectors as rows, A; None for molecules.
        pbc: (3,) bool periodicity per lattice vector.
        energy: total (or, for OC20, adsorption) energy, eV; None when the data has none.
        forces: (N, 3) float64 forces, eV/A; None when the data has none.
        targets: other labels by name (scalars, or arrays), in the units the reader documents.
        class_label: class for class-balanced sampling (formula, bulk composition, ...), or None.
        id: stable identifier, unique within its dataset (e.g. 'C2H6O/17').
        tags: (N,) int64 OC20 tags (0 subsurface, 1 surface, 2 adsorbate), or None.
        fixed: (N,) bool atoms held fixed in the calculation, or None.
        info: free-form metadata (sid, fid, source units, ...).
    """

    numbers: np.ndarray
    positions: np.ndarray
    id: str
    cell: np.ndarray | None = None
    pbc: np.ndarray = field(default_factory=lambda: np.zeros(3, dtype=bool))
    energy: float | None = None
    forces: np.ndarray | None = None
    targets: dict[str, Any] = field(default_factory=dict)
    class_label: str | None = None
    tags: np.ndarray | None = None
    fixed: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def natoms(self) -> int:
        return int(self.numbers.shape[0])

    def to_atoms(self):  # -> ase.Atoms
        """Convert to `ase.Atoms`; energy and forces sit on a SinglePointCalculator."""
        from ase import Atoms
        from ase.calculators.singlepoint import SinglePointCalculator
        from ase.constraints import FixAtoms

        atoms = Atoms(
            numbers=self.numbers,
            positions=self.positions,
            cell=self.cell if self.cell is not None else np.zeros((3, 3)),
            pbc=self.pbc,
        )
        if self.tags is not None:
            atoms.set_tags(self.tags)
        if self.fixed is not None and np.any(self.fixed):
            atoms.set_constraint(FixAtoms(mask=np.asarray(self.fixed, dtype=bool)))
        for key, value in self.targets.items():
            atoms.info[key] = value
        atoms.info["atomsift_id"] = self.id
        if self.class_label is not None:
            atoms.info["class_label"] = self.class_label
        if self.energy is not None or self.forces is not None:
            atoms.calc = SinglePointCalculator(atoms, energy=self.energy, forces=self.forces)
        return atoms

    def validate(self, source: str) -> Record:
        """Check shapes, finiteness and elements; raise DataError naming `source` and this record."""

        def fail(problem: str, fix: str) -> DataError:
            return DataError(problem, file=source, record=self.id, fix=fix)

        n = self.numbers.shape[0] if self.numbers.ndim == 1 else -1
        if n <= 0:
            raise fail(
                f"atomic numbers have shape {self.numbers.shape}, expected (N,) with N >= 1",
                "check that the file holds at least one atom per structure",
            )
        bad = (self.numbers < 1) | (self.numbers > MAX_Z)
        if np.any(bad):
            z = int(self.numbers[bad][0])
            raise fail(
                f"unknown element with atomic number {z} (atom {int(np.flatnonzero(bad)[0])})",
                f"atomic numbers must lie in 1..{MAX_Z}; remove dummy or ghost atoms from this structure",
            )
        if self.positions.shape != (n, 3):
            raise fail(
                f"positions have shape {self.positions.shape}, expected ({n}, 3)",
                "the positions and atomic numbers of this structure disagree; repair or drop it",
            )
        if not np.all(np.isfinite(self.positions)):
            raise fail("positions contain NaN or inf", "repair or drop this structure")
        if self.cell is not None and self.cell.shape != (3, 3):
            raise fail(f"cell has shape {self.cell.shape}, expected (3, 3)", "repair the cell")
        pbc = np.asarray(self.pbc, dtype=bool).reshape(-1)
        if pbc.size == 1:  # one flag for all three directions (extended XYZ's pbc="T", ASE's pbc=True)
            self.pbc = pbc = np.repeat(pbc, 3)
        if pbc.shape != (3,):
            raise fail(f"pbc has {pbc.size} entries, expected 3 (or 1 for all directions)", "repair the pbc flags")
        if pbc.any() and (self.cell is None or not periodic_vectors_ok(self.cell, pbc)):
            raise fail(
                f"structure is periodic along {pbc.tolist()} but has "
                + (
                    "no cell"
                    if self.cell is None
                    else "zero or linearly dependent lattice vectors along those directions"
                ),
                "give it its cell (extended XYZ: Lattice=...), or set pbc to False for a molecule",
            )
        for name in ("tags", "fixed"):
            value = getattr(self, name)
            if value is not None and np.shape(value) != (n,):
                raise fail(
                    f"{name} have shape {np.shape(value)}, expected ({n},) for {n} atoms",
                    f"the {name} do not belong to this structure; repair or drop it",
                )
        if self.energy is not None and not np.isfinite(self.energy):
            raise fail(
                f"energy is {self.energy}",
                "drop this structure from the file, or re-run its calculation",
            )
        if self.forces is not None:
            if self.forces.shape != (n, 3):
                raise fail(
                    f"forces have shape {self.forces.shape}, expected ({n}, 3) for {n} atoms",
                    "the forces do not belong to this structure; repair or drop it",
                )
            if not np.all(np.isfinite(self.forces)):
                raise fail("forces contain NaN or inf", "drop this structure or re-run its calculation")
        return self
