"""extxyz: a folder of .xyz/.extxyz files or a glob is one dataset over the files in name order (issue 8)."""

from __future__ import annotations

import bz2
import gzip
import lzma
import pickle
import subprocess
import sys
from pathlib import Path

import ase.io
import numpy as np
import pytest

from _make_npz_qm9 import QM9_XYZ_STARS
from atomsift.data import detect_format, open_dataset
from atomsift.data.bundled import bundled_dir
from atomsift.data.readers import extxyz
from atomsift.data.readers.extxyz import ExtxyzDataset
from atomsift.data.readers.qm9 import QM9XyzDataset
from atomsift.errors import ConfigError, DataError

ETHANOL = bundled_dir() / "rmd17_ethanol_1000.xyz"


@pytest.fixture(scope="module")
def frames():
    return ase.io.read(ETHANOL, index=":9")


def write(path: Path, atoms: list, compress=None) -> Path:
    """Write frames with ASE's extxyz writer, optionally compressed (gzip / bz2 / lzma module)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    plain = path.with_name(path.name + ".tmp.xyz")
    ase.io.write(plain, atoms, format="extxyz")
    data = plain.read_bytes()
    plain.unlink()
    path.write_bytes(compress.compress(data) if compress is not None else data)
    return path


@pytest.fixture
def folder(tmp_path, frames):
    """part2 written first, part0 last (creation order is not name order); one file per compression."""
    d = tmp_path / "md"
    write(d / "part2.xyz.gz", frames[6:9], gzip)
    write(d / "part1.extxyz", frames[3:6])
    write(d / "part0.xyz", frames[0:3])
    return d


def check_matches(ds, frames, names) -> None:
    """Records equal ASE's reading of the frames; ids '<file>/frame<j>' in name order."""
    assert len(ds) == len(frames) == 3 * len(names)
    for i, atoms in enumerate(frames):
        rec = ds[i]
        assert rec.id == f"{names[i // 3]}/frame{i % 3}"
        assert rec.info["file"] == names[i // 3] and rec.info["frame"] == i % 3
        np.testing.assert_array_equal(rec.numbers, atoms.numbers)
        np.testing.assert_allclose(rec.positions, atoms.positions)
        assert rec.energy == pytest.approx(atoms.get_potential_energy(), abs=1e-9)
        np.testing.assert_allclose(rec.forces, atoms.get_forces())
        assert rec.class_label == "C2H6O"


def test_folder_is_one_dataset_in_name_order(folder, frames):
    assert detect_format(folder) == "extxyz"
    ds = open_dataset(folder)
    assert isinstance(ds, ExtxyzDataset)
    check_matches(ds, frames, ["part0.xyz", "part1.extxyz", "part2.xyz.gz"])
    assert list(ds.class_labels()) == ["C2H6O"] * 9
    assert ds.metadata()["n_files"] == 3 and ds.metadata()["n_atoms_total"] == 81
    assert [p.name for p in ds.source_files()] == ["part0.xyz", "part1.extxyz", "part2.xyz.gz"]
    clone = pickle.loads(pickle.dumps(ds))  # into data-loader workers
    assert clone[7].id == "part2.xyz.gz/frame1"
    one = open_dataset(ETHANOL)  # a single file keeps its ids
    assert one[1].id == "frame1" and "file" not in one[1].info


def test_glob_patterns(folder, frames, tmp_path):
    ds = open_dataset(str(folder / "*"))
    check_matches(ds, frames, ["part0.xyz", "part1.extxyz", "part2.xyz.gz"])
    sub = open_dataset(f"{folder}/part[01].*")
    check_matches(sub, frames[:6], ["part0.xyz", "part1.extxyz"])
    assert open_dataset(str(folder / "*.xyz"))[0].id == "part0.xyz/frame0"  # one match is still a glob
    # '**' reaches subfolders; ids are relative to the deepest common folder, so equal names stay distinct
    nested = tmp_path / "nested"
    write(nested / "a" / "md.xyz", frames[0:3])
    write(nested / "b" / "md.xyz", frames[3:6])
    deep = open_dataset(str(nested / "**" / "*.xyz"), energy_key="energy")
    check_matches(deep, frames[:6], ["a/md.xyz", "b/md.xyz"])


def test_compressed_files_and_buffer_budget(tmp_path, frames, monkeypatch):
    d = tmp_path / "z"
    for k, module in enumerate((gzip, bz2, lzma)):
        write(d / f"p{k}.xyz.{ {gzip: 'gz', bz2: 'bz2', lzma: 'xz'}[module] }", frames[3 * k : 3 * k + 3], module)
    monkeypatch.setattr(extxyz, "_BUFFER_BUDGET", 1)  # keep only the newest decompressed file
    ds = open_dataset(d)
    order = [8, 0, 4, 8, 1, 5, 2]  # jump between files
    assert [ds[i].id for i in order] == [f"p{i // 3}.xyz.{['gz', 'bz2', 'xz'][i // 3]}/frame{i % 3}" for i in order]
    for i in order:
        np.testing.assert_allclose(ds[i].positions, frames[i].positions)
    assert len(extxyz._BUFFERS) == 1


def test_many_files_few_open_handles(tmp_path, frames, monkeypatch):
    d = tmp_path / "many"
    for k in range(9):
        write(d / f"f{k}.xyz", frames[k : k + 1])
    monkeypatch.setattr(extxyz, "_MAX_OPEN", 2)
    ds = open_dataset(d)
    for i in (8, 0, 5, 3, 8, 1, 7):
        assert ds[i].id == f"f{i}.xyz/frame0"
        np.testing.assert_allclose(ds[i].positions, frames[i].positions)
        assert len(ds.handle().open) <= 2
    ds.close()


def test_errors_name_the_file_and_frame(folder, tmp_path, frames):
    mixed = tmp_path / "mixed"
    write(mixed / "a.xyz", frames[:2])
    (mixed / "notes.txt").write_text("not a structure")
    (mixed / ".hidden").write_text("ignored")
    for path in (mixed, str(mixed / "*")):
        with pytest.raises(DataError, match="mixes formats") as err:
            open_dataset(path)
        assert "notes.txt" in str(err.value) and "corrupt" not in str(err.value)
    assert open_dataset(str(mixed / "*.xyz"))[1].id == "a.xyz/frame1"  # the glob picks the xyz files
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no .xyz/.extxyz files") as err:
        open_dataset(empty, format="extxyz")
    assert "corrupt" not in str(err.value)
    with pytest.raises(DataError, match="matches no files"):
        open_dataset(str(tmp_path / "nothing*.xyz"))
    with pytest.raises(ConfigError, match="extxyz format only"):
        open_dataset(str(folder / "*.xyz"), format="oc-lmdb")
    bad = (folder / "part1.extxyz").read_text().split("\n")
    bad[2 + 9 + 2 + 3] = "C 0.1 0.2 zzz 1 2 3"  # an atom line of frame 1
    (folder / "part1.extxyz").write_text("\n".join(bad))
    ds = open_dataset(folder)
    with pytest.raises(DataError, match=r"part1\.extxyz.*Record: part1\.extxyz/frame1"):
        ds[4]
    assert ds[3].id == "part1.extxyz/frame0"
    (folder / "part1.extxyz").write_text("\n".join(bad[:20]))  # truncated inside frame 1
    with pytest.raises(
        DataError, match=r"ends inside frame 1.*File: .*part1\.extxyz\. Record: part1\.extxyz/frame1.*truncated"
    ):
        open_dataset(folder)


def test_qm9_raw_folder_still_qm9(tmp_path):
    """A folder of raw QM9 dsgdb9nsd_*.xyz files stays with the qm9-xyz reader."""
    d = tmp_path / "qm9"
    d.mkdir()
    for k in (1, 2):
        (d / f"dsgdb9nsd_{k:06d}.xyz").write_text(QM9_XYZ_STARS)
    assert detect_format(d) == "qm9-xyz" and isinstance(open_dataset(d), QM9XyzDataset)


def test_cli_reads_a_glob_and_reports_a_mixed_folder(folder, tmp_path):
    cmd = [sys.executable, "-m", "atomsift.cli", "data", "inspect"]
    ok = subprocess.run([*cmd, str(folder / "part*")], capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert "n_files" in ok.stdout
    (folder / "README.md").write_text("about")
    bad = subprocess.run([*cmd, str(folder)], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "mixes formats" in bad.stderr and "Traceback" not in bad.stderr
