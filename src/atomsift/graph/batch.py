"""A batch of structures as flat tensors, and `collate` to build one from records or `ase.Atoms`.

    from atomsift.graph import collate
    batch = collate([ds[0], ds[1], atoms])     # Records and ase.Atoms may be mixed
    batch = batch.to("cuda", torch.float32)

Atoms of all structures are concatenated; `batch.batch[a]` says which structure atom `a` belongs to.
Lengths are in Angstrom, energies in eV, forces in eV/A (readers convert units; nothing here does).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from atomsift.data.record import Record
from atomsift.errors import DataError

_GRAM_EPS = 1e-10  # Gram determinant of unit lattice vectors below this = degenerate
_INFO_SKIP = {"atomsift_id", "class_label"}  # ase.Atoms.info keys that are not targets
UNTAGGED = 2
"""Tag of atoms in structures without OC20 tags (molecules, bulk): JMP's choice, 'adsorbate'."""


@dataclass
class AtomsBatch:
    """B structures with N atoms in total.

    Attributes:
        numbers: (N,) int64 atomic numbers.
        positions: (N, 3) float, A.
        batch: (N,) int64 structure index of each atom, non-decreasing.
        natoms: (B,) int64 atoms per structure.
        cell: (B, 3, 3) float, A; rows are lattice vectors; zeros for structures without a cell.
        pbc: (B, 3) bool periodicity along each lattice vector.
        tags: (N,) int64 OC20 tags (0 subsurface, 1 surface, 2 adsorbate); UNTAGGED (2) where the data has
            none, as JMP tags molecules and bulk, so GemNet-OC's quadruplets (qint_tags [1, 2]) reach them.
        ids: B record ids.
        energy: (B,) eV, or None when any structure lacks an energy.
        forces: (N, 3) eV/A, or None when any structure lacks forces.
        targets: other labels by name: (B,) for scalars, (B, ...) for fixed-shape arrays,
            (N, ...) for per-atom arrays. A label is kept only when every structure has it.
        fixed: (N,) bool atoms held fixed in the reference calculation (OC20), or None when no
            structure says; False for structures without the information.
    """

    numbers: Tensor
    positions: Tensor
    batch: Tensor
    natoms: Tensor
    cell: Tensor
    pbc: Tensor
    tags: Tensor
    ids: list[str]
    energy: Tensor | None = None
    forces: Tensor | None = None
    targets: dict[str, Tensor] = field(default_factory=dict)
    fixed: Tensor | None = None

    @property
    def num_structures(self) -> int:
        return int(self.natoms.shape[0])

    @property
    def num_atoms(self) -> int:
        return int(self.numbers.shape[0])

    @property
    def device(self) -> torch.device:
        return self.positions.device

    @property
    def dtype(self) -> torch.dtype:
        return self.positions.dtype

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> AtomsBatch:
        """A copy on `device`; `dtype` converts floating-point tensors only (ints and bools keep theirs)."""

        def move(t: Tensor | None) -> Tensor | None:
            if t is None:
                return None
            if dtype is not None and t.is_floating_point():
                return t.to(device=device, dtype=dtype)
            return t.to(device=device)

        changes: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor) or value is None:
                changes[f.name] = move(value)
        changes["targets"] = {k: move(v) for k, v in self.targets.items()}
        changes["ids"] = list(self.ids)
        return replace(self, **changes)


@dataclass
class _Parts:
    """One structure in numpy form, before stacking."""

    id: str
    numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray
    pbc: np.ndarray
    tags: np.ndarray
    energy: float | None
    forces: np.ndarray | None
    targets: dict[str, Any]
    fixed: np.ndarray | None


