"""OC LMDB reader: pickles are read with an allow-list, so a crafted LMDB or mapping file runs no code.

Each crafted pickle is first shown to run its code under plain `pickle.loads` (the test can fail), then
read through atomsift, which must refuse it with a DataError naming the file, the key and the class, and
leave the marker file uncreated.
"""

from __future__ import annotations

import builtins
import io
import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from _make_oc import frames, pyg_data, write_lmdb
from atomsift.data import open_dataset
from atomsift.data.readers import pyg_pickle
from atomsift.data.readers.oc_lmdb import OCLmdbDataset
from atomsift.errors import DataError

torch = pytest.importorskip("torch")
pytest.importorskip("torch_geometric")


class RunsCode:
    """Unpickling this calls `func(*args)`: the classic malicious pickle."""

    def __init__(self, func: Any, *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple:
        return self.func, self.args


def touch_with_exec(marker: Path) -> RunsCode:
    return RunsCode(builtins.exec, f"open({str(marker)!r}, 'w').close()")


def touch_with_system(marker: Path) -> RunsCode:
    return RunsCode(os.system, f"touch '{marker}'")


def check_runs_code(payload: bytes, marker: Path) -> None:
    """Control: plain pickle really runs the payload (then the marker is removed again)."""
    assert not marker.exists()
    try:
        pickle.loads(payload)
    except Exception:  # e.g. a storage that is no storage after the code ran
        pass
    assert marker.exists(), "the crafted pickle did not run its code under plain pickle"
    marker.unlink()


@pytest.fixture(scope="module")
def frame():
    return frames(1)[0]


@pytest.mark.parametrize("make", [touch_with_exec, touch_with_system], ids=["builtins.exec", "os.system"])
def test_value_that_runs_code_is_refused(tmp_path, frame, make):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(make(marker))
    check_runs_code(payload, marker)
    path = write_lmdb(tmp_path / "data.0000.lmdb", [pyg_data(frame), payload])
    ds = open_dataset(tmp_path)
    assert ds[0].numbers.shape == (34,)  # the genuine record still reads
    with pytest.raises(DataError) as err:
        ds[1]
    text = str(err.value)
    qualname = "builtins.exec" if make is touch_with_exec else f"{os.system.__module__}.system"
    assert str(path) in text and "key '1'" in text and qualname in text and "refused" in text
    assert not marker.exists()


def test_code_inside_a_data_field_is_refused(tmp_path, frame):
    """A genuine-looking PyG Data whose `sid` field would run code."""
    marker = tmp_path / "pwned"
    data = pyg_data(frame)
    data.sid = touch_with_exec(marker)
    payload = pickle.dumps(data)
    check_runs_code(payload, marker)
    path = write_lmdb(tmp_path / "evil.lmdb", [payload])
    ds = OCLmdbDataset(path)
    for read in (lambda: ds[0], lambda: ds._fetch(0, skip_tensors=True)):
        with pytest.raises(DataError, match=r"key '0'.*builtins\.exec.*evil\.lmdb"):
            read()
    assert not marker.exists()


class StorageBytes:
    """Pickles as `torch.storage._load_from_bytes(raw)`, the call a pickled CPU tensor makes."""

    def __init__(self, raw: bytes) -> None:
        self.raw = raw

    def __reduce__(self) -> tuple:
        import torch.storage

        return torch.storage._load_from_bytes, (self.raw,)


def test_code_inside_storage_bytes_is_refused(tmp_path):
    """torch's own `_load_from_bytes` unpickles the storage bytes with weights_only=False: a legacy
    torch.save of an object that runs code, posing as a tensor storage. atomsift must not run it."""
    marker = tmp_path / "pwned"
    buf = io.BytesIO()
    torch.save(touch_with_exec(marker), buf, _use_new_zipfile_serialization=False)
    payload = pickle.dumps(StorageBytes(buf.getvalue()))
    check_runs_code(payload, marker)
    # the same, hidden in the small pickles before the storage key that the fast path parses itself
    prefixed = pickle.dumps(touch_with_exec(marker), protocol=2) + b"ctorch\nFloatStorage\n"
    payload2 = pickle.dumps(StorageBytes(prefixed))
    path = write_lmdb(tmp_path / "storage.lmdb", [payload, payload2])
    ds = OCLmdbDataset(path)
    for i in range(2):
        with pytest.raises(DataError, match=rf"key '{i}'.*builtins\.exec.*storage\.lmdb"):
            ds[i]
    assert not marker.exists()


def test_length_key_that_runs_code_is_refused(tmp_path, frame):
    marker = tmp_path / "pwned"
    path = write_lmdb(tmp_path / "len.lmdb", [pyg_data(frame)], length_key=False)
    import lmdb

    env = lmdb.open(str(path), subdir=False, map_size=1 << 24)
    with env.begin(write=True) as txn:
        txn.put(b"length", pickle.dumps(touch_with_exec(marker)))
    env.close()
    with pytest.raises(DataError, match=r"key 'length'.*builtins\.exec.*len\.lmdb"):
        OCLmdbDataset(path)
    assert not marker.exists()


def test_class_mapping_that_runs_code_is_refused(tmp_path, frame):
    marker = tmp_path / "pwned"
    path = write_lmdb(tmp_path / "ok.lmdb", [pyg_data(frame)])
    mapping = tmp_path / "oc20_data_mapping.pkl"
    mapping.write_bytes(pickle.dumps({"random1": {"bulk_symbols": touch_with_system(marker)}}))
    with pytest.raises(DataError, match=r"system.*oc20_data_mapping\.pkl"):
        OCLmdbDataset(path, classes=mapping)
    assert not marker.exists()


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_allowed_values_still_read(tmp_path, frame, protocol):
    """numpy scalars and arrays, bytes (protocol 2 writes them through _codecs.encode), bfloat16 storages
    (decoded by torch's weights-only loader) and numpy values in the mapping pickle are all allowed."""
    data = pyg_data(frame, names="new")
    data.sid = np.int64(frame["sid"])
    data.energy = np.float64(-1.5)
    data.note = b"\x00\xffbytes"
    data.extra = np.arange(3.0)
    data.size = torch.Size([3, 4])
    data.forces = data.forces.to(torch.bfloat16)
    path = write_lmdb(tmp_path / "ok.lmdb", [pickle.dumps(data, protocol=protocol)])
    mapping = {
        f"random{frame['sid']}": {"bulk_symbols": "Al8Cu8Se16", "shift": np.float64(0.1), "miller_index": (1, 1, 1)}
    }
    classes = tmp_path / "oc20_data_mapping.pkl"
    classes.write_bytes(pickle.dumps(mapping, protocol=protocol))
    rec = OCLmdbDataset(path, classes=classes)[0]
    assert rec.energy == -1.5 and rec.info["sid"] == frame["sid"] and rec.class_label == "Al8Cu8Se16"
    np.testing.assert_allclose(rec.forces, data.forces.float().numpy())
    fields = pyg_pickle.data_fields(pyg_pickle.loads(pickle.dumps(data, protocol=protocol)))
    assert fields["note"] == b"\x00\xffbytes" and fields["extra"].tolist() == [0.0, 1.0, 2.0]
    assert fields["size"] == (3, 4)


def test_codecs_encode_only_latin1():
    """protocol 2 bytes go through _codecs.encode(text, 'latin1'); other codecs are refused."""
    crafted = b"\x80\x02c_codecs\nencode\nq\x00X\x02\x00\x00\x00hiq\x01X\x06\x00\x00\x00base64q\x02\x86q\x03Rq\x04."
    with pytest.raises(pyg_pickle.RefusedGlobal, match="encode"):
        pyg_pickle.loads(crafted)
    ok = crafted.replace(b"X\x06\x00\x00\x00base64", b"X\x06\x00\x00\x00latin1")
    assert pyg_pickle.loads(ok) == b"hi"
