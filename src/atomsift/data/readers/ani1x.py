"""ANI-1x release HDF5 (`ani1x-release.h5`): one group per molecular formula.

Layout (FORMATS.md): `/<formula>/atomic_numbers` (Na,) uint8, `coordinates` (Nc, Na, 3) float32 A,
`<level>.energy` (Nc,) float64 Hartree, `<level>.forces` (Nc, Na, 3) float32 Hartree/A, plus other
levels and properties. Any row may be NaN: conformers whose chosen energy or forces hold a NaN are
skipped (counted in `metadata()['n_skipped_nan']`).
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
    nan_rows,
    open_h5,
    read_rows,
    sniff_kind,
)
from atomsift.data.record import Record
from atomsift.data.units import HARTREE_TO_EV
from atomsift.errors import ConfigError, DataError

_FIX_LAYOUT = "ANI-1x groups need 'atomic_numbers', 'coordinates' and '<level>.energy' (see FORMATS.md)"


_RELEASE_LEVELS_WITH_FORCES = ("wb97x_dz", "wb97x_tz")


class ANI1xDataset(Dataset):
    """ANI-1x conformers at one level of theory, in eV, eV/A and A.

    Args:
        path: the ANI-1x HDF5 file.
        level: level of theory; reads `<level>.energy` (Hartree) and, where present,
            `<level>.forces` (Hartree/A). Levels without forces (e.g. 'ccsd(t)_cbs') give forces None.
        min_atoms: drop formula groups with fewer atoms (JMP drops < 4); None keeps all.

    Records: class_label = formula group name; id = '<group>/<conformer index in group>'.
    """

    format_name = "ani1x"
    description = "ANI-1x release HDF5 (one group per formula; Hartree, Hartree/A)"
    source_units = {"energy": "hartree", "forces": "hartree/angstrom", "positions": "angstrom"}

    def __init__(self, path: str | Path, *, level: str = "wb97x_dz", min_atoms: int | None = None) -> None:
        super().__init__(path)
        if not isinstance(level, str) or not level:
            raise ConfigError(f"option level={level!r} must be a level name such as 'wb97x_dz'", file=self.path)
        if min_atoms is not None and (not isinstance(min_atoms, int) or min_atoms < 1):
            raise ConfigError(f"option min_atoms={min_atoms!r} must be a positive integer", file=self.path)
        self.level = level
        self.min_atoms = min_atoms
        self._energy_key = f"{level}.energy"
        self._forces_key = f"{level}.forces"
        self._has_forces = False
        self._names: list[str] = []  # kept groups (at least one valid conformer)
        self._natoms: list[int] = []
        self._nconf: list[int] = []  # raw conformers per kept group
        self._valid: list[np.ndarray | None] = []  # raw rows kept; None = all rows
        self._offsets: list[int] = [0]
        self.n_skipped_nan = 0
        self.n_groups_below_min_atoms = 0
        self.n_groups_empty = 0
        self._block: RowBlock | None = None
        self._last = -1
        self._groups = GroupCache()
        self._build_index()

    # -- index ----------------------------------------------------------------------------------
    def _open(self) -> h5py.File:
        return open_h5(self.path, "ANI-1x HDF5 file")

    def _build_index(self) -> None:
        f = self.handle()
        names = list(f.keys())
        if not names:
            raise DataError(
                "the file holds no groups", file=self.path, fix="check that this is the ANI-1x release file"
            )
        first = f[names[0]]
        if not isinstance(first, h5py.Group):
            raise DataError(
                f"top-level object '{names[0]}' is not a group", file=self.path, fix=_FIX_LAYOUT
            )
        levels = sorted(k[: -len(".energy")] for k in first.keys() if k.endswith(".energy"))
        if self._energy_key not in first:
            raise DataError(
                f"level '{self.level}' is not in this file (no '{self._energy_key}' in group '{names[0]}'); "
                f"levels present: {', '.join(levels) or 'none'}",
                file=self.path,
                fix=f"pass level= one of: {', '.join(levels) or 'none'}",
            )
        self._has_forces = self._forces_key in first
        if not self._has_forces and self.level in _RELEASE_LEVELS_WITH_FORCES:
            raise DataError(
                f"'{self._forces_key}' is missing from group '{names[0]}', but the ANI-1x release has forces "
                f"at level '{self.level}'",
                file=self.path,
                fix="the file is incomplete or was written without forces: use the release file, or choose a "
                "level without forces on purpose (e.g. level=ccsd(t)_cbs)",
            )
        for name in names:
            self._index_group(f, name)
        if not self._names:
            raise DataError(
                f"no usable conformers at level '{self.level}' ({self.n_skipped_nan} skipped for NaN, "
                f"{self.n_groups_below_min_atoms} groups below min_atoms)",
                file=self.path,
                fix="choose another level, lower min_atoms, or check the file",
            )

    def _index_group(self, f: h5py.File, name: str) -> None:
        try:
            group = f[name]
        except (KeyError, OSError) as exc:  # a dangling link or a damaged object header
            raise DataError(
                f"cannot open group '{name}': {exc}", file=self.path, record=name, fix=_FIX_LAYOUT
            ) from None
        if not isinstance(group, h5py.Group):
            raise DataError(f"top-level object '{name}' is not a group", file=self.path, record=name, fix=_FIX_LAYOUT)
        numbers = get_dataset(group, "atomic_numbers", self.path, _FIX_LAYOUT)
        coords = get_dataset(group, "coordinates", self.path, _FIX_LAYOUT)
        energy = get_dataset(group, self._energy_key, self.path, _FIX_LAYOUT)
        natoms = int(numbers.shape[0]) if numbers.ndim == 1 else -1
        nconf = int(coords.shape[0]) if coords.ndim == 3 else -1
        if natoms < 1 or coords.shape[1:] != (natoms, 3) or energy.shape != (nconf,):
            raise DataError(
                f"shapes disagree in group '{name}': atomic_numbers {numbers.shape}, coordinates "
                f"{coords.shape}, {self._energy_key} {energy.shape}",
                file=self.path,
                record=name,
                fix="expected (Na,), (Nc, Na, 3) and (Nc,); repair or remove this group",
            )
        if self.min_atoms is not None and natoms < self.min_atoms:
            self.n_groups_below_min_atoms += 1
            return
        if nconf == 0:
            self.n_groups_empty += 1
            return
        bad = np.isnan(read_rows(energy, np.s_[:], self.path, name))
        if self._has_forces:
            forces = get_dataset(
                group, self._forces_key, self.path, f"every group needs '{self._forces_key}' when the first has it"
            )
            if forces.shape != (nconf, natoms, 3):
                raise DataError(
                    f"{self._forces_key} has shape {forces.shape} in group '{name}', expected ({nconf}, {natoms}, 3)",
                    file=self.path,
                    record=name,
                    fix="repair or remove this group",
                )
            bad |= nan_rows(forces, self.path, name)
        n_bad = int(bad.sum())
        if n_bad == nconf:
            self.n_skipped_nan += n_bad
            return
        self.n_skipped_nan += n_bad
        self._names.append(name)
        self._natoms.append(natoms)
        self._nconf.append(nconf)
        self._valid.append(np.flatnonzero(~bad).astype(np.int32) if n_bad else None)
        self._offsets.append(self._offsets[-1] + nconf - n_bad)

    # -- reading --------------------------------------------------------------------------------
    def _length(self) -> int:
        return self._offsets[-1]

    def _group(self, g: int) -> dict[str, Any]:
        """Datasets and atomic numbers of kept group `g` (cached)."""

        def make() -> dict[str, Any]:
            name = self._names[g]
            group = self.handle()[name]
            entry = {
                "coordinates": group["coordinates"],
                "energy": group[self._energy_key],
                "numbers": read_rows(group["atomic_numbers"], np.s_[:], self.path, name).astype(np.int64),
            }
            if self._has_forces:
                entry["forces"] = group[self._forces_key]
            return entry

        return self._groups.get(self.handle(), g, make)

    def _load_block(self, g: int, row: int, index: int) -> RowBlock:
        natoms = self._natoms[g]
        rows = block_rows_for(natoms * 3 * 8 * (2 if self._has_forces else 1) + 8)
        start, stop = block_range(row, self._nconf[g], index, self._last, rows)
        entry = self._group(g)
        record = f"{self._names[g]}/{row}"
        sel = np.s_[start:stop]
        pos = read_rows(entry["coordinates"], sel, self.path, record).astype(np.float64)
        energy = read_rows(entry["energy"], sel, self.path, record) * HARTREE_TO_EV
        arrays = {"positions": pos, "energy": energy}
        if self._has_forces:
            forces = read_rows(entry["forces"], sel, self.path, record).astype(np.float64)
            forces *= HARTREE_TO_EV
            arrays["forces"] = forces
        return RowBlock(g, start, stop, arrays, {"numbers": entry["numbers"]})

    def _read(self, index: int) -> Record:
        g = bisect.bisect_right(self._offsets, index) - 1
        k = index - self._offsets[g]
        valid = self._valid[g]
        row = k if valid is None else int(valid[k])
        block = self._block
        if block is None or not block.holds(g, row):
            block = self._block = self._load_block(g, row, index)
        self._last = index
        j = row - block.start
        arrays = block.arrays
        name = self._names[g]
        return Record(
            numbers=block.extra["numbers"].copy(),
            positions=arrays["positions"][j].copy(),
            id=f"{name}/{row}",
            energy=float(arrays["energy"][j]),
            forces=arrays["forces"][j].copy() if self._has_forces else None,
            class_label=name,
            info={"level": self.level},
        )

    # -- fast paths -----------------------------------------------------------------------------
    @classmethod
    def sniff(cls, path: Path) -> bool:
        return sniff_kind(Path(path)) == "ani1x"

    def class_labels(self) -> np.ndarray:
        counts = np.diff(np.asarray(self._offsets, dtype=np.int64))
        return np.repeat(np.asarray(self._names, dtype=object), counts)

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        meta.update(
            level=self.level,
            energy_key=self._energy_key,
            forces_key=self._forces_key if self._has_forces else None,
            n_groups=len(self._names),
            n_skipped_nan=self.n_skipped_nan,
            n_groups_empty=self.n_groups_empty,
            min_atoms=self.min_atoms,
            n_groups_below_min_atoms=self.n_groups_below_min_atoms,
        )
        return meta

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_block"] = None
        state["_last"] = -1
        return state
