"""MatBench v0.1 structure tasks: `matbench_<task>.json.gz`, a gzipped pandas "split" JSON.

Layout: `{"index": [...], "columns": ["structure", "<target>"], "data": [[<Structure dict>, value], ...]}`.
Record ids follow matbench: `mb-<task>-NNNN`, `NNNN` = index + 1 zero-padded to the number of
digits of the dataset size. The official 5-fold splits come from `matbench_v0.1_validation.json`,
shipped inside the `matbench` package (found without importing it) or passed as `folds_file`.

The whole file is parsed at open (JSON has no random access), once per process.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from atomsift.data.base import Dataset
from atomsift.data.readers.pymatgen_dict import load_json, structure_from_dict
from atomsift.data.record import Record
from atomsift.errors import ConfigError, DataError

VALIDATION_FILE = "matbench_v0.1_validation.json"

TARGET_UNITS: dict[str, str] = {
    "matbench_dielectric": "unitless (refractive index n)",
    "matbench_jdft2d": "meV/atom",
    "matbench_log_gvrh": "log10(GPa)",
    "matbench_log_kvrh": "log10(GPa)",
    "matbench_mp_e_form": "eV/atom",
    "matbench_mp_gap": "eV",
    "matbench_mp_is_metal": "0/1 (classification)",
    "matbench_perovskites": "eV/unit cell",
    "matbench_phonons": "cm^-1",
}
"""Unit of each structure task's target (from matbench's dataset metadata). Values are not converted."""


def _task_name(path: Path) -> str:
    """'matbench_phonons' for '.../matbench_phonons.json.gz'."""
    name = path.name
    for suffix in (".gz", ".json"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name


def find_validation_file() -> Path | None:
    """`matbench_v0.1_validation.json` inside the installed matbench package (not imported), or None."""
    try:
        spec = importlib.util.find_spec("matbench")
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    for location in spec.submodule_search_locations or []:
        candidate = Path(location) / VALIDATION_FILE
        if candidate.is_file():
            return candidate
    return None


class MatbenchDataset(Dataset):
    """A MatBench structure task (periodic crystals, one scalar target).

    Records: `energy` None, `targets[<column>]` = the task's value in its own unit (see
    `TARGET_UNITS`, e.g. 'last phdos peak' in cm^-1; booleans as 0.0/1.0); `class_label` None;
    `id` as matbench (`mb-phonons-0001`).

    Args:
        path: `matbench_<task>.json.gz` (or an uncompressed `.json`).
        target: the target column; default the single non-structure column.
        fold: official fold 0-4 (needs `fold_part`).
        fold_part: 'train' or 'test' part of that fold.
        folds_file: path of `matbench_v0.1_validation.json`; default: the installed matbench package.
    """

    format_name: ClassVar[str] = "matbench"
    description: ClassVar[str] = "MatBench v0.1 structure tasks (matbench_<task>.json.gz), official 5 folds"
    source_units: ClassVar[dict[str, str]] = {"length": "angstrom", "target": "per task (see TARGET_UNITS)"}

    def __init__(
        self,
        path: str | Path,
        *,
        target: str | None = None,
        fold: int | None = None,
        fold_part: str | None = None,
        folds_file: str | Path | None = None,
    ) -> None:
        super().__init__(path)
        self.task = _task_name(self.path)
        self.prefix = self.task.replace("matbench", "mb").replace("_", "-")
        frame = self._frame()
        columns = frame["columns"]
        structure_col = "structure"
        if structure_col not in columns:
            raise DataError(
                f"no 'structure' column (columns: {columns}); composition-only tasks have no structures",
                file=self.path,
                fix="use a structure task (e.g. matbench_phonons, matbench_mp_e_form)",
            )
        self._structure_col = columns.index(structure_col)
        others = [c for c in columns if c != structure_col]
        if target is None:
            if len(others) != 1:
                raise ConfigError(
                    f"several target columns: {others}", file=self.path, fix="choose one with the option target"
                )
            target = others[0]
        if target not in others:
            raise ConfigError(
                f"target '{target}' is not a column of this file", file=self.path, fix=f"choose from: {others}"
            )
        self.target = target
        self._target_col = columns.index(target)
        n = len(frame["data"])
        if n == 0:
            raise DataError("the dataset holds no entries", file=self.path, fix="use a MatBench release file")
        digits = math.floor(math.log10(n)) + 1
        index = frame.get("index") or list(range(n))
        if len(index) != n:
            raise DataError(
                f"the file's index has {len(index)} entries for {n} rows of data",
                file=self.path,
                fix="use an unedited MatBench release file (its index and data are the same length)",
            )
        self._ids: list[str] = []
        for pos, value in enumerate(index):
            if isinstance(value, str):
                self._ids.append(value)
            else:
                i = int(value) if isinstance(value, (int, float)) else pos
                self._ids.append(f"{self.prefix}-{i + 1:0{digits}d}")
        self._n_all = n
        self.fold, self.fold_part = fold, fold_part
        self.folds_file: Path | None = None
        self._rows = np.arange(n, dtype=np.int64)
        if fold is not None or fold_part is not None:
            self._rows = self._fold_rows(fold, fold_part, folds_file)

    def _frame(self) -> dict[str, Any]:
        frame = load_json(self.path, "MatBench JSON")
        if not isinstance(frame, dict) or not {"columns", "data"} <= set(frame):
            raise DataError(
                "not a pandas 'split' JSON (needs keys 'columns' and 'data')",
                file=self.path,
                fix="use the matbench_<task>.json.gz release file",
            )
        return frame

    def _fold_rows(self, fold: int | None, part: str | None, folds_file: str | Path | None) -> np.ndarray:
        if fold is None or part is None or int(fold) not in range(5) or part not in ("train", "test"):
            raise ConfigError(
                f"fold={fold!r}, fold_part={part!r}",
                file=self.path,
                fix="give both fold (0-4) and fold_part ('train' or 'test')",
            )
        source = Path(folds_file) if folds_file is not None else find_validation_file()
        if source is None or not source.is_file():
            raise DataError(
                f"fold {fold} requested but the official splits file {VALIDATION_FILE} was not found"
                + (f" at {source}" if source is not None else ""),
                file=self.path,
                fix=f"`pip install --no-deps matbench` (the file ships inside the package), "
                f"or pass folds_file=/path/to/{VALIDATION_FILE}",
            )
        self.folds_file = source
        splits = load_json(source, "MatBench validation JSON")
        try:
            ids = splits["splits"][self.task][f"fold_{int(fold)}"][part]
        except (KeyError, TypeError):
            raise DataError(
                f"no split for task '{self.task}' fold_{fold} {part}",
                file=source,
                fix="name the data file matbench_<task>.json.gz as released, and use a v0.1 validation file",
            ) from None
        where = {mbid: pos for pos, mbid in enumerate(self._ids)}
        missing = [mbid for mbid in ids if mbid not in where]
        if missing:
            raise DataError(
                f"{len(missing)} ids of fold_{fold} {part} are not in the data file (first: {missing[0]})",
                file=self.path,
                fix="the data file and the splits file must be the same matbench v0.1 task",
            )
        return np.asarray(sorted(where[mbid] for mbid in ids), dtype=np.int64)

    def _open(self) -> dict[str, Any]:
        return self._frame()

    def _close(self, handle: Any) -> None:
        return None

    @classmethod
    def sniff(cls, path: Path) -> bool:
        name = path.name
        if not path.is_file() or not name.startswith("matbench_") or name.startswith("matbench_v0"):
            return False
        return name.endswith(".json.gz") or name.endswith(".json")

    def _length(self) -> int:
        return int(self._rows.shape[0])

    def _read(self, index: int) -> Record:
        row = int(self._rows[index])
        mbid = self._ids[row]
        entry = self.handle()["data"][row]
        try:
            structure, value = entry[self._structure_col], entry[self._target_col]
        except (IndexError, TypeError, KeyError):
            raise DataError(
                f"row {row} is not a [structure, value] list", file=self.path, record=mbid, fix="repair the file"
            ) from None
        numbers, positions, cell, pbc = structure_from_dict(structure, file=self.path, record=mbid)
        if value is None or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise DataError(
                f"target '{self.target}' is {value!r}, not a number", file=self.path, record=mbid, fix="repair the file"
            )
        return Record(
            numbers=numbers,
            positions=positions,
            cell=cell,
            pbc=pbc,
            id=mbid,
            targets={self.target: float(value)},
            info={"task": self.task, "row": row},
        )

    def class_labels(self) -> np.ndarray | None:
        return None

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        meta.update(
            {
                "task": self.task,
                "target": self.target,
                "target_unit": TARGET_UNITS.get(self.task, "unknown"),
                "n_entries": self._n_all,
                "fold": self.fold,
                "fold_part": self.fold_part,
                "folds_file": None if self.folds_file is None else str(self.folds_file),
            }
        )
        return meta
