"""OC20 / OC22 LMDB reader: real PyG 2.x pickles (both field namings), PyG < 2 pickles, bad input."""

from __future__ import annotations

import pickle
import sys
from pathlib import Path

import numpy as np
import pytest

from _make_oc import (
    frames,
    legacy_pickle,
    pyg_data,
    write_lmdb,
    write_oc20_mapping,
    write_oc22_metadata,
)
from atomsift.data import open_dataset
from atomsift.data.readers import pyg_pickle
from atomsift.data.readers.oc_lmdb import OCLmdbDataset
from atomsift.errors import ConfigError, DataError

torch = pytest.importorskip("torch")
pytest.importorskip("torch_geometric")


@pytest.fixture(scope="module")
def fr():
    return frames(7)


@pytest.fixture()
def oc20_dir(tmp_path, fr):
    """Two files, older writer (y/force): 4 + 3 records; metadata.npz beside them as in the release."""
    d = tmp_path / "s2ef"
    d.mkdir()
    write_lmdb(d / "data.0000.lmdb", [pyg_data(f, names="old") for f in fr[:4]])
    write_lmdb(d / "data.0001.lmdb", [pyg_data(f, names="old") for f in fr[4:]], length_key=False)
    np.savez(d / "metadata.npz", natoms=np.array([len(f["numbers"]) for f in fr]))
    return d


def check_record(rec, frame, name: str) -> None:
    assert rec.id == name
    np.testing.assert_array_equal(rec.numbers, frame["numbers"])
    assert rec.numbers.dtype == np.int64
    assert rec.positions.dtype == np.float64
    np.testing.assert_allclose(rec.positions, frame["positions"].astype(np.float32), rtol=0, atol=0)
    np.testing.assert_allclose(rec.cell, frame["cell"].astype(np.float32))
    assert rec.pbc.tolist() == [True, True, True]
    np.testing.assert_allclose(rec.forces, frame["forces"].astype(np.float32))
    np.testing.assert_array_equal(rec.tags, frame["tags"])
    np.testing.assert_array_equal(rec.fixed, frame["fixed"])
    assert rec.fixed.dtype == bool
    assert rec.info["sid"] == frame["sid"] and rec.info["fid"] == frame["fid"]
    assert rec.info["natoms"] == len(frame["numbers"])


def test_old_writer_two_files(oc20_dir, fr):
    ds = open_dataset(oc20_dir)  # detected
    assert isinstance(ds, OCLmdbDataset) and len(ds) == 7
    for i in range(7):
        rec = ds[i]
        name = f"data.0000.lmdb/{i}" if i < 4 else f"data.0001.lmdb/{i - 4}"
        check_record(rec, fr[i], name)
        assert isinstance(rec.energy, float) and rec.energy == pytest.approx(fr[i]["energy"], abs=0)
    assert ds[-1].id == "data.0001.lmdb/2"
    meta = ds.metadata()
    assert meta["energy_field"] == "y" and meta["forces_field"] == "force" and meta["n_files"] == 2
    assert ds.class_labels() is None


def test_new_writer_single_file(tmp_path, fr):
    path = write_lmdb(tmp_path / "oc22.lmdb", [pyg_data(f, names="new") for f in fr[:3]])
    ds = open_dataset(path)
    assert isinstance(ds, OCLmdbDataset) and len(ds) == 3
    for i in range(3):
        check_record(ds[i], fr[i], f"oc22.lmdb/{i}")
        assert ds[i].energy == pytest.approx(fr[i]["energy"])
    assert ds.metadata()["energy_field"] == "energy"
    atoms = ds[0].to_atoms()
    assert atoms.get_potential_energy() == pytest.approx(fr[0]["energy"])


def test_pyg1_pickle(tmp_path, fr):
    raw = legacy_pickle(fr[0])
    assert b"_store" not in raw and b"torch_geometric.data.data" in raw
    path = write_lmdb(tmp_path / "old.lmdb", [raw, legacy_pickle(fr[1])])
    ds = open_dataset(path, format="oc20")
    check_record(ds[1], fr[1], "old.lmdb/1")
    assert ds[0].energy == pytest.approx(fr[0]["energy"])


