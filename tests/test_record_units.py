from __future__ import annotations

import numpy as np
import pytest

from atomsift.data.record import Record
from atomsift.data.units import HARTREE_TO_EV, energy_factor, force_factor, length_factor
from atomsift.errors import DataError


def water(**kw) -> Record:
    base = dict(
        numbers=np.array([8, 1, 1]),
        positions=np.array([[0.0, 0, 0], [0.96, 0, 0], [-0.24, 0.93, 0]]),
        id="w/0",
        energy=-2079.0,
        forces=np.zeros((3, 3)),
    )
    base.update(kw)
    return Record(**base)


def test_unit_factors_match_formats_md():
    assert HARTREE_TO_EV == 27.211386
    assert energy_factor("Hartree") == 27.211386
    assert energy_factor("kcal/mol") == 0.0433641
    assert length_factor("bohr") == 0.529177
    assert force_factor("hartree/bohr") == pytest.approx(27.211386 / 0.529177, rel=1e-15)
    assert force_factor("kcal/mol/A") == 0.0433641
    assert force_factor("eV/Angstrom") == 1.0
    with pytest.raises(KeyError):
        energy_factor("furlong")


def test_valid_record_converts_to_atoms():
    atoms = water().to_atoms()
    assert atoms.get_chemical_formula() == "H2O"
    assert atoms.get_potential_energy() == -2079.0
    assert atoms.get_forces().shape == (3, 3)
    assert atoms.info["atomsift_id"] == "w/0"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"energy": float("nan")}, "energy is nan"),
        ({"forces": np.zeros((2, 3))}, "forces have shape"),
        ({"forces": np.full((3, 3), np.nan)}, "forces contain NaN"),
        ({"numbers": np.array([8, 1, 0])}, "unknown element with atomic number 0"),
        ({"numbers": np.array([8, 1, 119])}, "unknown element with atomic number 119"),
        ({"positions": np.full((3, 3), np.nan)}, "positions contain NaN"),
        ({"numbers": np.array([], dtype=int), "positions": np.zeros((0, 3))}, "expected \\(N,\\)"),
    ],
)
def test_invalid_records_name_file_and_record(change, message):
    with pytest.raises(DataError, match=message) as err:
        water(**change).validate("some/file.xyz")
    text = str(err.value)
    assert "some/file.xyz" in text and "w/0" in text and "Fix:" in text
