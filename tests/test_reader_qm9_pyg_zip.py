"""PyG QM9 .pt files are indexed with atomsift's own zip reader (no private torch API): checked against
Python's zipfile, against torch.load, with torch's private reader removed, and on zip64 / other writers."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from atomsift.data.readers import _qm9_pyg
from atomsift.data.readers._qm9_pyg import member_data_offsets, zip_members
from atomsift.data.readers.qm9 import QM9_TARGETS, QM9PygDataset

torch = pytest.importorskip("torch")


def items(n: int) -> list[dict]:
    rng = np.random.default_rng(1)
    out = []
    for i in range(n):
        z = torch.tensor([6, 1, 1, 1, 1] if i % 2 == 0 else [7, 1, 1, 1])
        out.append(
            {
                "x": torch.zeros(len(z), 11),
                "pos": torch.tensor(rng.normal(size=(len(z), 3)), dtype=torch.float32),
                "y": torch.tensor(rng.normal(size=(1, 19)), dtype=torch.float32),
                "z": z,
                "idx": torch.tensor([i + 100]),
            }
        )
    return out


def check_against_torch(path: Path, ref: list[dict]) -> None:
    ds = QM9PygDataset(path)
    assert ds._index is not None, "the zip index was not built (fell back to torch.load)"
    assert len(ds) == len(ref)
    for i in (0, 1, len(ref) - 1):
        rec = ds[i]
        assert rec.id == f"gdb_{i + 101}"
        np.testing.assert_array_equal(rec.numbers, ref[i]["z"].numpy())
        np.testing.assert_array_equal(rec.positions, ref[i]["pos"].numpy())
        np.testing.assert_array_equal([rec.targets[k] for k in QM9_TARGETS], ref[i]["y"].numpy()[0])


def test_zip_members_match_zipfile(tmp_path):
    path = tmp_path / "qm9_v3.pt"
    torch.save(items(5), path)
    members = zip_members(path)
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        assert sorted(members) == sorted(i.filename for i in infos)
        for info in infos:
            assert members[info.filename] == (info.header_offset, info.compress_type, info.compress_size)
        starts = member_data_offsets(path, np.array([i.header_offset for i in infos], dtype=np.int64))
        raw = path.read_bytes()
        for info, start in zip(infos, starts.tolist()):
            assert raw[start : start + info.file_size] == zf.read(info)
    other = tmp_path / "not_a_zip.pt"
    other.write_bytes(b"\x80\x02" + b"x" * 100)
    assert zip_members(other) is None


def test_no_private_torch_reader_needed(tmp_path, monkeypatch):
    """Issue 8: no private torch API. With torch._C.PyTorchFileReader gone the same records come out."""
    path = tmp_path / "qm9_v3.pt"
    ref = items(6)
    torch.save(ref, path)
    monkeypatch.delattr(torch._C, "PyTorchFileReader", raising=False)
    check_against_torch(path, ref)
    assert "torch._C" not in Path(_qm9_pyg.__file__).read_text()


def test_zip64_and_other_zip_writers(tmp_path):
    """Over 65,535 members (zip64 end records, as in the real qm9_v3.pt), and the archive rewritten by
    Python's zipfile (no 64-byte alignment, other member order): still indexed, same values."""
    path = tmp_path / "qm9_v3.pt"
    ref = items(3)
    torch.save(ref, path)
    big = tmp_path / "qm9_big.pt"
    with zipfile.ZipFile(path) as src, zipfile.ZipFile(big, "w", zipfile.ZIP_STORED) as dst:
        names = src.namelist()
        prefix = names[0].rsplit("/", 1)[0]
        for name in reversed(names):  # data.pkl last: not where torch puts it
            dst.writestr(name, src.read(name))
        for k in range(66_000):  # unreferenced filler members
            dst.writestr(f"{prefix}/filler/{k}", b"")
    assert len(zip_members(big)) == len(names) + 66_000
    check_against_torch(big, ref)


def test_big_endian_or_compressed_falls_back_to_torch_load(tmp_path):
    path = tmp_path / "qm9_v3.pt"
    torch.save(items(2), path)
    with zipfile.ZipFile(path) as src:
        content = {name: src.read(name) for name in src.namelist()}
    big_endian = tmp_path / "qm9_be.pt"
    with zipfile.ZipFile(big_endian, "w") as dst:
        for name, data in content.items():
            dst.writestr(name, b"big" if name.endswith("/byteorder") else data)
    deflated = tmp_path / "qm9_deflated.pt"
    with zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as dst:
        for name, data in content.items():
            dst.writestr(name, data)
    assert _qm9_pyg._index_torch_zip(big_endian) is None
    assert _qm9_pyg._index_torch_zip(deflated) is None
    assert _qm9_pyg._index_torch_zip(path) is not None