def _from_record(rec: Record) -> _Parts:
    return _Parts(
        id=str(rec.id),
        numbers=np.asarray(rec.numbers),
        positions=np.asarray(rec.positions, dtype=np.float64),
        cell=np.zeros((3, 3)) if rec.cell is None else np.asarray(rec.cell, dtype=np.float64),
        pbc=np.broadcast_to(np.asarray(rec.pbc, dtype=bool), (3,)).copy(),
        tags=np.full(len(rec.numbers), UNTAGGED, dtype=np.int64) if rec.tags is None else np.asarray(rec.tags),
        energy=None if rec.energy is None else float(rec.energy),
        forces=None if rec.forces is None else np.asarray(rec.forces, dtype=np.float64),
        targets=dict(rec.targets),
        fixed=None if rec.fixed is None else np.asarray(rec.fixed, dtype=bool),
    )


def _from_atoms(atoms: Any, index: int) -> _Parts:
    """Read an ase.Atoms; labels come only from results its calculator already holds."""
    results: dict[str, Any] = {}
    calc = getattr(atoms, "calc", None)
    if calc is not None:
        results = getattr(calc, "results", None) or {}
    energy = results.get("energy")
    forces = results.get("forces")
    targets: dict[str, Any] = {}
    for key, value in atoms.info.items():
        if key in _INFO_SKIP or isinstance(value, (str, bytes, bool)) or value is None:
            continue
        arr = np.asarray(value)
        if arr.dtype.kind in "iuf":
            targets[key] = arr
    fixed = None
    for constraint in atoms.constraints:
        if type(constraint).__name__ == "FixAtoms":
            fixed = np.zeros(len(atoms), dtype=bool) if fixed is None else fixed
            fixed[constraint.get_indices()] = True
    return _Parts(
        id=str(atoms.info.get("atomsift_id", f"atoms/{index}")),
        numbers=np.asarray(atoms.numbers),
        positions=np.asarray(atoms.positions, dtype=np.float64),
        cell=np.asarray(atoms.cell.array, dtype=np.float64),
        pbc=np.asarray(atoms.pbc, dtype=bool),
        tags=np.asarray(atoms.get_tags()) if "tags" in atoms.arrays else np.full(len(atoms), UNTAGGED, np.int64),
        energy=None if energy is None else float(np.asarray(energy).reshape(())),
        forces=None if forces is None else np.asarray(forces, dtype=np.float64),
        targets=targets,
        fixed=fixed,
    )


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


def _check(p: _Parts) -> None:
    n = p.numbers.shape[0] if p.numbers.ndim == 1 else 0
    if n == 0:
        raise DataError(
            "structure has no atoms",
            record=p.id,
            fix="drop empty structures before batching",
        )
    if p.positions.shape != (n, 3):
        raise DataError(
            f"positions have shape {p.positions.shape}, expected ({n}, 3)",
            record=p.id,
            fix="the positions and atomic numbers of this structure disagree; repair or drop it",
        )
    if not np.all(np.isfinite(p.positions)):
        raise DataError("positions contain NaN or inf", record=p.id, fix="repair or drop this structure")
    if p.cell.shape != (3, 3) or not np.all(np.isfinite(p.cell)):
        raise DataError(
            f"cell must be a finite (3, 3) array, got shape {p.cell.shape}",
            record=p.id,
            fix="repair the cell of this structure",
        )
    if p.pbc.any() and not periodic_vectors_ok(p.cell, p.pbc):
        raise DataError(
            f"structure is periodic along {p.pbc.tolist()} but its lattice vectors along those "
            "directions are zero or linearly dependent",
            record=p.id,
            fix="give it a cell with non-degenerate lattice vectors along its periodic directions, or set pbc to False",
        )
    if p.tags.shape != (n,):
        raise DataError(f"tags have shape {p.tags.shape}, expected ({n},)", record=p.id, fix="repair the tags")
    if p.fixed is not None and p.fixed.shape != (n,):
        raise DataError(f"fixed mask has shape {p.fixed.shape}, expected ({n},)", record=p.id, fix="repair it")
    if p.forces is not None and p.forces.shape != (n, 3):
        raise DataError(
            f"forces have shape {p.forces.shape}, expected ({n}, 3)",
            record=p.id,
            fix="the forces do not belong to this structure; repair or drop it",
        )


