"""Object arrays in sGDML / rMD17 npz files are read through an allow-list: a crafted pickle runs no code."""

from __future__ import annotations

import io
import pickle
import pickletools
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _make_npz_qm9 import write_rmd17, write_sgdml
from atomsift.data import open_dataset
from atomsift.data.readers._npz_objects import load_object_array
from atomsift.data.readers.rmd17 import NpzMembers, RMD17Dataset
from atomsift.data.readers.sgdml import SGDMLDataset
from atomsift.errors import DataError

MD5 = b"566c78362b66a81c9cb56f9275dbfa0f"


class _Touch:
    """Pickles as `io.open(marker, 'w')`: unpickling it creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple:
        return (open, (self.marker, "w"))


class _Reduce:
    """Pickles as `func(*args)` followed by `__setstate__(state)` (BUILD) when state is given."""

    def __init__(self, func, args: tuple, state=None) -> None:
        self.value = (func, args) if state is None else (func, args, state)

    def __reduce__(self) -> tuple:
        return self.value


def _npy(pickled: bytes, shape: tuple[int, ...]) -> bytes:
    """An .npy member whose header says an object array of `shape`, followed by `pickled`."""
    f = io.BytesIO()
    np.lib.format.write_array_header_1_0(f, {"descr": "|O", "fortran_order": False, "shape": shape})
    return f.getvalue() + pickled


def _add_member(path: Path, key: str, data: bytes) -> None:
    """Replace (or add) member `key` of the npz at `path`, stored uncompressed as np.savez does."""
    with zipfile.ZipFile(path) as zf:
        members = {n: zf.read(n) for n in zf.namelist() if n != f"{key}.npy"}
    members[f"{key}.npy"] = data
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for name, blob in members.items():
            zf.writestr(name, blob)


def _evil_sgdml(tmp_path: Path, key: str = "name") -> tuple[Path, Path]:
    path, marker = tmp_path / "md22_evil.npz", tmp_path / "marker.txt"
    write_sgdml(path, 5)
    _add_member(path, key, _npy(pickle.dumps(np.array([_Touch(marker)], dtype=object), protocol=4), (1,)))
    return path, marker


def test_plain_numpy_runs_the_crafted_pickle(tmp_path: Path) -> None:
    """The crafted file is live: numpy's own loader with allow_pickle=True creates the marker."""
    path, marker = _evil_sgdml(tmp_path)
    with np.load(path, allow_pickle=True) as npz:
        value = npz["name"]
    value[0].close()  # the file object open() returned
    assert marker.exists()


@pytest.mark.parametrize("key", ["name", "theory", "e_unit"])
def test_reader_refuses_the_crafted_pickle(tmp_path: Path, key: str) -> None:
    path, marker = _evil_sgdml(tmp_path, key)
    with pytest.raises(DataError) as err:
        SGDMLDataset(path)
    text = str(err.value)
    assert "md22_evil.npz" in text and f"'{key}'" in text and "io.open" in text
    assert err.value.record == key
    assert not marker.exists()
    with pytest.raises(DataError, match="io.open"):  # also through format detection
        open_dataset(path)
    assert not marker.exists()


def test_crafted_pickle_in_an_unread_rmd17_member_stays_unread(tmp_path: Path) -> None:
    path, marker = tmp_path / "rmd17_x.npz", tmp_path / "marker.txt"
    write_rmd17(path, 5)
    _add_member(path, "old_energies", _npy(pickle.dumps(_Touch(marker), protocol=2), ()))
    assert len(RMD17Dataset(path)) == 5 and not marker.exists()
    with pytest.raises(DataError, match="old_energies") as err:  # read on purpose: refused
        NpzMembers(path).array("old_energies")
    assert "io.open" in str(err.value) and "rmd17_x.npz" in str(err.value)
    assert not marker.exists()


def _pointer_forging_pickles() -> dict[str, bytes]:
    """Pickles naming only numpy's own reconstructors that build object arrays over raw bytes."""
    raw = b"\x41" * 8  # would be dereferenced as a PyObject pointer
    hidden = _Reduce(np.dtype, ("V8", False, True), (3, "|", None, ("a",), {"a": (np.dtype("O"), 0)}, 8, 1, 0))
    rebuild = np.array([], dtype=object).__reduce__()[0]  # numpy's _reconstruct
    return {
        "ndarray-buffer": pickle.dumps(_Reduce(np.ndarray, ((1,), np.dtype("O"), raw)), protocol=4),
        "hidden-object-field": pickle.dumps(
            _Reduce(rebuild, (np.ndarray, (0,), b"b"), (1, (1,), hidden, False, raw)), protocol=4
        ),
    }


