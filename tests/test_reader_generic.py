"""Generic formats: extxyz, ASE databases (SQLite, JSON) and ASE-LMDB, plus write_aselmdb."""

from __future__ import annotations

import bz2
import gzip
import lzma
import pickle
import shutil
import sqlite3
import warnings

import ase.db
import ase.io
import numpy as np
import pytest
from ase import Atoms
from ase.calculators.singlepoint import SinglePointCalculator
from ase.constraints import FixAtoms

from atomsift.data import Record, detect_format, open_dataset
from atomsift.data.readers.asedb import AseDbDataset, AseLmdbDataset, write_aselmdb
from atomsift.data.readers.extxyz import ExtxyzDataset, _ase_frame, _fast_frame
from atomsift.errors import AtomsiftError, ConfigError, DataError


def _slab(i: int, periodic: bool = True) -> Atoms:
    """A small slab-like structure with tags, a FixAtoms constraint and calculator results."""
    rng = np.random.default_rng(i)
    atoms = Atoms("Pt3O" if i % 2 else "Cu2CO", positions=rng.uniform(0, 4, (4, 3)))
    if periodic:
        atoms.cell = np.diag([4.0, 4.5, 15.0]) + 0.1 * i
        atoms.pbc = True
    atoms.set_tags([0, 1, 1, 2])
    atoms.set_constraint(FixAtoms(indices=[0, 1]))
    atoms.calc = SinglePointCalculator(
        atoms, energy=-10.0 - i, forces=rng.normal(size=(4, 3)), stress=np.arange(6.0) + i
    )
    atoms.info.update({"REF_energy": -3.0 - i, "config_type": f"type{i % 2}", "step": i})
    atoms.new_array("REF_forces", rng.normal(size=(4, 3)))
    return atoms


@pytest.fixture
def frames():
    return [_slab(i) for i in range(4)]


# -- extxyz ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", ["rmd17_ethanol_1000.xyz", "acac_md_300K.xyz", "acac_isolated_atoms.xyz"])
def test_extxyz_real_files_match_ase(real_data, name):
    path = real_data / name
    assert detect_format(path) == "extxyz"
    ds = open_dataset(path)
    ref = ase.io.read(path, index=":")
    assert len(ds) == len(ref)
    for i in list(range(min(len(ref), 40))) + [len(ref) - 1]:
        rec, atoms = ds[i], ref[i]
        assert rec.id == f"frame{i}"
        np.testing.assert_array_equal(rec.numbers, atoms.numbers)
        np.testing.assert_array_equal(rec.positions, atoms.positions)
        assert rec.energy == atoms.get_potential_energy()
        if "forces" in atoms.calc.results:
            np.testing.assert_array_equal(rec.forces, atoms.get_forces())
        assert rec.info["config_type"] == atoms.info["config_type"]
        assert rec.cell is None and not rec.pbc.any()
        for key in ("OH_dist", "dihedral_angle"):
            if key in atoms.info:
                assert rec.targets[key] == atoms.info[key]
    labels = ds.class_labels()
    assert len(labels) == len(ds) and labels[0] == ds[0].class_label
    if name == "rmd17_ethanol_1000.xyz":
        assert set(labels) == {"C2H6O"}
        by_type = open_dataset(path, class_key="config_type")
        assert by_type[0].class_label == "Training_set" and by_type.class_labels()[0] == "Training_set"


@pytest.mark.parametrize("suffix, compress", [(".gz", gzip.compress), (".bz2", bz2.compress), (".xz", lzma.compress)])
def test_extxyz_compressed(real_data, tmp_path, suffix, compress):
    src = real_data / "acac_md_300K.xyz"
    path = tmp_path / f"acac.xyz{suffix}"
    path.write_bytes(compress(src.read_bytes()))
    assert detect_format(path) == "extxyz"
    plain, packed = open_dataset(src), open_dataset(path)
    assert len(plain) == len(packed) == 500
    for i in (0, 250, 499):
        assert plain[i].energy == packed[i].energy
        np.testing.assert_array_equal(plain[i].forces, packed[i].forces)


