"""rMD17 and sGDML (MD22 / MD17) npz readers: units, ids, splits, memory-mapping, detection, bad input."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _make_npz_qm9 import RMD17_Z, write_rmd17, write_sgdml
from atomsift.data import open_dataset
from atomsift.data.readers.rmd17 import NpzMembers, RMD17Dataset, jmp_split
from atomsift.data.readers.sgdml import SGDMLDataset, md22_train_size
from atomsift.errors import ConfigError, DataError

KCAL = 0.0433641  # eV per kcal/mol (docs/formats.md)
BOHR = 0.529177


@pytest.fixture
def rmd17(tmp_path: Path) -> tuple[Path, dict]:
    path = tmp_path / "rmd17_ethanol.npz"
    return path, write_rmd17(path, 1200)


# -- rMD17 ----------------------------------------------------------------------------------------
def test_rmd17_values_units_ids_labels(rmd17) -> None:
    path, raw = rmd17
    ds = open_dataset(path)  # detected, and old_* (an object array here) never read
    assert isinstance(ds, RMD17Dataset) and len(ds) == 1200
    for i in (0, 7, 1199):
        rec = ds[i]
        assert rec.id == f"ethanol/{i}" and rec.class_label == "ethanol"
        np.testing.assert_array_equal(rec.numbers, RMD17_Z)
        assert rec.numbers.dtype == np.int64 and rec.positions.dtype == np.float64
        np.testing.assert_array_equal(rec.positions, raw["coords"][i])
        assert rec.energy == pytest.approx(raw["energies"][i] * KCAL, rel=1e-12)
        assert isinstance(rec.energy, float)
        np.testing.assert_allclose(rec.forces, raw["forces"][i] * KCAL, rtol=1e-12)
        assert rec.cell is None and not rec.pbc.any()
    labels = ds.class_labels()
    assert labels.shape == (1200,) and set(labels) == {"ethanol"}
    meta = ds.metadata()
    assert meta["format"] == "rmd17" and meta["source_units"]["energy"] == "kcal/mol" and meta["molecule"] == "ethanol"


def test_rmd17_memory_maps_stored_members(rmd17) -> None:
    path, _ = rmd17
    ds = RMD17Dataset(path)
    ds[3]
    coords = ds.handle().array("coords")
    assert isinstance(coords.base, np.memmap)  # not loaded: a view of the file mapping
    assert not coords.flags.writeable


def test_rmd17_compressed_npz_reads_the_same(tmp_path: Path) -> None:
    plain, packed = tmp_path / "rmd17_a.npz", tmp_path / "rmd17_b.npz"
    write_rmd17(plain, 50, seed=3)
    write_rmd17(packed, 50, seed=3, compressed=True)
    a, b = RMD17Dataset(plain), RMD17Dataset(packed)
    for i in (0, 49):
        np.testing.assert_array_equal(a[i].positions, b[i].positions)
        np.testing.assert_array_equal(a[i].forces, b[i].forces)
        assert a[i].energy == b[i].energy


def test_jmp_split_matches_jmp_shuffle(rmd17) -> None:
    path, _ = rmd17
    order = np.arange(1200)
    np.random.RandomState(42).shuffle(order)  # what JMP's rmd17 download does
    parts = {s: RMD17Dataset(path, split=s) for s in ("train", "val", "test")}
    assert [len(parts[s]) for s in ("train", "val", "test")] == [950, 50, 200]
    frames = {s: ds.frame_indices() for s, ds in parts.items()}
    np.testing.assert_array_equal(np.concatenate([frames["train"], frames["val"], frames["test"]]), order)
    assert parts["val"][0].id == f"ethanol/{order[950]}"
    np.testing.assert_array_equal(jmp_split(1200, 950, 50, "test"), order[1000:])
    assert open_dataset(path, split="TRAIN").metadata()["split"] == "train"


def test_rmd17_split_file(rmd17, tmp_path: Path) -> None:
    path, raw = rmd17
    index_file = tmp_path / "index_train_01.csv"
    index_file.write_text("5\n17\n3\n")
    ds = RMD17Dataset(path, split_file=index_file)
    assert [r.id for r in ds] == ["ethanol/5", "ethanol/17", "ethanol/3"]
    np.testing.assert_array_equal(ds[1].positions, raw["coords"][17])
    index_file.write_text("5\n1200\n")
    with pytest.raises(DataError, match="index_train_01.csv") as err:
        RMD17Dataset(path, split_file=index_file)
    assert "out of range" in str(err.value)
    for bad in ("5\n7.5\n", "5\nseven\n"):
        index_file.write_text(bad)
        with pytest.raises(DataError, match="index_train_01.csv"):
            RMD17Dataset(path, split_file=index_file)


def test_rmd17_bad_options(rmd17) -> None:
    path, _ = rmd17
    with pytest.raises(ConfigError, match="split"):
        RMD17Dataset(path, split="holdout")
    with pytest.raises(ConfigError, match="exclude"):
        RMD17Dataset(path, split="train", split_file=path)
    with pytest.raises(ConfigError, match="not understood"):
        open_dataset(path, level="x")


def test_rmd17_pickles_into_workers(rmd17) -> None:
    path, raw = rmd17
    ds = RMD17Dataset(path)
    ds[0]
    clone = pickle.loads(pickle.dumps(ds))
    np.testing.assert_array_equal(clone[9].positions, raw["coords"][9])


def test_rmd17_missing_key(tmp_path: Path) -> None:
    path = tmp_path / "rmd17_toluene.npz"
    write_rmd17(path, 20, forces=None)
    with pytest.raises(DataError, match="rmd17_toluene.npz") as err:
        open_dataset(path)
    assert "'forces'" in str(err.value)


def test_rmd17_shape_mismatch_and_empty(tmp_path: Path) -> None:
    path = tmp_path / "rmd17_benzene.npz"
    write_rmd17(path, 20, energies=np.zeros(19))
    with pytest.raises(DataError, match="rmd17_benzene.npz") as err:
        RMD17Dataset(path)
    assert "energies (19,)" in str(err.value)
    write_rmd17(path, 0)
    with pytest.raises(DataError, match="no frames"):
        RMD17Dataset(path)


def test_truncated_npz(rmd17, tmp_path: Path) -> None:
    path, _ = rmd17
    cut = tmp_path / "rmd17_cut.npz"
    cut.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataError, match="rmd17_cut.npz"):
        open_dataset(cut)  # detected from the name although the zip is unreadable
    with pytest.raises(DataError, match="rmd17_cut.npz"):
        SGDMLDataset(cut)
    md22 = tmp_path / "md22_cut.npz"
    md22.write_bytes(cut.read_bytes())
    with pytest.raises(DataError, match="md22_cut.npz"):
        open_dataset(md22)


def test_npz_member_data_past_end_of_file(rmd17, tmp_path: Path) -> None:
    """A stored member whose data runs past the file end (central directory intact) is a DataError."""
    path, _ = rmd17
    npz = NpzMembers(path)
    offset = npz.header("forces")[3]
    data = bytearray(path.read_bytes())
    npz.close()
    shape_text = b"(1200, 9, 3)"
    start = data.index(shape_text, offset - 200)
    data[start : start + len(shape_text)] = b"(9999, 9, 3)"
    bad = tmp_path / "rmd17_bad.npz"
    bad.write_bytes(bytes(data))
    with pytest.raises(DataError, match="rmd17_bad.npz"):
        RMD17Dataset(bad)


# -- sGDML ----------------------------------------------------------------------------------------
def test_sgdml_values_units_ids(tmp_path: Path) -> None:
    path = tmp_path / "md22_AT-AT.npz"
    raw = write_sgdml(path, 30)
    ds = open_dataset(path)
    assert isinstance(ds, SGDMLDataset) and len(ds) == 30
    rec = ds[4]
    assert rec.id == "AT-AT/4" and rec.class_label == "AT-AT"
    np.testing.assert_array_equal(rec.numbers, [7, 6, 1, 1])
    np.testing.assert_array_equal(rec.positions, raw["R"][4])
    assert rec.energy == pytest.approx(raw["E"][4, 0] * KCAL, rel=1e-12)
    np.testing.assert_allclose(rec.forces, raw["F"][4] * KCAL, rtol=1e-12)
    assert set(ds.class_labels()) == {"AT-AT"}
    assert ds.metadata()["theory"] == "PBE+MBD, 500K"


def test_sgdml_flat_energy_and_stem_name(tmp_path: Path) -> None:
    path = tmp_path / "md17_aspirin.npz"
    raw = write_sgdml(path, 10, name=None, e_flat=True)
    ds = SGDMLDataset(path)
    assert ds[2].id == "aspirin/2" and ds[2].class_label == "aspirin"
    assert ds[2].energy == pytest.approx(raw["E"][2] * KCAL)


def test_sgdml_honours_units(tmp_path: Path) -> None:
    path = tmp_path / "md22_x.npz"
    raw = write_sgdml(path, 5, e_unit="eV", r_unit="bohr")
    rec = SGDMLDataset(path)[1]
    assert rec.energy == pytest.approx(raw["E"][1, 0])
    np.testing.assert_allclose(rec.positions, raw["R"][1] * BOHR)
    np.testing.assert_allclose(rec.forces, raw["F"][1] / BOHR)
    write_sgdml(path, 5, e_unit="furlongs")
    with pytest.raises(DataError, match="md22_x.npz"):
        SGDMLDataset(path)


def test_sgdml_object_name_entry(tmp_path: Path) -> None:
    path = tmp_path / "md22_obj.npz"
    write_sgdml(path, 5, name=np.array(["DHA"], dtype=object))  # needs pickle to load
    assert SGDMLDataset(path)[0].id == "DHA/0"


def test_sgdml_md22_split(tmp_path: Path) -> None:
    assert md22_train_size("AT-AT") == 3000 and md22_train_size("double-walled nanotube") == 800
    assert md22_train_size("aspirin") is None
    path = tmp_path / "md22_AT-AT.npz"
    write_sgdml(path, 3100)
    sizes = {s: len(SGDMLDataset(path, split=s)) for s in ("train", "val", "test")}
    assert sizes == {"train": 2850, "val": 150, "test": 100}
    order = np.arange(3100)
    np.random.RandomState(42).shuffle(order)
    np.testing.assert_array_equal(SGDMLDataset(path, split="val").frame_indices(), order[2850:3000])
    small = tmp_path / "md17_ethanol.npz"
    write_sgdml(small, 60, name="ethanol")
    with pytest.raises(ConfigError, match="train_size"):
        SGDMLDataset(small, split="train")
    assert len(SGDMLDataset(small, split="val", train_size=40)) == 2
    short = tmp_path / "md22_AT-AT-short.npz"
    write_sgdml(short, 60, name="AT-AT")  # JMP's AT-AT train size (3000) exceeds the file
    with pytest.raises(ConfigError, match="train_size 3000 leaves no test frames") as err:
        SGDMLDataset(short, split="train")
    assert "md22_AT-AT-short.npz" in str(err.value)


def test_sgdml_bad_input(tmp_path: Path) -> None:
    path = tmp_path / "md22_bad.npz"
    write_sgdml(path, 10, E=np.zeros((9, 1)))
    with pytest.raises(DataError, match="md22_bad.npz") as err:
        SGDMLDataset(path)
    assert "E (9, 1)" in str(err.value)
    write_sgdml(path, 10, F=None)
    with pytest.raises(DataError, match="md22_bad.npz") as err:
        SGDMLDataset(path)
    assert "'F'" in str(err.value)
    write_sgdml(path, 10, z=np.array([7, 6, 1]))
    with pytest.raises(DataError, match="z"):
        SGDMLDataset(path)
    write_sgdml(path, 10, lattice=10 * np.eye(3))  # a periodic set was read as molecules, without a word
    with pytest.raises(DataError, match="periodic sGDML dataset"):
        SGDMLDataset(path)


def test_sniff_tells_the_npz_formats_apart(tmp_path: Path) -> None:
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    write_rmd17(a, 3)
    write_sgdml(b, 3)
    assert RMD17Dataset.sniff(a) and not SGDMLDataset.sniff(a)
    assert SGDMLDataset.sniff(b) and not RMD17Dataset.sniff(b)
    other = tmp_path / "c.npz"
    np.savez(other, x=np.zeros(3))
    assert not RMD17Dataset.sniff(other) and not SGDMLDataset.sniff(other)
