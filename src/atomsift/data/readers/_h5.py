"""HDF5 helpers shared by the ANI-1x, Transition-1x and SPICE readers.

- `has_hdf5_magic` / `sniff_kind`: cheap format detection (magic bytes, then one look at the
  top-level layout, cached so the three readers' `sniff` open a file once).
- `open_h5`: open read-only with a clear `DataError` for truncated or corrupt files.
- `read_rows`: a dataset slice whose h5py errors become `DataError`s naming file and record.
- `RowBlock` / `block_rows_for`: the bounded block of rows a reader keeps for sequential reads.
- `GroupedH5Dataset`: the base of the three readers (records are rows of per-group arrays).
"""

from __future__ import annotations

import abc
import bisect
import functools
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import h5py
import numpy as np

from atomsift.data.base import Dataset
from atomsift.data.readers._common import open_failed
from atomsift.data.record import Record
from atomsift.errors import DataError

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_MAGIC_OFFSETS = (0, 512, 1024, 2048, 4096, 8192)  # HDF5 allows a user block of 512 * 2^k bytes

BLOCK_BYTES = 1 << 20
"""Soft cap on the bytes of one cached block (all arrays of its rows together)."""

SIEVE_BYTES = 4096
"""HDF5 sieve buffer per open dataset (HDF5's default is 64 KiB)."""

MAX_BLOCK_ROWS = 256
"""Most rows (conformers, frames) one block holds."""


def has_hdf5_magic(path: Path) -> bool:
    """True when `path` is a file that starts with the HDF5 signature (at 0 or a user-block offset)."""
    try:
        if not path.is_file():
            return False
        size = path.stat().st_size
        with open(path, "rb") as fh:
            for offset in _MAGIC_OFFSETS:
                if offset + 8 > size:
                    break
                fh.seek(offset)
                if fh.read(8) == HDF5_MAGIC:
                    return True
    except OSError:
        return False
    return False


def open_h5(path: Path, what: str) -> h5py.File:
    """Open `path` read-only; DataError on failure.

    The per-dataset sieve buffer is shrunk to SIEVE_BYTES: HDF5 otherwise keeps 64 KiB for every
    open dataset, which the readers' GroupCache of open datasets would multiply into hundreds of MB.
    HDF5's default locking is kept: read-only opens share the lock, and a process that opens the same
    file again with h5py's defaults (tests, user code) would otherwise fail on mismatched lock flags.
    """
    if path.is_dir():
        raise DataError(
            f"the {what} must be a file, but this path is a directory",
            file=path,
            fix="point to the .h5/.hdf5 file itself, or choose another --format",
        )
    try:
        fapl = h5py.h5p.create(h5py.h5p.FILE_ACCESS)
        fapl.set_sieve_buf_size(SIEVE_BYTES)
        return h5py.File(h5py.h5f.open(str(path).encode(), h5py.h5f.ACC_RDONLY, fapl=fapl))
    except (OSError, ValueError) as exc:
        text = str(exc)
        if "truncated" in text:
            raise DataError(
                f"cannot open {what}: the HDF5 file is truncated (shorter than its header says; {text})",
                file=path,
                fix="the download or copy did not finish: fetch the file again and compare its size "
                "and checksum with the release",
            ) from None
        raise open_failed(path, exc, what) from None


def _first_child(group: h5py.Group) -> tuple[str, Any] | None:
    for name in group:
        return name, group.get(name)
    return None


@functools.lru_cache(maxsize=16)
def _sniff_cached(path_text: str, mtime_ns: int, size: int) -> str | None:
    path = Path(path_text)
    with open_h5(path, "HDF5 file") as f:
        data = f.get("data")
        if isinstance(data, h5py.Group):
            formula = _first_child(data)
            if formula is None or not isinstance(formula[1], h5py.Group):
                return "transition1x" if any(s in f for s in ("train", "val", "test")) else None
            rxn = _first_child(formula[1])
            if rxn is not None and isinstance(rxn[1], h5py.Group) and "positions" in rxn[1]:
                return "transition1x"
        first = _first_child(f)
        if first is None or not isinstance(first[1], h5py.Group):
            return None
        group = first[1]
        if "conformations" in group:
            return "spice"
        if "atomic_numbers" in group and "coordinates" in group:
            return "ani1x"
    return None


