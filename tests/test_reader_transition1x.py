"""Transition-1x reader: /data and SoftLink splits, ids, classes, subgroups not counted, bad input."""

from __future__ import annotations

import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _make_h5 import T1X_ENERGY, T1X_FORCES, t1x_reaction, truncate_copy, write_transition1x
from atomsift.data import open_dataset
from atomsift.data.readers.ani1x import ANI1xDataset
from atomsift.data.readers.spice import SpiceDataset
from atomsift.data.readers.transition1x import Transition1xDataset
from atomsift.errors import ConfigError, DataError

REF = {1: -13.62222753701504, 6: -1029.4130839658328, 7: -1484.8710358098756, 8: -2041.8396277138045}


def _reactions(rng: np.random.Generator) -> dict:
    return {
        "C2H4O": {
            "rxn0001": t1x_reaction(rng, [6, 6, 8, 1, 1, 1, 1], 7),
            "rxn0002": t1x_reaction(rng, [6, 6, 8, 1, 1, 1, 1], 300),
        },
        "CH2O2": {"rxn0100": t1x_reaction(rng, [6, 8, 8, 1, 1], 5)},
        "H2N2": {"rxn0200": t1x_reaction(rng, [7, 7, 1, 1], 4)},
    }


@pytest.fixture
def t1x_file(tmp_path: Path) -> Path:
    splits = {"train": ["C2H4O"], "val": ["CH2O2"], "test": ["H2N2"]}
    return write_transition1x(tmp_path / "transition1x.h5", _reactions(np.random.default_rng(0)), splits)


def test_all_path_frames_ids_labels_values(t1x_file: Path) -> None:
    ds = open_dataset(t1x_file)
    assert isinstance(ds, Transition1xDataset)
    assert len(ds) == 7 + 300 + 5 + 4  # subgroups reactant/transition_state/product add nothing
    ids = [r.id for r in ds]
    assert ids[0] == "C2H4O/rxn0001/0" and ids[7] == "C2H4O/rxn0002/0" and ids[-1] == "H2N2/rxn0200/3"
    assert len(set(ids)) == len(ids)
    labels = ds.class_labels()
    assert list(labels) == [r.class_label for r in ds] and labels[0] == "C2H4O" and labels[-1] == "H2N2"
    with h5py.File(t1x_file, "r") as f:
        for i in (0, 6, 7, 150, 306, 312, 315):
            formula, rxn, frame = ds[i].id.split("/")
            grp = f[f"data/{formula}/{rxn}"]
            rec = ds[i]
            assert rec.energy == grp[T1X_ENERGY][int(frame)]  # already eV
            assert np.array_equal(rec.forces, grp[T1X_FORCES][int(frame)])
            assert np.array_equal(rec.positions, grp["positions"][int(frame)])
            assert rec.numbers.dtype == np.int64 and np.array_equal(rec.numbers, grp["atomic_numbers"][()])
            reference = sum(REF[int(z)] for z in grp["atomic_numbers"][()])
            assert rec.targets["atomization_energy"] == pytest.approx(rec.energy - reference, abs=1e-9)
    meta = ds.metadata()
    assert meta["n_reactions"] == 4 and meta["n_formulas"] == 3 and meta["source_units"]["energy"] == "eV"


def test_splits_follow_softlinks(t1x_file: Path) -> None:
    full = {r.id: r for r in open_dataset(t1x_file)}
    train = open_dataset(t1x_file, split="train")
    val = open_dataset(t1x_file, format="t1x", split="val")
    test = open_dataset(t1x_file, split="test")
    assert len(train) == 307 and len(val) == 5 and len(test) == 4
    assert set(train.class_labels()) == {"C2H4O"}
    for rec in list(train)[:10] + list(val):
        assert rec.id in full and rec.energy == full[rec.id].energy
    assert len(open_dataset(t1x_file, split="data")) == len(full)


def test_block_reads_agree_in_any_order(t1x_file: Path) -> None:
    ds = Transition1xDataset(t1x_file)
    forward = [ds[i] for i in range(len(ds))]
    other = Transition1xDataset(t1x_file)
    for i in np.random.default_rng(3).permutation(len(ds))[:100]:
        assert other[int(i)].id == forward[i].id
        assert np.array_equal(other[int(i)].positions, forward[i].positions)


def test_missing_and_bad_split(tmp_path: Path) -> None:
    path = write_transition1x(tmp_path / "t1x_nosplit.h5", _reactions(np.random.default_rng(1)), {"train": ["C2H4O"]})
    with pytest.raises(DataError) as err:
        open_dataset(path, split="test")
    assert "t1x_nosplit.h5" in str(err.value) and "train" in str(err.value) and "/test" in str(err.value)
    with pytest.raises(ConfigError):
        Transition1xDataset(path, split="training")


def test_dangling_link_and_bad_shapes(tmp_path: Path) -> None:
    path = write_transition1x(tmp_path / "dangling.h5", _reactions(np.random.default_rng(2)), {"val": ["C2H4O"]})
    with h5py.File(path, "a") as f:
        f["val"]["C9H9"] = h5py.SoftLink("/data/C9H9")
    with pytest.raises(DataError, match="dangling.h5"):
        open_dataset(path, split="val")
    rxn = t1x_reaction(np.random.default_rng(3), [1, 1], 3)
    rxn[T1X_ENERGY] = np.zeros(2)
    path = write_transition1x(tmp_path / "shape.h5", {"H2": {"rxn0": rxn}})
    ds = open_dataset(path)  # shapes of energy/forces are checked when the reaction is read
    with pytest.raises(DataError) as err:
        ds[0]
    assert "shape.h5" in str(err.value) and "H2/rxn0/0" in str(err.value)
    with h5py.File(tmp_path / "empty.h5", "w") as f:
        f.create_group("data")
    with pytest.raises(DataError, match="empty.h5"):
        Transition1xDataset(tmp_path / "empty.h5")


def test_sniff_and_truncation(tmp_path: Path, t1x_file: Path) -> None:
    assert Transition1xDataset.sniff(t1x_file)
    assert not ANI1xDataset.sniff(t1x_file) and not SpiceDataset.sniff(t1x_file)
    bad = truncate_copy(t1x_file, tmp_path / "t1x_cut.h5")
    with pytest.raises(DataError) as err:
        open_dataset(bad)
    assert "t1x_cut.h5" in str(err.value) and "truncated" in str(err.value)
