"""ANI-1x release HDF5 (`ani1x-release.h5`): one group per molecular formula.

Layout (docs/formats.md): `/<formula>/atomic_numbers` (Na,) uint8, `coordinates` (Nc, Na, 3) float32 A,
`<level>.energy` (Nc,) float64 Hartree, `<level>.forces` (Nc, Na, 3) float32 Hartree/A, plus other
levels and properties. Any row may be NaN: conformers whose chosen energy or forces hold a NaN are
skipped (counted in `metadata()['n_skipped_nan']`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np

from atomsift.data.readers._h5 import GroupedH5Dataset, RowBlock, get_dataset, read_rows
from atomsift.data.record import Record
from atomsift.data.units import HARTREE_TO_EV
from atomsift.errors import ConfigError, DataError

_FIX_LAYOUT = "ANI-1x groups need 'atomic_numbers', 'coordinates' and '<level>.energy' (see docs/formats.md)"
_FIX_SHAPES = "expected (Na,), (Nc, Na, 3) and (Nc,); repair or remove this group"


_RELEASE_LEVELS_WITH_FORCES = ("wb97x_dz", "wb97x_tz")


class ANI1xDataset(GroupedH5Dataset):
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
    file_what = "ANI-1x HDF5 file"

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
        self.n_groups_below_min_atoms = 0
        self.n_groups_empty = 0
        self._build_index()

    # -- index (kept groups: at least one valid conformer; class label = group name) -------------
    def _build_index(self) -> None:
        f = self.handle()
        names = list(f.keys())
        if not names:
            raise DataError(
                "the file holds no groups", file=self.path, fix="check that this is the ANI-1x release file"
            )
        first = f[names[0]]
        if not isinstance(first, h5py.Group):
            raise DataError(f"top-level object '{names[0]}' is not a group", file=self.path, fix=_FIX_LAYOUT)
        levels = sorted(k[: -len(".energy")] for k in first if k.endswith(".energy"))
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
        self._require_rows(
            f"no usable conformers at level '{self.level}' ({self.n_skipped_nan} skipped for NaN, "
            f"{self.n_groups_below_min_atoms} groups below min_atoms)",
            fix="choose another level, lower min_atoms, or check the file",
        )

    def _index_group(self, f: h5py.File, name: str) -> None:
        group = self._top_group(f, name, _FIX_LAYOUT)
        _, energy, natoms, nconf = self._row_datasets(
            group, name, "coordinates", self._energy_key, layout_fix=_FIX_LAYOUT, shape_fix=_FIX_SHAPES
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
            shape = (nconf, natoms, 3)
            bad |= self._nan_force_rows(forces, self._forces_key, name, shape, "repair or remove this group")
        self._add_group(name, natoms, nconf, bad)

    # -- reading --------------------------------------------------------------------------------
    def _make_entry(self, g: int) -> dict[str, Any]:
        """Datasets and atomic numbers of kept group `g`."""
        name = self._labels[g]
        group = self.handle()[name]
        entry = {
            "coordinates": group["coordinates"],
            "energy": group[self._energy_key],
            "numbers": read_rows(group["atomic_numbers"], np.s_[:], self.path, name).astype(np.int64),
        }
        if self._has_forces:
            entry["forces"] = group[self._forces_key]
        return entry

    def _row_bytes(self, g: int) -> int:
        return self._natoms[g] * 3 * 8 * (2 if self._has_forces else 1) + 8

    def _read_block(self, g: int, entry: dict[str, Any], sel: slice, record: str) -> dict[str, np.ndarray]:
        pos = read_rows(entry["coordinates"], sel, self.path, record).astype(np.float64)
        energy = read_rows(entry["energy"], sel, self.path, record) * HARTREE_TO_EV
        arrays = {"positions": pos, "energy": energy}
        if self._has_forces:
            forces = read_rows(entry["forces"], sel, self.path, record).astype(np.float64)
            forces *= HARTREE_TO_EV
            arrays["forces"] = forces
        return arrays

    def _record(self, g: int, row: int, block: RowBlock, j: int) -> Record:
        arrays = block.arrays
        name = self._labels[g]
        return Record(
            numbers=block.extra["numbers"].copy(),
            positions=arrays["positions"][j].copy(),
            id=f"{name}/{row}",
            energy=float(arrays["energy"][j]),
            forces=arrays["forces"][j].copy() if self._has_forces else None,
            class_label=name,
            info={"level": self.level},
        )

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        meta.update(
            level=self.level,
            energy_key=self._energy_key,
            forces_key=self._forces_key if self._has_forces else None,
            n_groups=len(self._labels),
            n_skipped_nan=self.n_skipped_nan,
            n_groups_empty=self.n_groups_empty,
            min_atoms=self.min_atoms,
            n_groups_below_min_atoms=self.n_groups_below_min_atoms,
        )
        return meta