def sniff_kind(path: Path) -> str | None:
    """'ani1x', 'transition1x', 'spice' or None, from the HDF5 magic and the top-level layout.

    A file with the HDF5 signature that HDF5 cannot open (truncated, corrupt) raises DataError,
    so auto-detection reports the real problem instead of "unknown format".
    """
    path = Path(path)
    if not has_hdf5_magic(path):
        return None
    stat = path.stat()
    return _sniff_cached(str(path.resolve()), stat.st_mtime_ns, stat.st_size)


def read_rows(dset: h5py.Dataset, sel: Any, path: Path, record: str) -> np.ndarray:
    """`dset[sel]` as a numpy array; HDF5 read errors become a DataError naming file and record."""
    try:
        return dset[sel]
    except (OSError, ValueError, TypeError) as exc:
        raise DataError(
            f"cannot read dataset '{dset.name}': {exc}",
            file=path,
            record=record,
            fix="the file may be truncated or corrupt; fetch it again and compare its checksum with the release",
        ) from None


def optional_dataset(group: h5py.Group, key: str, path: Path, fix: str) -> h5py.Dataset | None:
    """`group[key]` when present (a dataset), None when absent; DataError when it is something else.

    Uses `group[key]` and catches KeyError: about twice as fast as `group.get(key)` in h5py.
    """
    try:
        obj = group[key]
    except KeyError:
        return None
    except (OSError, ValueError) as exc:  # broken links, corrupt headers
        raise DataError(f"cannot read '{group.name}/{key}': {exc}", file=path, record=group.name, fix=fix) from None
    if not isinstance(obj, h5py.Dataset):
        raise DataError(f"'{group.name}/{key}' is not a dataset", file=path, record=group.name, fix=fix)
    return obj


def get_dataset(group: h5py.Group, key: str, path: Path, fix: str) -> h5py.Dataset:
    """`group[key]` when it is a dataset, else a DataError naming the group and key."""
    obj = optional_dataset(group, key, path, fix)
    if obj is None:
        raise DataError(f"key '{key}' is missing in group '{group.name}'", file=path, record=group.name, fix=fix)
    return obj


def string_attr(dset: h5py.Dataset, name: str) -> str | None:
    """Attribute `name` of `dset` as a str, or None when absent (low-level read: ~5x faster than .attrs)."""
    try:
        attr = h5py.h5a.open(dset.id, name.encode())
    except KeyError:
        return None
    buf = np.empty(attr.shape, dtype=attr.dtype)
    attr.read(buf)
    return decode_text(buf[()] if buf.ndim == 0 else buf)


