"""Stand-ins for numpy's pickle reconstructors: arrays, dtypes and scalars from checked arguments only.

numpy pickles arrays as `_reconstruct(ndarray, (0,), b'b')` + BUILD `(version, shape, dtype, is_fortran,
raw bytes or element list)`, dtypes as `dtype('f8', False, True)` + BUILD `(3, byteorder, subarray, names,
fields, elsize, alignment, flags)`, scalars as `scalar(dtype, raw bytes)` and, in pickle protocol 5,
contiguous arrays as `_frombuffer(bytes, dtype, shape, order)`. Handing a pickle numpy's real callables
is unsafe: `ndarray((1,), object, buffer)` and a dtype state that hides an object field behind a "no
objects" flag build object arrays whose element pointers come from the file's bytes (reading one
crashes the process, or worse).

The stand-ins here build arrays only with `np.frombuffer` over the pickle's own bytes (size checked
against shape x itemsize) or, for object arrays where a caller allows them, `np.empty(object)` filled
with str / bytes / number elements. dtypes are built from their spec string only: bool, integer, float,
complex, bytes and str kinds (plus object), no structured, void, subarray, datetime or metadata dtypes.
Arrays decoded from bytes are read-only views of the pickle's bytes (numpy's own are writable copies;
protocol-5 bytearrays give writable arrays here too); non-native byte order becomes native where
numpy's `__setstate__` does so.

`_reconstruct` and `dtype` return placeholders (a BUILD fills them in place); `resolve` swaps them for
the array / dtype they stand for once the load is done. Callables are wrapped (`Guarded`) so that a
BUILD on them cannot set attributes that would outlive the load.
"""

from __future__ import annotations

import math
import pickle
import re
import sys
import weakref
from typing import Any

import numpy as np

PLAIN_KINDS = "biufcSU"  # bool, signed / unsigned int, float, complex, bytes, str
_ELEMENT_TYPES = (str, bytes, int, float, bool, complex, type(None))  # elements of an object array
_SPEC = re.compile(r"[O" + PLAIN_KINDS + r"][1-9]\d{0,4}")
_SPECS: dict[str, np.dtype] = {}  # checked dtype specs
_NATIVE_NUMBER_STATE = (3, "<" if sys.byteorder == "little" else ">", None, None, None, -1, -1, 0)
_ALIVE: weakref.WeakSet = weakref.WeakSet()  # placeholders (DType, ArrayState) not yet freed


class RefusedGlobal(pickle.UnpicklingError):
    """A pickle named a class or function outside the allow-list; it was neither imported nor called."""

    def __init__(self, module: str, name: str) -> None:
        self.qualname = f"{module}.{name}" if module else name
        super().__init__(f"the pickle refers to {self.qualname}, which is not on the allow-list")


class Guarded:
    """An allowed callable as the pickle sees it: calls `fn`; BUILD on it (which could set its
    attributes for later loads) is refused."""

    __slots__ = ("_fn", "_qualname")

    def __init__(self, fn: Any, qualname: str) -> None:
        self._fn, self._qualname = fn, qualname

    def __call__(self, *args: Any) -> Any:
        return self._fn(*args)

    def __setstate__(self, state: Any) -> None:
        raise RefusedGlobal("", f"{self._qualname} with a state")


class DType:
    """Stand-in for `numpy.dtype(spec, align, copy)` + its `__setstate__`: plain or object dtypes only."""

    __slots__ = ("__weakref__", "dtype", "kind", "size")

    def __new__(cls, *args: Any) -> DType:  # also what NEWOBJ calls
        self = super().__new__(cls)
        _ALIVE.add(self)
        return self

    def __init__(self, spec: Any, align: Any = False, copy: Any = True) -> None:
        dtype = _SPECS.get(spec) if type(spec) is str else None
        if dtype is None:
            if type(spec) is not str or not _SPEC.fullmatch(spec):
                raise RefusedGlobal("numpy", f"dtype({spec!r:.40})")
            try:
                dtype = np.dtype(spec)
            except TypeError:
                raise RefusedGlobal("numpy", f"dtype({spec!r})") from None
            if len(_SPECS) < 256:
                _SPECS[spec] = dtype
        self.dtype, self.kind, self.size = dtype, dtype.kind, dtype.itemsize

    def __setstate__(self, state: Any) -> None:
        # (version, byteorder, subarray, names, fields, elsize, alignment, flags[, metadata])
        if (
            type(state) is tuple and state == _NATIVE_NUMBER_STATE and self.kind not in "OSU"
        ):  # the common case: nothing to change
            return
        ok = type(state) is tuple and len(state) in (8, 9) and state[2:5] == (None, None, None)
        ok = ok and state[1] in ("<", ">", "|", "=") and (len(state) == 8 or not state[8])
        if ok and self.kind in "SU":
            ok = state[5] == self.size
        if not ok:
            raise RefusedGlobal("numpy", f"dtype({self.dtype.str!r}) with the state {state!r:.80}")
        if state[1] in "<>" and self.kind not in "OSb" and self.size > 1:
            self.dtype = self.dtype.newbyteorder(state[1])


