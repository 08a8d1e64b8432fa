"""qm9pack's CSVs (`qm9_part*.csv`); imported through `qm9`."""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Any

import numpy as np
from ase.data import atomic_numbers as _Z

from atomsift.data.readers._common import hill_formula, open_failed
from atomsift.data.readers._qm9_common import QM9Base, qm9_float, qm9_record, qm9_split, targets_from_hartree
from atomsift.data.readers.rmd17 import check_split
from atomsift.data.record import Record
from atomsift.errors import DataError

_PACK_COLUMNS = (
    "RotA_GHz", "RotB_GHz", "RotC_GHz", "Dipole_debye", "Polarizability_bohr3", "HOMO_au", "LUMO_au",
    "HOMO_LUMO_gap_au", "R2_bohr2", "ZPVE_au", "InternalEnergy_0K_au", "InternalEnergy_298K_au",
    "Enthalphy_298K_au", "GibbsFreeEnergy_298K_au", "Heatcapacity_Cv_cal_mol_K",
)  # fmt: skip
"""qm9pack columns in the order of `targets_from_hartree`'s raw properties."""
_PACK_REQUIRED = ("Index", "N_atoms", "Elements", "XYZ_Ang", *_PACK_COLUMNS)
_PART = re.compile(r"qm9_part(\d*)\.csv")


def qm9pack_data_dir() -> Path:
    """The `data/` folder of the installed qm9pack package (found without importing it or pandas)."""
    import importlib.util

    spec = importlib.util.find_spec("qm9pack")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "the qm9pack package is not installed", file="qm9pack", fix="pip install qm9pack (or pass the CSV folder)"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "data"


class _Files:
    """Open binary files, one per CSV part; closed together."""

    def __init__(self, paths: list[Path]) -> None:
        self.files = [open(p, "rb") for p in paths]  # noqa: SIM115

    def close(self) -> None:
        for f in self.files:
            f.close()


