"""Unpickle PyTorch Geometric `Data` objects without torch_geometric (and mostly without torch).

Open Catalyst LMDBs store `pickle.dumps(torch_geometric.data.Data)`. `DataUnpickler` maps every
`torch_geometric.data.*` class to a small stand-in (`PygStandIn`) that keeps the pickled state, and
maps the two torch functions a pickled CPU tensor goes through to numpy versions:

- `torch.storage._load_from_bytes(b)`: `b` is a legacy `torch.save` of one storage: five small
  protocol-2 pickles (magic number, protocol 1001, sys_info, the storage's persistent id
  `('storage', torch.<T>Storage, key, location, numel, None)`, the key list), then the element
  count as 8 little-endian bytes and the raw elements. `load_storage_bytes` checks that layout
  exactly and returns a 1-D numpy view of the elements; anything else (bfloat16, storage views
  from very old torch, big-endian files) falls back to torch's own loader.
- `torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`: `rebuild_tensor`
  slices/strides that numpy array.

So every tensor field comes back as a numpy array (read-only views of the pickle bytes).
`data_fields(obj)` gives the attributes of a Data object as a dict for both PyG layouts: PyG 2.x
keeps them in `obj._store._mapping`; PyG < 2 kept them directly in `obj.__dict__`.

Safety: `find_class` is an explicit allow-list, so no function or class from the file's own choosing
is ever imported or called. Allowed: stand-ins for `torch_geometric.data.*` classes (they only store
state), the numpy versions of the tensor rebuild functions above, `torch.Size` (read as a tuple),
`collections.OrderedDict`, `_codecs.encode` for latin-1 only (how protocol 2 writes bytes), `bytes()`
and `bytearray(data)` (no sizes), the builtin set/frozenset/complex, and stand-ins for numpy's scalar,
array and dtype reconstructors (`_numpy_standins`: numeric, bool, bytes and str arrays and scalars
from checked bytes; never numpy's own callables, which let a pickle forge object pointers; object
arrays are refused). Anything else raises `RefusedGlobal` (module and name) before it is called.
Storage bytes not in the plain layout go to `torch.load(weights_only=True)`, which has its own
allow-list. `load_plain` applies the same rule (without the PyG and torch entries) to pickles of
plain values.
"""

from __future__ import annotations

import io
import math
import pickle
from collections import OrderedDict
from typing import Any

import numpy as np

from atomsift.data.readers._numpy_standins import RefusedGlobal, numpy_globals, placeholders_alive, resolve

_MAGIC = 0x1950A86A20F9469CFC6C
_PID_TAIL = b"(X\x07\x00\x00\x00storageq\x00"
_DTYPES: dict[bytes, np.dtype] = {
    b"FloatStorage": np.dtype("<f4"),
    b"DoubleStorage": np.dtype("<f8"),
    b"HalfStorage": np.dtype("<f2"),
    b"LongStorage": np.dtype("<i8"),
    b"IntStorage": np.dtype("<i4"),
    b"ShortStorage": np.dtype("<i2"),
    b"CharStorage": np.dtype("i1"),
    b"ByteStorage": np.dtype("u1"),
    b"BoolStorage": np.dtype("?"),
    b"ComplexFloatStorage": np.dtype("<c8"),
    b"ComplexDoubleStorage": np.dtype("<c16"),
}
_known_prefixes: set[bytes] = set()


class PygStandIn:
    """Stand-in for a torch_geometric class: accepts any constructor call, keeps the pickled state."""

    pyg_name = "torch_geometric"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        if args or kwargs:
            self.__dict__["_standin_args"] = (args, kwargs)

    def __setstate__(self, state: Any) -> None:
        if isinstance(state, tuple) and len(state) == 2:  # (__dict__, __slots__ state)
            for part in state:
                if isinstance(part, dict):
                    self.__dict__.update(part)
        elif isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.__dict__["_standin_state"] = state

    def __repr__(self) -> str:
        return f"<stand-in for {self.pyg_name}>"


_standin_classes: dict[tuple[str, str], type] = {}


def standin_class(module: str, name: str) -> type:
    """The (cached) stand-in class for `module.name`."""
    key = (module, name)
    cls = _standin_classes.get(key)
    if cls is None:
        cls = type(name, (PygStandIn,), {"pyg_name": f"{module}.{name}"})
        _standin_classes[key] = cls
    return cls


