"""QMOF, MatBench, pymatgen dicts and the bundled adsorbates-on-metals JSON."""

from __future__ import annotations

import gzip
import json

import numpy as np
import pytest

from _make_materials import CRYSTALS, expected_positions, make_folds, make_matbench, make_qmof, structure_dict
from atomsift.data import detect_format, open_dataset
from atomsift.data.readers import matbench as matbench_module
from atomsift.data.readers.matbench import MatbenchDataset
from atomsift.data.readers.pymatgen_dict import clear_json_cache, structure_from_dict
from atomsift.data.readers.qmof import QMOFDataset
from atomsift.errors import ConfigError, DataError


@pytest.fixture(autouse=True)
def _fresh_cache():
    clear_json_cache()
    yield
    clear_json_cache()


# -- pymatgen dicts -------------------------------------------------------------------------------
def test_structure_dict_xyz_abc_and_lattice():
    lattice, sites = CRYSTALS[1]
    for xyz in (True, False):
        numbers, positions, cell, pbc = structure_from_dict(structure_dict(lattice, sites, xyz=xyz), file="f", record=0)
        assert numbers.tolist() == [30, 8, 1] and numbers.dtype == np.int64
        np.testing.assert_allclose(positions, expected_positions(1), atol=1e-12)
        np.testing.assert_array_equal(cell, np.asarray(lattice))
        assert pbc.tolist() == [True, True, True]


def test_structure_dict_oxidation_state_and_molecule():
    d = structure_dict(*CRYSTALS[0])
    d["sites"][0]["species"] = [{"element": "Si", "oxidation_state": 4, "occu": 1.0}]
    assert structure_from_dict(d, file="f", record=0)[0].tolist() == [14, 14]
    mol = {"@class": "Molecule", "sites": [{"species": [{"element": "O", "occu": 1}], "xyz": [0, 0, 1]}]}
    numbers, _positions, cell, pbc = structure_from_dict(mol, file="f", record=0)
    assert numbers.tolist() == [8] and cell is None and not pbc.any()


@pytest.mark.parametrize(
    "species, words",
    [
        ([{"element": "Si", "occu": 0.5}, {"element": "Ge", "occu": 0.5}], ["site 1", "'Si'", "disordered"]),
        ([{"element": "Si", "occu": 0.9}], ["site 1", "disordered"]),
        ([{"element": "X", "occu": 1}], ["site 1", "'X'"]),
    ],
)
def test_structure_dict_disorder_names_site(species, words):
    d = structure_dict(*CRYSTALS[0])
    d["sites"][1]["species"] = species
    with pytest.raises(DataError) as err:
        structure_from_dict(d, file="some.json", record="rec-7")
    for word in words + ["some.json", "rec-7"]:
        assert word in str(err.value)


# -- QMOF -----------------------------------------------------------------------------------------
def test_qmof_values_ids_and_detection(tmp_path):
    root = make_qmof(tmp_path)
    for path in (root, root / "qmof.json"):
        assert detect_format(path) == "qmof"
    ds = open_dataset(root)
    assert isinstance(ds, QMOFDataset) and len(ds) == 3
    raw = json.loads((root / "qmof.json").read_text())
    for i, rec in enumerate(ds):
        assert rec.id == raw[i]["qmof_id"]
        assert rec.energy is None and rec.forces is None and rec.class_label is None
        assert rec.targets["bandgap"] == raw[i]["outputs"]["pbe"]["bandgap"]
        assert rec.targets["energy_total"] == raw[i]["outputs"]["pbe"]["energy_total"]
        assert "directgap" not in rec.targets and "bandgap_spins" not in rec.targets
        np.testing.assert_allclose(rec.positions, expected_positions(i), atol=1e-12)
        np.testing.assert_array_equal(rec.cell, np.asarray(CRYSTALS[i][0]))
        assert rec.pbc.all()
    assert ds.class_labels() is None
    meta = ds.metadata()
    assert meta["skipped_no_bandgap"] == 0 and meta["target"] == "bandgap"