def decode_text(value: Any) -> str:
    """A str from an HDF5 string value: bytes, str, or a (1,) array of either."""
    if isinstance(value, np.ndarray):
        value = value.reshape(-1)[0] if value.size else b""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def block_rows_for(row_bytes: int) -> int:
    """Rows per block so that one block stays under BLOCK_BYTES (at least 1, at most MAX_BLOCK_ROWS)."""
    return int(max(1, min(MAX_BLOCK_ROWS, BLOCK_BYTES // max(1, row_bytes))))


def nan_rows(dset: h5py.Dataset, path: Path, record: str, budget: int = 1 << 22) -> np.ndarray:
    """(M,) bool: rows of `dset` (M, ...) holding any NaN, read in slices of about `budget` values."""
    m = dset.shape[0]
    per_row = int(np.prod(dset.shape[1:], dtype=np.int64)) or 1
    step = max(1, budget // per_row)
    out = np.zeros(m, dtype=bool)
    for start in range(0, m, step):
        chunk = read_rows(dset, np.s_[start : start + step], path, record)
        out[start : start + step] = np.isnan(chunk.reshape(chunk.shape[0], -1)).any(axis=1)
    return out


@dataclass
class RowBlock:
    """Converted rows [start, stop) of one group, kept between reads.

    Attributes:
        group: index of the group in the reader's index.
        start, stop: raw row range within the group.
        arrays: name -> array whose first axis is the row (stop - start rows).
        extra: per-group values shared by all rows (atomic numbers, strings, ...).
    """

    group: int
    start: int
    stop: int
    arrays: dict[str, np.ndarray]
    extra: dict[str, Any] = field(default_factory=dict)

    def holds(self, group: int, row: int) -> bool:
        return group == self.group and self.start <= row < self.stop


def block_range(row: int, nrows: int, index: int, last_index: int, block_rows: int) -> tuple[int, int]:
    """Raw rows to read for `row` of a group of `nrows`: a full block when access looks sequential
    (this index follows the last one closely), else that row alone."""
    sequential = 0 < index - last_index <= 8
    size = block_rows if sequential else 1
    return row, min(nrows, row + size)


class GroupCache:
    """Bounded LRU of per-group h5py datasets and small arrays, tied to one open file handle.

    Looking a dataset up by name costs tens of microseconds in h5py; keeping the objects makes a
    random single-row read a few fast slices. Emptied when the handle changes (new process) and
    when pickled (h5py objects do not pickle).
    """

    def __init__(self, maxsize: int = 512) -> None:
        self.maxsize = maxsize
        self._handle: Any = None
        self._items: OrderedDict[int, dict[str, Any]] = OrderedDict()

    def get(self, handle: Any, key: int, make: Callable[[], dict[str, Any]]) -> dict[str, Any]:
        """The entry for `key`, built by `make()` on a miss."""
        if handle is not self._handle:
            self._items.clear()
            self._handle = handle
        item = self._items.get(key)
        if item is None:
            item = self._items[key] = make()
            if len(self._items) > self.maxsize:
                self._items.popitem(last=False)
        else:
            self._items.move_to_end(key)
        return item

    def __getstate__(self) -> dict[str, Any]:
        return {"maxsize": self.maxsize}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["maxsize"])


class GroupedH5Dataset(Dataset):
    """Base of the HDF5 readers whose records are the rows of per-group arrays (ANI-1x, Transition-1x, SPICE).

    The index lists the kept groups: class label, atoms, raw rows, the raw rows kept (None = all)
    and cumulative record offsets. A read goes through a bounded block of converted rows (`RowBlock`),
    so sequential access costs one HDF5 read per block.

    Subclasses call `_build_index()` at the end of `__init__`, index each group with `_add_group`, and
    supply `_make_entry` (per-group datasets and values, cached), `_row_bytes`, `_read_block` and
    `_record`. `format_name` is the kind `sniff_kind` reports for the format.

    Class attributes:
        file_what: how an open error names the file (e.g. 'ANI-1x HDF5 file').
        block_extra: keys of the cached group entry that every block carries in `RowBlock.extra`.
    """

    file_what: ClassVar[str] = "HDF5 file"
    block_extra: ClassVar[tuple[str, ...]] = ("numbers",)

    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        self._labels: list[str] = []  # class label of each kept group
        self._natoms: list[int] = []
        self._nrows: list[int] = []  # raw rows (conformers, frames) of each kept group
        self._valid: list[np.ndarray | None] = []  # raw rows kept; None = all rows
        self._offsets: list[int] = [0]
        self.n_skipped_nan = 0
        self._block: RowBlock | None = None
        self._last = -1
        self._groups = GroupCache()

    # -- subclass interface -----------------------------------------------------------------------
    @abc.abstractmethod
    def _build_index(self) -> None:
        """Index the file's groups through `_add_group`."""

    @abc.abstractmethod
    def _make_entry(self, g: int) -> dict[str, Any]:
        """Datasets and per-group values (at least `block_extra`) of kept group `g`."""

    @abc.abstractmethod
    def _row_bytes(self, g: int) -> int:
        """Bytes of one converted row of group `g` (sets the block size)."""

    @abc.abstractmethod
    def _read_block(self, g: int, entry: dict[str, Any], sel: slice, record: str) -> dict[str, np.ndarray]:
        """Converted arrays of raw rows `sel` of group `g`, keyed by name (first axis = row)."""

    @abc.abstractmethod
    def _record(self, g: int, row: int, block: RowBlock, j: int) -> Record:
        """The record of raw row `row` of group `g`, which is row `j` of `block`."""

    def _group_id(self, g: int) -> str:
        """Id prefix of group `g`'s records (its class label unless overridden)."""
        return self._labels[g]

    # -- index ------------------------------------------------------------------------------------
    def _open(self) -> h5py.File:
        return open_h5(self.path, self.file_what)

    def _top_group(self, f: h5py.File, name: str, fix: str) -> h5py.Group:
        """Top-level group `name`; DataError when it is a dangling link, damaged, or not a group."""
        try:
            group = f[name]
        except (KeyError, OSError) as exc:  # a dangling link or a damaged object header
            raise DataError(f"cannot open group '{name}': {exc}", file=self.path, record=name, fix=fix) from None
        if not isinstance(group, h5py.Group):
            raise DataError(f"top-level object '{name}' is not a group", file=self.path, record=name, fix=fix)
        return group

    def _row_datasets(
        self, group: h5py.Group, name: str, pos_key: str, energy_key: str, *, layout_fix: str, shape_fix: str
    ) -> tuple[h5py.Dataset, h5py.Dataset, int, int]:
        """Positions (M, N, 3) and energy (M,) datasets of top-level group `name`, with N (atoms) and
        M (rows), checked against its `atomic_numbers` (N,); DataError naming the shapes when they disagree."""
        numbers = get_dataset(group, "atomic_numbers", self.path, layout_fix)
        pos = get_dataset(group, pos_key, self.path, layout_fix)
        energy = get_dataset(group, energy_key, self.path, layout_fix)
        natoms = int(numbers.shape[0]) if numbers.ndim == 1 else -1
        nrows = int(pos.shape[0]) if pos.ndim == 3 else -1
        if natoms < 1 or pos.shape[1:] != (natoms, 3) or energy.shape != (nrows,):
            raise DataError(
                f"shapes disagree in group '{name}': atomic_numbers {numbers.shape}, {pos_key} {pos.shape}, "
                f"{energy_key} {energy.shape}",
                file=self.path,
                record=name,
                fix=shape_fix,
            )
        return pos, energy, natoms, nrows

    def _nan_force_rows(
        self, forces: h5py.Dataset, key: str, name: str, shape: tuple[int, int, int], fix: str
    ) -> np.ndarray:
        """(M,) bool: rows of `forces` (or gradient) holding a NaN; DataError when its shape is not `shape`."""
        if forces.shape != shape:
            raise DataError(
                f"{key} has shape {forces.shape} in group '{name}', expected {shape}",
                file=self.path,
                record=name,
                fix=fix,
            )
        return nan_rows(forces, self.path, name)

    def _add_group(self, label: str, natoms: int, nrows: int, bad: np.ndarray | None = None) -> bool:
        """Index a group of `nrows` rows of `natoms` atoms, less the rows flagged in `bad` (M,) bool,
        which count in `n_skipped_nan`. False (nothing indexed) when no row is left."""
        n_bad = 0 if bad is None else int(bad.sum())
        self.n_skipped_nan += n_bad
        if n_bad == nrows:
            return False
        self._labels.append(label)
        self._natoms.append(natoms)
        self._nrows.append(nrows)
        self._valid.append(np.flatnonzero(~bad).astype(np.int32) if n_bad else None)
        self._offsets.append(self._offsets[-1] + nrows - n_bad)
        return True

    def _require_rows(self, message: str, fix: str) -> None:
        """DataError(message) when no group was indexed."""
        if not self._labels:
            raise DataError(message, file=self.path, fix=fix)

    # -- reading ----------------------------------------------------------------------------------
    def _length(self) -> int:
        return self._offsets[-1]

    def _group(self, g: int) -> dict[str, Any]:
        """The entry of kept group `g` (cached per open handle)."""
        return self._groups.get(self.handle(), g, lambda: self._make_entry(g))

    def _load_block(self, g: int, row: int, index: int) -> RowBlock:
        start, stop = block_range(row, self._nrows[g], index, self._last, block_rows_for(self._row_bytes(g)))
        entry = self._group(g)
        arrays = self._read_block(g, entry, np.s_[start:stop], f"{self._group_id(g)}/{row}")
        return RowBlock(g, start, stop, arrays, {key: entry[key] for key in self.block_extra})

    def _read(self, index: int) -> Record:
        g = bisect.bisect_right(self._offsets, index) - 1
        k = index - self._offsets[g]
        valid = self._valid[g]
        row = k if valid is None else int(valid[k])
        block = self._block
        if block is None or not block.holds(g, row):
            block = self._block = self._load_block(g, row, index)
        self._last = index
        return self._record(g, row, block, row - block.start)

    # -- fast paths -------------------------------------------------------------------------------
    @classmethod
    def sniff(cls, path: Path) -> bool:
        return sniff_kind(Path(path)) == cls.format_name

    def class_labels(self) -> np.ndarray:
        counts = np.diff(np.asarray(self._offsets, dtype=np.int64))
        return np.repeat(np.asarray(self._labels, dtype=object), counts)

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state["_block"] = None
        state["_last"] = -1
        return state