@pytest.mark.parametrize("case", ["ndarray-buffer", "hidden-object-field"])
def test_numpy_reconstructors_cannot_forge_pointers(tmp_path: Path, case: str) -> None:
    pickled = _pointer_forging_pickles()[case]
    plain = pickle.loads(pickled)  # numpy builds it without complaint (not dereferenced here)
    assert isinstance(plain, np.ndarray) and plain.nbytes == 8
    path = tmp_path / "md22_forge.npz"
    write_sgdml(path, 5)
    _add_member(path, "name", _npy(pickled, (1,)))
    with pytest.raises(DataError, match="numpy") as err:
        SGDMLDataset(path)
    assert "md22_forge.npz" in str(err.value) and err.value.record == "name"


@pytest.mark.parametrize(
    "pickled, named",
    [
        (b"c_codecs\nencode\n}b.", "_codecs.encode"),  # BUILD on an allowed function: would set attributes
        (b"cnumpy\nndarray\n}b.", "numpy.ndarray"),
        (b"cnumpy\ndtype\n(S'V8'\nI00\nI01\ntR.", "numpy.dtype('V8')"),  # structured / void dtypes
        (b"cos\nsystem\n(S'true'\ntR.", "os.system"),
    ],
)
def test_allow_list_edges(pickled: bytes, named: str) -> None:
    with pytest.raises(pickle.UnpicklingError, match=named.replace("(", r"\(").replace(")", r"\)")):
        load_object_array(io.BytesIO(pickled))


def _numpy1_names(pickled: bytes) -> bytes:
    """The same pickle as numpy 1.x writes it (module numpy.core.multiarray); frames (optional) dropped."""
    frames = [pos for op, _, pos in pickletools.genops(pickled) if op.name == "FRAME"]
    for pos in reversed(frames):
        pickled = pickled[:pos] + pickled[pos + 9 :]
    new = pickled.replace(b"\x8c\x16numpy._core.multiarray", b"\x8c\x15numpy.core.multiarray")
    return new.replace(b"numpy._core.multiarray\n", b"numpy.core.multiarray\n")


OBJECT_VALUES = {
    "md5": np.array(MD5, dtype=object),
    "name": np.array("AT-AT", dtype=object),
    "list": np.array(["DHA", b"x", np.str_("ä"), np.bytes_(b"yz"), 1, 2.5, None, np.float64(3.0)], dtype=object),
    "grid": np.array([["a", "b", "c"], ["d", "e", "f"]], dtype=object).T,  # Fortran order
    "big-endian": np.array([np.array("ab", dtype=">U2")[()]], dtype=object),
}


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
@pytest.mark.parametrize("numpy1", [False, True])
def test_allowed_object_arrays_equal_numpy(protocol: int, numpy1: bool) -> None:
    for key, value in OBJECT_VALUES.items():
        pickled = pickle.dumps(value, protocol=protocol)
        if numpy1:
            pickled = _numpy1_names(pickled)
            assert b"numpy.core.multiarray" in pickled and b"numpy._core" not in pickled
        ours, theirs = load_object_array(io.BytesIO(pickled)), pickle.loads(pickled)
        assert ours.dtype == theirs.dtype == object and ours.shape == theirs.shape, key
        assert ours.flags.f_contiguous == theirs.flags.f_contiguous, key
        assert [type(v) for v in ours.flat] == [type(v) for v in theirs.flat], key
        assert ours.tolist() == theirs.tolist(), key


def test_realistic_sgdml_reads_as_numpy_does(tmp_path: Path) -> None:
    """md5 as a bytes object array, name / theory as object strings, written with np.savez as sGDML does."""
    path = tmp_path / "md22_AT-AT.npz"
    raw = write_sgdml(
        path,
        20,
        md5=np.array(MD5, dtype=object),
        name=np.array("AT-AT", dtype=object),
        theory=np.array(np.str_("PBE+MBD, 500K"), dtype=object),
        e_unit=np.array(["kcal/mol"], dtype=object),
    )
    ds = SGDMLDataset(path)
    assert ds.name == "AT-AT" and ds.theory == "PBE+MBD, 500K" and ds.units["energy"] == "kcal/mol"
    assert ds[3].id == "AT-AT/3"
    np.testing.assert_array_equal(ds[3].positions, raw["R"][3])
    npz = NpzMembers(path)
    with np.load(path, allow_pickle=True) as reference:  # numpy's own reading of every member
        for key in reference.files:
            ours, theirs = npz.array(key), reference[key]
            assert ours.dtype == theirs.dtype and ours.shape == theirs.shape, key
            assert ours.tolist() == theirs.tolist(), key
    assert npz.array("md5").item() == MD5 and npz.scalar_text("md5") == MD5.decode()
    npz.close()


def test_object_array_shape_must_match_the_header(tmp_path: Path) -> None:
    path = tmp_path / "md22_shape.npz"
    write_sgdml(path, 5)
    _add_member(path, "name", _npy(pickle.dumps(np.array(["a", "b"], dtype=object)), (1,)))
    with pytest.raises(DataError, match="shape") as err:
        SGDMLDataset(path)
    assert err.value.record == "name" and "md22_shape.npz" in str(err.value)