def test_extxyz_periodic_tags_fixed_and_keys(tmp_path, frames):
    path = tmp_path / "slabs.extxyz"
    ase.io.write(path, frames, format="extxyz")
    ds = open_dataset(path)
    assert isinstance(ds, ExtxyzDataset) and len(ds) == 4
    for i, (rec, atoms) in enumerate(zip(ds, frames)):
        assert rec.energy == pytest.approx(atoms.get_potential_energy(), abs=1e-10)
        np.testing.assert_allclose(rec.forces, atoms.get_forces(apply_constraint=False), atol=1e-7)
        np.testing.assert_allclose(rec.cell, atoms.cell.array)
        assert rec.pbc.all() and rec.tags.tolist() == [0, 1, 1, 2]
        assert rec.fixed.tolist() == [True, True, False, False]
        assert rec.targets["REF_energy"] == -3.0 - i and rec.targets["step"] == i
        np.testing.assert_allclose(rec.targets["stress"], np.arange(6.0) + i)
        np.testing.assert_allclose(rec.targets["REF_forces"], atoms.arrays["REF_forces"], atol=1e-7)
        assert rec.info["config_type"] == f"type{i % 2}"
        assert rec.class_label == ("OPt3" if i % 2 else "CCu2O")
    ref = open_dataset(path, energy_key="REF_energy", forces_key="REF_forces", class_key="config_type")
    assert ref[1].energy == -4.0 and ref[1].class_label == "type1"
    np.testing.assert_allclose(ref[1].forces, frames[1].arrays["REF_forces"], atol=1e-7)
    assert ref[1].targets["energy"] == pytest.approx(frames[1].get_potential_energy())
    assert ref.class_labels().tolist() == ["type0", "type1", "type0", "type1"]


def test_extxyz_fast_parser_matches_ase_parser(tmp_path, frames, real_data):
    path = tmp_path / "slabs.xyz"
    ase.io.write(path, frames, format="extxyz")
    texts = [path.read_text(), (real_data / "rmd17_ethanol_1000.xyz").read_text()]
    for text in texts:
        lines = text.split("\n")
        natoms = int(lines[0])
        fast, slow = _fast_frame(lines[: natoms + 2], natoms), _ase_frame(lines[: natoms + 2], natoms, 0)
        assert fast is not None
        for field in ("numbers", "positions", "cell", "pbc", "tags", "fixed"):
            a, b = getattr(fast, field), getattr(slow, field)
            assert (a is None and b is None) or np.array_equal(a, b), field
        assert fast.arrays.keys() == slow.arrays.keys()
        assert fast.values.keys() == slow.values.keys()
        for key, value in slow.values.items():
            np.testing.assert_array_equal(fast.values[key], value)


def test_extxyz_vec_lines(tmp_path):
    path = tmp_path / "vec.xyz"
    path.write_text("2\nH2 in a box\nH 0 0 0\nH 0 0 0.74\nVEC1 5 0 0\nVEC2 0 5 0\nVEC3 0 0 5\n" * 2)
    ds = open_dataset(path)
    assert len(ds) == 2 and ds[1].pbc.all()
    np.testing.assert_array_equal(ds[1].cell, 5 * np.eye(3))
    assert ds[1].energy is None and ds[1].forces is None


def _expect(exc_type, path, *words, **options):
    with pytest.raises(exc_type) as err:
        ds = open_dataset(path, format="extxyz", **options)
        for i in range(len(ds)):
            ds[i]
    for word in (path.name, *words):
        assert word in str(err.value), str(err.value)


