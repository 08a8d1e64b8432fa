"""Tiny files in the exact QMOF / MatBench release layouts, built without pymatgen."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import numpy as np

# (lattice rows A, [(element, fractional coords)]) of a few small crystals
CRYSTALS: list[tuple[list[list[float]], list[tuple[str, list[float]]]]] = [
    ([[5.43, 0, 0], [0, 5.43, 0], [0, 0, 5.43]], [("Si", [0, 0, 0]), ("Si", [0.25, 0.25, 0.25])]),
    (
        [[4.0, 0, 0], [2.0, 3.4641, 0], [0.3, 0.2, 6.1]],
        [("Zn", [0.1, 0.2, 0.3]), ("O", [0.5, 0.5, 0.5]), ("H", [0.9, 0.1, 0.7])],
    ),
    (
        [[3.1, 0.1, 0], [0, 3.2, 0.2], [0.1, 0, 3.3]],
        [("Cu", [0, 0, 0]), ("C", [0.5, 0.4, 0.3]), ("N", [0.2, 0.6, 0.8])],
    ),
]


def structure_dict(lattice: list[list[float]], sites: list[tuple[str, list[float]]], *, xyz: bool = True) -> dict:
    """A pymatgen `Structure.as_dict()` (abc fractional, xyz Cartesian A, lattice.matrix rows)."""
    matrix = np.asarray(lattice, dtype=float)
    out_sites = []
    for element, abc in sites:
        site: dict[str, Any] = {
            "species": [{"element": element, "occu": 1}],
            "abc": list(abc),
            "properties": {},
            "label": element,
        }
        if xyz:
            site["xyz"] = list(np.asarray(abc, dtype=float) @ matrix)
        out_sites.append(site)
    return {
        "@module": "pymatgen.core.structure",
        "@class": "Structure",
        "charge": 0,
        "lattice": {"matrix": matrix.tolist(), "pbc": [True, True, True], "a": float(np.linalg.norm(matrix[0]))},
        "properties": {},
        "sites": out_sites,
    }


def expected_positions(index: int) -> np.ndarray:
    lattice, sites = CRYSTALS[index % len(CRYSTALS)]
    return np.asarray([abc for _, abc in sites], dtype=float) @ np.asarray(lattice, dtype=float)


def make_qmof(folder: Path, n: int = 3, *, hse_for: tuple[int, ...] = (0,)) -> Path:
    """`folder/qmof_database/` with qmof.json + qmof_structure_data.json (n items, same order)."""
    root = folder / "qmof_database"
    root.mkdir(parents=True)
    props, structs = [], []
    for i in range(n):
        lattice, sites = CRYSTALS[i % len(CRYSTALS)]
        qid = f"qmof-{i:07x}"
        outputs: dict[str, Any] = {
            "pbe": {
                "energy_total": -100.0 - i,
                "energy_vdw": -1.5,
                "energy_elec": -98.5 - i,
                "net_magmom": 0.0,
                "bandgap": 1.0 + 0.5 * i,
                "cbm": 0.2,
                "vbm": -0.8,
                "directgap": False,
                "bandgap_spins": [1.0, 1.0],
            }
        }
        if i in hse_for:
            outputs["hse06"] = {"bandgap": 2.0 + i, "cbm": None}
        props.append(
            {
                "qmof_id": qid,
                "name": f"REFCODE{i}_FSR",
                "info": {"formula_reduced": sites[0][0], "symmetry": {"spacegroup_number": 100 + i % 2}},
                "outputs": outputs,
            }
        )
        structure = structure_dict(lattice, sites, xyz=i != 1)  # item 1: fractional coordinates only
        structs.append({"qmof_id": qid, "name": f"REFCODE{i}_FSR", "structure": structure})
    (root / "qmof.json").write_text(json.dumps(props))
    (root / "qmof_structure_data.json").write_text(json.dumps(structs))
    return root


def make_matbench(folder: Path, n: int = 12, task: str = "matbench_phonons", target: str = "last phdos peak") -> Path:
    """`matbench_<task>.json.gz`: gzipped pandas 'split' JSON; value of row i = 100 + 7 i."""
    data = [[structure_dict(*CRYSTALS[i % len(CRYSTALS)]), 100.0 + 7 * i] for i in range(n)]
    frame = {"index": list(range(n)), "columns": ["structure", target], "data": data}
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{task}.json.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        json.dump(frame, fh)
    return path


def make_folds(folder: Path, task: str, ids: list[str]) -> Path:
    """A `matbench_v0.1_validation.json` with 5 folds: fold k tests ids[k::5]."""
    splits = {f"fold_{k}": {"train": [x for j, x in enumerate(ids) if j % 5 != k], "test": ids[k::5]} for k in range(5)}
    path = folder / "matbench_v0.1_validation.json"
    path.write_text(json.dumps({"metadata": {"n_splits": 5}, "splits": {task: splits}}))
    return path
