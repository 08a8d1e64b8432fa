"""QM9 from three sources: raw `dsgdb9nsd_NNNNNN.xyz` files, PyG's `qm9_v3.pt`, and qm9pack CSVs.

Every record carries the 19 PyG targets under canonical names (`QM9_TARGETS`, PyG units: D, a0^3,
eV, a0^2, cal/mol K, GHz), `energy` and `forces` None (QM9 has no forces; U0 is a target),
class_label = Hill formula (e.g. 'C2H6O': the natural class for balanced sampling, since QM9 has one
conformer per molecule) and id = 'gdb_<N>' with N the 1-based QM9 (GDB) index, the same for a
molecule in all three sources.

Atomisation energies (targets 12-15) are read from PyG's file; for raw xyz and qm9pack they are
computed as (U0, U, H or G) - sum over atoms of the B3LYP/6-31G(2df,p) free-atom energies of QM9's
`atomref.txt` (`QM9_ATOMREF_HARTREE`; PyG's `atomrefs` are the same numbers in eV). PyG's values come
from MoleculeNet's kcal/mol columns, so the two agree to about 1e-3 eV.

This module holds the raw-xyz reader and re-exports the other two (`_qm9_pyg`, `_qm9pack`; shared
parts in `_qm9_common`), so that `qm9:QM9PygDataset` and `qm9:QM9PackDataset` resolve here.
"""

from __future__ import annotations

import os
import re
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
from ase.data import atomic_numbers as _Z

from atomsift.data.readers._common import hill_formula, open_failed
from atomsift.data.readers._qm9_common import (
    QM9_ATOMREF_HARTREE,
    QM9_TARGET_UNITS,
    QM9_TARGETS,
    QM9Base,
    qm9_float,
    qm9_record,
    qm9_target_name,
    targets_from_hartree,
)
from atomsift.data.readers._qm9_pyg import QM9PygDataset
from atomsift.data.readers._qm9pack import QM9PackDataset, qm9pack_data_dir
from atomsift.data.record import Record
from atomsift.errors import DataError

__all__ = [
    "QM9_ATOMREF_HARTREE",
    "QM9_TARGETS",
    "QM9_TARGET_UNITS",
    "QM9PackDataset",
    "QM9PygDataset",
    "QM9XyzDataset",
    "parse_qm9_xyz",
    "qm9_target_name",
    "qm9pack_data_dir",
]

_XYZ_NAME = re.compile(r"dsgdb9nsd_(\d+)\.xyz")
_TAR_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tbz", ".tar.xz", ".txz")


def parse_qm9_xyz(text: str, path: Path | str, member: str) -> Record:
    """One raw QM9 xyz text -> Record (see docs/formats.md for the layout)."""
    lines = text.splitlines()
    try:
        n = int(lines[0].strip())
        props = lines[1].split()
        if len(props) < 17 or props[0] != "gdb":
            raise ValueError(f"line 2 has {len(props)} fields, expected 'gdb idx' and 15 properties")
        values = [qm9_float(v) for v in props[2:17]]
        symbols, pos = [], np.empty((n, 3))
        for k in range(n):
            fields = lines[2 + k].split()
            symbols.append(fields[0])
            pos[k] = [qm9_float(v) for v in fields[1:4]]
        numbers = np.array([_Z[s] for s in symbols], dtype=np.int64)
        smiles = lines[3 + n].split() if len(lines) > 3 + n else []
    except (ValueError, IndexError, KeyError) as exc:
        raise DataError(
            f"cannot parse QM9 xyz text ({exc.__class__.__name__}: {exc})",
            file=path,
            record=member,
            fix="expected: atom count, 'gdb idx' + 15 properties, then 'El x y z q' lines (docs/formats.md)",
        ) from None
    info = {"gdb_index": int(props[1]), "smiles": smiles[-1] if smiles else None}
    return qm9_record(numbers, pos, targets_from_hartree(values, numbers), int(props[1]), info)