def test_qmof_level_and_class_key(tmp_path):
    root = make_qmof(tmp_path)
    ds = open_dataset(root, level="hse06", class_key="info.symmetry.spacegroup_number")
    assert len(ds) == 1 and ds[0].targets == {"bandgap": 2.0}
    assert ds.metadata()["skipped_no_bandgap"] == 2
    assert ds.class_labels().tolist() == ["100"] and ds[0].class_label == "100"
    with pytest.raises(ConfigError, match="hse06"):
        open_dataset(root, level="nope")


def test_qmof_bad_inputs(tmp_path):
    root = make_qmof(tmp_path)
    structs = json.loads((root / "qmof_structure_data.json").read_text())
    structs[2]["qmof_id"] = "qmof-wrong"
    (root / "qmof_structure_data.json").write_text(json.dumps(structs))
    ds = open_dataset(root)
    with pytest.raises(DataError, match="index 2") as err:
        ds[0]
    assert "qmof_structure_data.json" in str(err.value)

    clear_json_cache()
    (root / "qmof_structure_data.json").write_text(json.dumps(structs[:2]))
    with pytest.raises(DataError, match="2 items"):
        open_dataset(root)[0]

    (root / "qmof_structure_data.json").unlink()
    with pytest.raises(DataError, match="qmof_structure_data.json"):
        QMOFDataset(root)

    other = make_qmof(tmp_path / "b")
    text = (other / "qmof.json").read_text()
    (other / "qmof.json").write_text(text[: len(text) // 2])
    with pytest.raises(DataError, match="qmof.json"):
        QMOFDataset(other)
    (other / "qmof.json").write_text("[]")
    with pytest.raises(DataError, match="no items"):
        QMOFDataset(other)


def test_qmof_disordered_site_names_record(tmp_path):
    root = make_qmof(tmp_path)
    structs = json.loads((root / "qmof_structure_data.json").read_text())
    structs[1]["structure"]["sites"][2]["species"].append({"element": "Cl", "occu": 0.5})
    (root / "qmof_structure_data.json").write_text(json.dumps(structs))
    with pytest.raises(DataError, match="site 2") as err:
        open_dataset(root)[1]
    assert structs[1]["qmof_id"] in str(err.value) and "qmof_structure_data.json" in str(err.value)


# -- MatBench -------------------------------------------------------------------------------------
def test_matbench_values_and_ids(tmp_path):
    path = make_matbench(tmp_path, n=12)
    assert detect_format(path) == "matbench"
    ds = open_dataset(path)
    assert isinstance(ds, MatbenchDataset) and len(ds) == 12
    assert [ds[i].id for i in (0, 9, 11)] == ["mb-phonons-01", "mb-phonons-10", "mb-phonons-12"]
    for i, rec in enumerate(ds):
        assert rec.targets == {"last phdos peak": 100.0 + 7 * i}
        np.testing.assert_allclose(rec.positions, expected_positions(i), atol=1e-12)
        assert rec.energy is None and rec.pbc.all() and rec.class_label is None
    meta = ds.metadata()
    assert meta["target_unit"] == "cm^-1" and meta["task"] == "matbench_phonons"
    assert ds.class_labels() is None


def test_matbench_id_width_follows_matbench(tmp_path):
    ds = open_dataset(make_matbench(tmp_path, n=1265 // 100))  # 12 rows -> 2 digits (checked above)
    assert ds[0].id == "mb-phonons-01"
    ds = open_dataset(make_matbench(tmp_path / "big", n=100, task="matbench_jdft2d", target="exfoliation_en"))
    assert ds[0].id == "mb-jdft2d-001" and ds[99].id == "mb-jdft2d-100"
    assert ds.metadata()["target_unit"] == "meV/atom"


def test_matbench_folds(tmp_path):
    path = make_matbench(tmp_path, n=12)
    ids = [f"mb-phonons-{i:02d}" for i in range(1, 13)]
    folds = make_folds(tmp_path, "matbench_phonons", ids)
    test = open_dataset(path, fold=1, fold_part="test", folds_file=folds)
    assert [r.id for r in test] == ids[1::5]
    assert test[0].targets["last phdos peak"] == 100.0 + 7 * 1
    train = open_dataset(path, fold=1, fold_part="train", folds_file=str(folds))
    assert len(train) + len(test) == 12 and not {r.id for r in train} & {r.id for r in test}
    assert test.metadata()["folds_file"] == str(folds)


def test_matbench_folds_from_installed_package(tmp_path, monkeypatch):
    path = make_matbench(tmp_path, n=12)
    pkg = tmp_path / "site" / "matbench"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise ImportError('must not be imported')\n")
    make_folds(pkg, "matbench_phonons", [f"mb-phonons-{i:02d}" for i in range(1, 13)])
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    ds = open_dataset(path, fold=0, fold_part="test")
    assert [r.id for r in ds] == ["mb-phonons-01", "mb-phonons-06", "mb-phonons-11"]


def test_matbench_bad_inputs(tmp_path, monkeypatch):
    path = make_matbench(tmp_path, n=12)
    monkeypatch.setattr(matbench_module, "find_validation_file", lambda: None)
    with pytest.raises(DataError, match="pip install") as err:
        open_dataset(path, fold=0, fold_part="test")
    assert "matbench_phonons.json.gz" in str(err.value)
    with pytest.raises(ConfigError):
        open_dataset(path, fold=0)
    with pytest.raises(ConfigError, match="fold"):
        open_dataset(path, fold=7, fold_part="test", folds_file=tmp_path / "x.json")
    with pytest.raises(ConfigError, match="nope"):
        open_dataset(path, target="nope")
    with pytest.raises(ConfigError):
        open_dataset(path, unknown_option=1)

    bad_folds = make_folds(tmp_path, "matbench_phonons", ["mb-phonons-99"])
    with pytest.raises(DataError, match="mb-phonons-99"):
        open_dataset(path, fold=0, fold_part="test", folds_file=bad_folds)

    comp = tmp_path / "matbench_steels.json.gz"
    with gzip.open(comp, "wt") as fh:
        json.dump({"index": [0], "columns": ["composition", "yield strength"], "data": [["Fe", 1.0]]}, fh)
    with pytest.raises(DataError, match="composition") as err:
        open_dataset(comp)
    assert "matbench_steels.json.gz" in str(err.value)

    raw = path.read_bytes()
    trunc = tmp_path / "t" / "matbench_phonons.json.gz"
    trunc.parent.mkdir()
    trunc.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(DataError, match="matbench_phonons.json.gz"):
        open_dataset(trunc)

    empty = tmp_path / "e" / "matbench_phonons.json.gz"
    empty.parent.mkdir()
    with gzip.open(empty, "wt") as fh:
        json.dump({"index": [], "columns": ["structure", "last phdos peak"], "data": []}, fh)
    with pytest.raises(DataError, match="no entries"):
        open_dataset(empty)

    frame = json.loads(gzip.decompress(raw))
    short = tmp_path / "i" / "matbench_phonons.json.gz"  # was "unexpected IndexError" on reading a record
    short.parent.mkdir()
    short.write_bytes(gzip.compress(json.dumps({**frame, "index": frame["index"][:-1]}).encode()))
    with pytest.raises(DataError, match="index has 11 entries for 12 rows"):
        open_dataset(short)

    frame["data"][2][1] = float("nan")  # was averaged away by inspect and became a NaN loss in training
    frame["data"][3][1] = None
    frame["data"][4][0]["sites"][0]["species"] = [{"element": "Si", "occu": 0.5}]
    broken = tmp_path / "b" / "matbench_phonons.json.gz"
    broken.parent.mkdir()
    broken.write_bytes(gzip.compress(json.dumps(frame).encode()))
    ds = open_dataset(broken)
    with pytest.raises(DataError, match="is nan, not a number") as err:
        ds[2]
    assert err.value.record == "mb-phonons-03"
    with pytest.raises(DataError, match="mb-phonons-04"):
        ds[3]
    with pytest.raises(DataError, match="site 0") as err:
        ds[4]
    assert "mb-phonons-05" in str(err.value)


def test_matbench_official_folds_select_the_official_ids(tmp_path):
    """With the matbench wheel installed (`make` installs it with --no-deps), fold 0 of a phonons file
    in the release layout (1,265 rows) yields exactly the official fold-0 test ids, in file order."""
    official = matbench_module.find_validation_file()
    if official is None:
        pytest.skip("matbench package not installed (make test installs it)")
    splits = json.loads(official.read_text())["splits"]["matbench_phonons"]["fold_0"]
    ids = sorted(splits["train"] + splits["test"])
    assert ids[0] == "mb-phonons-0001" and ids[-1] == "mb-phonons-1265"
    path = make_matbench(tmp_path, n=1265)
    test = open_dataset(path, fold=0, fold_part="test")
    train = open_dataset(path, fold=0, fold_part="train")
    assert len(test) == len(splits["test"]) == 253 and len(train) == len(splits["train"]) == 1012
    got = [test[i].id for i in range(len(test))]
    assert sorted(got) == sorted(splits["test"]) and got == sorted(got)
    row = int(got[0].rsplit("-", 1)[1]) - 1  # value of row i is 100 + 7 i
    assert test[0].targets["last phdos peak"] == 100.0 + 7 * row


# -- adsorbates on metals -------------------------------------------------------------------------
def test_adsorbates_real_files(real_data):
    path = real_data / "adsorbates_on_metals_structures.json"
    assert detect_format(path) == "adsorbates-json"
    ds = open_dataset(path)
    structures = json.loads(path.read_text())
    energies = json.loads((path.parent / "adsorbates_on_metals_energies.json").read_text())
    numeric = [
        (m, a, s, c)
        for m in energies
        for a in energies[m]
        for s in energies[m][a]
        for c, v in energies[m][a][s].items()
        if isinstance(v, float)
    ]
    assert len(ds) == len(numeric) == 882
    meta = ds.metadata()
    assert meta["n_entries"] == 1120 and meta["skipped_no_energy"] == 224 and meta["skipped_not_numeric"] == 14
    rec = ds[0]
    m, a, s, c = rec.id.split("/")
    assert rec.energy == energies[m][a][s][c] == rec.targets["adsorption_energy"]
    entry = structures[m][a][s][c]
    np.testing.assert_array_equal(rec.positions, np.asarray(entry["pos"]))
    np.testing.assert_array_equal(rec.cell, np.asarray(entry["cell"]))
    assert rec.class_label == m and rec.pbc.all() and rec.natoms == len(entry["symbols"])
    labels = ds.class_labels()
    assert sorted(set(labels)) == sorted(structures) and labels[0] == rec.class_label
    assert len({r.id for r in ds}) == len(ds)


def test_adsorbates_bad_inputs(tmp_path):
    entry = {"symbols": ["Pt", "O"], "cell": np.eye(3).tolist(), "pos": [[0, 0, 0], [0, 0, 1.5]]}
    structures = {"Pt": {"O": {"fcc": {"0.0": entry, "0.25": entry, "0.5": dict(entry, pos=[[0, 0, 0]])}}}}
    path = tmp_path / "my_structures.json"
    path.write_text(json.dumps(structures))
    with pytest.raises(DataError, match="my_energies.json"):
        open_dataset(path)
    (tmp_path / "my_energies.json").write_text(json.dumps({"Pt": {"O": {"fcc": {"0.25": -1.0, "0.5": -0.5}}}}))
    ds = open_dataset(path)
    assert detect_format(path) == "adsorbates-json"
    assert len(ds) == 2 and ds.metadata()["skipped_no_energy"] == 1 and ds[0].energy == -1.0
    with pytest.raises(DataError, match="Pt/O/fcc/0.5") as err:
        ds[1]
    assert "my_structures.json" in str(err.value)
    nan = tmp_path / "nan.json"  # the NaN sits in the energies file: it was named against the structures file
    nan.write_text(json.dumps({"Pt": {"O": {"fcc": {"0.25": float("nan")}}}}))
    with pytest.raises(DataError, match="adsorption energy is nan") as err:
        open_dataset(path, format="adsorbates-json", energies=nan)[0]
    assert err.value.file == str(nan)
    other = tmp_path / "e.json"
    other.write_text(json.dumps({"Pt": {"O": {"fcc": {"0.25": "Q"}}}}))
    with pytest.raises(DataError, match="no structure has a numeric"):
        open_dataset(path, format="adsorbates-json", energies=other)
