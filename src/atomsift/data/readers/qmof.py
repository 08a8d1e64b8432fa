"""QMOF database: `qmof_database/qmof.json` (properties) + `qmof_structure_data.json` (structures).

Both files are JSON lists of equal length in the same order. Each property item has `qmof_id`,
`name`, `info{...}` and `outputs.<level>.{bandgap, energy_total, ...}` (eV); each structure item
has `qmof_id`, `name` and `structure`, a pymatgen `Structure.as_dict()`.

JSON allows no random access: `qmof.json` is parsed when the dataset is opened and the (larger)
structure file on the first record read, each once per process (see `pymatgen_dict.load_json`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from atomsift.data.base import Dataset
from atomsift.data.readers.pymatgen_dict import load_json, structure_from_dict
from atomsift.data.record import Record
from atomsift.errors import ConfigError, DataError

PROPERTIES_FILE = "qmof.json"
STRUCTURES_FILE = "qmof_structure_data.json"


def _dotted(item: dict[str, Any], key: str) -> Any:
    """item['a']['b'] for key 'a.b'; None when any part is missing."""
    value: Any = item
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return None
        value = value[part]
    return value


class QMOFDataset(Dataset):
    """QMOF metal-organic frameworks with DFT band gaps (periodic).

    Records: `energy` None (QMOF energies are not a training target here);
    `targets['bandgap']` = outputs.<level>.bandgap in eV, plus every other scalar of
    outputs.<level> under its own name (`energy_total`, `cbm`, `vbm`, ... in eV; `net_magmom`).
    `id` = qmof_id. `class_label`: None unless `class_key` names a property (dotted path into
    the qmof.json item, e.g. 'info.symmetry.spacegroup' or 'info.formula_reduced').
    Items whose chosen level has no band gap are skipped (counted in metadata).

    Args:
        path: the `qmof_database/` folder, or its `qmof.json`.
        level: which `outputs` block to read ('pbe' default; 'hse06', 'hle17', ... cover subsets).
        class_key: dotted key of the class label in each qmof.json item, or None.
    """

    format_name: ClassVar[str] = "qmof"
    description: ClassVar[str] = "QMOF metal-organic frameworks (qmof.json + qmof_structure_data.json), band gaps"
    source_units: ClassVar[dict[str, str]] = {"energy": "eV", "length": "angstrom", "bandgap": "eV"}

    def __init__(self, path: str | Path, *, level: str = "pbe", class_key: str | None = None) -> None:
        super().__init__(path)
        folder = self.path if self.path.is_dir() else self.path.parent
        self.properties_path = folder / PROPERTIES_FILE if self.path.is_dir() else self.path
        self.structures_path = folder / STRUCTURES_FILE
        for needed in (self.properties_path, self.structures_path):
            if not needed.is_file():
                raise DataError(
                    f"QMOF needs '{needed.name}' but it is missing",
                    file=needed,
                    fix=f"point at the qmof_database/ folder holding both {PROPERTIES_FILE} and {STRUCTURES_FILE}",
                )
        self.level = level
        self.class_key = class_key
        props = self._properties()
        if not isinstance(props, list):
            raise DataError("qmof.json is not a JSON list", file=self.properties_path, fix="use the QMOF release file")
        keep: list[int] = []
        levels_seen: set[str] = set()
        for i, item in enumerate(props):
            outputs = item.get("outputs") if isinstance(item, dict) else None
            if not isinstance(outputs, dict):
                raise DataError(
                    "item has no 'outputs' block",
                    file=self.properties_path,
                    record=f"index {i}",
                    fix="use the QMOF release file",
                )
            levels_seen.update(outputs)
            gap = _dotted(outputs, f"{level}.bandgap")
            if isinstance(gap, (int, float)) and not isinstance(gap, bool):
                keep.append(i)
        if not props:
            raise DataError("qmof.json holds no items", file=self.properties_path, fix="use the QMOF release file")
        if level not in levels_seen:
            raise ConfigError(
                f"level '{level}' appears in no item's outputs",
                file=self.properties_path,
                fix=f"choose level from: {', '.join(sorted(levels_seen))}",
            )
        if not keep:
            raise DataError(
                f"no item has outputs.{level}.bandgap", file=self.properties_path, fix="choose another level"
            )
        self._keep = np.asarray(keep, dtype=np.int64)
        self._n_items = len(props)

    # -- files --------------------------------------------------------------------------------
    def _properties(self) -> list[dict[str, Any]]:
        return load_json(self.properties_path, "QMOF properties JSON")

    def _open(self) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """(properties, structures): parsed once per process; checks the two lists agree."""
        structures = load_json(self.structures_path, "QMOF structure JSON")
        props = self._properties()
        if not isinstance(structures, list) or len(structures) != len(props):
            got = len(structures) if isinstance(structures, list) else type(structures).__name__
            raise DataError(
                f"{STRUCTURES_FILE} has {got} items but {PROPERTIES_FILE} has {len(props)}",
                file=self.structures_path,
                fix="both files must come from the same QMOF release (same length, same order)",
            )
        for i, (p, s) in enumerate(zip(props, structures)):
            sid = s.get("qmof_id") if isinstance(s, dict) else None
            if sid != p.get("qmof_id"):
                raise DataError(
                    f"qmof_id disagrees between the two files at index {i}: "
                    f"{p.get('qmof_id')!r} in {PROPERTIES_FILE}, {sid!r} in {STRUCTURES_FILE}",
                    file=self.structures_path,
                    record=f"index {i}",
                    fix="both files must come from the same QMOF release (same order)",
                )
        return props, structures

    def _close(self, handle: Any) -> None:
        return None

    # -- Dataset interface --------------------------------------------------------------------
    @classmethod
    def sniff(cls, path: Path) -> bool:
        if path.is_dir():
            return (path / PROPERTIES_FILE).is_file() and (path / STRUCTURES_FILE).is_file()
        return path.name == PROPERTIES_FILE and (path.parent / STRUCTURES_FILE).is_file()

    def _length(self) -> int:
        return int(self._keep.shape[0])

    def _label(self, item: dict[str, Any]) -> str | None:
        if self.class_key is None:
            return None
        value = _dotted(item, self.class_key)
        return None if value is None else str(value)

    def _read(self, index: int) -> Record:
        j = int(self._keep[index])
        props, structures = self.handle()
        item, entry = props[j], structures[j]
        qmof_id = str(item.get("qmof_id", f"index{j}"))
        if not isinstance(entry, dict) or "structure" not in entry:
            raise DataError(
                "structure item has no 'structure'",
                file=self.structures_path,
                record=qmof_id,
                fix="use the QMOF release file",
            )
        numbers, positions, cell, pbc = structure_from_dict(
            entry["structure"], file=self.structures_path, record=qmof_id
        )
        outputs = item["outputs"][self.level]
        targets = {
            key: float(value)
            for key, value in outputs.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool)
        }
        return Record(
            numbers=numbers,
            positions=positions,
            cell=cell,
            pbc=pbc,
            id=qmof_id,
            energy=None,
            targets=targets,
            class_label=self._label(item),
            info={"name": item.get("name"), "level": self.level, "index": j},
        )

    def class_labels(self) -> np.ndarray | None:
        if self.class_key is None:
            return None
        props = self._properties()
        labels = [self._label(props[int(j)]) for j in self._keep]
        return np.asarray(["" if label is None else label for label in labels], dtype=object)

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        meta.update(
            {
                "level": self.level,
                "n_items": self._n_items,
                "skipped_no_bandgap": self._n_items - len(self),
                "target": "bandgap",
            }
        )
        return meta