def test_no_labels_is2re_style(tmp_path, fr):
    path = write_lmdb(tmp_path / "is2re.lmdb", [pyg_data(fr[0], names="none")])
    rec = open_dataset(path)[0]
    assert rec.energy is None and rec.forces is None
    assert open_dataset(path).metadata()["energy_field"] == "none"


def test_without_torch_geometric(oc20_dir, fr, monkeypatch):
    """The stand-ins do the work: block torch_geometric (and torch) imports and read again."""
    monkeypatch.setitem(sys.modules, "torch_geometric", None)
    monkeypatch.setitem(sys.modules, "torch", None)  # plain CPU tensors decode with numpy alone
    ds = OCLmdbDataset(oc20_dir)
    check_record(ds[5], fr[5], "data.0001.lmdb/1")


def test_class_labels_oc20_and_oc22(tmp_path, oc20_dir, fr):
    sids = sorted({f["sid"] for f in fr})
    symbols = dict(zip(sids, ["Al8Cu8Se16", "Pt4", "Cu2O"]))
    m20 = write_oc20_mapping(tmp_path / "oc20_data_mapping.pkl", sids, [symbols[s] for s in sids])
    ds = open_dataset(oc20_dir, classes=m20)
    expected = [symbols[f["sid"]] for f in fr]
    assert list(ds.class_labels()) == expected
    assert [ds[i].class_label for i in range(7)] == expected
    assert ds.metadata()["classes_kind"] == "oc20"
    m22 = write_oc22_metadata(tmp_path / "oc22_metadata.pkl", sids, [symbols[s] for s in sids])
    ds22 = OCLmdbDataset(oc20_dir, classes=m22)
    assert list(ds22.class_labels()) == expected and ds22.metadata()["classes_kind"] == "oc22"


def test_class_label_missing_sid(tmp_path, oc20_dir, fr):
    m = write_oc20_mapping(tmp_path / "oc20_data_mapping.pkl", [fr[0]["sid"]], ["Pt"])
    ds = OCLmdbDataset(oc20_dir, classes=m)
    with pytest.raises(DataError, match=r"sid 2181547.*oc20_data_mapping\.pkl"):
        ds.class_labels()
    with pytest.raises(DataError, match="oc20_data_mapping.pkl"):
        ds[1]
    with pytest.raises(ConfigError, match="nope.pkl"):
        OCLmdbDataset(oc20_dir, classes=tmp_path / "nope.pkl")


def test_truncated_file(tmp_path, fr):
    d = tmp_path / "cut"
    d.mkdir()
    path = write_lmdb(d / "data.0000.lmdb", [pyg_data(f) for f in fr])
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="data.0000.lmdb") as err:
        open_dataset(d)
    assert "truncated" in str(err.value)
    path.write_bytes(data[:100])
    with pytest.raises(DataError, match="data.0000.lmdb"):
        open_dataset(d)


def test_value_not_data(tmp_path, fr):
    path = write_lmdb(tmp_path / "bad.lmdb", [pyg_data(fr[0]), {"pos": 1}, b"garbage bytes"])
    ds = open_dataset(path)
    ds[0]
    for key in ("1", "2"):
        with pytest.raises(DataError, match=rf"bad\.lmdb.*Record: bad\.lmdb/{key}"):
            ds[int(key)]


def put(path: Path, key: bytes, value: bytes) -> None:
    import lmdb

    env = lmdb.open(str(path), subdir=False, map_size=1 << 28)
    with env.begin(write=True) as txn:
        txn.put(key, value)
    env.close()


def test_missing_key_and_bad_length(tmp_path, fr):
    path = write_lmdb(tmp_path / "short.lmdb", [pyg_data(fr[0])])
    put(path, b"length", pickle.dumps(3))
    ds = open_dataset(path)
    with pytest.raises(DataError, match=r"key '1' is missing.*short\.lmdb"):
        ds[1]
    ds.close()  # py-lmdb >= 3 will not open a file for writing that is open for reading
    put(path, b"length", b"not a pickle")
    with pytest.raises(DataError, match=r"'length'.*short\.lmdb"):
        open_dataset(path)