def test_extxyz_bad_inputs(tmp_path, real_data):
    good = (real_data / "rmd17_ethanol_1000.xyz").read_text().split("\n")[:33]  # 3 frames
    cases = {
        "truncated.xyz": "\n".join(good[:30]),
        "count.xyz": "\n".join(good[:11] + ["8"] + good[12:]),
        "badline.xyz": "\n".join(good[:13] + ["C 0.1 0.2 zzz 1 2 3"] + good[14:]) + "\n",
        "blank.xyz": "\n".join(good[:11] + [""] + good[11:]) + "\n",
        "empty.xyz": "",
    }
    for name, text in cases.items():
        (tmp_path / name).write_text(text)
    _expect(DataError, tmp_path / "truncated.xyz", "frame2", "truncated")
    _expect(DataError, tmp_path / "count.xyz", "frame2", "atom count")
    _expect(DataError, tmp_path / "badline.xyz", "frame1")
    _expect(DataError, tmp_path / "blank.xyz", "frame1")
    _expect(DataError, tmp_path / "empty.xyz", "the file is empty (0 bytes)")
    (tmp_path / "empty.db").write_bytes(b"")  # was "could not tell the format"; with --format "truncated"
    _expect(DataError, tmp_path / "empty.db", "the file is empty (0 bytes)")
    (tmp_path / "ok.xyz").write_text("\n".join(good) + "\n")
    _expect(ConfigError, tmp_path / "ok.xyz", "energy_key", energy_key="U0")
    _expect(ConfigError, tmp_path / "ok.xyz", "class_key", class_key="nope")
    mixed = good[:12] + [good[12].replace("config_type=Training_set", "")] + good[13:]
    (tmp_path / "mixed.xyz").write_text("\n".join(mixed) + "\n")
    _expect(DataError, tmp_path / "mixed.xyz", "frame1", "config_type", class_key="config_type")
    # periodic without a cell, or with a flat one: read and converted, refused only at CSI or training time
    flat = 'Lattice="5.0 0.0 0.0 5.0 0.0 0.0 0.0 0.0 5.0" '
    rest = good[12][good[12].index("Properties") :].replace('pbc="F F F"', 'pbc="T T T"')
    for name, line in (("nocell", rest), ("flat", flat + rest)):
        (tmp_path / f"{name}.xyz").write_text("\n".join([*good[:12], line, *good[13:]]) + "\n")
        _expect(DataError, tmp_path / f"{name}.xyz", "frame1", "periodic along")
    # energies that are no number: a bare key read as 1.0 eV; text and vectors were "unexpected" (exit 1)
    for name, value in (("bare", "energy"), ("flag", "energy=T"), ("text", "energy=abc"), ("vector", 'energy="1 2"')):
        line = " ".join(value if w.startswith("energy=") else w for w in good[12].split(" "))
        (tmp_path / f"{name}.xyz").write_text("\n".join([*good[:12], line, *good[13:]]) + "\n")
        _expect(DataError, tmp_path / f"{name}.xyz", "frame1", "not a number")


# -- ASE databases --------------------------------------------------------------------------------
def test_ase_sqlite_real_file(real_data, tmp_path):
    src = real_data / "oxides_pbe.db"
    path = tmp_path / "oxides.db"
    shutil.copy(src, path)
    before = path.read_bytes()
    assert detect_format(path) == "ase-db"
    ds = open_dataset(path)
    db = ase.db.connect(src)
    rows = list(db.select())
    assert len(ds) == len(rows) == 295
    for i in (0, 100, 294):
        rec, row = ds[i], rows[i]
        assert rec.id == f"row{row.id}" and rec.energy == row.energy
        np.testing.assert_array_equal(rec.forces, row.forces)
        np.testing.assert_array_equal(rec.positions, row.positions)
        np.testing.assert_array_equal(rec.cell, np.asarray(row.cell))
        assert rec.pbc.all() and rec.class_label == row.toatoms().get_chemical_formula(mode="hill")
    labels = ds.class_labels()
    assert labels.tolist() == [r.class_label for r in ds]
    ds.close()
    assert path.read_bytes() == before  # read-only


def test_ase_json_real_file(real_data):
    path = real_data / "oc20_adslab_frame.json"
    assert detect_format(path) == "ase-db"
    rec = open_dataset(path)[0]
    atoms = ase.db.connect(path).get(id=1).toatoms()
    assert rec.energy == atoms.get_potential_energy() and rec.id == "row1"
    np.testing.assert_array_equal(rec.forces, atoms.get_forces(apply_constraint=False))
    np.testing.assert_array_equal(rec.tags, atoms.get_tags())
    assert rec.fixed.sum() == 24 and rec.fixed.tolist() == [i in atoms.constraints[0].index for i in range(34)]


