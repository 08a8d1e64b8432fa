"""numpy values in OC LMDB / mapping pickles: decoded as pickle.loads does, but never from forged pointers.

numpy's own reconstructors let a pickle build object arrays whose element pointers are bytes of the file
(`ndarray(shape, object, buffer)`, or a dtype state that hides an object field behind a "no objects"
flag). Each crafted pickle is first shown to be accepted by plain `pickle.loads` (its elements are never
read: that would crash the test process), then refused by `pyg_pickle.loads`, `load_plain` and the reader.
"""

from __future__ import annotations

import io
import pickle
import pickletools
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from atomsift.data.readers import pyg_pickle
from atomsift.errors import DataError

pytestmark = pytest.mark.filterwarnings("ignore:numpy.core:DeprecationWarning")  # plain pickle, numpy 1.x names
RAW = b"\x41" * 8  # would be dereferenced as a PyObject pointer
PROTOCOLS = [2, 3, 4, 5]


class Reduce:
    """Pickles as `func(*args)` followed by `__setstate__(state)` (BUILD) when state is given."""

    def __init__(self, func: Any, args: tuple, state: Any = None) -> None:
        self.value = (func, args) if state is None else (func, args, state)

    def __reduce__(self) -> tuple:
        return self.value


def numpy1_names(pickled: bytes) -> bytes:
    """The same pickle with numpy 1.x module names (numpy.core.*); FRAME opcodes (optional) dropped."""
    frames = [pos for op, _, pos in pickletools.genops(pickled) if op.name == "FRAME"]
    for pos in reversed(frames):
        pickled = pickled[:pos] + pickled[pos + 9 :]
    for new, old in (("multiarray", "multiarray"), ("numeric", "numeric")):
        long, short = f"numpy._core.{new}".encode(), f"numpy.core.{old}".encode()
        pickled = pickled.replace(b"\x8c" + bytes([len(long)]) + long, b"\x8c" + bytes([len(short)]) + short)
        pickled = pickled.replace(long + b"\n", short + b"\n")
    assert b"numpy._core" not in pickled
    return pickled


def forging_objects() -> dict[str, Reduce]:
    """Objects that pickle as calls of numpy's own reconstructors building object elements from raw bytes."""
    hidden = Reduce(np.dtype, ("V8", False, True), (3, "|", None, ("a",), {"a": (np.dtype("O"), 0)}, 8, 1, 0))
    rebuild = np.array([], dtype=object).__reduce__()[0]  # numpy's _reconstruct
    frombuffer = np.arange(2.0).__reduce_ex__(5)[0]  # numpy's _frombuffer
    scalar = np.float64(0).__reduce__()[0]  # numpy's multiarray.scalar
    cases = {
        "ndarray-buffer": Reduce(np.ndarray, ((1,), np.dtype("O"), RAW)),
        "hidden-object-field": Reduce(rebuild, (np.ndarray, (0,), b"b"), (1, (1,), hidden, False, RAW)),
        "frombuffer-hidden-field": Reduce(frombuffer, (RAW, hidden, (1,), "C")),
        "scalar-hidden-field": Reduce(scalar, (hidden, RAW)),
    }
    return cases


def forging_pickles(protocol: int) -> dict[str, bytes]:
    return {name: pickle.dumps(obj, protocol=protocol) for name, obj in forging_objects().items()}


def carries_object_pointer(value: Any) -> bool:
    """True when plain pickle built an array / scalar whose bytes are object pointers (not dereferenced)."""
    dtype, obj = value.dtype, np.dtype("O")
    if dtype == obj:
        return value.nbytes == 8
    return dtype.names == ("a",) and dtype.fields["a"][0] == obj and not dtype.hasobject  # the flag lies


