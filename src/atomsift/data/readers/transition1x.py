"""Transition-1x HDF5 (`transition1x.h5`): reaction paths grouped by formula.

Layout (docs/formats.md): `/data/<formula>/<rxn>/` with `atomic_numbers` (N,) int, `positions` (M, N, 3)
float64 A, `wB97x_6-31G(d).energy` (M,) float64 eV, `wB97x_6-31G(d).forces` (M, N, 3) float64 eV/A,
and subgroups `reactant`, `transition_state`, `product` that repeat path frames (not read here).
`/train/<formula>`, `/val/<formula>`, `/test/<formula>` are SoftLinks to `/data/<formula>`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np

from atomsift.data.readers._h5 import GroupedH5Dataset, RowBlock, get_dataset, read_rows
from atomsift.data.record import Record
from atomsift.errors import ConfigError, DataError

ENERGY_KEY = "wB97x_6-31G(d).energy"
FORCES_KEY = "wB97x_6-31G(d).forces"
SPLITS = ("train", "val", "test")

REFERENCE_ENERGIES: dict[int, float] = {
    1: -13.62222753701504,
    6: -1029.4130839658328,
    7: -1484.8710358098756,
    8: -2041.8396277138045,
    9: -2712.8213146878606,
}
"""Isolated-atom energies (eV) of the Transition-1x loader, by atomic number."""

_FIX_LAYOUT = (
    f"each reaction group needs 'atomic_numbers', 'positions', '{ENERGY_KEY}' and '{FORCES_KEY}' (see docs/formats.md)"
)


class Transition1xDataset(GroupedH5Dataset):
    """Transition-1x reaction-path frames, in eV, eV/A and A (the file's own units).

    Args:
        path: the Transition-1x HDF5 file.
        split: None (or 'data') for every path frame under /data; 'train', 'val' or 'test' for
            the formulas its split group links to.

    Records: class_label = formula; id = '<formula>/<rxn>/<frame>'; target 'atomization_energy'
    (eV, energy minus the loader's isolated-atom energies) when every element has a reference.
    """

    format_name = "transition1x"
    description = "Transition-1x HDF5 (reaction paths by formula; eV, eV/A)"
    source_units = {"energy": "eV", "forces": "eV/angstrom", "positions": "angstrom"}
    file_what = "Transition-1x HDF5 file"
    block_extra = ("numbers", "reference")

    def __init__(self, path: str | Path, *, split: str | None = None) -> None:
        super().__init__(path)
        if split is not None and split not in ("data", *SPLITS):
            raise ConfigError(
                f"option split={split!r} is not a Transition-1x split",
                file=self.path,
                fix="use split=train, val or test, or leave it out for every frame under /data",
            )
        self.split = None if split == "data" else split
        self._rxns: list[str] = []  # per reaction (its class label is its formula)
        self._paths: list[str] = []  # HDF5 path of each reaction group
        self.n_reactions_empty = 0
        self._build_index()

    # -- index ----------------------------------------------------------------------------------
    def _split_root(self, f: h5py.File) -> h5py.Group:
        name = self.split or "data"
        root = f.get(name)
        if not isinstance(root, h5py.Group):
            present = [k for k in f if k in ("data", *SPLITS)] or list(f.keys())
            raise DataError(
                f"split group '/{name}' is missing; groups present: {', '.join(present) or 'none'}",
                file=self.path,
                fix=f"pass split= one of: {', '.join(k for k in present if k != 'data') or 'none'} "
                "(or leave it out for /data)",
            )
        return root

    def _build_index(self) -> None:
        f = self.handle()
        root = self._split_root(f)
        for formula in root:
            link = root.get(formula, getlink=True)
            target = link.path if isinstance(link, h5py.SoftLink) else f"{root.name}/{formula}"
            group = f.get(target)
            if not isinstance(group, h5py.Group):
                raise DataError(
                    f"'{root.name}/{formula}' points to '{target}', which is not a group",
                    file=self.path,
                    record=formula,
                    fix="the split links must point to groups under /data; fetch the release file again",
                )
            for rxn in group:
                self._index_reaction(group, formula, rxn)
        self._require_rows(
            f"no reaction frames under '/{self.split or 'data'}'",
            fix="check the file (it should hold /data/<formula>/<rxn>/positions) or choose another split",
        )

    def _index_reaction(self, group: h5py.Group, formula: str, rxn: str) -> None:
        node = group.get(rxn)
        if not isinstance(node, h5py.Group):
            raise DataError(
                f"'{group.name}/{rxn}' is not a reaction group",
                file=self.path,
                record=f"{formula}/{rxn}",
                fix=_FIX_LAYOUT,
            )
        positions = get_dataset(node, "positions", self.path, _FIX_LAYOUT)
        numbers = get_dataset(node, "atomic_numbers", self.path, _FIX_LAYOUT)
        natoms = int(numbers.shape[0]) if numbers.ndim == 1 else -1
        if natoms < 1 or positions.ndim != 3 or positions.shape[1:] != (natoms, 3):
            raise DataError(
                f"shapes disagree in '{node.name}': atomic_numbers {numbers.shape}, positions {positions.shape}",
                file=self.path,
                record=f"{formula}/{rxn}",
                fix="expected (N,) and (M, N, 3); repair or remove this reaction",
            )
        nframes = int(positions.shape[0])
        if nframes == 0:
            self.n_reactions_empty += 1
            return
        self._add_group(formula, natoms, nframes)
        self._rxns.append(rxn)
        self._paths.append(node.name)

    # -- reading --------------------------------------------------------------------------------
    def _group_id(self, g: int) -> str:
        return f"{self._labels[g]}/{self._rxns[g]}"

    def _make_entry(self, g: int) -> dict[str, Any]:
        """Datasets, atomic numbers and reference energy of reaction `g` (shapes checked)."""
        natoms, nframes = self._natoms[g], self._nrows[g]
        node = self.handle()[self._paths[g]]
        record = self._group_id(g)
        energy = get_dataset(node, ENERGY_KEY, self.path, _FIX_LAYOUT)
        forces = get_dataset(node, FORCES_KEY, self.path, _FIX_LAYOUT)
        if energy.shape != (nframes,) or forces.shape != (nframes, natoms, 3):
            raise DataError(
                f"'{node.name}' has {ENERGY_KEY} {energy.shape} and {FORCES_KEY} {forces.shape}, "
                f"expected ({nframes},) and ({nframes}, {natoms}, 3)",
                file=self.path,
                record=f"{record}/0",
                fix="repair or remove this reaction",
            )
        numbers = read_rows(node["atomic_numbers"], np.s_[:], self.path, record).astype(np.int64)
        zs = numbers.tolist()
        known = all(z in REFERENCE_ENERGIES for z in zs)
        return {
            "positions": node["positions"],
            "energy": energy,
            "forces": forces,
            "numbers": numbers,
            "reference": sum(REFERENCE_ENERGIES[z] for z in zs) if known else None,
        }

    def _row_bytes(self, g: int) -> int:
        return self._natoms[g] * 3 * 8 * 2 + 8

    def _read_block(self, g: int, entry: dict[str, Any], sel: slice, record: str) -> dict[str, np.ndarray]:
        return {
            key: read_rows(entry[key], sel, self.path, record).astype(np.float64, copy=False)
            for key in ("positions", "energy", "forces")
        }

    def _record(self, g: int, row: int, block: RowBlock, j: int) -> Record:
        arrays = block.arrays
        formula, rxn = self._labels[g], self._rxns[g]
        energy = float(arrays["energy"][j])
        reference = block.extra["reference"]
        targets = {} if reference is None else {"atomization_energy": energy - reference}
        return Record(
            numbers=block.extra["numbers"].copy(),
            positions=arrays["positions"][j].copy(),
            id=f"{formula}/{rxn}/{row}",
            energy=energy,
            forces=arrays["forces"][j].copy(),
            targets=targets,
            class_label=formula,
            info={"rxn": rxn, "frame": row},
        )

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        meta.update(
            split=self.split,
            n_formulas=len(set(self._labels)),
            n_reactions=len(self._labels),
            n_reactions_empty=self.n_reactions_empty,
            energy_key=ENERGY_KEY,
            forces_key=FORCES_KEY,
        )
        return meta