def _dtype_of(dtype: Any, kinds: str, what: str) -> np.dtype:
    """The numpy dtype behind a `DType` stand-in whose kind is in `kinds`; RefusedGlobal otherwise."""
    if type(dtype) is not DType or not hasattr(dtype, "kind") or dtype.kind not in kinds:
        raise RefusedGlobal("numpy", f"{what} of dtype {getattr(dtype, 'dtype', dtype)!r:.80}")
    return dtype.dtype


def _shape_of(shape: Any, what: str) -> tuple[int, ...]:
    if type(shape) is not tuple or len(shape) > 32 or not all(type(n) is int and n >= 0 for n in shape):
        raise RefusedGlobal("numpy", f"{what} of shape {shape!r:.80}")
    return shape


def _from_bytes(data: Any, dtype: np.dtype, shape: tuple[int, ...], fortran: bool, what: str) -> np.ndarray:
    """`data` (bytes / bytearray of exactly shape x itemsize) viewed as an array; no copy."""
    if type(data) not in (bytes, bytearray) or len(data) != math.prod(shape) * dtype.itemsize:
        size = len(data) if type(data) in (bytes, bytearray) else type(data).__name__
        raise RefusedGlobal("numpy", f"{what} of shape {shape} and dtype {dtype} from {size} bytes")
    return np.frombuffer(data, dtype=dtype).reshape(shape, order="F" if fortran else "C")


class ArrayState:
    """What `_reconstruct(numpy.ndarray, (0,), b'b')` returns; BUILD (`__setstate__`) makes the array."""

    __slots__ = ("__weakref__", "allow_object", "array")

    def __init__(self, allow_object: bool) -> None:
        _ALIVE.add(self)
        self.allow_object = allow_object
        self.array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        # (version, shape, dtype, is_fortran, raw bytes or items in C order); old pickles lack the version
        if type(state) is tuple and len(state) == 5 and type(state[0]) is int and state[0] == 1:
            state = state[1:]
        if type(state) is not tuple or len(state) != 4 or self.array is not None:
            raise RefusedGlobal("numpy", f"ndarray state {state!r:.80}")
        shape, dtype, fortran, data = state
        dt = _dtype_of(dtype, "O" + PLAIN_KINDS if self.allow_object else PLAIN_KINDS, "ndarray")
        shape = _shape_of(shape, "ndarray")
        if type(fortran) not in (bool, int):
            raise RefusedGlobal("numpy", f"ndarray with the order flag {fortran!r:.80}")
        if dt.kind != "O":
            array = _from_bytes(data, dt, shape, bool(fortran), "ndarray")
            # numpy's own __setstate__ turns non-native byte order into native (a copy)
            self.array = array if dt.isnative else array.astype(dt.newbyteorder("="))
            return
        if type(data) is not list or len(data) != math.prod(shape):
            raise RefusedGlobal("numpy", f"object ndarray of shape {shape} with {type(data).__name__} data")
        out = np.empty(len(data), dtype=object)
        for i, value in enumerate(data):
            kind = type(value)
            if kind not in _ELEMENT_TYPES and not (isinstance(value, np.generic) and value.dtype.kind in PLAIN_KINDS):
                raise RefusedGlobal(kind.__module__, kind.__qualname__)
            out[i] = value
        out = out.reshape(shape)
        self.array = np.asfortranarray(out) if fortran and out.ndim > 1 else out


def _ndarray_called(*args: Any) -> Any:
    raise RefusedGlobal("numpy", "ndarray(...) called directly")


NDARRAY = Guarded(_ndarray_called, "numpy.ndarray")  # only _reconstruct's subtype argument


def _reconstruct(allow_object: bool) -> Any:
    def reconstruct(subtype: Any, shape: Any, dtype: Any) -> ArrayState:
        if subtype is not NDARRAY or type(shape) is not tuple or shape != (0,) or type(dtype) not in (bytes, str):
            raise RefusedGlobal("numpy", f"_reconstruct({subtype!r:.40}, {shape!r:.40}, {dtype!r:.40})")
        if dtype not in (b"b", "b"):
            raise RefusedGlobal("numpy", f"_reconstruct with the type code {dtype!r:.40}")
        return ArrayState(allow_object)

    return reconstruct


def _frombuffer(buf: Any, dtype: Any, shape: Any, order: Any) -> np.ndarray:
    """numpy's protocol-5 array reconstructor, for plain dtypes and in-band buffers only."""
    dt = _dtype_of(dtype, PLAIN_KINDS, "_frombuffer")
    if order not in ("C", "F"):
        raise RefusedGlobal("numpy", f"_frombuffer with order {order!r:.40}")
    return _from_bytes(buf, dt, _shape_of(shape, "_frombuffer"), order == "F", "_frombuffer")


