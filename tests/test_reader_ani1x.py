"""ANI-1x reader: the real-schema fixture, NaN skipping, levels, blocks, detection and bad input."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _make_h5 import ani1x_group, spice_molecule, truncate_copy, write_ani1x, write_spice
from atomsift.data import open_dataset
from atomsift.data.readers._h5 import nan_rows
from atomsift.data.readers.ani1x import ANI1xDataset
from atomsift.errors import ConfigError, DataError

FIXTURE = Path(__file__).resolve().parent / "data" / "ani1x" / "ani1_n5.hdf5"  # real, see data/PROVENANCE.md
HARTREE = 27.211386


@pytest.fixture
def nan_file(tmp_path: Path) -> Path:
    """Three groups: one clean (600 conformers, crosses block edges), one with NaN rows, one all-NaN."""
    rng = np.random.default_rng(1)
    groups = {
        "C2H6N0O1": ani1x_group(rng, {"C": 2, "H": 6, "O": 1}, 600),
        "C1H4N0O0": ani1x_group(rng, {"C": 1, "H": 4}, 6, nan_energy=[1], nan_forces=[4]),
        "C0H2N0O1": ani1x_group(rng, {"H": 2, "O": 1}, 2, nan_energy=[0], nan_forces=[1]),
    }
    return write_ani1x(tmp_path / "nan.h5", groups)


def test_fixture_values_units_ids_labels() -> None:
    ds = open_dataset(FIXTURE)
    assert isinstance(ds, ANI1xDataset) and len(ds) == 8
    with h5py.File(FIXTURE, "r") as f:
        expected = [(g, c) for g in f for c in range(f[g]["coordinates"].shape[0])]
        assert [r.id for r in ds] == [f"{g}/{c}" for g, c in expected]
        for i, (g, c) in enumerate(expected):
            rec = ds[i]
            grp = f[g]
            assert rec.class_label == g
            assert rec.numbers.dtype == np.int64 and np.array_equal(rec.numbers, grp["atomic_numbers"][()])
            assert rec.positions.dtype == np.float64
            assert np.array_equal(rec.positions, grp["coordinates"][c].astype(np.float64))
            assert isinstance(rec.energy, float)
            assert rec.energy == pytest.approx(grp["wb97x_dz.energy"][c] * 27.211386, rel=1e-12)
            assert np.allclose(rec.forces, grp["wb97x_dz.forces"][c].astype(np.float64) * 27.211386, rtol=1e-12)
    assert list(ds.class_labels()) == [r.class_label for r in ds]
    meta = ds.metadata()
    assert meta["n_skipped_nan"] == 0 and meta["level"] == "wb97x_dz" and meta["source_units"]["energy"] == "hartree"


def test_fixture_other_levels() -> None:
    tz = open_dataset(FIXTURE, level="wb97x_tz")
    with h5py.File(FIXTURE, "r") as f:
        assert tz[0].energy == pytest.approx(f["C1H4N4O4/wb97x_tz.energy"][0] * HARTREE, rel=1e-12)
        assert np.allclose(tz[0].forces, f["C1H4N4O4/wb97x_tz.forces"][0] * HARTREE)
    cc = open_dataset(FIXTURE, format="ani1x", level="ccsd(t)_cbs")
    assert len(cc) == 6 and cc.metadata()["n_skipped_nan"] == 2  # two NaN rows in C1H6N2O5
    assert all(r.forces is None for r in cc)
    assert "C1H6N2O5/1" not in [r.id for r in cc] and "C1H6N2O5/0" in [r.id for r in cc]


def test_unknown_level_lists_levels() -> None:
    with pytest.raises(DataError) as err:
        open_dataset(FIXTURE, level="b3lyp_dz")
    text = str(err.value)
    assert FIXTURE.name in text and "wb97x_dz" in text and "ccsd(t)_cbs" in text


def test_nan_conformers_skipped_and_counted(nan_file: Path) -> None:
    ds = open_dataset(nan_file)
    assert len(ds) == 600 + 4
    assert ds.metadata()["n_skipped_nan"] == 4
    ids = [r.id for r in ds]
    # HDF5 lists groups by name: C0H2 (all NaN, dropped), C1H4, C2H6
    assert ids[:4] == ["C1H4N0O0/0", "C1H4N0O0/2", "C1H4N0O0/3", "C1H4N0O0/5"]
    assert ids[4] == "C2H6N0O1/0" and ids[-1] == "C2H6N0O1/599"
    assert "C0H2N0O1" not in set(ds.class_labels())
    with h5py.File(nan_file, "r") as f:
        assert ds[1].energy == pytest.approx(f["C1H4N0O0/wb97x_dz.energy"][2] * HARTREE, rel=1e-12)


def test_block_cache_sequential_random_reverse_agree(nan_file: Path) -> None:
    ds = open_dataset(nan_file)
    forward = [ds[i] for i in range(len(ds))]
    fresh = ANI1xDataset(nan_file)
    order = np.random.default_rng(0).permutation(len(ds))
    for i in list(order) + list(range(len(ds) - 1, -1, -1)):
        a, b = forward[i], fresh[int(i)]
        assert a.id == b.id and a.energy == b.energy
        assert np.array_equal(a.positions, b.positions) and np.array_equal(a.forces, b.forces)
    rec = ds[5]
    rec.positions[:] = 0.0  # records are copies: editing one must not change the cache
    assert not np.all(ds[5].positions == 0.0)


def test_pickle_reopens_in_copy(nan_file: Path) -> None:
    ds = open_dataset(nan_file)
    _ = ds[3]
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._block is None and clone[3].id == ds[3].id
    assert np.array_equal(clone[300].positions, ds[300].positions)
    ds.close()  # cached h5py objects die with the handle; the next read reopens
    ds._block = None
    assert np.array_equal(ds[300].positions, clone[300].positions)


def test_min_atoms_drops_small_formulas(nan_file: Path) -> None:
    ds = open_dataset(nan_file, min_atoms=6)  # C1H4 (5 atoms) and H2O (3) go
    assert len(ds) == 600 and set(ds.class_labels()) == {"C2H6N0O1"}
    assert ds.metadata()["n_groups_below_min_atoms"] == 2
    with pytest.raises(ConfigError):
        ANI1xDataset(nan_file, min_atoms=0)


def test_nan_rows_chunked_matches_full(nan_file: Path) -> None:
    with h5py.File(nan_file, "r") as f:
        dset = f["C1H4N0O0/wb97x_dz.forces"]
        expected = np.isnan(dset[()]).any(axis=(1, 2))
        assert np.array_equal(nan_rows(dset, nan_file, "x", budget=5), expected)  # one row per read


def test_sniff(tmp_path: Path, nan_file: Path) -> None:
    assert ANI1xDataset.sniff(nan_file)
    text = tmp_path / "not.h5"
    text.write_text("hello")
    assert not ANI1xDataset.sniff(text)
    spice = write_spice(tmp_path / "spice.h5", {"HH": spice_molecule(np.random.default_rng(0), [1, 1], 2)})
    assert not ANI1xDataset.sniff(spice)


def test_truncated_file_names_file(tmp_path: Path) -> None:
    bad = truncate_copy(FIXTURE, tmp_path / "ani1x_cut.h5")
    for kwargs in ({}, {"format": "ani1x"}):
        with pytest.raises(DataError) as err:
            open_dataset(bad, **kwargs)
        assert "ani1x_cut.h5" in str(err.value) and "truncated" in str(err.value)


def test_bad_layouts(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    good = ani1x_group(rng, {"C": 1, "H": 4}, 3)
    empty = write_ani1x(tmp_path / "empty.h5", {})
    with pytest.raises(DataError, match="empty.h5"):
        ANI1xDataset(empty)
    no_coords = {k: v for k, v in good.items() if k != "coordinates"}
    path = write_ani1x(tmp_path / "nocoords.h5", {"C1H4N0O0": good, "C1H4N0O1": no_coords})
    with pytest.raises(DataError) as err:
        ANI1xDataset(path)
    assert "coordinates" in str(err.value) and "C1H4N0O1" in str(err.value) and "nocoords.h5" in str(err.value)
    bad_shape = dict(good, **{"wb97x_dz.energy": np.zeros(5)})
    path = write_ani1x(tmp_path / "shape.h5", {"C1H4N0O0": bad_shape})
    with pytest.raises(DataError, match="shape.h5"):
        ANI1xDataset(path)
    all_nan = ani1x_group(rng, {"C": 1, "H": 4}, 2, nan_energy=[0, 1])
    path = write_ani1x(tmp_path / "allnan.h5", {"C1H4N0O0": all_nan})
    with pytest.raises(DataError, match="allnan.h5"):
        ANI1xDataset(path)
    with pytest.raises(ConfigError):
        open_dataset(FIXTURE, format="ani1x", basis="x")


def test_missing_forces_at_a_release_level_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "noforces.h5"
    with h5py.File(path, "w") as f:
        g = f.create_group("C1H4N0O0")
        g["atomic_numbers"] = np.array([6, 1, 1, 1, 1], dtype=np.uint8)
        g["coordinates"] = np.zeros((2, 5, 3), dtype=np.float32)
        g["wb97x_dz.energy"] = np.zeros(2)
    with pytest.raises(DataError, match="wb97x_dz.forces' is missing") as err:
        open_dataset(path)
    assert "noforces.h5" in str(err.value)