def test_a_flat_cell_and_fractional_atomic_numbers_are_refused(tmp_path, fr):
    """A singular, non-zero cell was read as a molecule and atomic number 6.4 as carbon, both without a word."""
    flat, frac, molecule = (pyg_data(fr[i], names="new") for i in range(3))
    flat.cell[0, 1] = flat.cell[0, 0]
    frac.atomic_numbers[0] += 0.4
    molecule.cell[:] = 0
    ds = open_dataset(write_lmdb(tmp_path / "c.lmdb", [flat, frac, molecule]))
    with pytest.raises(DataError, match="zero volume"):
        ds[0]
    with pytest.raises(DataError, match="not whole numbers"):
        ds[1]
    assert ds[2].cell is None and not ds[2].pbc.any()  # all zeros: a molecule, as before


def test_wrong_forces_shape_and_empty(tmp_path, fr):
    d = pyg_data(fr[0], names="new")
    d.forces = d.forces[:-1]
    ds = open_dataset(write_lmdb(tmp_path / "f.lmdb", [d]))
    with pytest.raises(DataError, match=r"forces have shape.*f\.lmdb"):
        ds[0]
    empty = tmp_path / "empty"
    empty.mkdir()
    write_lmdb(empty / "data.0000.lmdb", [], length_key=False)
    with pytest.raises(DataError, match="no records"):
        open_dataset(empty)


def test_sniff(tmp_path, oc20_dir):
    assert OCLmdbDataset.sniff(oc20_dir) and OCLmdbDataset.sniff(oc20_dir / "data.0000.lmdb")
    other = tmp_path / "omat"
    other.mkdir()
    (other / "data.aselmdb").write_bytes(b"")
    assert not OCLmdbDataset.sniff(other) and not OCLmdbDataset.sniff(tmp_path / "x.aselmdb")


def test_pickles_into_workers(oc20_dir, fr):
    ds = OCLmdbDataset(oc20_dir)
    ds[0]
    clone = pickle.loads(pickle.dumps(ds))
    check_record(clone[6], fr[6], "data.0001.lmdb/2")


@pytest.mark.parametrize(
    "tensor",
    [
        "torch.arange(6, dtype=torch.float64)",
        "torch.tensor(2.5)",
        "torch.randn(3, 4).t()",
        "torch.randn(4, 5)[1:3, 2:]",
        "torch.zeros(0, 3)",
        "torch.tensor([True, False])",
        "torch.arange(4, dtype=torch.int32)",
        "torch.randn(3, dtype=torch.float16)",
        "torch.randn(3, dtype=torch.bfloat16)",
    ],
)
def test_tensor_decoding_matches_torch(tensor):
    t = eval(tensor)  # noqa: S307 - fixed test expressions
    got = pyg_pickle.loads(pickle.dumps(t))
    ref = t.float().numpy() if t.dtype == torch.bfloat16 else t.numpy()
    assert got.shape == ref.shape and got.dtype == ref.dtype
    np.testing.assert_array_equal(got, ref)


def _read_ids(ds, queue=None):
    ids = [ds[i].id for i in range(len(ds))]
    if queue is not None:
        queue.put(ids)
    return ids


def test_forked_worker_reopens_env(oc20_dir):
    """A forked worker (DataLoader's default on Linux) inherits the open handle and opens its own
    env; py-lmdb >= 3 forbids opening a file twice in one process, which the env registry handles."""
    import multiprocessing as mp

    ds = OCLmdbDataset(oc20_dir)
    other = OCLmdbDataset(oc20_dir)  # a second dataset on the same files in this process
    expected = _read_ids(ds)
    assert _read_ids(other) == expected
    ctx = mp.get_context("fork")
    queue = ctx.Queue()
    proc = ctx.Process(target=_read_ids, args=(ds, queue))  # fork: ds is inherited, not pickled
    proc.start()
    got = queue.get(timeout=30)
    proc.join(30)
    assert got == expected and proc.exitcode == 0
    assert _read_ids(ds) == expected


def test_tensor_needing_torch_without_torch(tmp_path, fr, monkeypatch):
    d = pyg_data(fr[0], names="new")
    d.forces = d.forces.to(torch.bfloat16)  # no numpy dtype: decoding goes through torch
    path = write_lmdb(tmp_path / "bf16.lmdb", [d])
    np.testing.assert_allclose(open_dataset(path)[0].forces, d.forces.float().numpy())
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(DataError, match=r"needs the module 'torch'.*bf16\.lmdb"):
        OCLmdbDataset(path)[0]
