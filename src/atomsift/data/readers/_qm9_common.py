"""Shared parts of the QM9 readers: target names and units, atom references, unit conversion,
record construction and JMP's QM9 split. The readers themselves are imported from `qm9`."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from atomsift.data.base import Dataset
from atomsift.data.readers._common import hill_formula
from atomsift.data.readers.rmd17 import jmp_split
from atomsift.data.record import Record
from atomsift.data.units import HARTREE_TO_EV
from atomsift.errors import ConfigError, DataError

QM9_TARGETS: tuple[str, ...] = (
    "mu", "alpha", "homo", "lumo", "gap", "r2", "zpve", "U0", "U", "H", "G", "cv",
    "U0_atom", "U_atom", "H_atom", "G_atom", "A", "B", "C",
)  # fmt: skip
"""Canonical target names in PyG's order (index 0..18)."""
QM9_TARGET_UNITS: dict[str, str] = {
    "mu": "D", "alpha": "bohr^3", "r2": "bohr^2", "cv": "cal/(mol K)", "A": "GHz", "B": "GHz", "C": "GHz",
    **dict.fromkeys(("homo", "lumo", "gap", "zpve", "U0", "U", "H", "G", "U0_atom", "U_atom", "H_atom", "G_atom"), "eV"),
}  # fmt: skip
QM9_ATOMREF_HARTREE: dict[int, tuple[float, float, float, float]] = {
    1: (-0.500273, -0.498857, -0.497912, -0.510927),
    6: (-37.846772, -37.845355, -37.844411, -37.861317),
    7: (-54.583861, -54.582445, -54.581501, -54.598897),
    8: (-75.064579, -75.063163, -75.062219, -75.079532),
    9: (-99.718730, -99.717314, -99.716370, -99.733544),
}
"""Free-atom U0, U, H, G (Hartree) of QM9's atomref.txt, by atomic number."""
QM9_VAL, QM9_TEST = 10_000, 10_000
"""JMP's QM9 split: RandomState(42) shuffle; 10,000 val, 10,000 test, the rest train (in that order:
train first)."""

_ALIASES: dict[str, tuple[str, ...]] = {
    "mu": ("dipole", "dipole_moment", "dipole_debye"),
    "alpha": ("polarizability", "isotropic_polarizability", "polarizability_bohr3"),
    "homo": ("eps_homo", "epsilon_homo", "e_homo", "homo_au"),
    "lumo": ("eps_lumo", "epsilon_lumo", "e_lumo", "lumo_au"),
    "gap": ("delta_eps", "delta_epsilon", "homo_lumo_gap", "eps_gap", "homo_lumo_gap_au"),
    "r2": ("r_2", "r_2_abs", "r2_abs", "electronic_spatial_extent", "r2_bohr2"),
    "zpve": ("zpve_au", "zero_point_energy"),
    "U0": ("u_0", "energy_u0", "internal_energy_0k", "internalenergy_0k_au"),
    "U": ("u298", "u_298", "energy_u", "internal_energy", "internalenergy_298k_au"),
    "H": ("h298", "h_298", "enthalpy", "enthalpy_h", "enthalphy_298k_au"),
    "G": ("g298", "g_298", "free_energy", "gibbs_free_energy", "gibbsfreeenergy_298k_au"),
    "cv": ("c_v", "heat_capacity", "heatcapacity_cv_cal_mol_k"),
    "U0_atom": ("u_0_atom", "u0_atomization", "atomization_energy_u0"),
    "U_atom": ("u298_atom", "atomization_energy_u"),
    "H_atom": ("h298_atom", "atomization_enthalpy_h"),
    "G_atom": ("g298_atom", "atomization_free_energy"),
    "A": ("rot_a", "rota_ghz", "rotational_constant_a"),
    "B": ("rot_b", "rotb_ghz", "rotational_constant_b"),
    "C": ("rot_c", "rotc_ghz", "rotational_constant_c"),
}

_REF = np.zeros((10, 4))
for _z, _row in QM9_ATOMREF_HARTREE.items():
    _REF[_z] = _row
_HAS_REF = np.isin(np.arange(10), list(QM9_ATOMREF_HARTREE))


def _key(name: str) -> str:
    return re.sub(r"[^0-9a-z]", "", name.lower())


_LOOKUP = {_key(a): canon for canon, aliases in _ALIASES.items() for a in (canon, *aliases)}


