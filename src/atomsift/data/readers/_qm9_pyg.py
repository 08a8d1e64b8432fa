"""PyG's QM9 file `qm9_v3.pt` (a torch-saved list of dicts); imported through `qm9`."""

from __future__ import annotations

import io
import math
import pickle
from pathlib import Path
from typing import Any

import numpy as np

from atomsift.data.readers._common import hill_formula, open_failed
from atomsift.data.readers._qm9_common import QM9_TARGETS, QM9Base, qm9_id, qm9_split
from atomsift.data.readers.rmd17 import check_split
from atomsift.data.record import Record
from atomsift.errors import DataError

_STORAGE_DTYPES = {
    "FloatStorage": "<f4", "DoubleStorage": "<f8", "HalfStorage": "<f2", "LongStorage": "<i8", "IntStorage": "<i4",
    "ShortStorage": "<i2", "CharStorage": "i1", "ByteStorage": "u1", "BoolStorage": "?",
}  # fmt: skip
_PT_CACHE: dict[tuple[str, int, int], list] = {}
"""The list torch.load gave for the last .pt file (slow path), kept so forked workers share it."""


def _tensor_ref(storage: tuple, offset: int, size: tuple, stride: tuple, *_: Any) -> tuple:
    return storage[2], storage[1], int(offset), tuple(size), tuple(stride)  # key, dtype, offset, shape, stride


