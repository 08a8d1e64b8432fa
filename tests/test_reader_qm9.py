"""QM9 readers (raw xyz, PyG qm9_v3.pt, qm9pack CSVs): target names, units, ids, splits, bad input."""

from __future__ import annotations

import pickle
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _make_npz_qm9 import (
    QM9_XYZ_STARS,
    QM9PACK_HEADER,
    QM9PACK_ROWS,
    write_qm9pack_csv,
    write_tar,
)
from atomsift.data import open_dataset
from atomsift.data.readers import _qm9_common
from atomsift.data.readers.qm9 import (
    QM9_ATOMREF_HARTREE,
    QM9_TARGETS,
    QM9PackDataset,
    QM9PygDataset,
    QM9XyzDataset,
    qm9_target_name,
)
from atomsift.errors import ConfigError, DataError

HARTREE = 27.211386
FIXTURE = Path(__file__).resolve().parent / "data" / "qm9" / "first10.tar.bz2"  # real, see data/PROVENANCE.md
# line 2 of dsgdb9nsd_000001.xyz (CH4), from the release
CH4 = dict(A=157.7118, B=157.70997, C=157.70699, mu=0.0, alpha=13.21, homo=-0.3877, lumo=0.1171, gap=0.5048,
           r2=35.3641, zpve=0.044749, U0=-40.47893, U=-40.476062, H=-40.475117, G=-40.498597, cv=6.469)  # fmt: skip


def check_ch4(rec) -> None:
    """Record of gdb_1 (CH4) against the raw values converted independently."""
    assert rec.id == "gdb_1" and rec.class_label == "CH4" and rec.energy is None and rec.forces is None
    np.testing.assert_array_equal(rec.numbers, [6, 1, 1, 1, 1])
    np.testing.assert_allclose(rec.positions[0], [-0.0126981359, 1.0858041578, 0.0080009958])
    t = rec.targets
    assert list(t) == list(QM9_TARGETS)
    assert t["U0"] == pytest.approx(-1101.4878, abs=1e-4) and t["homo"] == pytest.approx(-10.5499, abs=1e-4)
    for name in ("homo", "lumo", "gap", "zpve", "U0", "U", "H", "G"):
        assert t[name] == pytest.approx(CH4[name] * HARTREE, rel=1e-12)
    for name in ("A", "B", "C", "mu", "alpha", "r2", "cv"):
        assert t[name] == pytest.approx(CH4[name], rel=1e-12)
    # atomisation: U0 - (C + 4 H) free-atom energies; MoleculeNet's value is -395.999595 kcal/mol
    assert t["U0_atom"] == pytest.approx((-40.47893 + 37.846772 + 4 * 0.500273) * HARTREE, rel=1e-9)
    assert t["U0_atom"] == pytest.approx(-395.999595 * 0.04336414, abs=2e-3)


# -- names and references -------------------------------------------------------------------------
def test_target_names_and_aliases() -> None:
    assert qm9_target_name("U0") == qm9_target_name("U_0") == qm9_target_name("u0") == qm9_target_name(7) == "U0"
    assert qm9_target_name("delta_eps") == qm9_target_name("homo_lumo_gap") == qm9_target_name("gap") == "gap"
    assert qm9_target_name("eps_HOMO") == "homo" and qm9_target_name("R_2_Abs") == "r2"
    assert qm9_target_name("U_0_ATOM") == "U0_atom" and qm9_target_name("c_v") == "cv" and qm9_target_name("18") == "C"
    assert qm9_target_name("c") == "C" and qm9_target_name("H") == "H" and qm9_target_name("Cv") == "cv"
    assert [qm9_target_name(i) for i in range(19)] == list(QM9_TARGETS)
    for bad in ("band_gap_xyz", 19, -1):
        with pytest.raises(ConfigError):
            qm9_target_name(bad)


def test_atomrefs_match_pyg() -> None:
    pyg = pytest.importorskip("torch_geometric.datasets.qm9")
    for k, target in enumerate((7, 8, 9, 10)):  # PyG's atomrefs for U0, U, H, G in eV, H C N O F
        for z, ref_ev in zip((1, 6, 7, 8, 9), pyg.atomrefs[target]):
            # same numbers up to the Hartree-to-eV constant PyG's table was made with (~1e-8 relative)
            assert QM9_ATOMREF_HARTREE[z][k] * pyg.HAR2EV == pytest.approx(ref_ev, rel=2e-8)


