"""Adsorbates on metal surfaces (bundled data): two nested JSON files.

`adsorbates_on_metals_structures.json`: metal -> adsorbate -> site -> coverage ->
{"symbols": [...], "cell": 3x3 (A, rows), "pos": Nx3 (A, Cartesian)};
`adsorbates_on_metals_energies.json`: the same nesting -> adsorption energy (eV).
Only structures with a numeric energy are records: clean slabs (coverage "0.0") have none, and a
few entries hold the string "Q" instead of a number (failed calculations); both are counted in
`metadata()`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from ase.data import atomic_numbers

from atomsift.data.base import Dataset
from atomsift.data.readers.pymatgen_dict import load_json
from atomsift.data.record import Record
from atomsift.errors import DataError

_HEAD = re.compile(
    rb'^\s*\{\s*"([A-Z][a-z]?)"\s*:\s*\{\s*"[^"]+"\s*:\s*\{\s*"[^"]+"\s*:\s*\{\s*"[^"]+"\s*:\s*'
    rb'\{\s*"(symbols|cell|pos)"'
)


def _walk(tree: Any, file: Path) -> list[tuple[str, str, str, str]]:
    """(metal, adsorbate, site, coverage) of every leaf, in file order."""
    keys = []
    try:
        for metal, by_ads in tree.items():
            for ads, by_site in by_ads.items():
                for site, by_cov in by_site.items():
                    keys.extend((metal, ads, site, cov) for cov in by_cov)
    except AttributeError:
        raise DataError(
            "not nested as metal -> adsorbate -> site -> coverage",
            file=file,
            fix="use adsorbates_on_metals_structures.json / _energies.json as bundled",
        ) from None
    return keys


class AdsorbatesJsonDataset(Dataset):
    """Adsorption energies of small adsorbates on fcc(111) metal slabs (periodic).

    Records: `energy` = adsorption energy (eV, like OC20's referenced `y`), also
    `targets['adsorption_energy']`; `class_label` = the metal; `id` = 'metal/adsorbate/site/coverage';
    pbc all True.

    Args:
        path: the structures JSON.
        energies: the energies JSON (default: beside it, 'structures' replaced by 'energies' in the name).
    """

    format_name: ClassVar[str] = "adsorbates-json"
    description: ClassVar[str] = "adsorbates on metal slabs (nested JSON structures + adsorption energies)"
    source_units: ClassVar[dict[str, str]] = {"energy": "eV", "length": "angstrom"}

    def __init__(self, path: str | Path, *, energies: str | Path | None = None) -> None:
        super().__init__(path)
        if energies is None:
            if "structures" not in self.path.name:
                raise DataError(
                    "cannot tell the energies file: the structures file name has no 'structures' in it",
                    file=self.path,
                    fix="pass the option energies=/path/to/..._energies.json",
                )
            energies = self.path.with_name(self.path.name.replace("structures", "energies"))
        self.energies_path = Path(energies)
        if not self.energies_path.is_file():
            raise DataError(
                "the adsorption energies file is missing",
                file=self.energies_path,
                fix="put it beside the structures file, or pass the option energies=",
            )
        structures = self._structures()
        energy_tree = load_json(self.energies_path, "adsorption energies JSON")
        self._keys: list[tuple[str, str, str, str]] = []
        self._energies: list[float] = []
        self.skipped_no_energy = 0
        self.skipped_not_numeric: list[str] = []
        for key in _walk(structures, self.path):
            value: Any = energy_tree
            for part in key:
                value = value.get(part) if isinstance(value, dict) else None
            if value is None:
                self.skipped_no_energy += 1
            elif isinstance(value, (int, float)) and not isinstance(value, bool):
                self._keys.append(key)
                self._energies.append(float(value))
            else:
                self.skipped_not_numeric.append(f"{'/'.join(key)}={value!r}")
        known = set(_walk(structures, self.path))
        self.energies_without_structure = sum(1 for k in _walk(energy_tree, self.energies_path) if k not in known)
        if not self._keys:
            raise DataError(
                "no structure has a numeric adsorption energy", file=self.path, fix="check the energies file"
            )

    def _structures(self) -> dict[str, Any]:
        tree = load_json(self.path, "adsorbate structures JSON")
        if not isinstance(tree, dict):
            raise DataError("top level is not a JSON object", file=self.path, fix="use the bundled structures file")
        return tree

    def _open(self) -> dict[str, Any]:
        return self._structures()

    def _close(self, handle: Any) -> None:
        return None

    @classmethod
    def sniff(cls, path: Path) -> bool:
        if not path.is_file() or path.suffix != ".json":
            return False
        with open(path, "rb") as fh:
            head = fh.read(4096)
        match = _HEAD.match(head)
        return bool(match) and match.group(1).decode() in atomic_numbers

    def _length(self) -> int:
        return len(self._keys)

    def _read(self, index: int) -> Record:
        metal, ads, site, cov = self._keys[index]
        rid = f"{metal}/{ads}/{site}/{cov}"
        entry = self.handle()[metal][ads][site][cov]
        try:
            numbers = np.asarray([atomic_numbers[s] for s in entry["symbols"]], dtype=np.int64)
            positions = np.asarray(entry["pos"], dtype=np.float64)
            cell = np.asarray(entry["cell"], dtype=np.float64).reshape(3, 3)
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(
                f"entry is malformed ({type(exc).__name__}: {exc}); needs symbols, cell and pos",
                file=self.path,
                record=rid,
                fix="repair this entry",
            ) from None
        energy = self._energies[index]
        if not np.isfinite(energy):  # the energies file's, not the structures file's (which validate would name)
            raise DataError(
                f"adsorption energy is {energy}", file=self.energies_path, record=rid, fix="repair or drop this entry"
            )
        return Record(
            numbers=numbers,
            positions=positions,
            cell=cell,
            pbc=np.ones(3, dtype=bool),
            id=rid,
            energy=energy,
            targets={"adsorption_energy": energy},
            class_label=metal,
            info={"metal": metal, "adsorbate": ads, "site": site, "coverage": cov},
        )

    def class_labels(self) -> np.ndarray | None:
        return np.asarray([key[0] for key in self._keys], dtype=object)

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        meta.update(
            {
                "energies_file": str(self.energies_path),
                "n_entries": len(self) + self.skipped_no_energy + len(self.skipped_not_numeric),
                "skipped_no_energy": self.skipped_no_energy,
                "skipped_not_numeric": len(self.skipped_not_numeric),
                "skipped_not_numeric_entries": list(self.skipped_not_numeric),
                "energies_without_structure": self.energies_without_structure,
            }
        )
        return meta