_NUMPY_SCALAR = np.float64(0).__reduce__()[0]  # numpy's own multiarray.scalar (1.x and 2.x)


class _Scalar(Guarded):
    """numpy number / bool / bytes_ / str_ scalar from its dtype and raw bytes (one Python frame: hot)."""

    __slots__ = ()

    def __call__(self, dtype: Any, data: Any = None) -> np.generic:
        # numpy's scalar() is safe for a dtype of plain kind and exactly itemsize bytes (no pointers)
        if type(dtype) is DType and dtype.kind in PLAIN_KINDS and type(data) is bytes and len(data) == dtype.size:
            return _NUMPY_SCALAR(dtype.dtype, data)
        dt = _dtype_of(dtype, PLAIN_KINDS, "scalar")
        raise RefusedGlobal("numpy", f"scalar of dtype {dt} from {type(data).__name__} data")


def numpy_globals(*, object_arrays: bool, frombuffer: bool = True) -> dict[tuple[str, str], Any]:
    """Allow-list entries for numpy's reconstructors under the numpy 1.x and 2.x module names.

    `object_arrays`: whether `_reconstruct` may build object arrays (str / bytes / number elements).
    `frombuffer`: whether protocol-5 `_frombuffer` (plain dtypes) is included.
    """
    out: dict[tuple[str, str], Any] = {("numpy", "ndarray"): NDARRAY, ("numpy", "dtype"): DType}
    # DType is a class: BUILD on the class itself calls the unbound __setstate__ and fails
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        out[(module, "_reconstruct")] = Guarded(_reconstruct(object_arrays), f"{module}._reconstruct")
        out[(module, "scalar")] = _Scalar(None, f"{module}.scalar")
    if frombuffer:
        for module in ("numpy.core.numeric", "numpy._core.numeric"):
            out[(module, "_frombuffer")] = Guarded(_frombuffer, f"{module}._frombuffer")
    return out


_LEAVES = frozenset(
    {str, bytes, int, float, bool, complex, type(None), bytearray, np.ndarray, type}
    | {np.dtype(c).type for c in "?bBhHiIlLqQefdgFDGSU"}
)


def placeholders_alive() -> bool:
    """Whether any DType / ArrayState placeholder still exists (in a load's result, or in a load under way).

    Consumed placeholders (a scalar's dtype, an array's dtype) are freed as soon as the unpickler's memo
    is cleared, so after a load that left none in its result this is False and `resolve` can be skipped.
    """
    return len(_ALIVE) > 0


def resolve(obj: Any) -> Any:
    """`obj` with every `ArrayState` / `DType` placeholder replaced by its array / dtype.

    Lists, dicts and instance `__dict__`s are updated in place (shared references stay shared);
    tuples, sets and frozensets holding a placeholder are rebuilt. RefusedGlobal for an array that
    never got its state; ValueError for nesting deeper than the recursion limit allows.
    """
    try:
        return _resolve(obj, {})
    except RecursionError:
        raise ValueError("the pickle nests containers too deeply to check") from None


def _resolve(obj: Any, memo: dict[int, Any]) -> Any:
    kind = type(obj)
    if kind in _LEAVES or isinstance(obj, np.generic):
        return obj
    key = id(obj)
    if key in memo:
        return memo[key]
    memo[key] = obj  # provisional: containers that refer back to themselves
    if kind is ArrayState:
        if obj.array is None:
            raise RefusedGlobal("numpy", "_reconstruct without an array state")
        out = memo[key] = obj.array
        return out
    if kind is DType:
        out = memo[key] = obj.dtype if hasattr(obj, "dtype") else obj
        return out
    if kind is list:
        for i, value in enumerate(obj):
            if type(value) not in _LEAVES:
                new = _resolve(value, memo)
                if new is not value:
                    obj[i] = new
        return obj
    if isinstance(obj, dict):
        _resolve_dict(obj, memo)
        return obj
    if kind in (tuple, set, frozenset):
        items = [value if type(value) in _LEAVES else _resolve(value, memo) for value in obj]
        if any(a is not b for a, b in zip(items, obj)):
            if kind is set:
                obj.clear()
                obj.update(items)
            else:
                memo[key] = kind(items)
        return memo[key]
    state = getattr(obj, "__dict__", None)
    if type(state) is dict:
        _resolve_dict(state, memo)
    return obj


def _resolve_dict(d: dict, memo: dict[int, Any]) -> None:
    """Resolve the values (in place) and the keys (the dict is rebuilt in order if one changes)."""
    keys_changed = False
    for k, value in d.items():
        if type(value) not in _LEAVES:
            new = _resolve(value, memo)
            if new is not value:
                d[k] = new  # same key: allowed while iterating
        if type(k) not in _LEAVES and _resolve(k, memo) is not k:
            keys_changed = True
    if keys_changed:
        items = [(_resolve(k, memo), v) for k, v in d.items()]
        d.clear()
        d.update(items)