# -- raw xyz --------------------------------------------------------------------------------------
def test_xyz_tarball_fixture() -> None:
    ds = open_dataset(FIXTURE)
    assert isinstance(ds, QM9XyzDataset) and len(ds) == 10
    check_ch4(ds[0])
    assert [r.id for r in ds] == [f"gdb_{i}" for i in range(1, 11)]
    assert list(ds.class_labels()) == ["CH4", "H3N", "H2O", "C2H2", "CHN", "CH2O", "C2H6", "CH4O", "C3H4", "C2H3N"]
    assert ds[6].info["smiles"] == "CC"
    assert ds.metadata()["target_units"]["U0"] == "eV"


def test_xyz_directory_file_and_plain_tar(tmp_path: Path) -> None:
    with tarfile.open(FIXTURE) as tar:
        tar.extractall(tmp_path / "xyz", filter="data")
    folder = next(p.parent for p in (tmp_path / "xyz").rglob("dsgdb9nsd_000001.xyz"))
    (folder / "readme.txt").write_text("not a molecule")
    ds_dir = open_dataset(folder)
    assert isinstance(ds_dir, QM9XyzDataset) and len(ds_dir) == 10
    check_ch4(ds_dir[0])
    single = open_dataset(folder / "dsgdb9nsd_000001.xyz")
    assert isinstance(single, QM9XyzDataset) and len(single) == 1
    check_ch4(single[0])
    files = {f"qm9/{p.name}": p.read_bytes() for p in sorted(folder.glob("dsgdb9nsd_*.xyz"), reverse=True)}
    plain = write_tar(tmp_path / "qm9.tar", files)
    ds_tar = open_dataset(plain)
    assert ds_tar._offsets is not None and len(ds_tar) == 10  # read at member offsets, sorted by name
    check_ch4(ds_tar[0])
    clone = pickle.loads(pickle.dumps(ds_tar))
    np.testing.assert_array_equal(clone[9].positions, ds_dir[9].positions)


def test_xyz_mathematica_exponents(tmp_path: Path) -> None:
    path = tmp_path / "dsgdb9nsd_000007.xyz"
    path.write_text(QM9_XYZ_STARS)
    rec = open_dataset(path)[0]
    assert rec.id == "gdb_7" and rec.class_label == "H2O"
    assert rec.targets["A"] == 100.0 and rec.targets["mu"] == pytest.approx(0.15)
    assert rec.positions[1, 2] == pytest.approx(1.5346341e-3)
    gz = write_tar(tmp_path / "stars.tar.gz", {"dsgdb9nsd_000007.xyz": QM9_XYZ_STARS.encode()}, "w:gz")
    assert open_dataset(gz)[0].targets["U0"] == pytest.approx(-76.404702 * HARTREE)


def test_xyz_bad_input(tmp_path: Path) -> None:
    bad = tmp_path / "dsgdb9nsd_000003.xyz"
    bad.write_text("\n".join(QM9_XYZ_STARS.splitlines()[:3]))  # atom lines cut off
    ds = QM9XyzDataset(bad)
    with pytest.raises(DataError, match="dsgdb9nsd_000003.xyz"):
        ds[0]
    bad.write_text("3\nnot a property line\n")
    with pytest.raises(DataError, match="dsgdb9nsd_000003.xyz"):
        QM9XyzDataset(bad)[0]
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="empty"):
        QM9XyzDataset(empty)
    cut = tmp_path / "qm9.tar.bz2"
    write_tar(cut, {f"dsgdb9nsd_{i:06d}.xyz": QM9_XYZ_STARS.encode() * 20 for i in range(1, 40)}, "w:bz2")
    cut.write_bytes(cut.read_bytes()[:300])
    with pytest.raises(DataError, match="qm9.tar.bz2"):
        open_dataset(cut)


