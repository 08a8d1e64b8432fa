"""sGDML npz (MD22 `md22_<name>.npz`, original MD17 `md17_<name>.npz`).

Layout (docs/formats.md): `R` (F, N, 3) in `r_unit` (Ang), `z` (N,), `E` (F, 1) or (F,) in `e_unit`
(kcal/mol), `F` (F, N, 3) in e_unit/r_unit, plus `name`, `theory`, `type`, `md5`, statistics, `perms`.
Only R, z, E, F and the small `name`, `theory`, `e_unit`, `r_unit` entries are read; the big arrays
are memory-mapped when stored uncompressed (see `rmd17.NpzMembers`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from atomsift.data.readers.rmd17 import NpzFramesDataset, NpzMembers, npz_has_keys
from atomsift.data.units import energy_factor, length_factor
from atomsift.errors import ConfigError, DataError

MD22_TRAIN_SIZES: dict[str, int] = {
    "Ac-Ala3-NHMe": 6000,
    "DHA": 8000,
    "stachyose": 8000,
    "AT-AT": 3000,
    "AT-AT-CG-CG": 2000,
    "buckyball-catcher": 600,
    "double-walled_nanotube": 800,
}
"""JMP's MD22 training-set sizes (docs/formats.md); 5% of them (rounded down) go to validation."""
VAL_FRACTION = 0.05


def _norm_name(name: str) -> str:
    return name.strip().lower().replace(" ", "-").replace("_", "-")


def md22_train_size(*names: str) -> int | None:
    """JMP's MD22 training size for the first of `names` that is an MD22 molecule, else None."""
    sizes = {_norm_name(k): v for k, v in MD22_TRAIN_SIZES.items()}
    for name in names:
        if _norm_name(name) in sizes:
            return sizes[_norm_name(name)]
    return None