def qm9_target_name(name: str | int) -> str:
    """Canonical QM9 target name for a name, alias or PyG index ('U_0', 'u0', 7 -> 'U0';
    'delta_eps', 'homo_lumo_gap' -> 'gap'). Case, '_', '-' and spaces are ignored."""
    if isinstance(name, int) or (isinstance(name, str) and name.strip().isdigit()):
        i = int(name)
        if 0 <= i < len(QM9_TARGETS):
            return QM9_TARGETS[i]
    elif isinstance(name, str) and _key(name) in _LOOKUP:
        return _LOOKUP[_key(name)]
    raise ConfigError(f"unknown QM9 target {name!r}", fix=f"use one of {', '.join(QM9_TARGETS)} or an index 0-18")


def qm9_float(text: str) -> float:
    """A float that may use Mathematica's exponent ('1.2*^-5'), as the raw QM9 files do."""
    return float(text.replace("*^", "e")) if "*^" in text else float(text)


def targets_from_hartree(values: list[float], numbers: np.ndarray) -> dict[str, float]:
    """The 19 targets from the raw QM9 properties (A, B, C GHz, mu D, alpha a0^3, homo, lumo, gap Ha,
    r2 a0^2, zpve, U0, U, H, G Ha, cv cal/mol K): Hartree -> eV, plus atomisation energies."""
    a, b, c, mu, alpha, homo, lumo, gap, r2, zpve, u0, u, h, g, cv = values
    out = {"mu": mu, "alpha": alpha, "r2": r2, "cv": cv, "A": a, "B": b, "C": c}
    for name, v in zip(("homo", "lumo", "gap", "zpve", "U0", "U", "H", "G"), (homo, lumo, gap, zpve, u0, u, h, g)):
        out[name] = v * HARTREE_TO_EV
    if numbers.size and numbers.max() < _REF.shape[0] and _HAS_REF[numbers].all():
        ref = _REF[numbers].sum(axis=0).tolist()
        for k, (name, v) in enumerate(zip(("U0_atom", "U_atom", "H_atom", "G_atom"), (u0, u, h, g))):
            out[name] = (v - ref[k]) * HARTREE_TO_EV
    return {name: float(out[name]) for name in QM9_TARGETS if name in out}


def qm9_record(numbers: np.ndarray, positions: np.ndarray, targets: dict, gdb: int | str, info: dict) -> Record:
    """A QM9 Record: no energy or forces, class_label = Hill formula, id = 'gdb_<N>'."""
    return Record(
        numbers=numbers,
        positions=positions,
        targets=targets,
        class_label=hill_formula(numbers),
        id=f"gdb_{gdb}",
        info=info,
    )


class QM9Base(Dataset):
    """Common metadata of the QM9 readers (target units)."""

    source_units: dict[str, str] = {
        "positions": "angstrom",
        "homo, lumo, gap, zpve, U0, U, H, G": "hartree",
        "mu": "debye",
        "alpha": "bohr^3",
        "r2": "bohr^2",
        "cv": "cal/(mol K)",
        "A, B, C": "GHz",
    }

    def resolve_target(self, name: str) -> str | None:
        """QM9 aliases: 'U_0' -> 'U0', 'delta_eps' -> 'gap', PyG indices '0'..'18'."""
        try:
            return qm9_target_name(name)
        except ConfigError:
            return None

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        meta["target_units"] = {name: QM9_TARGET_UNITS[name] for name in QM9_TARGETS}
        return meta


def qm9_split(n: int, split: str | None, path: Path) -> np.ndarray | None:
    """Rows of JMP's QM9 `split` (None: all rows)."""
    if split is None:
        return None
    if n <= QM9_VAL + QM9_TEST:
        raise DataError(
            f"JMP's QM9 split needs more than {QM9_VAL + QM9_TEST} molecules; this file holds {n}",
            file=path,
            fix="leave split out, or use the full QM9 file",
        )
    return jmp_split(n, n - QM9_VAL - QM9_TEST, QM9_VAL, split)


def qm9_id(name: Any, idx: Any, row: int) -> str:
    """Record id: the PyG item's name ('gdb_<N>'), else 'gdb_<idx + 1>', else 'qm9/<row>'."""
    if isinstance(name, str) and name:
        return name
    if idx is not None:
        return f"gdb_{int(np.asarray(idx).reshape(-1)[0]) + 1}"
    return f"qm9/{row}"