class QM9PackDataset(QM9Base):
    """qm9pack's CSVs (`qm9_part1.csv` ...; Hartree, A, D, bohr^3, GHz), converted to PyG units.

    Args:
        path: a folder with `qm9_part*.csv`, one such CSV, or 'qm9pack' for the installed package's data.
        split: None, or 'train' / 'val' / 'test' of JMP's QM9 split (as `qm9-pyg`; the CSVs hold the
            same 130,831 molecules in the same order).

    Rows are indexed by byte offset at open (a newline scan) and parsed with `csv` on access.
    """

    format_name = "qm9pack"
    description = "qm9pack CSVs (qm9_part*.csv; Hartree -> PyG units)"

    def __init__(self, path: str | Path, *, split: str | None = None) -> None:
        if str(path) == "qm9pack" and not Path(path).exists():
            path = qm9pack_data_dir()
        super().__init__(path)
        self.split = check_split(split, self.path)
        if self.path.is_dir():
            parts = [p for p in self.path.iterdir() if _PART.fullmatch(p.name)]
            self._paths = sorted(parts, key=lambda p: int(_PART.fullmatch(p.name).group(1) or 0))
        else:
            self._paths = [self.path]
        if not self._paths:
            raise DataError(
                "no qm9_part*.csv files in this folder", file=self.path, fix="point to qm9pack's data folder"
            )
        self._columns: list[dict[str, int]] = []
        starts, ends, part = [], [], []
        for k, p in enumerate(self._paths):
            s, e, cols = self._index_csv(p)
            self._columns.append(cols)
            starts.append(s)
            ends.append(e)
            part.append(np.full(s.shape[0], k, dtype=np.int16))
        self._starts = np.concatenate(starts)
        self._ends = np.concatenate(ends)
        self._part = np.concatenate(part)
        if self._starts.shape[0] == 0:
            raise DataError("the CSV files hold no rows", file=self.path, fix="check the files")
        self._rows = qm9_split(int(self._starts.shape[0]), self.split, self.path)

    @staticmethod
    def _index_csv(path: Path) -> tuple[np.ndarray, np.ndarray, dict[str, int]]:
        """(starts, ends) byte offsets of the data rows of one CSV and its column map."""
        try:
            with open(path, "rb") as f:
                header = f.readline().decode("utf-8", "replace")
                f.seek(0)
                chunks, base = [], 0
                while block := f.read(1 << 24):
                    chunks.append(np.flatnonzero(np.frombuffer(block, np.uint8) == 10) + base)
                    base += len(block)
        except OSError as exc:
            raise open_failed(path, exc, "qm9pack CSV") from None
        cols = {name: k for k, name in enumerate(next(csv.reader([header]), []))}
        missing = [c for c in _PACK_REQUIRED if c not in cols]
        if missing:
            raise DataError(
                f"missing column(s) {', '.join(missing)}", file=path, fix="give qm9pack's qm9_part*.csv files"
            )
        newlines = np.concatenate(chunks) if chunks else np.zeros(0, np.int64)
        starts = np.concatenate([[0], newlines + 1])
        ends = np.concatenate([newlines, [base]])
        keep = ends - starts > 1  # drop empty lines (and the empty tail after the last newline)
        keep[0] = False  # header
        return starts[keep].astype(np.int64), ends[keep].astype(np.int64), cols

    @classmethod
    def sniff(cls, path: Path) -> bool:
        if str(path) == "qm9pack" and not path.exists():
            return True
        if path.is_dir():
            return any(_PART.fullmatch(p.name) for p in path.iterdir())
        return path.is_file() and bool(_PART.fullmatch(path.name))

    def _open(self) -> _Files:
        return _Files(self._paths)

    def _length(self) -> int:
        return int(self._starts.shape[0]) if self._rows is None else int(self._rows.shape[0])

    def _fields(self, row: int) -> tuple[list[str], dict[str, int], Path]:
        k = int(self._part[row])
        f = self.handle().files[k]
        f.seek(int(self._starts[row]))
        line = f.read(int(self._ends[row] - self._starts[row])).decode("utf-8", "replace")
        return next(csv.reader([line])), self._columns[k], self._paths[k]

    def _read(self, index: int) -> Record:
        row = index if self._rows is None else int(self._rows[index])
        fields, cols, path = self._fields(row)
        try:
            gdb = int(fields[cols["Index"]])
            symbols = [s.strip(" '\"") for s in fields[cols["Elements"]].strip("[] ").split(",")]
            numbers = np.array([_Z[s] for s in symbols], dtype=np.int64)
            xyz = fields[cols["XYZ_Ang"]].replace("[", "").replace("]", "").replace("*^", "e")
            positions = np.array(xyz.split(","), dtype=np.float64).reshape(-1, 3)
            if positions.shape[0] != numbers.shape[0] or numbers.shape[0] != int(fields[cols["N_atoms"]]):
                raise ValueError(f"{numbers.shape[0]} elements, {positions.shape[0]} positions, N_atoms disagrees")
            values = [qm9_float(fields[cols[c]]) for c in _PACK_COLUMNS]
        except (ValueError, IndexError, KeyError) as exc:
            raise DataError(
                f"cannot parse CSV row ({exc.__class__.__name__}: {exc})",
                file=path,
                record=row,
                fix="the row does not follow qm9pack's layout; repair or remove it",
            ) from None
        info = {"gdb_index": gdb, "smiles": fields[cols["SMILES"]] if "SMILES" in cols else None}
        return qm9_record(numbers, positions, targets_from_hartree(values, numbers), gdb, info)

    def class_labels(self) -> np.ndarray:
        order = np.arange(self._starts.shape[0]) if self._rows is None else self._rows
        labels = np.empty(order.shape[0], dtype=object)
        cache: dict[str, str] = {}
        for out, row in enumerate(order):
            fields, cols, _ = self._fields(int(row))
            elements = fields[cols["Elements"]]
            if elements not in cache:
                symbols = [s.strip(" '\"") for s in elements.strip("[] ").split(",")]
                cache[elements] = hill_formula(np.array([_Z.get(s, 0) for s in symbols]))
            labels[out] = cache[elements]
        return labels

    def metadata(self) -> dict[str, Any]:
        return {**super().metadata(), "split": self.split, "files": [str(p) for p in self._paths]}