class SGDMLDataset(NpzFramesDataset):
    """Frames of one sGDML npz file (MD22, original MD17), in eV, eV/A and A.

    Args:
        path: the .npz file.
        split: None (all frames), or 'train' / 'val' / 'test' of JMP's split:
            `RandomState(42).permutation(F)`, first `train_size - int(0.05 * train_size)` train, the next
            `int(0.05 * train_size)` val, the rest test (JMP's order).
        train_size: JMP training-set size; defaults to JMP's MD22 size for the molecule (docs/formats.md);
            required with `split` for other files.
        split_file: a file of 0-based frame indices selecting frames; not together with `split`.

    Units: `e_unit` ('kcal/mol' or 'eV') and `r_unit` ('Ang', or 'bohr') are honoured when present,
    else kcal/mol and A are assumed. Records: id = '<name>/<frame>'; class_label = the `name` entry,
    else the file stem without 'md22_' / 'md17_'.
    """

    format_name = "sgdml"
    description = "sGDML npz: MD22, original MD17 (R, z, E, F; kcal/mol, kcal/mol/A)"
    source_units = {"energy": "kcal/mol", "forces": "kcal/mol/angstrom", "positions": "angstrom"}

    def __init__(
        self,
        path: str | Path,
        *,
        split: str | None = None,
        train_size: int | None = None,
        split_file: str | Path | None = None,
    ) -> None:
        super().__init__(path, split, split_file)
        if train_size is not None and (type(train_size) is not int or train_size < 1):
            raise ConfigError(f"option train_size={train_size!r} must be a positive integer", file=self.path)
        npz = self.handle()
        stem = self.path.stem
        for prefix in ("md22_", "md17_"):
            if stem.startswith(prefix) and len(stem) > len(prefix):
                stem = stem[len(prefix) :]
        self.name = self._label = npz.scalar_text("name") or stem
        self.theory = npz.scalar_text("theory")
        e_unit = npz.scalar_text("e_unit", "kcal/mol") or "kcal/mol"
        r_unit = npz.scalar_text("r_unit", "Ang") or "Ang"
        try:
            self._e_factor = energy_factor(e_unit)
            self._r_factor = length_factor(r_unit)
        except KeyError as exc:
            raise DataError(
                f"unknown unit in the file: {exc.args[0]}",
                file=self.path,
                record="e_unit/r_unit",
                fix="store e_unit and r_unit as one of the units listed there",
            ) from None
        if "lattice" in npz:  # sGDML's periodic datasets: read as molecules, every image pair would be missed
            raise DataError(
                "the file holds a 'lattice' (a periodic sGDML dataset); this reader reads molecules (MD17, MD22)",
                file=self.path,
                record="lattice",
                fix="write the frames with their cell to extended XYZ (ase.io.write) and read that file",
            )
        self._f_factor = self._e_factor / self._r_factor
        self.units = {"energy": e_unit, "forces": f"{e_unit}/{r_unit}", "positions": r_unit}
        self._check_shapes(npz)
        self._numbers = np.array(npz.array("z"), dtype=np.int64)
        n_train_val = None
        if self.split is not None:
            size = train_size if train_size is not None else md22_train_size(self.name, stem)
            if size is None:
                raise ConfigError(
                    f"no JMP training size is known for '{self.name}'",
                    file=self.path,
                    fix=f"pass train_size= with split=; known MD22 sizes: {MD22_TRAIN_SIZES}",
                )
            if int(size) >= self.n_frames:
                raise ConfigError(
                    f"train_size {int(size)} leaves no test frames: the file holds {self.n_frames} frames",
                    file=self.path,
                    fix="pass a smaller train_size= (JMP's MD22 sizes assume the full release files)",
                )
            self.train_size = int(size)
            n_val = int(self.train_size * VAL_FRACTION)
            n_train_val = (self.train_size - n_val, n_val)
        self._select_frames(n_train_val)

    def _check_shapes(self, npz: NpzMembers) -> None:
        shapes = {k: npz.header(k)[0] for k in ("R", "z", "E", "F")}
        r = shapes["R"]
        if len(r) != 3 or r[2] != 3 or r[1] < 1:
            raise DataError(f"R has shape {r}, expected (F, N, 3)", file=self.path, record="R", fix="repair the file")
        nframes, natoms = r[0], r[1]
        problems = []
        if shapes["z"] != (natoms,):
            problems.append(f"z {shapes['z']} (expected ({natoms},))")
        if shapes["E"] not in ((nframes,), (nframes, 1)):
            problems.append(f"E {shapes['E']} (expected ({nframes}, 1) or ({nframes},))")
        if shapes["F"] != r:
            problems.append(f"F {shapes['F']} (expected {r})")
        if problems:
            raise DataError(
                f"array shapes disagree with R {r}: " + "; ".join(problems),
                file=self.path,
                fix="R (F, N, 3), z (N,), E (F, 1) and F (F, N, 3) must describe the same frames and atoms",
            )
        self.n_frames = int(nframes)

    @classmethod
    def sniff(cls, path: Path) -> bool:
        return npz_has_keys(path, ("R", "z", "E"), damaged_prefixes=("md22_", "md17_"))

    def _frame_values(self, npz: NpzMembers, frame: int) -> tuple[np.ndarray, float, np.ndarray]:
        positions = np.array(npz.array("R")[frame], dtype=np.float64)
        if self._r_factor != 1.0:
            positions *= self._r_factor
        energy = float(np.asarray(npz.array("E")[frame]).reshape(-1)[0]) * self._e_factor
        return positions, energy, np.array(npz.array("F")[frame], dtype=np.float64) * self._f_factor

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        meta.update(name=self.name, theory=self.theory, n_frames_in_file=self.n_frames, split=self.split)
        meta["source_units"] = dict(self.units)
        if self.split is not None:
            meta["train_size"] = self.train_size
        if self.split_file is not None:
            meta["split_file"] = self.split_file
        return meta