@pytest.mark.parametrize("numpy1", [False, True], ids=["numpy2-names", "numpy1-names"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_pointer_forging_pickles_are_refused(protocol: int, numpy1: bool) -> None:
    for case, pickled in forging_pickles(protocol).items():
        if numpy1:
            pickled = numpy1_names(pickled)
        plain = pickle.loads(pickled)  # numpy builds it without complaint
        forged = carries_object_pointer(plain)
        del plain
        assert forged, case
        with pytest.raises(pyg_pickle.RefusedGlobal, match="numpy"):
            pyg_pickle.loads(pickled)
        with pytest.raises(pyg_pickle.RefusedGlobal, match="numpy"):
            pyg_pickle.load_plain(io.BytesIO(pickled))


def test_forged_values_are_refused_by_the_reader(tmp_path: Path) -> None:
    """Through the OC LMDB reader: a forged LMDB value and a forged mapping entry are DataErrors."""
    pytest.importorskip("lmdb")
    from _make_oc import write_lmdb
    from atomsift.data.readers.oc_lmdb import OCClassMap, OCLmdbDataset

    forged = forging_pickles(4)
    path = write_lmdb(tmp_path / "forged.lmdb", list(forged.values()))
    ds = OCLmdbDataset(path)
    for i in range(len(forged)):
        with pytest.raises(DataError, match=rf"key '{i}'.*numpy.*refused.*forged\.lmdb"):
            ds[i]
    mapping = tmp_path / "oc20_data_mapping.pkl"
    for crafted in forging_objects().values():
        mapping.write_bytes(pickle.dumps({"random1": {"bulk_symbols": "Cu", "shift": crafted}}, protocol=4))
        with pytest.raises(DataError, match=r"numpy.*oc20_data_mapping\.pkl"):
            OCClassMap(mapping)


def test_forged_field_in_a_data_object_is_refused(tmp_path: Path) -> None:
    pytest.importorskip("torch_geometric")
    from _make_oc import frames, pyg_data, write_lmdb
    from atomsift.data.readers.oc_lmdb import OCLmdbDataset

    data = pyg_data(frames(1)[0])
    data.sid = forging_objects()["hidden-object-field"]
    path = write_lmdb(tmp_path / "field.lmdb", [pickle.dumps(data, protocol=4)])
    ds = OCLmdbDataset(path)
    for read in (lambda: ds[0], lambda: ds._fetch(0, skip_tensors=True)):
        with pytest.raises(DataError, match=r"key '0'.*numpy\.dtype\('V8'\).*field\.lmdb"):
            read()


def same(ours: Any, theirs: Any) -> bool:
    """Equal values of the same types, arrays with equal dtype, shape, memory order and elements."""
    if type(ours) is not type(theirs):
        return False
    if isinstance(ours, np.ndarray):
        return (
            ours.dtype == theirs.dtype
            and ours.shape == theirs.shape
            and ours.flags.f_contiguous == theirs.flags.f_contiguous
            and ours.flags.c_contiguous == theirs.flags.c_contiguous
            and ours.tobytes(order="A") == theirs.tobytes(order="A")
        )
    if isinstance(ours, (list, tuple)):
        return len(ours) == len(theirs) and all(same(a, b) for a, b in zip(ours, theirs))
    if isinstance(ours, dict):
        return list(ours) == list(theirs) and all(same(ours[k], theirs[k]) for k in ours)
    if isinstance(ours, np.generic):
        return ours.dtype == theirs.dtype and ours.tobytes() == theirs.tobytes()
    return ours == theirs


ARRAYS = {
    "float64 2-D": np.arange(6.0).reshape(2, 3),
    "float32 Fortran": np.asfortranarray(np.arange(12, dtype=np.float32).reshape(3, 4)),
    "int64 strided": np.arange(10)[::2],  # not contiguous: _reconstruct even in protocol 5
    "int32 transposed view": np.arange(6, dtype=np.int32).reshape(2, 3)[:, 1:],
    "big-endian float64": np.arange(3, dtype=">f8"),
    "big-endian str": np.array(["ab", "c"], dtype=">U2"),
    "bool": np.array([True, False, True]),
    "complex128": np.array([1 + 2j, -3j]),
    "float16": np.array([0.5, 2.0], dtype=np.float16),
    "uint8 3-D": np.arange(24, dtype=np.uint8).reshape(2, 3, 4),
    "0-d": np.array(3.5),
    "empty": np.zeros((0, 3)),
    "str": np.array(["Al8Cu8Se16", "ä"]),
    "bytes": np.array([b"ab", b"\x00c"]),
}
SCALARS = {
    "int64": np.int64(-7),
    "float32": np.float32(1.5),
    "float64": np.float64(-0.25),
    "bool True": np.bool_(True),
    "bool False": np.bool_(False),
    "uint16": np.uint16(65535),
    "complex64": np.complex64(1 - 2j),
    "str_": np.str_("*CO"),
    "bytes_": np.bytes_(b"\x00\xff"),
}
PLAIN = {
    "bytes": b"\x00\xffbytes",
    "str": "Al8Cu8Se16",
    "int": 2181546,
    "tuple": (1, (1, 1), -1.5, None),
    "set": {1, 2},
    "frozenset": frozenset({"a"}),
    "bytearray": bytearray(b"ab"),
    "complex": 1 + 2j,
    "dtypes": [np.dtype("f4"), np.dtype(">i8"), np.dtype("U3"), np.dtype("bool")],
}


@pytest.mark.parametrize("numpy1", [False, True], ids=["numpy2-names", "numpy1-names"])
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_numpy_values_decode_as_pickle_does(protocol: int, numpy1: bool) -> None:
    for name, value in {**ARRAYS, **SCALARS, **PLAIN}.items():
        for wrapped in (value, {"random1": {"field": value, "n": 1}}):
            pickled = pickle.dumps(wrapped, protocol=protocol)
            if numpy1:
                pickled = numpy1_names(pickled)
            theirs = pickle.loads(pickled)
            assert same(pyg_pickle.loads(pickled), theirs), (name, protocol)
            assert same(pyg_pickle.load_plain(io.BytesIO(pickled)), theirs), (name, protocol)


@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_shared_and_cyclic_references_survive(protocol: int) -> None:
    a = np.arange(4.0)
    cyclic: list[Any] = [a, np.float64(2.0)]
    cyclic.append(cyclic)
    value = {"a": a, "again": a, "in tuple": (a, np.dtype("f8")), "cycle": cyclic, (1, 2): a}
    ours = pyg_pickle.loads(pickle.dumps(value, protocol=protocol))
    assert type(ours["a"]) is np.ndarray and ours["a"] is ours["again"] is ours["in tuple"][0] is ours[(1, 2)]
    assert ours["in tuple"][1] == np.dtype("f8") and type(ours["in tuple"][1]) is type(np.dtype("f8"))
    assert ours["cycle"][0] is ours["a"] and ours["cycle"][2] is ours["cycle"]
    np.testing.assert_array_equal(ours["a"], a)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_object_arrays_are_refused(protocol: int) -> None:
    """OC data and mappings never hold object arrays: refused (the sGDML npz reader allows string ones)."""
    pickled = pickle.dumps({"x": np.array(["a", 1], dtype=object)}, protocol=protocol)
    assert pickle.loads(pickled)["x"].tolist() == ["a", 1]
    with pytest.raises(pyg_pickle.RefusedGlobal, match="numpy.ndarray of dtype"):
        pyg_pickle.load_plain(io.BytesIO(pickled))


@pytest.mark.parametrize(
    "pickled, named",
    [
        (b"cnumpy\ndtype\n}b.", "DType"),  # BUILD on the class itself (would set class attributes)
        (b"cnumpy.core.multiarray\nscalar\n}b.", "scalar with a state"),
        (b"cnumpy.core.multiarray\n_reconstruct\n(cnumpy\nndarray\n(I0\ntS'x'\ntR.", "type code"),
        (b"c__builtin__\nbytes\n(I100000000000\ntR.", "bytes with"),  # would allocate 100 GB
        (b"c__builtin__\nbytearray\n(I100000000000\ntR.", "bytearray with"),
        (b"cnumpy._core.numeric\n_frombuffer\n(C\x08AAAAAAAAcnumpy\ndtype\n(S'O8'\nI00\nI01\ntR(I1\ntS'C'\ntR.", "O"),
        (b"cnumpy._core.numeric\n_frombuffer\n(C\x04AAAAcnumpy\ndtype\n(S'f8'\nI00\nI01\ntR(I1\ntS'C'\ntR.", "4 bytes"),
        (b"cnumpy.core.multiarray\nscalar\n(cnumpy\ndtype\n(S'M8'\nI00\nI01\ntRC\x08AAAAAAAAtR.", "M8"),
    ],
)
def test_allow_list_edges(pickled: bytes, named: str) -> None:
    with pytest.raises((pyg_pickle.RefusedGlobal, TypeError), match=named):
        pyg_pickle.load_plain(io.BytesIO(pickled))


def test_tensor_storage_must_be_one_dimensional() -> None:
    """A (6, 0) array holds no bytes but has 6 rows: as a tensor storage it would let as_strided read
    past the buffer. Only 1-D contiguous storages are accepted."""
    frombuffer = np.arange(2.0).__reduce_ex__(5)[0]
    empty_rows = Reduce(frombuffer, (b"", np.dtype("f8"), (6, 0), "C"))
    crafted = pickle.dumps(Reduce(pyg_pickle.rebuild_tensor, (empty_rows, 0, (3,), (2,))), protocol=2)
    crafted = crafted.replace(b"atomsift.data.readers.pyg_pickle", b"torch._utils").replace(
        b"rebuild_tensor", b"_rebuild_tensor_v2"
    )
    assert b"torch._utils" in crafted
    with pytest.raises(ValueError, match="1-D storage"):
        pyg_pickle.loads(crafted)
