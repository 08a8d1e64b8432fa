"""Object-dtype .npy members (sGDML's small metadata entries) read without running code from the file.

numpy stores an object array as a pickle after the .npy header, and `np.load(allow_pickle=True)`
imports and calls whatever that pickle names. `load_object_array` admits only the names numpy's own
pickles of object arrays of strings, bytes and numbers use (protocols 2-5, numpy 1.x and 2.x):
`numpy.core.multiarray._reconstruct` / `numpy._core.multiarray._reconstruct`, `numpy.ndarray`,
`numpy.dtype`, `...multiarray.scalar` (numpy.str_ / numpy.bytes_ / number elements) and
`_codecs.encode` (latin-1 only: how protocol 2 writes bytes). Anything else raises `RefusedGlobal`
before it is imported or called.

None of these is handed to the pickle as numpy's real callable: called directly, `numpy.ndarray`
(`ndarray(shape, object, buffer)`) and `numpy.dtype` (a state that hides an object field) let a
pickle build object arrays whose pointers come from the file's bytes. Stand-ins check the arguments
and build the array with `np.empty`; elements must be str, bytes, int, float, bool, complex, None
or numpy string / number scalars. The callables are wrapped so that a BUILD opcode cannot set their
attributes (which would outlive the load).
"""

from __future__ import annotations

import math
import pickle
import re
from typing import IO, Any

import numpy as np

from atomsift.data.readers.pyg_pickle import PLAIN_GLOBALS, RefusedGlobal

_SIMPLE_KINDS = "SUbiufc"  # dtypes of numpy scalar elements: strings, bytes, numbers
_ELEMENT_TYPES = (str, bytes, int, float, bool, complex, type(None))


class _DType:
    """Stand-in for `numpy.dtype(spec, align, copy)` + its `__setstate__`: plain dtypes only."""

    def __init__(self, spec: Any, align: Any = False, copy: Any = True) -> None:
        if type(spec) is not str or not re.fullmatch(r"[O" + _SIMPLE_KINDS + r"]\d{1,5}", spec):
            raise RefusedGlobal("numpy", f"dtype({spec!r})")
        try:
            self.dtype = np.dtype(spec)
        except TypeError:
            raise RefusedGlobal("numpy", f"dtype({spec!r})") from None

    def __setstate__(self, state: Any) -> None:
        # (version, byteorder, subarray, names, fields, elsize, alignment, flags[, metadata])
        ok = type(state) is tuple and len(state) in (8, 9) and state[2:5] == (None, None, None)
        ok = ok and state[1] in ("<", ">", "|", "=") and (len(state) == 8 or not state[8])
        if ok and self.dtype.kind in "SU":
            ok = state[5] == self.dtype.itemsize
        if not ok:
            raise RefusedGlobal("numpy", f"dtype({self.dtype.str!r}) with the state {state!r:.80}")
        if state[1] in "<>" and self.dtype.kind not in "OSb" and self.dtype.itemsize > 1:
            self.dtype = self.dtype.newbyteorder(state[1])


class _Guarded:
    """An allowed callable as the pickle sees it: calls `fn`; BUILD on it (which could set its
    attributes for later loads) is refused."""

    __slots__ = ("_fn", "_qualname")

    def __init__(self, fn: Any, qualname: str) -> None:
        self._fn, self._qualname = fn, qualname

    def __call__(self, *args: Any) -> Any:
        return self._fn(*args)

    def __setstate__(self, state: Any) -> None:
        raise RefusedGlobal("", f"{self._qualname} with a state")


def _ndarray_called(*args: Any) -> Any:
    raise RefusedGlobal("numpy", "ndarray(...) called directly")


_NDARRAY = _Guarded(_ndarray_called, "numpy.ndarray")  # only _reconstruct's subtype argument


class _ObjectArray:
    """What `_reconstruct(numpy.ndarray, (0,), b'b')` returns; `__setstate__` builds the object array."""

    array: np.ndarray | None = None

    def __setstate__(self, state: Any) -> None:
        # (version, shape, dtype, is_fortran, items in C order) or, in old pickles, without version
        if type(state) is tuple and len(state) == 5 and state[0] == 1:
            state = state[1:]
        if type(state) is not tuple or len(state) != 4:
            raise RefusedGlobal("numpy", f"ndarray state {state!r:.80}")
        shape, dtype, fortran, items = state
        if not isinstance(dtype, _DType) or dtype.dtype.kind != "O":
            raise RefusedGlobal("numpy", f"ndarray of dtype {getattr(dtype, 'dtype', dtype)!r:.80}")
        if type(shape) is not tuple or not all(type(n) is int and n >= 0 for n in shape):
            raise RefusedGlobal("numpy", f"ndarray of shape {shape!r:.80}")
        if type(items) is not list or len(items) != math.prod(shape):
            raise RefusedGlobal("numpy", f"ndarray of shape {shape} with {type(items).__name__} data")
        out = np.empty(len(items), dtype=object)
        for i, value in enumerate(items):
            kind = type(value)
            if kind not in _ELEMENT_TYPES and not (isinstance(value, np.generic) and value.dtype.kind in _SIMPLE_KINDS):
                raise RefusedGlobal(kind.__module__, kind.__qualname__)
            out[i] = value
        out = out.reshape(shape)
        self.array = np.asfortranarray(out) if fortran and out.ndim > 1 else out


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> _ObjectArray:
    if subtype is not _NDARRAY:
        raise RefusedGlobal("numpy", f"_reconstruct of {subtype!r:.80}")
    return _ObjectArray()


def _scalar(dtype: Any, data: Any = None) -> np.generic:
    """numpy.str_ / numpy.bytes_ / number scalar from its dtype and raw bytes."""
    if not isinstance(dtype, _DType) or dtype.dtype.kind not in _SIMPLE_KINDS:
        raise RefusedGlobal("numpy", f"scalar of dtype {getattr(dtype, 'dtype', dtype)!r:.80}")
    if type(data) is not bytes or len(data) != dtype.dtype.itemsize:
        raise RefusedGlobal("numpy", f"scalar of dtype {dtype.dtype} from {type(data).__name__} data")
    return np.frombuffer(data, dtype=dtype.dtype, count=1)[0]


ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _DType,  # a class: BUILD on it calls the unbound __setstate__ and fails
    ("_codecs", "encode"): _Guarded(PLAIN_GLOBALS[("_codecs", "encode")], "_codecs.encode"),  # latin-1 only
}
for _module in ("numpy.core.multiarray", "numpy._core.multiarray"):
    ALLOWED[(_module, "_reconstruct")] = _Guarded(_reconstruct, f"{_module}._reconstruct")
    ALLOWED[(_module, "scalar")] = _Guarded(_scalar, f"{_module}.scalar")


class _ObjectArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        found = ALLOWED.get((module, name))
        if found is None:
            raise RefusedGlobal(module, name)
        return found

    def persistent_load(self, pid: Any) -> Any:
        raise RefusedGlobal("", f"persistent id {pid!r:.80}")


def load_object_array(f: IO[bytes]) -> np.ndarray:
    """The object array pickled in `f` (positioned after the .npy header), read with the allow-list.

    Raises RefusedGlobal for anything outside it (nothing of it was imported or called), and
    pickle / value errors for a damaged pickle.
    """
    result = _ObjectArrayUnpickler(f, encoding="ASCII").load()  # np.load's default encoding
    if not isinstance(result, _ObjectArray) or result.array is None:
        raise RefusedGlobal(type(result).__module__, f"{type(result).__qualname__} (not an object array)")
    return result.array
