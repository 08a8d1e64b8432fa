"""OC20 S2EF raw release reader: <k>.extxyz(.xz) + <k>.txt(.xz) pairs built from the real adslab frame."""

from __future__ import annotations

import lzma

import numpy as np
import pytest

from _make_oc import frames, write_oc20_mapping, write_oc22_metadata, write_s2ef_pair
from atomsift.data import open_dataset
from atomsift.data.readers.oc20_extxyz import OC20ExtxyzDataset
from atomsift.errors import DataError


@pytest.fixture(scope="module")
def fr():
    return frames(5, seed=1)


REFS = [-120.5, -120.25, -119.75, -121.0, -118.125]


@pytest.fixture()
def release(tmp_path, fr):
    """Directory with 0.extxyz.xz (3 frames) and 1.extxyz.xz (2 frames), as in the release."""
    d = tmp_path / "s2ef_train_2M"
    d.mkdir()
    write_s2ef_pair(d, 0, fr[:3], REFS[:3])
    write_s2ef_pair(d, 1, fr[3:], REFS[3:])
    return d


def check(rec, frame, ref, rid):
    assert rec.id == rid
    np.testing.assert_array_equal(rec.numbers, frame["numbers"])
    np.testing.assert_allclose(rec.positions, frame["positions"], atol=1e-8)
    np.testing.assert_allclose(rec.cell, frame["cell"], atol=1e-8)
    assert rec.pbc.tolist() == [True, True, True]
    np.testing.assert_allclose(rec.forces, frame["forces"], atol=1e-8)
    assert rec.forces.dtype == np.float64
    total = round(frame["energy"], 8)
    assert rec.energy == pytest.approx(total - ref, abs=1e-9)
    assert rec.targets["total_energy"] == pytest.approx(total, abs=1e-9)
    assert rec.targets["reference_energy"] == ref
    np.testing.assert_array_equal(rec.tags, frame["tags"])
    np.testing.assert_array_equal(rec.fixed, frame["fixed"])
    assert rec.info["sid"] == frame["sid"] and rec.info["fid"] == frame["fid"]


def test_directory_of_xz_pairs(release, fr):
    ds = open_dataset(release)
    assert isinstance(ds, OC20ExtxyzDataset) and len(ds) == 5
    ids = ["0.extxyz.xz/0", "0.extxyz.xz/1", "0.extxyz.xz/2", "1.extxyz.xz/0", "1.extxyz.xz/1"]
    for i in [4, 0, 3, 1, 2]:  # out of order: switches files
        check(ds[i], fr[i], REFS[i], ids[i])
    assert ds.class_labels() is None
    assert ds.metadata()["n_files"] == 2


def test_single_uncompressed_file(tmp_path, fr):
    xyz, _ = write_s2ef_pair(tmp_path, 7, fr[:2], REFS[:2], compress=False)
    ds = open_dataset(xyz)
    assert isinstance(ds, OC20ExtxyzDataset) and len(ds) == 2
    check(ds[1], fr[1], REFS[1], "7.extxyz/1")
    atoms = ds[0].to_atoms()
    assert atoms.get_potential_energy() == pytest.approx(round(fr[0]["energy"], 8) - REFS[0])
    # pbc="T", one flag for all directions: the periodicity check read it as a one-entry mask (IndexError)
    xyz.write_text(xyz.read_text().replace('pbc="T T T"', 'pbc="T"'))
    assert open_dataset(xyz)[0].pbc.tolist() == [True, True, True]


def test_natural_file_order_and_mixed_compression(tmp_path, fr):
    write_s2ef_pair(tmp_path, 10, fr[2:3], REFS[2:3])
    write_s2ef_pair(tmp_path, 2, fr[1:2], REFS[1:2], compress=False)
    write_s2ef_pair(tmp_path, 1, fr[:1], REFS[:1])
    ds = open_dataset(tmp_path)
    assert [ds[i].id for i in range(3)] == ["1.extxyz.xz/0", "2.extxyz/0", "10.extxyz.xz/0"]


