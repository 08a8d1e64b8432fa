"""SPICE 1.1.x HDF5 (`SPICE-1.1.4.hdf5`, and JMP's `dipeptides.h5`, `solvated_amino_acids.h5`).

Layout (FORMATS.md): one top-level group per molecule with `atomic_numbers` (N,) int16,
`conformations` (M, N, 3) float32, `dft_total_energy` (M,) float64, `dft_total_gradient`
(M, N, 3) float32, `formation_energy` (M,) float64, `subset` and `smiles` (1,) strings, and more.
Each dataset's `attrs['units']` names its unit (release: bohr, hartree, hartree/bohr); it is honoured
per dataset, with the release units as the fallback when the attribute is missing.
Forces = -gradient. Conformers whose energy or gradient holds a NaN are skipped and counted.
"""

from __future__ import annotations

import bisect
from collections import Counter
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from atomsift.data import units
from atomsift.data.base import Dataset
from atomsift.data.readers._h5 import (
    GroupCache,
    RowBlock,
    block_range,
    block_rows_for,
    decode_text,
    get_dataset,
    nan_rows,
    optional_dataset,
    open_h5,
    read_rows,
    sniff_kind,
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
_FIX_LAYOUT = f"SPICE molecule groups need 'atomic_numbers', '{POSITIONS}' and '{ENERGY}' (see FORMATS.md)"


class SpiceDataset(Dataset):
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

    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        self._names: list[str] = []
        self._natoms: list[int] = []
        self._nconf: list[int] = []
        self._valid: list[np.ndarray | None] = []
        self._factors: list[tuple[float, float, float | None, float | None]] = []  # pos, energy, grad, formation
        self._offsets: list[int] = [0]
        self.n_skipped_nan = 0
        self.n_groups_empty = 0
        self.units_seen: Counter[str] = Counter()  # "dataset: unit" -> groups
        self.units_defaulted: Counter[str] = Counter()  # dataset -> groups lacking attrs['units']
        self._factor_cache: dict[tuple[str, str], float] = {}
        self._block: RowBlock | None = None
        self._last = -1
        self._groups = GroupCache()
        self._build_index()

    # -- index ----------------------------------------------------------------------------------
    def _open(self) -> h5py.File:
        return open_h5(self.path, "SPICE HDF5 file")

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
        if not self._names:
            raise DataError(
                f"no usable conformers ({self.n_skipped_nan} skipped for NaN, {self.n_groups_empty} empty groups)",
                file=self.path,
                fix="check the file",
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
        pos = get_dataset(group, POSITIONS, self.path, _FIX_LAYOUT)
        energy = get_dataset(group, ENERGY, self.path, _FIX_LAYOUT)
        natoms = int(numbers.shape[0]) if numbers.ndim == 1 else -1
        nconf = int(pos.shape[0]) if pos.ndim == 3 else -1
        if natoms < 1 or pos.shape[1:] != (natoms, 3) or energy.shape != (nconf,):
            raise DataError(
                f"shapes disagree in group '{name}': atomic_numbers {numbers.shape}, {POSITIONS} {pos.shape}, "
                f"{ENERGY} {energy.shape}",
                file=self.path,
                record=name,
                fix="expected (N,), (M, N, 3) and (M,); repair or remove this molecule",
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
            if grad.shape != (nconf, natoms, 3):
                raise DataError(
                    f"{GRADIENT} has shape {grad.shape} in group '{name}', expected ({nconf}, {natoms}, 3)",
                    file=self.path,
                    record=name,
                    fix="repair or remove this molecule",
                )
            bad |= nan_rows(grad, self.path, name)
        n_bad = int(bad.sum())
        self.n_skipped_nan += n_bad
        if n_bad == nconf:
            return
        self._names.append(name)
        self._natoms.append(natoms)
        self._nconf.append(nconf)
        self._valid.append(np.flatnonzero(~bad).astype(np.int32) if n_bad else None)
        self._factors.append(factors)
        self._offsets.append(self._offsets[-1] + nconf - n_bad)

    # -- reading --------------------------------------------------------------------------------
    def _length(self) -> int:
        return self._offsets[-1]

    def _group(self, g: int) -> dict[str, Any]:
        """Datasets, atomic numbers and strings of molecule `g` (cached)."""

        def make() -> dict[str, Any]:
            name = self._names[g]
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

        return self._groups.get(self.handle(), g, make)

    def _load_block(self, g: int, row: int, index: int) -> RowBlock:
        f_pos, f_energy, f_grad, f_form = self._factors[g]
        rows = block_rows_for(self._natoms[g] * 3 * 8 * 2 + 16)
        start, stop = block_range(row, self._nconf[g], index, self._last, rows)
        entry = self._group(g)
        record = f"{self._names[g]}/{row}"
        sel = np.s_[start:stop]
        pos = read_rows(entry[POSITIONS], sel, self.path, record).astype(np.float64)
        pos *= f_pos
        arrays = {"positions": pos, "energy": read_rows(entry[ENERGY], sel, self.path, record) * f_energy}
        if f_grad is not None:
            forces = read_rows(entry[GRADIENT], sel, self.path, record).astype(np.float64)
            forces *= -f_grad
            arrays["forces"] = forces
        if f_form is not None:
            arrays["formation_energy"] = read_rows(entry[FORMATION], sel, self.path, record) * f_form
        return RowBlock(g, start, stop, arrays, {k: entry[k] for k in ("numbers", "subset", "smiles")})

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
        arrays, extra = block.arrays, block.extra
        name = self._names[g]
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

    # -- fast paths -----------------------------------------------------------------------------
    @classmethod
    def sniff(cls, path: Path) -> bool:
        return sniff_kind(Path(path)) == "spice"

    def class_labels(self) -> np.ndarray:
        counts = np.diff(np.asarray(self._offsets, dtype=np.int64))
        return np.repeat(np.asarray(self._names, dtype=object), counts)

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        meta.update(
            n_molecules=len(self._names),
            n_skipped_nan=self.n_skipped_nan,
            n_groups_empty=self.n_groups_empty,
            n_molecules_without_gradient=sum(1 for fac in self._factors if fac[2] is None),
            units_seen=dict(self.units_seen),
            units_defaulted=dict(self.units_defaulted),
        )
        return meta

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_block"] = None
        state["_last"] = -1
        return state