# -- PyG qm9_v3.pt --------------------------------------------------------------------------------
def pyg_items(n: int = 4, *, with_name: bool = True) -> list[dict]:
    rng = np.random.default_rng(0)
    items = []
    for i in range(n):
        z = torch.tensor([6, 1, 1, 1, 1] if i % 2 == 0 else [8, 1, 1])
        item = {
            "x": torch.zeros(len(z), 11),
            "edge_index": torch.zeros(2, 4, dtype=torch.long),
            "edge_attr": torch.zeros(4, 4),
            "y": torch.tensor(rng.normal(size=(1, 19)), dtype=torch.float32),
            "pos": torch.tensor(rng.normal(size=(len(z), 3)), dtype=torch.float32),
            "z": z,
            "idx": torch.tensor([i + 10]),
        }
        if with_name:
            item["name"] = f"gdb_{i + 11}"
        items.append(item)
    return items


def test_pyg_values_ids_detection(tmp_path: Path) -> None:
    items = pyg_items()
    path = tmp_path / "qm9_v3.pt"
    torch.save(items, path)
    ds = open_dataset(path)
    assert isinstance(ds, QM9PygDataset) and len(ds) == 4
    assert ds._index is not None  # indexed without torch.load, read through a memory map
    rec = ds[2]
    assert rec.id == "gdb_13" and rec.class_label == "CH4" and rec.energy is None
    np.testing.assert_allclose(rec.positions, items[2]["pos"].numpy())
    assert list(rec.targets) == list(QM9_TARGETS)
    np.testing.assert_allclose([rec.targets[k] for k in QM9_TARGETS], items[2]["y"].numpy()[0])
    assert list(ds.class_labels()) == ["CH4", "H2O", "CH4", "H2O"]
    other = tmp_path / "raw.pt"  # no 'qm9' in the name: detected from the pickle's keys
    torch.save(pyg_items(with_name=False), other)
    ds2 = open_dataset(other)
    assert isinstance(ds2, QM9PygDataset) and ds2[0].id == "gdb_11"  # idx + 1
    assert pickle.loads(pickle.dumps(ds2))[1].id == "gdb_12"


def test_pyg_legacy_format_reads_the_same(tmp_path: Path) -> None:
    items = pyg_items(6, with_name=False)
    fast, slow = tmp_path / "qm9_v3.pt", tmp_path / "qm9_legacy.pt"
    torch.save(items, fast)
    torch.save(items, slow, _use_new_zipfile_serialization=False)
    a, b = QM9PygDataset(fast), QM9PygDataset(slow)
    assert a._index is not None and b._index is None
    for i in range(6):
        ra, rb = a[i], b[i]
        assert ra.id == rb.id == f"gdb_{i + 11}" and type(ra.id) is str
        np.testing.assert_array_equal(ra.numbers, rb.numbers)
        np.testing.assert_array_equal(ra.positions, rb.positions)
        assert ra.targets == rb.targets
    assert list(a.class_labels()) == list(b.class_labels())


def test_pyg_data_objects_need_allow_pickle(tmp_path: Path) -> None:
    from torch_geometric.data import Data

    path = tmp_path / "qm9_data.pt"
    torch.save([Data(**item) for item in pyg_items(2)], path)
    with pytest.raises(DataError, match="allow_pickle"):
        QM9PygDataset(path)
    assert QM9PygDataset(path, allow_pickle=True)[1].id == "gdb_12"


def test_pyg_bad_input(tmp_path: Path) -> None:
    path = tmp_path / "qm9_bad.pt"
    items = pyg_items(2)
    del items[1]["y"]
    torch.save(items, path)
    with pytest.raises(DataError, match="qm9_bad.pt") as err:
        QM9PygDataset(path)[1]
    assert "'y'" in str(err.value)
    items = pyg_items(1)
    items[0]["y"] = torch.zeros(1, 12)
    torch.save(items, path)
    with pytest.raises(DataError, match="expected 19"):
        QM9PygDataset(path)[0]
    torch.save([], path)
    with pytest.raises(DataError, match="no molecules"):
        QM9PygDataset(path)
    torch.save({"z": torch.zeros(3)}, path)
    with pytest.raises(DataError, match="list"):
        QM9PygDataset(path)
    good = tmp_path / "qm9_good.pt"
    torch.save(pyg_items(50), good)
    cut = tmp_path / "qm9_cut.pt"
    cut.write_bytes(good.read_bytes()[:2000])
    with pytest.raises(DataError, match="qm9_cut.pt"):
        QM9PygDataset(cut)