class _TensorRefUnpickler(pickle.Unpickler):
    """Unpickles a torch zip archive's data.pkl with every tensor as a reference (storage key, dtype,
    element offset, shape, stride). Only tensors, storages and dicts are allowed: no code runs."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _tensor_ref
        if module == "torch" and name in _STORAGE_DTYPES:
            return _STORAGE_DTYPES[name]
        if (module, name) == ("collections", "OrderedDict"):
            return dict
        raise pickle.UnpicklingError(f"{module}.{name} is not allowed")

    def persistent_load(self, pid: Any) -> Any:
        return pid  # ('storage', dtype, key, location, numel)


def _contiguous(shape: tuple, stride: tuple) -> bool:
    expect = 1
    for n, s in zip(reversed(shape), reversed(stride)):
        if n != 1 and s != expect:
            return False
        expect *= n
    return True


def _index_torch_zip(path: Path) -> dict[str, Any] | None:
    """File byte offsets of z, pos and y of every item of a torch-zip list of dicts, and the ids.
    None when the file is not of that kind (legacy format, other objects, strided tensors)."""
    import gc

    import torch

    try:  # torch's own zip reader (C++): fast, and gives each record's offset in the file
        reader = torch._C.PyTorchFileReader(str(path))
        raw = reader.get_record("data.pkl")
    except Exception:  # noqa: BLE001
        return None
    if not hasattr(reader, "get_record_offset"):
        return None
    gc.disable()  # millions of small tuples: the cyclic collector would double the time
    try:
        items = _TensorRefUnpickler(io.BytesIO(raw)).load()
    except Exception:  # noqa: BLE001
        return None
    finally:
        gc.enable()
    del raw
    if not isinstance(items, list) or not all(isinstance(it, dict) for it in items):
        return None
    n = len(items)
    natoms, starts = np.zeros(n, np.int64), {f: np.zeros(n, np.int64) for f in ("z", "pos", "y", "idx")}
    dtypes: dict[str, set] = {f: set() for f in starts}
    has_idx = np.zeros(n, bool)
    record_offsets: dict[str, int] = {}
    itemsize = {d: np.dtype(d).itemsize for d in _STORAGE_DTYPES.values()}
    ids: list[str | None] = []
    for row, item in enumerate(items):
        for field in ("z", "pos", "y", "idx"):
            ref = item.get(field)
            if type(ref) is not tuple:
                if field == "idx":
                    continue
                raise DataError(f"missing key '{field}'", file=path, record=row, fix="each item needs z, pos and y")
            key, dtype, offset, shape, stride = ref
            if not _contiguous(shape, stride):
                return None
            if field == "z":
                natoms[row] = math.prod(shape)
            elif (field == "pos" and shape != (natoms[row], 3)) or (field == "y" and math.prod(shape) != 19):
                raise DataError(
                    f"{field} has shape {shape}" + (f" for {natoms[row]} atoms" if field == "pos" else ", expected 19"),
                    file=path,
                    record=row,
                    fix="pos must be (N, 3) and y (1, 19) in PyG's target order",
                )
            if key not in record_offsets:
                record_offsets[key] = int(reader.get_record_offset(f"data/{key}"))
            starts[field][row] = record_offsets[key] + offset * itemsize[dtype]
            dtypes[field].add(dtype)
            has_idx[row] |= field == "idx"
        name = item.get("name")
        ids.append(name if isinstance(name, str) and name else None)
    del items, record_offsets
    if any(len(d) > 1 for d in dtypes.values()):
        return None
    index: dict[str, Any] = {"natoms": natoms}
    for field, found in dtypes.items():
        index[field] = (starts[field], np.dtype(found.pop()) if found else None)
    if any(i is None for i in ids):  # ids from idx where a name is missing
        idx_dtype = index["idx"][1]
        with open(path, "rb") as f:
            for row, name in enumerate(ids):
                if name is None and has_idx[row]:
                    f.seek(int(index["idx"][0][row]))
                    ids[row] = qm9_id(None, np.frombuffer(f.read(idx_dtype.itemsize), idx_dtype), row)
                elif name is None:
                    ids[row] = qm9_id(None, None, row)
    index["ids"] = np.array(ids, dtype=str)  # one buffer: the unpickled strings can all be freed
    return index


def _load_pt(path: Path, allow_pickle: bool) -> list:
    """The list in a .pt file through torch.load (slow path: legacy files, PyG Data objects)."""
    import torch

    stat = path.stat()
    key = (str(path.resolve()), stat.st_mtime_ns, stat.st_size)
    if key in _PT_CACHE:
        return _PT_CACHE[key]
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001
        if "weights_only" not in str(exc) and "Weights only" not in str(exc):
            raise open_failed(path, exc, "PyG QM9 file") from None
        if not allow_pickle:
            raise DataError(
                "the file holds Python objects that a weights-only torch.load refuses (e.g. PyG Data objects)",
                file=path,
                fix="pass allow_pickle=True if you trust this file (it runs pickle code)",
            ) from None
        try:
            data = torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc2:  # noqa: BLE001
            raise open_failed(path, exc2, "PyG QM9 file") from None
    if not isinstance(data, (list, tuple)):
        raise DataError(
            f"expected a list of dicts with z, pos and y; found {type(data).__name__}",
            file=path,
            fix="give PyG's raw qm9_v3.pt (not the processed data_v3.pt)",
        )
    _PT_CACHE.clear()
    _PT_CACHE[key] = list(data)
    return _PT_CACHE[key]


class QM9PygDataset(QM9Base):
    """PyG's `qm9_v3.pt`: a torch-saved list of dicts with `z`, `pos` (A), `y` (1, 19) in PyG units.

    Args:
        path: the .pt file.
        split: None, or 'train' / 'val' / 'test' of JMP's QM9 split (RandomState(42) permutation of
            the file order; 10,000 val, 10,000 test, the rest train).
        allow_pickle: load files that a weights-only load refuses (e.g. pickled PyG Data objects) with
            full pickle, which runs code from the file: only for files you trust.

    A torch-zip file of plain dicts (PyG's) is indexed at open by unpickling it with tensors replaced
    by references (seconds, where torch.load takes minutes for 130,831 molecules); z, pos and y are then
    read through a memory map. Other files go through torch.load and stay in memory.
    Records: id = the item's `name` ('gdb_<N>'), else 'gdb_<idx + 1>' from `idx`, else 'qm9/<position>'.
    """

    format_name = "qm9-pyg"
    description = "PyG QM9 qm9_v3.pt (list of dicts z, pos, y; PyG units)"
    source_units = {"positions": "angstrom", "targets": "PyG units (eV, D, bohr^3, GHz)"}

    def __init__(self, path: str | Path, *, split: str | None = None, allow_pickle: bool = False) -> None:
        super().__init__(path)
        self.split = check_split(split, self.path)
        self.allow_pickle = bool(allow_pickle)
        self._index = _index_torch_zip(self.path)
        self.n_items = len(self._index["ids"]) if self._index is not None else len(self.handle())
        if self.n_items == 0:
            raise DataError("the file holds no molecules", file=self.path, fix="check the file")
        self._rows = qm9_split(self.n_items, self.split, self.path)

    @classmethod
    def sniff(cls, path: Path) -> bool:
        if not path.is_file() or path.suffix.lower() not in (".pt", ".pth"):
            return False
        if "qm9" in path.name.lower():
            return True
        with open(path, "rb") as f:
            head = f.read(65536)
        if head[:4] == b"\x80\x02\x8a\x0a":  # legacy torch.save: pickle protocol 2, then the magic number
            return True
        # torch zip: the first record is '<archive>/data.pkl', stored; look for the keys in its start
        name_len = int.from_bytes(head[26:28], "little") if len(head) >= 30 else 0
        if head[:4] != b"PK\x03\x04" or not head[30 : 30 + name_len].endswith(b"data.pkl"):
            return False
        return b"pos" in head and (b"\x01\x00\x00\x00z" in head or b"\x8c\x01z" in head)

    def _open(self) -> Any:
        if self._index is not None:
            return np.memmap(self.path, dtype=np.uint8, mode="r").view(np.ndarray)
        return _load_pt(self.path, self.allow_pickle)

    def _close(self, handle: Any) -> None:
        return None

    def _length(self) -> int:
        return self.n_items if self._rows is None else int(self._rows.shape[0])

    def _field(self, row: int, field: str, count: int) -> np.ndarray:
        starts, dtype = self._index[field]
        start = int(starts[row])
        return self.handle()[start : start + count * dtype.itemsize].view(dtype)

    def _get(self, item: Any, key: str, row: int) -> np.ndarray:
        try:
            value = item[key]
        except (KeyError, TypeError, IndexError, AttributeError):
            raise DataError(
                f"missing key '{key}'", file=self.path, record=row, fix="each item needs z, pos and y (docs/formats.md)"
            ) from None
        return value.numpy() if hasattr(value, "numpy") else np.asarray(value)

    def _arrays(self, row: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, str]:
        if self._index is not None:
            n = int(self._index["natoms"][row])
            z, pos = self._field(row, "z", n), self._field(row, "pos", 3 * n).reshape(n, 3)
            return z, pos, self._field(row, "y", len(QM9_TARGETS)), str(self._index["ids"][row])
        item = self.handle()[row]
        z, pos, y = (self._get(item, key, row) for key in ("z", "pos", "y"))
        if y.size != len(QM9_TARGETS):
            raise DataError(
                f"y has {y.size} values, expected {len(QM9_TARGETS)}",
                file=self.path,
                record=row,
                fix="y must be (1, 19) in PyG's target order",
            )
        get = item.get if isinstance(item, dict) else lambda key: getattr(item, key, None)
        return z, pos, y, qm9_id(get("name"), get("idx"), row)

    def _read(self, index: int) -> Record:
        row = index if self._rows is None else int(self._rows[index])
        z, pos, y, rec_id = self._arrays(row)
        numbers = np.array(z, dtype=np.int64).reshape(-1)
        targets = dict(zip(QM9_TARGETS, np.asarray(y, dtype=np.float64).reshape(-1).tolist()))
        return Record(
            numbers=numbers,
            positions=np.array(pos, dtype=np.float64),
            targets=targets,
            class_label=hill_formula(numbers),
            id=rec_id,
            info={"row": row},
        )

    def class_labels(self) -> np.ndarray:
        rows = range(self.n_items) if self._rows is None else self._rows
        labels = []
        for row in rows:
            if self._index is not None:
                z = self._field(int(row), "z", int(self._index["natoms"][row]))
            else:
                z = self._get(self.handle()[int(row)], "z", int(row))
            labels.append(hill_formula(np.asarray(z).reshape(-1)))
        return np.asarray(labels, dtype=object)

    def metadata(self) -> dict[str, Any]:
        return {**super().metadata(), "split": self.split, "n_molecules_in_file": self.n_items}
