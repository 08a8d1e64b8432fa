"""PyG's QM9 file `qm9_v3.pt` (a torch-saved list of dicts); imported through `qm9`."""

from __future__ import annotations

import io
import math
import pickle
import struct
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


_EOCD = struct.Struct("<4s4H2LH")  # end of central directory
_EOCD64_LOCATOR = struct.Struct("<4sLQL")
_EOCD64 = struct.Struct("<4sQ2H2L4Q")
_CENTRAL = struct.Struct("<4s6H3L5H2L")  # central directory file header (46 bytes)


def _zip64_extra(extra: bytes, values: list[int]) -> list[int]:
    """Replace the 0xFFFFFFFF fields of `values` (size, compressed size, header offset) from a zip64 extra."""
    p = 0
    while p + 4 <= len(extra):
        tag, size = struct.unpack_from("<2H", extra, p)
        if tag == 1:
            q = p + 4
            for i, v in enumerate(values):
                if v == 0xFFFFFFFF and q + 8 <= p + 4 + size:
                    values[i] = struct.unpack_from("<Q", extra, q)[0]
                    q += 8
            return values
        p += 4 + size
    return values


def zip_members(path: Path) -> dict[str, tuple[int, int, int]] | None:
    """name -> (local header offset, compression method, compressed size) of every member of a zip.

    Reads the central directory (zip64 too) in one pass; None when `path` is not a zip archive. A
    torch.save file is a zip whose members are stored uncompressed, so this locates each tensor's bytes
    without torch (zipfile's ZipInfo objects take ~5x longer for the ~10^6 members of a QM9 file).
    """
    with open(path, "rb") as f:
        f.seek(0, 2)
        size = f.tell()
        n = min(size, _EOCD.size + 0xFFFF)
        f.seek(size - n)
        tail = f.read(n)
        i = tail.rfind(b"PK\x05\x06")
        if i < 0 or i + _EOCD.size > len(tail):
            return None
        _, _, _, _, count, cd_size, cd_offset, _ = _EOCD.unpack_from(tail, i)
        if count == 0xFFFF or 0xFFFFFFFF in (cd_size, cd_offset):
            j = i - _EOCD64_LOCATOR.size
            if j < 0 or tail[j : j + 4] != b"PK\x06\x07":
                return None
            f.seek(_EOCD64_LOCATOR.unpack_from(tail, j)[2])
            record = f.read(_EOCD64.size)
            if len(record) != _EOCD64.size or record[:4] != b"PK\x06\x06":
                return None
            count, cd_size, cd_offset = _EOCD64.unpack(record)[7:]
        f.seek(cd_offset)
        cd = f.read(cd_size)
    members: dict[str, tuple[int, int, int]] = {}
    p, unpack = 0, _CENTRAL.unpack_from
    for _ in range(count):
        signature, _, _, _, method, _, _, _, csize, usize, nlen, xlen, clen, _, _, _, offset = unpack(cd, p)
        if signature != b"PK\x01\x02":
            return None
        name = cd[p + 46 : p + 46 + nlen].decode("utf-8", "replace")
        if 0xFFFFFFFF in (csize, usize, offset):
            usize, csize, offset = _zip64_extra(cd[p + 46 + nlen : p + 46 + nlen + xlen], [usize, csize, offset])
        members[name] = (offset, method, csize)
        p += 46 + nlen + xlen + clen
    return members


def member_data_offsets(path: Path, header_offsets: np.ndarray) -> np.ndarray | None:
    """File offsets of the data of the members whose local headers start at `header_offsets` (int64)."""
    if len(header_offsets) == 0:
        return header_offsets.astype(np.int64)
    mm = np.memmap(path, dtype=np.uint8, mode="r")
    if int(header_offsets.max()) + 30 > mm.shape[0] or int(header_offsets.min()) < 0:
        return None
    h = header_offsets.astype(np.int64)
    signature = mm[h].astype(np.uint32) | mm[h + 1].astype(np.uint32) << 8
    signature |= mm[h + 2].astype(np.uint32) << 16 | mm[h + 3].astype(np.uint32) << 24
    if not np.all(signature == 0x04034B50):  # 'PK\x03\x04'
        return None
    name_len = mm[h + 26].astype(np.int64) | mm[h + 27].astype(np.int64) << 8
    extra_len = mm[h + 28].astype(np.int64) | mm[h + 29].astype(np.int64) << 8
    return h + 30 + name_len + extra_len


def _torch_zip_records(path: Path) -> tuple[bytes, dict[str, tuple[int, int, int]], str] | None:
    """(data.pkl bytes, members, archive prefix) of a little-endian torch.save zip; None otherwise."""
    try:
        members = zip_members(path)
    except (OSError, struct.error):
        return None
    if not members:
        return None
    pickle_name = None
    for k, name in enumerate(members):  # torch writes data.pkl first; look further only for other writers
        if name.endswith("/data.pkl") or name == "data.pkl":
            pickle_name = name if pickle_name is None or len(name) < len(pickle_name) else pickle_name
        if pickle_name is not None and k >= 8:
            break
    if pickle_name is None:
        return None
    prefix = pickle_name[: -len("data.pkl")]
    wanted = [pickle_name] + ([prefix + "byteorder"] if prefix + "byteorder" in members else [])
    if any(members[n][1] != 0 for n in wanted):  # torch stores members uncompressed
        return None
    starts = member_data_offsets(path, np.array([members[n][0] for n in wanted], dtype=np.int64))
    if starts is None:
        return None
    with open(path, "rb") as f:
        contents = []
        for name, start in zip(wanted, starts.tolist()):
            f.seek(start)
            contents.append(f.read(members[name][2]))
    if len(contents) > 1 and contents[1].strip() != b"little":
        return None  # big-endian file: the memory-mapped reads assume little-endian
    return contents[0], members, prefix


def _index_torch_zip(path: Path) -> dict[str, Any] | None:
    """File byte offsets of z, pos and y of every item of a torch-zip list of dicts, and the ids.
    None when the file is not of that kind (legacy format, other objects, strided tensors)."""
    import gc

    records = _torch_zip_records(path)
    if records is None:
        return None
    raw, members, prefix = records
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
    slots = {f: np.zeros(n, np.int64) for f in starts}
    dtypes: dict[str, set] = {f: set() for f in starts}
    has_idx = np.zeros(n, bool)
    itemsize = {d: np.dtype(d).itemsize for d in _STORAGE_DTYPES.values()}
    keys: dict[str, int] = {}  # storage key -> position in the member lists below
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
            slot = keys.get(key)
            if slot is None:
                slot = keys[key] = len(keys)
            slots[field][row] = slot
            starts[field][row] = offset * itemsize[dtype]
            dtypes[field].add(dtype)
            has_idx[row] |= field == "idx"
        name = item.get("name")
        ids.append(name if isinstance(name, str) and name else None)
    del items
    if any(len(d) > 1 for d in dtypes.values()):
        return None
    try:
        data_dir, member = prefix + "data/", members.__getitem__
        entries = [member(data_dir + key) for key in keys]
    except (KeyError, TypeError):
        return None
    if any(method != 0 for _, method, _ in entries):
        return None
    record_offsets = member_data_offsets(path, np.array([e[0] for e in entries], dtype=np.int64))
    if record_offsets is None:
        return None
    for field in starts:
        starts[field] += record_offsets[slots[field]]
    starts["idx"][~has_idx] = 0
    del record_offsets, members, keys
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
    read through a memory map. The zip archive is read by `zip_members` (public ZIP layout, no torch).
    Other files (legacy format, big-endian, compressed members) go through torch.load and stay in memory.
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
