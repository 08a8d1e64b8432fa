"""Base class of all readers: random access by index, lazy per-process file handles."""

from __future__ import annotations

import abc
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from atomsift.data.record import Record
from atomsift.errors import DataError


class Dataset(abc.ABC):
    """A readable dataset. Subclasses implement `_length`, `_read` and `sniff`.

    File handles are opened lazily through `handle()` and re-opened in a new process, so a
    dataset object can be pickled into data-loader workers and each worker opens its own.

    Class attributes:
        format_name: the name used with `--format` (e.g. 'ani1x').
        description: one line for the README's table and `atomsift data formats`.
        source_units: units of the raw file, recorded in metadata.
    """

    format_name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    source_units: ClassVar[dict[str, str]] = {}

    def __init__(self, path: str | Path, *, must_exist: bool = True) -> None:
        """`must_exist=False` for readers whose path may be a pattern (they check their files themselves)."""
        self.path = Path(path)
        if must_exist and not self.path.exists():
            raise DataError(
                f"no such file or directory for format '{self.format_name}'",
                file=self.path,
                fix="check the path (a bundled dataset is named like 'bundled:oxides')",
            )
        self._handle: Any = None
        self._handle_pid: int | None = None

    # -- subclass interface -------------------------------------------------------------------
    @classmethod
    def sniff(cls, path: Path) -> bool:
        """True when `path` looks like this format (cheap: names, magic bytes, top-level keys)."""
        return False

    @abc.abstractmethod
    def _length(self) -> int:
        """Number of records."""

    @abc.abstractmethod
    def _read(self, index: int) -> Record:
        """Record `index` (0 <= index < len), units already converted."""

    def _open(self) -> Any:
        """Open and return this process's file handle (override in file-backed readers)."""
        return None

    def _close(self, handle: Any) -> None:
        close = getattr(handle, "close", None)
        if callable(close):
            close()

    # -- public API ---------------------------------------------------------------------------
    def handle(self) -> Any:
        """This process's open file handle; opened on first use, re-opened after a fork."""
        pid = os.getpid()
        if self._handle is None or self._handle_pid != pid:
            self._handle = self._open()
            self._handle_pid = pid
        return self._handle

    def close(self) -> None:
        if self._handle is not None and self._handle_pid == os.getpid():
            self._close(self._handle)
        self._handle = None
        self._handle_pid = None

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        state["_handle"] = None
        state["_handle_pid"] = None
        return state

    def __len__(self) -> int:
        return self._length()

    def __getitem__(self, index: int) -> Record:
        n = len(self)
        i = int(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {index} out of range for {n} records in {self.path}")
        return self._read(i).validate(str(self.path))

    def __iter__(self) -> Iterator[Record]:
        for i in range(len(self)):
            yield self[i]

    def class_labels(self) -> np.ndarray | None:
        """(len,) array of class labels (str) for balanced sampling, or None when unknown.

        The default reads every record; readers override it with a fast path where the
        labels are known without reading structures.
        """
        labels = [self._read(i).class_label for i in range(len(self))]
        if all(label is None for label in labels):
            return None
        return np.asarray(["" if label is None else label for label in labels], dtype=object)

    def source_files(self) -> list[Path]:
        """The files this dataset reads (for fingerprints of cached results): the path, or a folder's files."""
        if self.path.is_file():
            return [self.path]
        if not self.path.is_dir():
            return []
        return sorted(p for p in self.path.rglob("*") if p.is_file() and not p.name.endswith("-lock"))

    def resolve_target(self, name: str) -> str | None:
        """Canonical target name for an alias (e.g. QM9 'delta_eps' -> 'gap'), or None if unknown."""
        return None

    def metadata(self) -> dict[str, Any]:
        """Format, path, size and reader-specific counts (e.g. skipped NaN conformers)."""
        return {
            "format": self.format_name,
            "path": str(self.path),
            "n_structures": len(self),
            "source_units": dict(self.source_units),
        }

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.path)!r}, n={len(self)})"


def label_hints(ds: Any) -> list[str]:
    """The reader's hints about labels under other keys (e.g. "no 'energy' in the first frame; it has
    dft_energy: read it with the reader option energy_key=dft_energy ..."), or [] for readers and wrappers
    without them."""
    metadata = getattr(ds, "metadata", None)
    return list(metadata().get("hints", [])) if callable(metadata) else []
