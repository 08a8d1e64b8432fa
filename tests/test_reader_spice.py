"""SPICE reader: the real fixture (units from attrs, force = -gradient), unit handling, NaN, bad input."""

from __future__ import annotations

import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _make_h5 import spice_molecule, truncate_copy, write_spice
from atomsift.data import open_dataset
from atomsift.data.readers.ani1x import ANI1xDataset
from atomsift.data.readers.spice import SpiceDataset
from atomsift.errors import DataError

FIXTURE = Path(__file__).resolve().parent / "data" / "spice" / "SPICE-1.1.4_n2.hdf5"  # real, see data/PROVENANCE.md


def test_fixture_units_attrs_are_the_release_units() -> None:
    with h5py.File(FIXTURE, "r") as f:
        for name in f:
            assert f[name]["conformations"].attrs["units"] == "bohr"
            assert f[name]["dft_total_energy"].attrs["units"] == "hartree"
            assert f[name]["dft_total_gradient"].attrs["units"] == "hartree/bohr"
            assert f[name]["formation_energy"].attrs["units"] == "hartree"


def test_fixture_force_sign_and_conversions() -> None:
    ds = open_dataset(FIXTURE)
    assert isinstance(ds, SpiceDataset) and len(ds) == 50 + 5
    with h5py.File(FIXTURE, "r") as f:
        names = list(f)
        for i in (0, 17, 49, 50, 54):
            rec = ds[i]
            name, conf = rec.id.rsplit("/", 1)
            grp, c = f[name], int(conf)
            assert name == names[0 if i < 50 else 1] and rec.class_label == name
            grad = grp["dft_total_gradient"][c].astype(np.float64)
            assert np.allclose(rec.forces, -grad * 27.211386 / 0.529177, rtol=1e-12, atol=0)
            assert np.all(np.sign(rec.forces[grad != 0]) == -np.sign(grad[grad != 0]))
            assert np.allclose(rec.positions, grp["conformations"][c].astype(np.float64) * 0.529177, rtol=1e-12)
            assert rec.energy == pytest.approx(grp["dft_total_energy"][c] * 27.211386, rel=1e-12)
            assert rec.targets["formation_energy"] == pytest.approx(grp["formation_energy"][c] * 27.211386, rel=1e-12)
            assert rec.numbers.dtype == np.int64 and np.array_equal(rec.numbers, grp["atomic_numbers"][()])
            assert rec.info["subset"] == grp["subset"][0].decode()
            assert rec.info["smiles"] == grp["smiles"][0].decode()
    assert ds[54].id == "C#C.[Na+]/4" and ds[54].info["subset"].startswith("SPICE DES370K")
    assert list(ds.class_labels()) == [r.class_label for r in ds]
    meta = ds.metadata()
    assert meta["units_defaulted"] == {} and meta["units_seen"]["dft_total_gradient: hartree/bohr"] == 2


def test_other_units_missing_units_and_unknown_units(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    mols = {"water": spice_molecule(rng, [8, 1, 1], 3)}
    ev = write_spice(
        tmp_path / "ev.h5",
        mols,
        {"conformations": "angstrom", "dft_total_energy": "eV", "dft_total_gradient": "eV/angstrom"},
    )
    rec = SpiceDataset(ev)[1]
    assert np.allclose(rec.positions, mols["water"]["conformations"][1])
    assert rec.energy == mols["water"]["dft_total_energy"][1]
    assert np.allclose(rec.forces, -mols["water"]["dft_total_gradient"][1].astype(np.float64))
    bare = write_spice(tmp_path / "bare.h5", mols, {"conformations": None, "dft_total_gradient": None})
    ds = SpiceDataset(bare)
    assert ds.metadata()["units_defaulted"] == {"conformations": 1, "dft_total_gradient": 1}
    assert np.allclose(ds[0].positions, mols["water"]["conformations"][0] * 0.529177)
    furlong = write_spice(tmp_path / "furlong.h5", mols, {"conformations": "furlong"})
    with pytest.raises(DataError) as err:
        SpiceDataset(furlong)
    text = str(err.value)
    assert "furlong.h5" in text and "/water/conformations" in text and "'furlong'" in text


def test_nan_skipped_and_missing_gradient(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    a = spice_molecule(rng, [6, 1, 1, 1, 1], 300)
    a["dft_total_energy"][3] = np.nan
    a["dft_total_gradient"][7, 2, 0] = np.nan
    b = spice_molecule(rng, [1, 1], 2)
    del b["dft_total_gradient"], b["formation_energy"]
    path = write_spice(tmp_path / "nan.h5", {"methane": a, "hydrogen": b})
    with pytest.raises(DataError, match="2 conformer\\(s\\) have a NaN") as err:
        SpiceDataset(path)  # NaN is bad input unless the user asks to skip it
    assert "nan.h5" in str(err.value) and "methane/3" in str(err.value) and "skip_nan=true" in str(err.value)
    ds = open_dataset(path, skip_nan=True)
    assert len(ds) == 2 + 298 and ds.metadata()["n_skipped_nan"] == 2
    ids = [r.id for r in ds]
    assert ids[:2] == ["hydrogen/0", "hydrogen/1"] and "methane/3" not in ids and "methane/7" not in ids
    assert ds[0].forces is None and ds[0].targets == {} and ds.metadata()["n_molecules_without_gradient"] == 1
    again = SpiceDataset(ds.path, skip_nan=True)
    for i in np.random.default_rng(2).permutation(len(ds))[:50]:
        assert again[int(i)].id == ids[i] and np.array_equal(again[int(i)].positions, ds[int(i)].positions)


def test_bad_layouts(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    mol = spice_molecule(rng, [1, 1], 2)
    del mol["dft_total_energy"]
    path = write_spice(tmp_path / "noenergy.h5", {"h2": mol})
    with pytest.raises(DataError) as err:
        SpiceDataset(path)
    assert "noenergy.h5" in str(err.value) and "dft_total_energy" in str(err.value)
    mol = spice_molecule(rng, [1, 1], 2)
    mol["dft_total_gradient"] = mol["dft_total_gradient"][:, :1]
    with pytest.raises(DataError, match="grad.h5"):
        SpiceDataset(write_spice(tmp_path / "grad.h5", {"h2": mol}))
    with h5py.File(tmp_path / "empty.h5", "w"):
        pass
    with pytest.raises(DataError, match="empty.h5"):
        SpiceDataset(tmp_path / "empty.h5")


def test_sniff_and_truncation(tmp_path: Path) -> None:
    assert SpiceDataset.sniff(FIXTURE) and not ANI1xDataset.sniff(FIXTURE)
    bad = truncate_copy(FIXTURE, tmp_path / "spice_cut.hdf5")
    for kwargs in ({}, {"format": "spice"}):
        with pytest.raises(DataError) as err:
            open_dataset(bad, **kwargs)
        assert "spice_cut.hdf5" in str(err.value) and "truncated" in str(err.value)