def test_class_labels(tmp_path, release, fr):
    sids = sorted({f["sid"] for f in fr})
    m = write_oc20_mapping(tmp_path / "oc20_data_mapping.pkl", sids, ["Al8Cu8Se16", "Pt3Sn", "Cu"])
    ds = open_dataset(release, classes=m)
    names = dict(zip(sids, ["Al8Cu8Se16", "Pt3Sn", "Cu"]))
    assert list(ds.class_labels()) == [names[f["sid"]] for f in fr]
    assert ds[3].class_label == names[fr[3]["sid"]]
    partial = write_oc20_mapping(tmp_path / "partial.pkl", sids[:1], ["Cu"])
    with pytest.raises(DataError, match=r"sid .*partial\.pkl"):
        OC20ExtxyzDataset(release, classes=partial).class_labels()
    oc22 = write_oc22_metadata(tmp_path / "oc22_metadata.pkl", sids, ["a", "b", "c"])
    with pytest.raises(DataError, match="oc22_metadata.pkl"):
        OC20ExtxyzDataset(release, classes=oc22)


def test_missing_txt_line(tmp_path, fr):
    lines = [f"random{f['sid']},frame{f['fid']},{r}" for f, r in zip(fr[:2], REFS)]
    xyz, _ = write_s2ef_pair(tmp_path, 0, fr[:3], REFS[:3], txt_lines=lines)
    ds = open_dataset(xyz)
    with pytest.raises(DataError, match=r"0\.extxyz\.xz.*no txt line"):
        ds[0]


def test_missing_txt_file_and_bad_line(tmp_path, fr):
    xyz, txt = write_s2ef_pair(tmp_path, 0, fr[:2], REFS[:2], compress=False)
    txt.write_text("random1,frame0,-1.0\nnot a line\n")
    with pytest.raises(DataError, match=r"line 2.*0\.txt"):
        OC20ExtxyzDataset(xyz)
    txt.unlink()
    assert not OC20ExtxyzDataset.sniff(xyz)
    with pytest.raises(DataError, match=r"0\.txt.*0\.extxyz"):
        OC20ExtxyzDataset(xyz)


def test_truncated_files(tmp_path, fr):
    xyz, _ = write_s2ef_pair(tmp_path, 0, fr[:3], REFS[:3])
    data = xyz.read_bytes()
    xyz.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match=r"0\.extxyz\.xz"):
        open_dataset(xyz)[0]
    d2 = tmp_path / "plain"
    d2.mkdir()
    xyz2, _ = write_s2ef_pair(d2, 0, fr[:3], REFS[:3], compress=False)
    text = xyz2.read_bytes()
    xyz2.write_bytes(text[: int(len(text) * 0.8)])
    with pytest.raises(DataError, match=r"cut off.*0\.extxyz"):
        open_dataset(d2)[2]


def test_unknown_element(tmp_path, fr):
    xyz, _ = write_s2ef_pair(tmp_path, 0, fr[:1], REFS[:1], compress=False)
    text = xyz.read_text().splitlines()
    text[2] = "Xx" + text[2][2:]
    xyz.write_text("\n".join(text) + "\n")
    with pytest.raises(DataError, match=r"0\.extxyz"):
        open_dataset(xyz)[0]


def test_sniff(tmp_path, release):
    assert OC20ExtxyzDataset.sniff(release)
    assert OC20ExtxyzDataset.sniff(release / "0.extxyz.xz")
    lone = tmp_path / "lone"
    lone.mkdir()
    (lone / "a.extxyz").write_text("1\n\nH 0 0 0\n")
    assert not OC20ExtxyzDataset.sniff(lone) and not OC20ExtxyzDataset.sniff(lone / "a.extxyz")


def test_xz_text_is_release_layout(release):
    text = lzma.decompress((release / "0.extxyz.xz").read_bytes()).decode().splitlines()
    assert "Properties=species:S:1:pos:R:3:move_mask:L:1:tags:I:1:forces:R:3" in text[1]
    assert lzma.decompress((release / "0.txt.xz").read_bytes()).decode().startswith("random")