class QM9XyzDataset(QM9Base):
    """Raw QM9 `dsgdb9nsd_NNNNNN.xyz` files: a directory of them, one file, or a tarball.

    Args:
        path: a directory, a single `.xyz`, or a `.tar` / `.tar.gz` / `.tar.bz2` / `.tar.xz` of them.

    An uncompressed `.tar` is read member by member at its offsets. A compressed tarball cannot be
    read at random, so it is decompressed once at open and its text kept in memory (~80 MB for all of
    QM9); extract it, or recompress as `.tar`, to open it faster. All 133,885 molecules are read (the
    3,054 that PyG's QM9 drops as 'uncharacterized' are not removed).
    """

    format_name = "qm9-xyz"
    description = "raw QM9 dsgdb9nsd_*.xyz (directory, file or tarball; Hartree -> PyG units)"

    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        self._texts: list[bytes] | None = None
        self._offsets: np.ndarray | None = None  # (n, 2) data offset and size in a plain .tar
        if self.path.is_dir():
            self._mode = "dir"
            self._names = sorted(e.name for e in os.scandir(self.path) if _XYZ_NAME.fullmatch(e.name))
        elif self.path.name.lower().endswith(_TAR_SUFFIXES):
            self._mode = "tar"
            self._index_tar()
        else:
            self._mode = "file"
            self._names = [self.path.name]
        if not self._names:
            raise DataError(
                "no dsgdb9nsd_*.xyz files found", file=self.path, fix="point to the extracted QM9 xyz folder or tarball"
            )

    def _index_tar(self) -> None:
        plain = self.path.name.lower().endswith(".tar")
        entries: list[tuple[str, int, int, bytes | None]] = []
        try:
            with tarfile.open(self.path, "r:" if plain else "r|*") as tar:
                for m in tar:
                    base = m.name.rsplit("/", 1)[-1]
                    if not m.isfile() or not _XYZ_NAME.fullmatch(base):
                        continue
                    if plain:
                        entries.append((base, m.offset_data, m.size, None))
                    else:
                        f = tar.extractfile(m)
                        entries.append((base, 0, m.size, f.read() if f is not None else b""))
        except (tarfile.TarError, OSError, EOFError, ValueError) as exc:
            raise open_failed(self.path, exc, "QM9 tarball") from None
        entries.sort(key=lambda e: e[0])
        self._names = [e[0] for e in entries]
        if plain:
            self._offsets = np.array([(e[1], e[2]) for e in entries], dtype=np.int64).reshape(-1, 2)
        else:
            self._texts = [e[3] or b"" for e in entries]

    @classmethod
    def sniff(cls, path: Path) -> bool:
        if path.is_dir():
            with os.scandir(path) as entries:
                return any(_XYZ_NAME.fullmatch(e.name) for e in entries)
        if not path.is_file():
            return False
        if _XYZ_NAME.fullmatch(path.name):
            return True
        if not path.name.lower().endswith(_TAR_SUFFIXES):
            return False
        try:
            with tarfile.open(path, "r|*") as tar:
                for m in tar:
                    if m.isfile():
                        return bool(_XYZ_NAME.fullmatch(m.name.rsplit("/", 1)[-1]))
        except (tarfile.TarError, OSError, EOFError, ValueError):
            return "qm9" in path.name.lower()  # a damaged QM9 tarball: let opening it report the damage
        return False

    def _open(self) -> Any:
        return open(self.path, "rb") if self._offsets is not None else None

    def _length(self) -> int:
        return len(self._names)

    def _text(self, index: int) -> str:
        try:
            if self._texts is not None:
                raw = self._texts[index]
            elif self._offsets is not None:
                f = self.handle()
                f.seek(int(self._offsets[index, 0]))
                raw = f.read(int(self._offsets[index, 1]))
            elif self._mode == "dir":
                raw = (self.path / self._names[index]).read_bytes()
            else:
                raw = self.path.read_bytes()
        except OSError as exc:
            raise DataError(
                f"cannot read: {exc}", file=self.path, record=self._names[index], fix="check the file"
            ) from None
        return raw.decode("utf-8", "replace")

    def _read(self, index: int) -> Record:
        name = self._names[index]
        source = self.path / name if self._mode == "dir" else self.path
        return parse_qm9_xyz(self._text(index), source, name)

    def class_labels(self) -> np.ndarray:
        labels = []
        for i in range(len(self)):
            lines = self._text(i).splitlines()
            try:
                syms = [ln.split(maxsplit=1)[0] for ln in lines[2 : 2 + int(lines[0])]]
                labels.append(hill_formula(np.array([_Z[s] for s in syms])))
            except (ValueError, IndexError, KeyError):
                labels.append(self._read(i).class_label)  # raises the full DataError
        return np.asarray(labels, dtype=object)
