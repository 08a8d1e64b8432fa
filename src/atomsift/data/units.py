"""Unit constants and conversions. Readers convert to eV, eV/A and A; nothing else converts units."""

from __future__ import annotations

HARTREE_TO_EV = 27.211386
"""1 Hartree in eV (docs/formats.md)."""
KCAL_PER_MOL_TO_EV = 0.0433641
"""1 kcal/mol in eV (docs/formats.md; JMP divides by 23.061 instead, 0.04336 eV)."""
BOHR_TO_ANGSTROM = 0.529177
"""1 bohr in A (docs/formats.md)."""

_ENERGY = {
    "ev": 1.0,
    "hartree": HARTREE_TO_EV,
    "ha": HARTREE_TO_EV,
    "kcal/mol": KCAL_PER_MOL_TO_EV,
    "kcal mol-1": KCAL_PER_MOL_TO_EV,
    "mev": 1e-3,
}
_LENGTH = {"a": 1.0, "ang": 1.0, "angstrom": 1.0, "bohr": BOHR_TO_ANGSTROM, "nm": 10.0}


def _norm(unit: str) -> str:
    return unit.strip().lower().replace("**", "^").replace("å", "a")


def energy_factor(unit: str) -> float:
    """Factor that converts an energy in `unit` to eV (e.g. 'hartree' -> 27.211386)."""
    key = _norm(unit)
    if key not in _ENERGY:
        raise KeyError(f"unknown energy unit {unit!r}; known: {sorted(_ENERGY)}")
    return _ENERGY[key]


def length_factor(unit: str) -> float:
    """Factor that converts a length in `unit` to A (e.g. 'bohr' -> 0.529177)."""
    key = _norm(unit)
    if key not in _LENGTH:
        raise KeyError(f"unknown length unit {unit!r}; known: {sorted(_LENGTH)}")
    return _LENGTH[key]


def force_factor(unit: str) -> float:
    """Factor that converts a force (or gradient) in `unit` to eV/A.

    Accepts 'energy/length' forms: 'hartree/bohr', 'kcal/mol/A', 'eV/Angstrom', 'hartree/angstrom'.
    """
    key = _norm(unit)
    for energy in sorted(_ENERGY, key=len, reverse=True):
        if key.startswith(energy + "/"):
            return energy_factor(energy) / length_factor(key[len(energy) + 1 :])
    raise KeyError(f"unknown force unit {unit!r}; expected '<energy unit>/<length unit>'")
