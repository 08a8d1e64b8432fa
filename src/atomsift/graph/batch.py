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

from atomsift.data.record import Record, periodic_vectors_ok
from atomsift.errors import DataError
from atomsift.graph.settings import GraphSettings

_INFO_SKIP = {"atomsift_id", "class_label"}  # ase.Atoms.info keys that are not targets
UNTAGGED = 2
"""Tag of atoms in structures without OC20 tags (molecules, bulk): JMP's choice, 'adsorbate'."""
LABEL_DTYPE = torch.float64
"""Per-structure labels (energies, per-structure targets) are float64 whatever the batch's dtype."""


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
        energy: (B,) float64 eV, zero where `energy_mask` is False; None when no structure has an energy.
        forces: (N, 3) eV/A, zero for structures whose `forces_mask` is False; None when none has forces.
        targets: other labels by name, zero where missing: (B, ...) float64 per structure, or (N, ...) per atom for
            the names in `atom_targets` (declared by the caller, never guessed from shapes).
        fixed: (N,) bool atoms held fixed in the reference calculation (OC20), or None when no
            structure says; False for structures without the information.
        energy_mask: (B,) bool structures that have an energy (None with `energy`).
        forces_mask: (B,) bool structures that have forces (None with `forces`).
        target_masks: name -> (B,) bool structures that have that target.
        atom_targets: names of the per-atom entries of `targets`.
        dataset: (B,) int64 index of each structure's dataset (task) in `dataset_names`, or None.
        dataset_names: names of the datasets the batch may hold.
        dataset_graphs: graph settings per dataset (None: the backbone's own), aligned with `dataset_names`.
        weights: (B,) loss weight of each structure (training: 0 marks a padding structure), or None.
        step_size: structures of the whole training step over all processes (the loss's denominator).
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
    energy_mask: Tensor | None = None
    forces_mask: Tensor | None = None
    target_masks: dict[str, Tensor] = field(default_factory=dict)
    atom_targets: tuple[str, ...] = ()
    dataset: Tensor | None = None
    dataset_names: tuple[str, ...] = ()
    dataset_graphs: tuple[GraphSettings | None, ...] = ()
    weights: Tensor | None = None
    step_size: int | None = None

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
        """A copy on `device`; `dtype` converts the floating-point inputs, forces and per-atom labels (ints and
        bools keep theirs; per-structure labels, float64 from `collate`, keep their precision except on Apple
        MPS, which has no float64: there they become float32)."""
        mps = device is not None and torch.device(device).type == "mps"

        def move(t: Tensor | None, label: bool = False) -> Tensor | None:
            if t is None:
                return None
            want = None
            if t.is_floating_point():
                want = None if label and t.dtype == LABEL_DTYPE else dtype
                if mps and (want or t.dtype) == torch.float64:
                    want = torch.float32
            return t.to(device=device) if want is None else t.to(device=device, dtype=want)

        changes: dict[str, Any] = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, Tensor) or value is None:
                changes[f.name] = move(value, label=f.name == "energy")
        changes["targets"] = {k: move(v, label=k not in self.atom_targets) for k, v in self.targets.items()}
        changes["target_masks"] = {k: move(v) for k, v in self.target_masks.items()}
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


def _stack_labels(
    name: str,
    values: list[np.ndarray | None],
    natoms: list[int],
    per_atom: bool,
    dtype: torch.dtype,
    ids: list[str],
) -> tuple[Tensor, Tensor]:
    """Stack one label over the batch: (values, mask (B,) bool), zeros where a structure lacks it.

    Per-structure labels are (B, ...) and must share one shape; per-atom labels are (N, ...) with one row per
    atom. A shape that does not fit is a DataError naming the structure (never a silent drop).
    """
    present = [v for v in values if v is not None]
    tdtype = dtype if any(v.dtype.kind in "fc" for v in present) else torch.int64
    if per_atom:
        inner = {v.shape[1:] for v in present}
        for v, n, rid in zip(values, natoms, ids):
            if v is not None and (v.ndim == 0 or v.shape[0] != n):
                raise DataError(
                    f"per-atom label '{name}' has shape {v.shape}, expected ({n}, ...) for {n} atoms",
                    record=rid,
                    fix="repair the label, or do not declare it per-atom",
                )
        if len(inner) > 1:
            raise DataError(f"per-atom label '{name}' has rows of different shapes {sorted(inner)}", record=ids[0])
        shape = next(iter(inner))
        rows = [v if v is not None else np.zeros((n, *shape)) for v, n in zip(values, natoms)]
        stacked = torch.as_tensor(np.concatenate(rows), dtype=tdtype)
    else:
        shapes = {v.shape for v in present}
        if len(shapes) > 1:
            first = next(v.shape for v in present)
            rid = next(r for v, r in zip(values, ids) if v is not None and v.shape != first)
            raise DataError(
                f"label '{name}' has shape {sorted(shapes)} across the batch; a per-structure label needs one shape",
                record=rid,
                fix="declare it per-atom (atom_targets) if it has one row per atom, or repair the data",
            )
        shape = next(iter(shapes))
        stacked = torch.as_tensor(np.stack([v if v is not None else np.zeros(shape) for v in values]), dtype=tdtype)
    mask = torch.tensor([v is not None for v in values], dtype=torch.bool)
    return stacked, mask


def _label(targets: dict[str, Any], name: str) -> np.ndarray | None:
    """A structure's label `name`, or None where it has none: a NaN or inf label counts as missing (a table's
    way of leaving a cell empty), so it is left out of losses and metrics as a structure without it is."""
    if name not in targets:
        return None
    value = np.asarray(targets[name])
    if value.dtype.kind in "fc" and not np.all(np.isfinite(value)):
        return None
    return value


def collate(
    structures: Sequence[Record | Any],
    *,
    dtype: torch.dtype | None = None,
    targets: Sequence[str] | None = None,
    atom_targets: Sequence[str] = (),
    dataset: Sequence[int] | None = None,
    dataset_names: Sequence[str] = (),
    dataset_graphs: Sequence[GraphSettings | None] = (),
) -> AtomsBatch:
    """Concatenate structures (atomsift Records and/or ase.Atoms) into one AtomsBatch.

    Args:
        structures: B >= 1 structures.
        dtype: floating dtype of positions, cell, forces and per-atom labels (per-structure labels are float64);
            default `torch.get_default_dtype()`.
        targets: the target labels to batch (None: every numeric target any structure has, per structure unless
            named in `atom_targets`; a target whose shapes disagree across structures is then left out).
        atom_targets: target names that hold one row per atom.
        dataset: (B,) index of each structure's dataset in `dataset_names` (the task it trains).
        dataset_names, dataset_graphs: the datasets and their graph settings (None: the backbone's own).

    A label missing in some structures is kept, zero-filled, with a mask saying which structures have it
    (`energy_mask`, `forces_mask`, `target_masks`). For ase.Atoms, energy and forces come from results already
    stored on `atoms.calc` (no calculation is ever run); numeric `atoms.info` entries become targets. Raises
    DataError (naming the record id) for empty structures, NaN/inf positions, periodic structures without a
    proper cell, and (for requested targets) labels of the wrong shape.
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
    ids = [p.id for p in parts]
    energy = energy_mask = None
    if any(p.energy is not None for p in parts):
        # per-structure labels stay float64 whatever `dtype`: a total energy of -1e4 eV has a 1 meV float32 step
        energy = torch.tensor([0.0 if p.energy is None else p.energy for p in parts], dtype=LABEL_DTYPE)
        energy_mask = torch.tensor([p.energy is not None for p in parts], dtype=torch.bool)
    forces = forces_mask = None
    if any(p.forces is not None for p in parts):
        rows = [np.zeros((n, 3)) if p.forces is None else p.forces for p, n in zip(parts, natoms)]
        forces = torch.as_tensor(np.concatenate(rows), dtype=dtype)
        forces_mask = torch.tensor([p.forces is not None for p in parts], dtype=torch.bool)

    per_atom = set(atom_targets)
    requested = targets is not None
    names = list(targets) if requested else sorted(set().union(*(p.targets for p in parts)))
    batched: dict[str, Tensor] = {}
    masks: dict[str, Tensor] = {}
    for name in names:
        values = [_label(p.targets, name) for p in parts]
        if any(v is not None and v.dtype.kind not in "biuf" for v in values):
            if requested:
                raise DataError(f"target '{name}' is not numeric", record=ids[0], fix="choose a numeric target")
            continue
        try:
            label_dtype = dtype if name in per_atom else LABEL_DTYPE
            batched[name], masks[name] = _stack_labels(name, values, natoms, name in per_atom, label_dtype, ids)
        except DataError:
            if requested or name in per_atom:
                raise
    fixed = None
    if any(p.fixed is not None for p in parts):
        fixed = torch.as_tensor(
            np.concatenate([np.zeros(len(p.numbers), bool) if p.fixed is None else p.fixed for p in parts])
        )
    dataset_index = None
    if dataset is not None:
        dataset_index = torch.as_tensor(np.asarray(dataset, dtype=np.int64))
        if dataset_index.shape != (len(parts),) or (len(parts) and int(dataset_index.max()) >= len(dataset_names)):
            raise ValueError("dataset must give one index into dataset_names per structure")
        if dataset_graphs and len(dataset_graphs) != len(dataset_names):
            raise ValueError("dataset_graphs must align with dataset_names")
    return AtomsBatch(
        numbers=torch.as_tensor(np.concatenate([p.numbers for p in parts]).astype(np.int64)),
        positions=torch.as_tensor(np.concatenate([p.positions for p in parts]), dtype=dtype),
        batch=torch.repeat_interleave(torch.arange(len(parts)), torch.tensor(natoms)),
        natoms=torch.tensor(natoms, dtype=torch.int64),
        cell=torch.as_tensor(np.stack([p.cell for p in parts]), dtype=dtype),
        pbc=torch.as_tensor(np.stack([p.pbc for p in parts])),
        tags=torch.as_tensor(np.concatenate([p.tags for p in parts]).astype(np.int64)),
        ids=ids,
        energy=energy,
        forces=forces,
        targets=batched,
        fixed=fixed,
        energy_mask=energy_mask,
        forces_mask=forces_mask,
        target_masks=masks,
        atom_targets=tuple(n for n in batched if n in per_atom),
        dataset=dataset_index,
        dataset_names=tuple(dataset_names),
        dataset_graphs=tuple(dataset_graphs) if dataset_graphs else (),
    )


def sub_batch(batch: AtomsBatch, structures: Tensor) -> tuple[AtomsBatch, Tensor]:
    """The structures `structures` (K,) int64 (increasing) of `batch`, and the (M,) indices of their atoms.

    Positions are gathered with `index_select`, so gradients flow back to `batch.positions`.
    """
    keep_atom = torch.isin(batch.batch, structures)
    atom_index = torch.nonzero(keep_atom).flatten()
    new_of_old = torch.full((batch.num_structures,), -1, dtype=torch.long, device=batch.batch.device)
    new_of_old[structures] = torch.arange(structures.numel(), device=structures.device)

    def rows(t: Tensor | None, per_atom: bool) -> Tensor | None:
        if t is None:
            return None
        return t.index_select(0, atom_index if per_atom else structures)

    sub = AtomsBatch(
        numbers=rows(batch.numbers, True),
        positions=rows(batch.positions, True),
        batch=new_of_old[batch.batch.index_select(0, atom_index)],
        natoms=rows(batch.natoms, False),
        cell=rows(batch.cell, False),
        pbc=rows(batch.pbc, False),
        tags=rows(batch.tags, True),
        ids=[batch.ids[i] for i in structures.tolist()],
        energy=rows(batch.energy, False),
        forces=rows(batch.forces, True),
        targets={k: rows(v, k in batch.atom_targets) for k, v in batch.targets.items()},
        fixed=rows(batch.fixed, True),
        energy_mask=rows(batch.energy_mask, False),
        forces_mask=rows(batch.forces_mask, False),
        target_masks={k: rows(v, False) for k, v in batch.target_masks.items()},
        atom_targets=batch.atom_targets,
        dataset=rows(batch.dataset, False),
        dataset_names=batch.dataset_names,
        dataset_graphs=batch.dataset_graphs,
        weights=rows(batch.weights, False),
        step_size=batch.step_size,
    )
    return sub, atom_index


def graph_groups(batch: AtomsBatch) -> list[tuple[GraphSettings | None, Tensor | None]]:
    """Structures that share graph settings: [(settings, structure indices (K,) or None for all), ...].

    One group (indices None) when the batch carries no per-dataset settings or all its structures share them;
    settings None means the backbone's own.
    """
    if batch.dataset is None or not batch.dataset_graphs:
        return [(None, None)]
    per_dataset = batch.dataset_graphs
    keys = sorted(set(batch.dataset.tolist()))
    distinct: dict[GraphSettings | None, list[int]] = {}
    for key in keys:
        distinct.setdefault(per_dataset[key], []).append(key)
    if len(distinct) == 1:
        return [(next(iter(distinct)), None)]
    groups = []
    for settings, members in distinct.items():
        wanted = torch.as_tensor(members, dtype=batch.dataset.dtype, device=batch.dataset.device)
        groups.append((settings, torch.nonzero(torch.isin(batch.dataset, wanted)).flatten()))
    return groups