def _stack_target(name: str, values: list[np.ndarray], natoms: list[int], dtype: torch.dtype) -> Tensor | None:
    """(B, ...) when all shapes agree, (N, ...) for per-atom arrays, None when neither fits."""
    tdtype = dtype if any(v.dtype.kind == "f" for v in values) else torch.int64
    shapes = {v.shape for v in values}
    if len(shapes) == 1:
        return torch.as_tensor(np.stack(values), dtype=tdtype)
    if all(v.ndim >= 1 and v.shape[0] == n for v, n in zip(values, natoms)) and len({v.shape[1:] for v in values}) == 1:
        return torch.as_tensor(np.concatenate(values), dtype=tdtype)
    return None


def collate(structures: Sequence[Record | Any], *, dtype: torch.dtype | None = None) -> AtomsBatch:
    """Concatenate structures (atomsift Records and/or ase.Atoms) into one AtomsBatch.

    Args:
        structures: B >= 1 structures.
        dtype: floating dtype of positions, cell and labels; default `torch.get_default_dtype()`.

    Energy/forces are batched only when every structure has them (else None). For ase.Atoms they
    come from results already stored on `atoms.calc` (no calculation is ever run); numeric
    `atoms.info` entries become targets. Raises DataError (naming the record id) for empty
    structures, NaN/inf positions, or periodic structures without a proper cell.
    """
    if len(structures) == 0:
        raise DataError("cannot collate an empty list of structures", fix="pass at least one structure")
    dtype = dtype or torch.get_default_dtype()
    parts: list[_Parts] = []
    for i, s in enumerate(structures):
        if isinstance(s, Record):
            p = _from_record(s)
        elif hasattr(s, "get_tags") and hasattr(s, "positions"):
            p = _from_atoms(s, i)
        else:
            raise DataError(
                f"cannot batch an object of type {type(s).__name__} (structure {i})",
                fix="pass atomsift Records or ase.Atoms",
            )
        _check(p)
        parts.append(p)

    natoms = [len(p.numbers) for p in parts]
    as_f = dict(dtype=dtype)
    energy = None
    if all(p.energy is not None for p in parts):
        energy = torch.tensor([p.energy for p in parts], **as_f)
    forces = None
    if all(p.forces is not None for p in parts):
        forces = torch.as_tensor(np.concatenate([p.forces for p in parts]), **as_f)

    targets: dict[str, Tensor] = {}
    common = set(parts[0].targets).intersection(*(p.targets for p in parts[1:]))
    for name in sorted(common):
        values = [np.asarray(p.targets[name]) for p in parts]
        if any(v.dtype.kind not in "biuf" for v in values):
            continue
        stacked = _stack_target(name, values, natoms, dtype)
        if stacked is not None:
            targets[name] = stacked

    fixed = None
    if any(p.fixed is not None for p in parts):
        fixed = torch.as_tensor(
            np.concatenate([np.zeros(len(p.numbers), bool) if p.fixed is None else p.fixed for p in parts])
        )
    return AtomsBatch(
        numbers=torch.as_tensor(np.concatenate([p.numbers for p in parts]).astype(np.int64)),
        positions=torch.as_tensor(np.concatenate([p.positions for p in parts]), **as_f),
        batch=torch.repeat_interleave(torch.arange(len(parts)), torch.tensor(natoms)),
        natoms=torch.tensor(natoms, dtype=torch.int64),
        cell=torch.as_tensor(np.stack([p.cell for p in parts]), **as_f),
        pbc=torch.as_tensor(np.stack([p.pbc for p in parts])),
        tags=torch.as_tensor(np.concatenate([p.tags for p in parts]).astype(np.int64)),
        ids=[p.id for p in parts],
        energy=energy,
        forces=forces,
        targets=targets,
        fixed=fixed,
    )