@pytest.mark.parametrize("suffix", [".db", ".json"])
def test_ase_db_written_rows(tmp_path, frames, suffix):
    path = tmp_path / f"mine{suffix}"
    db = ase.db.connect(path)
    for i, atoms in enumerate(frames):
        db.write(atoms, material=f"m{i % 2}", bulk_energy=1.5 * i, relaxed=True, data={"extra": np.ones(2)})
    db.write(Atoms("H2O", positions=np.eye(3)), material="water")
    assert detect_format(path) == "ase-db"
    ds = open_dataset(path, class_key="material")
    assert len(ds) == 5
    for i, atoms in enumerate(frames):
        rec = ds[i]
        assert rec.energy == atoms.get_potential_energy() and rec.class_label == f"m{i % 2}"
        np.testing.assert_array_equal(rec.forces, atoms.get_forces(apply_constraint=False))
        assert rec.tags.tolist() == [0, 1, 1, 2] and rec.fixed.tolist() == [True, True, False, False]
        assert rec.targets["bulk_energy"] == 1.5 * i and rec.info["relaxed"] is True
        np.testing.assert_allclose(rec.targets["stress"], np.arange(6.0) + i)
    water = ds[4]
    assert water.cell is None and water.energy is None and water.forces is None
    assert ds.class_labels().tolist() == ["m0", "m1", "m0", "m1", "water"]
    assert open_dataset(path).class_labels().tolist()[-1] == "H2O"
    with pytest.raises(DataError, match="bulk_energy") as err:
        open_dataset(path, class_key="bulk_energy")[4]
    assert path.name in str(err.value)
    clone = pickle.loads(pickle.dumps(ds))
    assert clone[3].energy == ds[3].energy


