"""Transition-1x HDF5 (`transition1x.h5`): reaction paths grouped by formula.

Layout (FORMATS.md): `/data/<formula>/<rxn>/` with `atomic_numbers` (N,) int, `positions` (M, N, 3)
float64 A, `wB97x_6-31G(d).energy` (M,) float64 eV, `wB97x_6-31G(d).forces` (M, N, 3) float64 eV/A,
and subgroups `reactant`, `transition_state`, `product` that repeat path frames (not read here).
`/train/<formula>`, `/val/<formula>`, `/test/<formula>` are SoftLinks to `/data/<formula>`.
"""

from __future__ import annotations

import bisect
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from atomsift.data.base import Dataset
from atomsift.data.readers._h5 import (
    GroupCache,
    RowBlock,
    block_range,
    block_rows_for,
    get_dataset,
    open_h5,
    read_rows,
    sniff_kind,
)
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
    f"each reaction group needs 'atomic_numbers', 'positions', '{ENERGY_KEY}' and '{FORCES_KEY}' (see FORMATS.md)"
)


class Transition1xDataset(Dataset):
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

    def __init__(self, path: str | Path, *, split: str | None = None) -> None:
        super().__init__(path)
        if split is not None and split not in ("data", *SPLITS):
            raise ConfigError(
                f"option split={split!r} is not a Transition-1x split",
                file=self.path,
                fix="use split=train, val or test, or leave it out for every frame under /data",
            )
        self.split = None if split == "data" else split
        self._formulas: list[str] = []  # per reaction
        self._rxns: list[str] = []
        self._paths: list[str] = []  # HDF5 path of each reaction group
        self._natoms: list[int] = []
        self._nframes: list[int] = []
        self._offsets: list[int] = [0]
        self.n_reactions_empty = 0
        self._block: RowBlock | None = None
        self._last = -1
        self._groups = GroupCache()
        self._build_index()

    # -- index ----------------------------------------------------------------------------------
    def _open(self) -> h5py.File:
        return open_h5(self.path, "Transition-1x HDF5 file")

    def _split_root(self, f: h5py.File) -> h5py.Group:
        name = self.split or "data"
        root = f.get(name)
        if not isinstance(root, h5py.Group):
            present = [k for k in f.keys() if k in ("data", *SPLITS)] or list(f.keys())
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
        for formula in root.keys():
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
            for rxn in group.keys():
                self._index_reaction(group, formula, rxn)
        if not self._formulas:
            raise DataError(
                f"no reaction frames under '/{self.split or 'data'}'",
                file=self.path,
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
        self._formulas.append(formula)
        self._rxns.append(rxn)
        self._paths.append(node.name)
        self._natoms.append(natoms)
        self._nframes.append(nframes)
        self._offsets.append(self._offsets[-1] + nframes)

    # -- reading --------------------------------------------------------------------------------
    def _length(self) -> int:
        return self._offsets[-1]

    def _group(self, g: int) -> dict[str, Any]:
        """Datasets, atomic numbers and reference energy of reaction `g` (cached; shapes checked)."""

        def make() -> dict[str, Any]:
            natoms, nframes = self._natoms[g], self._nframes[g]
            node = self.handle()[self._paths[g]]
            record = f"{self._formulas[g]}/{self._rxns[g]}"
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

        return self._groups.get(self.handle(), g, make)

    def _load_block(self, g: int, row: int, index: int) -> RowBlock:
        natoms, nframes = self._natoms[g], self._nframes[g]
        start, stop = block_range(row, nframes, index, self._last, block_rows_for(natoms * 3 * 8 * 2 + 8))
        entry = self._group(g)
        record = f"{self._formulas[g]}/{self._rxns[g]}/{row}"
        sel = np.s_[start:stop]
        arrays = {
            key: read_rows(entry[key], sel, self.path, record).astype(np.float64, copy=False)
            for key in ("positions", "energy", "forces")
        }
        return RowBlock(g, start, stop, arrays, {"numbers": entry["numbers"], "reference": entry["reference"]})

    def _read(self, index: int) -> Record:
        g = bisect.bisect_right(self._offsets, index) - 1
        row = index - self._offsets[g]
        block = self._block
        if block is None or not block.holds(g, row):
            block = self._block = self._load_block(g, row, index)
        self._last = index
        j = row - block.start
        arrays = block.arrays
        formula, rxn = self._formulas[g], self._rxns[g]
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

    # -- fast paths -----------------------------------------------------------------------------
    @classmethod
    def sniff(cls, path: Path) -> bool:
        return sniff_kind(Path(path)) == "transition1x"

    def class_labels(self) -> np.ndarray:
        counts = np.diff(np.asarray(self._offsets, dtype=np.int64))
        return np.repeat(np.asarray(self._formulas, dtype=object), counts)

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        meta.update(
            split=self.split,
            n_formulas=len(set(self._formulas)),
            n_reactions=len(self._formulas),
            n_reactions_empty=self.n_reactions_empty,
            energy_key=ENERGY_KEY,
            forces_key=FORCES_KEY,
        )
        return meta

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_block"] = None
        state["_last"] = -1
        return state