def test_qm9_jmp_split(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "qm9_v3.pt"
    torch.save(pyg_items(30), path)
    with pytest.raises(DataError, match="split"):
        QM9PygDataset(path, split="train")
    monkeypatch.setattr(_qm9_common, "QM9_VAL", 5)
    monkeypatch.setattr(_qm9_common, "QM9_TEST", 4)
    order = np.arange(30)
    np.random.RandomState(42).shuffle(order)  # JMP's QM9 download
    parts = {s: QM9PygDataset(path, split=s) for s in ("train", "val", "test")}
    assert [len(parts[s]) for s in ("train", "val", "test")] == [21, 5, 4]
    assert [r.id for r in parts["val"]] == [f"gdb_{i + 11}" for i in order[21:26]]


# -- qm9pack --------------------------------------------------------------------------------------
@pytest.fixture
def pack_dir(tmp_path: Path) -> Path:
    folder = tmp_path / "data"
    folder.mkdir()
    write_qm9pack_csv(folder / "qm9_part1.csv", [QM9PACK_ROWS[1], QM9PACK_ROWS[2]])
    write_qm9pack_csv(folder / "qm9_part2.csv", [QM9PACK_ROWS[184]])
    (folder / "qm9_polarizability.csv").write_text("XYZ_file,A_xx\n")
    return folder


def test_qm9pack_values_and_order(pack_dir: Path) -> None:
    ds = open_dataset(pack_dir)
    assert isinstance(ds, QM9PackDataset) and len(ds) == 3
    check_ch4(ds[0])
    rec = ds[2]
    assert rec.id == "gdb_184" and rec.class_label == "CF4" and rec.info["smiles"] == "FC(F)(F)F"
    np.testing.assert_array_equal(rec.numbers, [9, 6, 9, 9, 9])
    assert "U0_atom" in rec.targets  # F has a reference energy
    assert list(ds.class_labels()) == ["CH4", "H3N", "CF4"]
    single = open_dataset(pack_dir / "qm9_part2.csv")
    assert isinstance(single, QM9PackDataset) and single[0].id == "gdb_184"
    assert pickle.loads(pickle.dumps(ds))[1].id == "gdb_2"


def test_qm9pack_agrees_with_raw_xyz(pack_dir: Path) -> None:
    xyz, pack = open_dataset(FIXTURE), open_dataset(pack_dir)
    for i in (0, 1):
        a, b = xyz[i], pack[i]
        assert a.id == b.id and a.class_label == b.class_label
        np.testing.assert_allclose(a.positions, b.positions, atol=1e-10)
        for name in QM9_TARGETS:
            assert a.targets[name] == pytest.approx(b.targets[name], rel=1e-12, abs=1e-12)


def test_qm9pack_installed_package(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    site = tmp_path / "site"
    data = site / "qm9pack" / "data"
    data.mkdir(parents=True)
    (site / "qm9pack" / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    write_qm9pack_csv(data / "qm9_part1.csv", [QM9PACK_ROWS[1]])
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.syspath_prepend(str(site))
    assert QM9PackDataset.sniff(Path("qm9pack"))
    ds = open_dataset("qm9pack", format="qm9pack")
    assert ds.path == data and ds[0].id == "gdb_1"
    import importlib.util

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match="pip install qm9pack"):
        QM9PackDataset("qm9pack")


def test_qm9pack_bad_input(tmp_path: Path) -> None:
    path = tmp_path / "qm9_part1.csv"
    write_qm9pack_csv(path, [QM9PACK_ROWS[1]], header=QM9PACK_HEADER.replace("HOMO_au", "HOMO"))
    with pytest.raises(DataError, match="qm9_part1.csv") as err:
        QM9PackDataset(path)
    assert "HOMO_au" in str(err.value)
    write_qm9pack_csv(path, [QM9PACK_ROWS[1].replace('",5,"[4,1', '",6,"[4,1')])  # N_atoms 6 for 5 atoms
    with pytest.raises(DataError, match="qm9_part1.csv"):
        QM9PackDataset(path)[0]
    write_qm9pack_csv(path, [])
    with pytest.raises(DataError, match="no rows"):
        QM9PackDataset(path)
    empty = tmp_path / "nothing"
    empty.mkdir()
    with pytest.raises(DataError, match="qm9_part"):
        QM9PackDataset(empty)