class _ProbeUnpickler(pickle.Unpickler):
    """Walks a legacy torch.save pickle with the plain allow-list plus torch's storage classes."""

    def find_class(self, module: str, name: str) -> Any:
        if module == "torch" and name.endswith("Storage"):
            return None
        return plain_global(module, name)

    def persistent_load(self, pid: Any) -> Any:
        return pid


def _refused_in(b: bytes, torch_error: Exception) -> RefusedGlobal:
    """Which global of the storage bytes `b` torch's weights-only loader refused (found with the probe)."""
    f = io.BytesIO(b)
    for _ in range(5):  # magic, protocol, sys_info, the storage pickle, the key list
        try:
            _ProbeUnpickler(f).load()
        except RefusedGlobal as exc:
            return exc
        except Exception:  # noqa: BLE001 - not a plain legacy layout: name what torch said
            break
    reason = str(torch_error).strip().splitlines()
    return RefusedGlobal("", f"an object that torch.load(weights_only=True) refuses ({reason[-1] if reason else ''})")


def _torch_load_from_bytes(b: bytes) -> Any:
    """torch's loader for a storage in a layout the fast path does not parse, weights-only (no code runs).

    torch's own `torch.storage._load_from_bytes` unpickles with `weights_only=False`; not used here.
    """
    import torch

    try:
        return torch.load(io.BytesIO(b), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise _refused_in(b, exc) from None


def _validated_prefix(prefix: bytes) -> bool:
    """True when `prefix` is magic, protocol 1001, a little-endian sys_info, then the pid's start."""
    if prefix in _known_prefixes:
        return True
    try:
        f = io.BytesIO(prefix)  # three small pickles of plain values, read with the allow-list
        ok = load_plain(f) == _MAGIC and load_plain(f) == 1001
        info = load_plain(f) if ok else {}
        ok = ok and isinstance(info, dict) and info.get("little_endian") is True
        ok = ok and f.read() == b"\x80\x02" + _PID_TAIL + b"c"
    except Exception:  # noqa: BLE001 - any surprise means "not the layout we know"
        return False
    if ok and len(_known_prefixes) < 64:
        _known_prefixes.add(prefix)
    return ok


def load_storage_bytes(b: bytes) -> Any:
    """A legacy `torch.save` of one storage -> 1-D numpy array of its elements (see module doc).

    Falls back to `torch.load(weights_only=True)` (returning a torch storage) for any layout
    other than the plain one.
    """
    if type(b) is not bytes:
        b = bytes(b)
    i = b.find(b"ctorch\n", 0, 400)
    if i > 0 and (b[: i + 1] in _known_prefixes or _validated_prefix(b[: i + 1])):
        j = b.find(b"\n", i + 7, i + 64)
        dtype = _DTYPES.get(b[i + 7 : j]) if j > 0 else None
        p = j + 1
        if dtype is not None and b[p : p + 3] == b"q\x01X":
            klen = b[p + 3 : p + 7]
            end_key = p + 7 + int.from_bytes(klen, "little")
            tail = b"Ntq\x04Q.\x80\x02]q\x00X" + klen + b[p + 7 : end_key] + b"q\x01a."
            k = b.find(tail, end_key)
            if k > 0:
                e = k + len(tail)
                n = int.from_bytes(b[e : e + 8], "little")
                if e + 8 + n * dtype.itemsize == len(b):
                    return np.frombuffer(b, dtype=dtype, count=n, offset=e + 8)
    return _torch_load_from_bytes(b)


def rebuild_tensor(storage: Any, storage_offset: int, size: tuple, stride: tuple, *rest: Any) -> Any:
    """numpy version of `torch._utils._rebuild_tensor_v2` (and of the older `_rebuild_tensor`)."""
    if type(storage) is not np.ndarray:  # a torch storage from the weights-only fallback (e.g. bfloat16)
        import torch

        if not isinstance(storage, torch.TypedStorage):
            raise TypeError(f"a tensor's storage is a {type(storage).__name__}, not a storage")
        tensor = torch.empty(0, dtype=storage.dtype).set_(storage, storage_offset, tuple(size), tuple(stride))
        return tensor_to_numpy(tensor)
    if storage.ndim != 1 or not storage.flags.c_contiguous:  # the bounds checks below assume a 1-D storage
        raise ValueError(f"a tensor's storage is an array of shape {storage.shape}, not a 1-D storage")
    size, stride = tuple(size), tuple(stride)
    count = math.prod(size)
    total = storage.shape[0]
    ndim = len(size)
    if storage_offset >= 0 and storage_offset + count <= total:  # fast paths: contiguous 1-D, 2-D
        if ndim == 1 and (stride[0] == 1 or count <= 1):
            return storage[storage_offset : storage_offset + count]
        if ndim == 2 and stride[1] == 1 and (stride[0] == size[1] or size[0] <= 1):
            return storage[storage_offset : storage_offset + count].reshape(size)
    if count == 0:
        return np.zeros(size, dtype=storage.dtype)
    last = storage_offset + sum((n - 1) * s for n, s in zip(size, stride))
    if storage_offset < 0 or last >= total or min(stride, default=0) < 0:
        raise ValueError(f"tensor of size {size}, stride {stride} does not fit its storage of {total}")
    expected, step = [], 1
    for n in reversed(size):
        expected.append(step)
        step *= n
    if all(s == c for n, s, c in zip(size, stride, reversed(expected)) if n > 1):
        return storage[storage_offset : storage_offset + count].reshape(size)
    item = storage.dtype.itemsize
    flat = storage[storage_offset:]
    return np.lib.stride_tricks.as_strided(flat, shape=size, strides=[s * item for s in stride]).copy()


def _rebuild_parameter(data: Any, *rest: Any) -> Any:
    return data


def _rebuild_from_type(func: Any, new_type: Any, args: tuple, *rest: Any) -> Any:
    return func(*args)


_PLAIN = {np.ndarray, int, float, str, bool, type(None)}


def tensor_to_numpy(value: Any) -> Any:
    """A torch tensor -> numpy array (bfloat16 goes through float32); anything else unchanged."""
    if type(value) in _PLAIN:
        return value
    if type(value).__module__.startswith("torch") and hasattr(value, "detach"):
        t = value.detach().cpu()
        try:
            return t.numpy()
        except TypeError:
            return t.float().numpy()
    return value


_TORCH_FUNCTIONS = {
    ("torch.storage", "_load_from_bytes"): load_storage_bytes,
    ("torch._utils", "_rebuild_tensor_v2"): rebuild_tensor,
    ("torch._utils", "_rebuild_tensor"): rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type,
    ("torch._tensor", "_rebuild_from_type"): _rebuild_from_type,
}


class _TensorType:
    """Stands in for the tensor class argument of `_rebuild_from_type(_v2)` (which ignores it)."""

    def __setstate__(self, state: Any) -> None:  # BUILD on the class itself fails here (no attributes set)
        raise RefusedGlobal("torch", "Tensor with a state")


_TENSOR_TYPES = {
    ("torch", "Size"): tuple,  # a torch.Size value comes back as a tuple
    ("torch", "Tensor"): _TensorType,
    ("torch._tensor", "Tensor"): _TensorType,
    ("torch.nn.parameter", "Parameter"): _TensorType,
}


def _latin1_encode(text: Any, encoding: str = "latin1", errors: str = "strict") -> bytes:
    """`_codecs.encode` as pickle protocol 2 uses it for bytes (latin-1 only; other codecs refused)."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
        raise RefusedGlobal("_codecs", f"encode with {encoding!r}")
    return text.encode("latin1")


def _bytes(*args: Any) -> bytes:
    """`bytes()`: how protocol 2 writes b''. Arguments (`bytes(10**10)` allocates) are refused."""
    if args:
        raise RefusedGlobal("builtins", f"bytes with the arguments {args!r:.60}")
    return b""


def _bytearray(*args: Any) -> bytearray:
    """`bytearray(b'..')` (protocols 3, 4) or `bytearray('..', 'latin-1')` (protocol 2); no sizes."""
    if not args or (len(args) == 1 and type(args[0]) is bytes):
        return bytearray(*args)
    if len(args) == 2 and type(args[0]) is str and args[1] in ("latin-1", "latin1"):
        return bytearray(args[0], "latin-1")
    raise RefusedGlobal("builtins", f"bytearray with the arguments {args!r:.60}")


# Plain values: what pickles of ints, floats, strings, bytes, tuples, dicts and numpy values name.
PLAIN_GLOBALS: dict[tuple[str, str], Any] = {
    ("collections", "OrderedDict"): OrderedDict,
    ("_codecs", "encode"): _latin1_encode,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "complex"): complex,
    ("builtins", "bytes"): _bytes,
    ("builtins", "bytearray"): _bytearray,
    **numpy_globals(object_arrays=False),
}
_OLD_MODULES = {"__builtin__": "builtins", "copy_reg": "copyreg"}  # protocol < 3 names (fix_imports)


def plain_global(module: str, name: str) -> Any:
    """The allowed object for `module.name` among PLAIN_GLOBALS; RefusedGlobal otherwise."""
    module = _OLD_MODULES.get(module, module)
    found = PLAIN_GLOBALS.get((module, name))
    if found is None:
        raise RefusedGlobal(module, name)
    return found


# the numpy entries whose results are placeholders until `resolve` (arrays from _reconstruct, dtypes)
_PLACEHOLDER_MAKERS = {v for (_, name), v in PLAIN_GLOBALS.items() if name in ("dtype", "_reconstruct")}


class PlainUnpickler(pickle.Unpickler):
    """Unpickler for plain values only (dicts, lists, numbers, strings, numpy scalars and arrays)."""

    placeholders = False  # set once the pickle names numpy's dtype or _reconstruct

    def find_class(self, module: str, name: str) -> Any:
        found = plain_global(module, name)
        if found in _PLACEHOLDER_MAKERS:
            self.placeholders = True
        return found

    def load(self) -> Any:
        """The unpickled object, numpy placeholders swapped for the arrays / dtypes they stand for."""
        try:
            obj = super().load()
        finally:
            if self.placeholders:
                self.memo.clear()  # frees the placeholders that numpy reconstructors consumed
        if self.placeholders and placeholders_alive():  # some are left: in `obj` (or in another thread's load)
            obj = resolve(obj)
        return obj


def load_plain(file: Any) -> Any:
    """Unpickle plain values from a binary file object (e.g. OC20's mapping pickle); RefusedGlobal else."""
    return PlainUnpickler(file).load()


_found: dict[tuple[str, str, bool], Any] = {}  # find_class results


def _skip(*args: Any) -> None:
    return None


def _is_pyg_data_module(module: str) -> bool:
    return module == "torch_geometric.data" or module.startswith("torch_geometric.data.")


class DataUnpickler(PlainUnpickler):
    """Unpickler that maps torch_geometric classes to stand-ins and CPU tensors to numpy arrays.

    Only the allow-list of the module doc is resolved; any other global raises `RefusedGlobal`.
    With `skip_tensors=True` every tensor loads as None (no bytes parsed): a cheap way to read
    scalar fields such as `sid` from many records.
    """

    def __init__(self, file: Any, *, skip_tensors: bool = False) -> None:
        super().__init__(file)
        self.skip_tensors = skip_tensors

    def find_class(self, module: str, name: str) -> Any:
        key = (module, name, self.skip_tensors)
        found = _found.get(key)
        if found is None:
            if _is_pyg_data_module(module):
                found = standin_class(module, name)
            elif (module, name) in _TORCH_FUNCTIONS:
                found = _skip if self.skip_tensors else _TORCH_FUNCTIONS[(module, name)]
            elif (module, name) in _TENSOR_TYPES:
                found = _TENSOR_TYPES[(module, name)]
            else:
                found = plain_global(module, name)
            if len(_found) < 256:
                _found[key] = found
        if found in _PLACEHOLDER_MAKERS:
            self.placeholders = True
        return found


def loads(data: bytes, *, skip_tensors: bool = False) -> Any:
    """Unpickle `data` with `DataUnpickler` (tensors -> numpy arrays, PyG classes -> stand-ins).

    Raises RefusedGlobal for a global outside the allow-list (nothing of it was called).
    """
    return DataUnpickler(io.BytesIO(data), skip_tensors=skip_tensors).load()


def is_pyg_data(obj: Any) -> bool:
    """True for a stand-in of a torch_geometric Data-like object (not a storage or attr class)."""
    return isinstance(obj, PygStandIn) and not obj.pyg_name.startswith("torch_geometric.data.storage")


def data_fields(obj: PygStandIn) -> dict[str, Any]:
    """Attributes of an unpickled Data stand-in, for PyG 2.x (`_store`) and PyG < 2 (`__dict__`).

    Fields that are None (PyG < 2 kept unset standard attributes such as `x`, `face` as None)
    and private names (`__num_nodes__`, `_edge_attr_cls`, ...) are left out.
    """
    store = obj.__dict__.get("_store")
    if store is not None:
        if isinstance(store, PygStandIn):
            store.__dict__.pop("_parent", None)  # break the Data <-> storage cycle early
        mapping = store.__dict__.get("_mapping") if isinstance(store, PygStandIn) else None
        if not isinstance(mapping, dict):
            raise ValueError(f"{obj!r} has a _store without a _mapping dict")
        items = mapping.items()
    else:
        items = obj.__dict__.items()
    return {k: tensor_to_numpy(v) for k, v in items if not str(k).startswith("_") and v is not None}
