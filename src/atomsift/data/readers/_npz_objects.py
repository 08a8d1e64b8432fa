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
pickle build object arrays whose pointers come from the file's bytes. The stand-ins of
`_numpy_standins` (shared with the OC LMDB reader) check the arguments and build the array with
`np.empty`; elements must be str, bytes, int, float, bool, complex, None or numpy string / number
scalars.
"""

from __future__ import annotations

import pickle
from typing import IO, Any

import numpy as np

from atomsift.data.readers._numpy_standins import ArrayState, Guarded, RefusedGlobal, numpy_globals
from atomsift.data.readers.pyg_pickle import PLAIN_GLOBALS

ALLOWED: dict[tuple[str, str], Any] = {
    **numpy_globals(object_arrays=True, frombuffer=False),  # numpy never writes object arrays that way
    ("_codecs", "encode"): Guarded(PLAIN_GLOBALS[("_codecs", "encode")], "_codecs.encode"),  # latin-1 only
}


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
    if type(result) is ArrayState and result.array is not None:
        if result.array.dtype == object:
            return result.array
        raise RefusedGlobal("numpy", f"ndarray of dtype {result.array.dtype} (not an object array)")
    raise RefusedGlobal(type(result).__module__, f"{type(result).__qualname__} (not an object array)")