def test_ase_db_bad_inputs(tmp_path):
    other = tmp_path / "other.db"
    con = sqlite3.connect(other)
    con.execute("CREATE TABLE things (x INTEGER)")
    con.commit()
    con.close()
    with pytest.raises(DataError, match="other.db"):
        AseDbDataset(other)
    with pytest.raises(AtomsiftError):
        detect_format(other)
    assert "systems" not in {r[0] for r in sqlite3.connect(other).execute("SELECT name FROM sqlite_master")}

    empty = tmp_path / "empty.db"
    ase.db.connect(empty).write(Atoms("H"))
    ase.db.connect(empty).delete([1])
    with pytest.raises(DataError, match="no rows") as err:
        open_dataset(empty)
    assert "empty.db" in str(err.value)

    broken = tmp_path / "broken.db"
    broken.write_bytes(b"SQLite format 3\x00" + b"\x07" * 200)
    with pytest.raises(DataError, match="broken.db"):
        AseDbDataset(broken)
    with pytest.raises(DataError, match="broken.db") as err:  # was "could not tell the format"
        open_dataset(broken)
    assert "format" not in err.value.problem

    # a database (or any binary file) read as extended XYZ: said so, with the format it is detected as
    db = tmp_path / "m.db"
    ase.db.connect(db).write(Atoms("H2", positions=np.eye(2, 3)))
    with pytest.raises(DataError, match="binary, not extended XYZ.*'ase-db'") as err:
        open_dataset(db, format="extxyz")
    assert "--format ase-db" in err.value.fix
    packed = tmp_path / "packed.xyz"  # gzip data under a plain name
    packed.write_bytes(gzip.compress(b"1\n\nH 0 0 0\n"))
    with pytest.raises(DataError, match="binary, not extended XYZ") as err:
        open_dataset(packed, format="extxyz")
    assert ".gz" in err.value.fix

    # ASE's SQLite backend stores a NaN energy as NULL: it read as "no energy" without a word
    nan = tmp_path / "nan.db"
    for energy in (-1.0, float("nan")):
        atoms = Atoms("H2", positions=np.eye(2, 3))
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=np.ones((2, 3)))
        ase.db.connect(nan).write(atoms)
    ds = open_dataset(nan)
    assert ds[0].energy == -1.0
    with pytest.warns(UserWarning, match="row2 has forces but no energy.*NaN energy as NULL"):
        assert ds[1].energy is None  # forces-only rows are legitimate: said once, not refused
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds[1]

    js = tmp_path / "cut.json"
    ase.db.connect(js).write(Atoms("H2", positions=np.eye(2, 3)))
    text = js.read_text()
    js.write_text(text[: len(text) // 2] + text[-60:])
    with pytest.raises(DataError, match="cut.json"):
        AseDbDataset(js)


# -- ASE-LMDB -------------------------------------------------------------------------------------
def _same(a: Record, b: Record) -> None:
    assert a.id == b.id and a.class_label == b.class_label and a.energy == b.energy
    np.testing.assert_array_equal(a.numbers, b.numbers)
    np.testing.assert_array_equal(a.positions, b.positions)
    for field in ("forces", "cell", "tags", "fixed"):
        x, y = getattr(a, field), getattr(b, field)
        assert (x is None and y is None) or np.array_equal(x, y), field
    assert a.pbc.tolist() == b.pbc.tolist() and a.targets.keys() == b.targets.keys()
    for key in a.targets:
        np.testing.assert_array_equal(a.targets[key], b.targets[key])


def test_a_reader_error_while_converting_names_the_input_not_the_output(tmp_path, real_data):
    """write_aselmdb wrapped every ValueError as 'cannot write record to ASE-LMDB', naming the output file."""
    src = open_dataset(real_data / "rmd17_ethanol_1000.xyz")
    good = src[0]

    def stream():
        yield good
        raise DataError("energy is broken", file="in.xyz", record="frame1", fix="repair it")

    with pytest.raises(DataError, match="energy is broken") as err:
        write_aselmdb(tmp_path / "out.aselmdb", stream(), progress=False)
    assert err.value.file == "in.xyz" and not list(tmp_path.iterdir())  # nothing half-written left
    short = Record(good.numbers, good.positions, "frame0", tags=np.zeros(good.natoms - 2, dtype=np.int64))
    with pytest.raises(DataError, match=r"tags have shape \(7,\), expected \(9,\)"):
        short.validate("in.xyz")  # was ASE's 'Array "tags" has wrong length' at conversion, accepted by inspect


def test_write_aselmdb_round_trip(tmp_path, real_data, frames):
    xyz = tmp_path / "slabs.xyz"
    ase.io.write(xyz, frames, format="extxyz")
    sources = [
        open_dataset(real_data / "rmd17_ethanol_1000.xyz"),
        open_dataset(xyz, class_key="config_type"),
        open_dataset(real_data / "oc20_adslab_frame.json"),
    ]
    for k, src in enumerate(sources):
        records = [src[i] for i in range(min(len(src), 60))]
        out = write_aselmdb(
            tmp_path / "out" / f"set{k}.aselmdb", records, {"source_format": src.format_name}, progress=False
        )
        assert sorted(p.name for p in out.parent.iterdir()) == [f"set{j}.aselmdb" for j in range(k + 1)]
        assert detect_format(out) == "aselmdb"
        back = open_dataset(out)
        assert isinstance(back, AseLmdbDataset) and len(back) == len(records)
        for a, b in zip(records, back):
            _same(a, b)
        assert back.class_labels().tolist() == [r.class_label for r in records]
        meta = AseLmdbDataset._index(out)[1]  # (ASE cannot open a file this process already has open)
        assert meta["source_format"] == src.format_name and meta["natoms"] == [r.natoms for r in records]
        assert back.metadata()["written"]["source_format"] == src.format_name
    folder = open_dataset(tmp_path / "out")
    assert detect_format(tmp_path / "out") == "aselmdb" and len(folder) == 60 + 4 + 1
    _same(folder[60], sources[1][0])
    _same(folder[64], sources[2][0])
    assert folder.class_labels()[60] == "type0"
    clone = pickle.loads(pickle.dumps(folder))
    _same(clone[5], sources[0][5])


def test_aselmdb_plain_ase_rows(tmp_path, frames):
    """A file written straight through ASE (as fairchem's are): row ids, Hill labels, gaps in ids."""
    path = tmp_path / "omat.aselmdb"
    db = ase.db.connect(path, type="aselmdb")
    for i, atoms in enumerate(frames):
        db.write(atoms, sid=i, bulk=f"b{i}")
    db.delete([2])
    db.close()
    ds = open_dataset(path)
    assert len(ds) == 3 and [r.id for r in ds] == ["row1", "row3", "row4"]
    assert ds[1].energy == frames[2].get_potential_energy() and ds[1].targets["sid"] == 2.0
    assert ds[1].fixed.tolist() == [True, True, False, False] and ds[1].tags.tolist() == [0, 1, 1, 2]
    assert ds.class_labels().tolist() == ["CCu2O", "CCu2O", "OPt3"]
    assert open_dataset(path, class_key="bulk")[2].class_label == "b3"


def test_aselmdb_bad_inputs(tmp_path):
    (tmp_path / "none").mkdir()
    (tmp_path / "none" / "x.txt").write_text("")
    with pytest.raises(DataError, match="no \\*.aselmdb"):
        AseLmdbDataset(tmp_path / "none")
    bad = tmp_path / "bad.aselmdb"
    bad.write_bytes(b"not an lmdb file" * 100)
    with pytest.raises(DataError, match="bad.aselmdb"):
        open_dataset(bad)
    empty = write_aselmdb(tmp_path / "empty.aselmdb", [], {}, progress=False)
    with pytest.raises(DataError, match="no rows") as err:
        open_dataset(empty)
    assert "empty.aselmdb" in str(err.value)


def _energies(args):
    ds, indices = args
    return [ds[i].energy for i in indices]


def test_aselmdb_and_db_readable_after_fork(tmp_path, real_data):
    """LMDB refuses to open a file twice in one process: a forked worker must not inherit the env."""
    import multiprocessing as mp

    src = open_dataset(real_data / "oxides_pbe.db")
    path = write_aselmdb(tmp_path / "o.aselmdb", [src[i] for i in range(6)], {}, progress=False)
    for ds in (open_dataset(path), src):
        expected = [ds[i].energy for i in range(6)]  # parent has its handle open
        with mp.get_context("fork").Pool(1) as pool:
            assert pool.map(_energies, [(ds, range(6))]) == [expected]


def test_extxyz_unknown_element_is_named(tmp_path):
    path = tmp_path / "ghost.xyz"
    path.write_text(
        '2\nenergy=-1.0 pbc="F F F" Properties=species:S:1:pos:R:3:forces:R:3\nXx 0 0 0 0 0 0\nH 0 0 1 0 0 0\n'
    )
    _expect(DataError, path, "unknown element symbol 'Xx'", "frame0")


def test_empty_xyz_is_detected_and_reported_empty(tmp_path):
    path = tmp_path / "nothing.xyz"
    path.write_text("")
    with pytest.raises(DataError, match="the file is empty") as err:
        open_dataset(path)
    assert "nothing.xyz" in str(err.value)


def test_truncated_aselmdb_is_an_error_not_a_crash(tmp_path, frames):
    import subprocess
    import sys

    records = [Record(numbers=a.numbers, positions=a.positions, id=str(i)) for i, a in enumerate(frames * 20)]
    full = write_aselmdb(tmp_path / "full.aselmdb", records, {}, progress=False)
    cut = tmp_path / "cut.aselmdb"
    data = full.read_bytes()
    cut.write_bytes(data[: len(data) // 3])
    with pytest.raises(DataError, match="truncated") as err:
        open_dataset(cut)
    assert "cut.aselmdb" in str(err.value)
    # reading a truncated map would kill the process with SIGBUS: check in a child process
    code = (
        f"from atomsift.data import open_dataset\ntry:\n    open_dataset({str(cut)!r})\nexcept Exception:\n    pass\n"
    )
    assert subprocess.run([sys.executable, "-c", code], timeout=120).returncode == 0


def test_extxyz_hints_at_other_label_keys(tmp_path):
    path = tmp_path / "ref.xyz"
    path.write_text(
        '2\nREF_energy=-1.5 pbc="F F F" Properties=species:S:1:pos:R:3:REF_forces:R:3\n'
        "H 0 0 0 0.1 0 0\nH 0 0 1 -0.1 0 0\n"
    )
    ds = open_dataset(path)
    assert ds[0].energy is None and ds[0].forces is None
    hints = " ".join(ds.metadata()["hints"])
    assert "energy_key=REF_energy" in hints and "forces_key=REF_forces" in hints
    fixed = open_dataset(path, energy_key="REF_energy", forces_key="REF_forces")
    assert fixed[0].energy == -1.5 and fixed[0].forces[0, 0] == 0.1 and "hints" not in fixed.metadata()
