"""SPICE 1.1.x HDF5 (`SPICE-1.1.4.hdf5`, and JMP's `dipeptides.h5`, `solvated_amino_acids.h5`).

Layout (docs/formats.md): one top-level group per molecule with `atomic_numbers` (N,) int16,
`conformations` (M, N, 3) float32, `dft_total_energy` (M,) float64, `dft_total_gradient`
(M, N, 3) float32, `formation_energy` (M,) float64, `subset` and `smiles` (1,) strings, and more.
Each dataset's `attrs['units']` names its unit (release: bohr, hartree, hartree/bohr); it is honoured
per dataset, with the release units as the fallback when the attribute is missing.
Forces = -gradient. A conformer whose energy or gradient holds a NaN is an error naming it, unless
`skip_nan=True`, which leaves such conformers out and counts them.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from atomsift.data import units
from atomsift.data.readers._h5 import (
    GroupedH5Dataset,
    RowBlock,
    decode_text,
    optional_dataset,
    read_rows,
    string_attr,
)
from atomsift.data.record import Record
from atomsift.errors import DataError

POSITIONS, ENERGY, GRADIENT, FORMATION = "conformations", "dft_total_energy", "dft_total_gradient", "formation_energy"
DEFAULT_UNITS = {POSITIONS: "bohr", ENERGY: "hartree", GRADIENT: "hartree/bohr", FORMATION: "hartree"}
"""Release units, used when a dataset has no `units` attribute."""
_KIND = {
    POSITIONS: units.length_factor,
    ENERGY: units.energy_factor,
    GRADIENT: units.force_factor,
    FORMATION: units.energy_factor,
}
_FIX_LAYOUT = f"SPICE molecule groups need 'atomic_numbers', '{POSITIONS}' and '{ENERGY}' (see docs/formats.md)"
_FIX_SHAPES = "expected (N,), (M, N, 3) and (M,); repair or remove this molecule"


class SpiceDataset(GroupedH5Dataset):
    """SPICE conformers in eV, eV/A and A.

    Args:
        path: a SPICE 1.1.x HDF5 file (the full release or a subset file in the same layout).

    Records: class_label = molecule group name; id = '<group>/<conformer>'; forces = -gradient
    (None for a molecule without `dft_total_gradient`); target 'formation_energy' (eV) when present;
    info 'subset' and 'smiles'.
    """

    format_name = "spice"
    description = "SPICE 1.1.x HDF5 (one group per molecule; units from attrs, bohr/hartree)"
    source_units = {"energy": "hartree", "forces": "hartree/bohr (gradient)", "positions": "bohr"}
    file_what = "SPICE HDF5 file"
    block_extra = ("numbers", "subset", "smiles")

    def __init__(self, path: str | Path, *, skip_nan: bool = False) -> None:
        super().__init__(path)
        self.skip_nan = bool(skip_nan)
        self._first_nan: str | None = None
        self._factors: list[tuple[float, float, float | None, float | None]] = []  # pos, energy, grad, formation
        self.n_groups_empty = 0
        self.units_seen: Counter[str] = Counter()  # "dataset: unit" -> groups
        self.units_defaulted: Counter[str] = Counter()  # dataset -> groups lacking attrs['units']
        self._factor_cache: dict[tuple[str, str], float] = {}
        self._build_index()

    # -- index (kept groups: at least one valid conformer; class label = group name) -------------
    def _factor(self, dset: h5py.Dataset, key: str) -> float:
        unit = string_attr(dset, "units")
        if unit is None:
            self.units_defaulted[key] += 1
            unit = DEFAULT_UNITS[key]
        self.units_seen[f"{key}: {unit}"] += 1
        cached = self._factor_cache.get((key, unit))
        if cached is not None:
            return cached
        try:
            factor = _KIND[key](unit)
        except KeyError as exc:
            raise DataError(
                f"dataset '{dset.name}' has units {unit!r}, which atomsift cannot convert ({exc.args[0]})",
                file=self.path,
                record=dset.parent.name,
                fix="fix attrs['units'] of this dataset (expected e.g. "
                f"'{DEFAULT_UNITS[key]}'), or add the unit to atomsift.data.units",
            ) from None
        self._factor_cache[(key, unit)] = factor
        return factor

    def _build_index(self) -> None:
        f = self.handle()
        names = list(f.keys())
        if not names:
            raise DataError("the file holds no molecule groups", file=self.path, fix="check that this is a SPICE file")
        for name in names:
            self._index_group(f, name)
        if self._first_nan is not None and not self.skip_nan:
            raise DataError(
                f"{self.n_skipped_nan} conformer(s) have a NaN energy or gradient",
                file=self.path,
                record=self._first_nan,
                fix="repair the file, or give the reader option skip_nan=true (PATH,skip_nan=true) to leave those "
                "conformers out (they are counted "
                "in the metadata as n_skipped_nan)",
            )
        self._require_rows(
            f"no usable conformers ({self.n_skipped_nan} skipped for NaN, {self.n_groups_empty} empty groups)",
            fix="check the file",
        )

    def _index_group(self, f: h5py.File, name: str) -> None:
        group = self._top_group(f, name, _FIX_LAYOUT)
        pos, energy, natoms, nconf = self._row_datasets(
            group, name, POSITIONS, ENERGY, layout_fix=_FIX_LAYOUT, shape_fix=_FIX_SHAPES
        )
        if nconf == 0:
            self.n_groups_empty += 1
            return
        grad = optional_dataset(group, GRADIENT, self.path, _FIX_LAYOUT)
        formation = optional_dataset(group, FORMATION, self.path, _FIX_LAYOUT)
        factors = (
            self._factor(pos, POSITIONS),
            self._factor(energy, ENERGY),
            None if grad is None else self._factor(grad, GRADIENT),
            None if formation is None else self._factor(formation, FORMATION),
        )
        bad = np.isnan(read_rows(energy, np.s_[:], self.path, name))
        if grad is not None:
            bad |= self._nan_force_rows(grad, GRADIENT, name, (nconf, natoms, 3), "repair or remove this molecule")
        if self._first_nan is None and bad.any():
            self._first_nan = f"{name}/{int(np.flatnonzero(bad)[0])}"
        if self._add_group(name, natoms, nconf, bad):
            self._factors.append(factors)

    # -- reading --------------------------------------------------------------------------------
    def _make_entry(self, g: int) -> dict[str, Any]:
        """Datasets, atomic numbers and strings of molecule `g`."""
        name = self._labels[g]
        group = self.handle()[name]
        _, _, f_grad, f_form = self._factors[g]
        return {
            POSITIONS: group[POSITIONS],
            ENERGY: group[ENERGY],
            GRADIENT: group[GRADIENT] if f_grad is not None else None,
            FORMATION: group[FORMATION] if f_form is not None else None,
            "numbers": read_rows(group["atomic_numbers"], np.s_[:], self.path, name).astype(np.int64),
            "subset": decode_text(group["subset"][()]) if "subset" in group else None,
            "smiles": decode_text(group["smiles"][()]) if "smiles" in group else None,
        }

    def _row_bytes(self, g: int) -> int:
        return self._natoms[g] * 3 * 8 * 2 + 16

    def _read_block(self, g: int, entry: dict[str, Any], sel: slice, record: str) -> dict[str, np.ndarray]:
        f_pos, f_energy, f_grad, f_form = self._factors[g]
        pos = read_rows(entry[POSITIONS], sel, self.path, record).astype(np.float64)
        pos *= f_pos
        arrays = {"positions": pos, "energy": read_rows(entry[ENERGY], sel, self.path, record) * f_energy}
        if f_grad is not None:
            forces = read_rows(entry[GRADIENT], sel, self.path, record).astype(np.float64)
            forces *= -f_grad
            arrays["forces"] = forces
        if f_form is not None:
            arrays["formation_energy"] = read_rows(entry[FORMATION], sel, self.path, record) * f_form
        return arrays

    def _record(self, g: int, row: int, block: RowBlock, j: int) -> Record:
        arrays, extra = block.arrays, block.extra
        name = self._labels[g]
        forces = arrays.get("forces")
        formation = arrays.get("formation_energy")
        return Record(
            numbers=extra["numbers"].copy(),
            positions=arrays["positions"][j].copy(),
            id=f"{name}/{row}",
            energy=float(arrays["energy"][j]),
            forces=None if forces is None else forces[j].copy(),
            targets={} if formation is None else {"formation_energy": float(formation[j])},
            class_label=name,
            info={"subset": extra["subset"], "smiles": extra["smiles"]},
        )

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        meta.update(
            n_molecules=len(self._labels),
            n_skipped_nan=self.n_skipped_nan,
            n_groups_empty=self.n_groups_empty,
            n_molecules_without_gradient=sum(1 for fac in self._factors if fac[2] is None),
            units_seen=dict(self.units_seen),
            units_defaulted=dict(self.units_defaulted),
        )
        seen: dict[str, list[str]] = {}
        for entry in self.units_seen:  # "dataset: unit" -> the units this file really uses
            key, _, unit = entry.partition(": ")
            seen.setdefault(key, []).append(unit)
        meta["source_units"] = {key: " / ".join(sorted(units)) for key, units in seen.items()}
        return meta
