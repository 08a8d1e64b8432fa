"""Extended XYZ (ASE's extxyz), plain or compressed (.gz, .bz2, .xz): one file, a folder of them or a glob.

Opening scans each file once and keeps the byte offset of every frame (~36 bytes per frame); a record
read parses just that frame (`_extxyz_frames`: a vectorised parser that gives what ASE gives for plain
frames, ASE's own parser for anything unusual). Compressed files are decompressed into memory when read
(kept per process up to ~1 GiB in all; fine up to a few GB per file, decompress larger files to disk first).
"""

from __future__ import annotations

import bisect
import bz2
import glob
import gzip
import io
import lzma
import os
import threading
from collections import OrderedDict
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from atomsift.data.base import Dataset
from atomsift.data.readers._common import hill_formula, open_failed
from atomsift.data.readers._extxyz_frames import _ase_frame, _comment_values, _fast_frame, _Frame, parse_frame
from atomsift.data.record import Record
from atomsift.errors import ConfigError, DataError

__all__ = ["ExtxyzDataset", "_ase_frame", "_fast_frame", "extxyz_files", "is_glob"]

_DECOMPRESS = {".gz": gzip.decompress, ".bz2": bz2.decompress, ".xz": lzma.decompress}
_SUFFIXES = (".xyz", ".extxyz")
_BUFFERS: OrderedDict[tuple[str, int, int], bytes] = OrderedDict()  # decompressed files, most recent last
_BUFFERS_LOCK = threading.Lock()
_BUFFER_BUDGET = 1 << 30  # bytes of decompressed text kept per process (the newest file is always kept)
_MAX_OPEN = 32  # plain files held open at once per process
_FOLDER_FIX = (
    "point to one .xyz/.extxyz file, a folder holding only such files (optionally .gz/.bz2/.xz), "
    "or a glob such as 'data/*.xyz' (quoted, so the shell passes it on)"
)


@lru_cache(maxsize=4096)
def _formula(numbers: bytes) -> str:
    return hill_formula(np.frombuffer(numbers, dtype=np.int64))


def _compressed(path: Path) -> bool:
    return path.suffix.lower() in _DECOMPRESS


def is_glob(text: str) -> bool:
    """True when `text` holds a glob wildcard (*, ?, [)."""
    return glob.has_magic(text)


def is_xyz_name(name: str) -> bool:
    """`name` ends in .xyz or .extxyz, optionally followed by .gz / .bz2 / .xz (any case)."""
    name = name.lower()
    for suffix in _DECOMPRESS:
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return name.endswith(_SUFFIXES)


def extxyz_files(path: Path) -> list[Path]:
    """The files `path` names, in name order: itself, a folder's files (hidden ones and subfolders left out),
    or the files a glob matches. DataError when there are none or some are not .xyz/.extxyz."""
    if path.is_file():
        return [path]
    if path.is_dir():
        with os.scandir(path) as entries:
            found = [Path(e.path) for e in entries if not e.name.startswith(".") and e.is_file()]
        where = "this folder"
    elif is_glob(str(path)):
        found = [Path(m) for m in glob.glob(str(path), recursive=True) if os.path.isfile(m)]
        where = "this pattern"
    else:
        raise DataError("no such file, folder or glob match", file=path, fix=_FOLDER_FIX)
    found.sort(key=str)
    files = [p for p in found if is_xyz_name(p.name)]
    others = [p for p in found if not is_xyz_name(p.name)]
    if others:
        shown = ", ".join(p.name for p in others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
        oc20 = any(".txt" in p.name.lower() for p in others)
        raise DataError(
            f"{where} mixes formats: besides {len(files)} .xyz/.extxyz file(s) it holds {shown}",
            file=path,
            fix="read one format at a time: move the other files out, or give a glob that matches only the "
            "xyz files (e.g. 'DIR/*.xyz')"
            + ("; OC20 S2EF pairs (.extxyz + .txt) are read with --format oc20-extxyz" if oc20 else ""),
        )
    if not files:
        problem = "the pattern matches no files" if where == "this pattern" else "no .xyz/.extxyz files in this folder"
        raise DataError(problem, file=path, fix=_FOLDER_FIX)
    return files


def _load_bytes(path: Path) -> bytes:
    """The decompressed content of `path`, kept per process (least recently used files dropped first)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    with _BUFFERS_LOCK:
        if key in _BUFFERS:
            _BUFFERS.move_to_end(key)
            return _BUFFERS[key]
    try:
        data = _DECOMPRESS[path.suffix.lower()](path.read_bytes())
    except (OSError, EOFError, lzma.LZMAError, ValueError) as exc:
        raise open_failed(path, exc, "compressed extxyz file") from None
    with _BUFFERS_LOCK:
        _BUFFERS[key] = data
        total = sum(len(b) for b in _BUFFERS.values())
        while len(_BUFFERS) > 1 and total > _BUFFER_BUDGET:
            total -= len(_BUFFERS.popitem(last=False)[1])
    return data


class _Handles:
    """This process's open files: plain ones opened on first use (at most _MAX_OPEN), compressed ones as bytes."""

    def __init__(self, files: list[Path]) -> None:
        self.files = files
        self.open: OrderedDict[int, Any] = OrderedDict()

    def get(self, k: int) -> Any:
        path = self.files[k]
        if _compressed(path):
            return _load_bytes(path)
        fh = self.open.get(k)
        if fh is not None:
            self.open.move_to_end(k)
            return fh
        try:
            fh = self.open[k] = open(path, "rb")  # noqa: SIM115 (closed by close())
        except OSError as exc:
            raise open_failed(path, exc, "extxyz file") from None
        if len(self.open) > _MAX_OPEN:
            self.open.popitem(last=False)[1].close()
        return fh

    def close(self) -> None:
        for fh in self.open.values():
            fh.close()
        self.open.clear()


def _scan(path: Path, prefix: str = "") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Byte offsets (F+1,), atom counts (F,) and VEC-line counts (F,) of every frame of one file.

    `prefix` starts the record ids in errors ('<file>/' when the dataset has several files)."""
    try:
        if _compressed(path):
            fh: Any = io.BytesIO(_load_bytes(path))
        else:
            fh = open(path, "rb")  # noqa: SIM115 (closed below)
    except OSError as exc:
        raise open_failed(path, exc, "extxyz file") from None
    offsets: list[int] = []
    natoms: list[int] = []
    nvecs: list[int] = []
    readline = fh.readline
    line_no = 0
    try:
        while True:
            pos = fh.tell()
            line = readline()
            line_no += 1
            if not line:
                break
            if not line.strip():
                rest = fh.read()
                if rest.strip():
                    raise DataError(
                        f"blank line {line_no} where frame {len(natoms)} should start, followed by more data",
                        file=path,
                        record=f"{prefix}frame{len(natoms)}",
                        fix="remove the blank line",
                    )
                break
            try:
                n = int(line)
                if n < 1:
                    raise ValueError(n)
            except ValueError:
                if not natoms and _binary(line):
                    raise _not_text(path) from None
                prev = f"; frame {len(natoms) - 1} may have a wrong atom count" if natoms else ""
                raise DataError(
                    f"line {line_no} should hold the atom count of frame {len(natoms)} but reads "
                    f"{line[:60].decode(errors='replace').strip()!r}{prev}",
                    file=path,
                    record=f"{prefix}frame{len(natoms)}",
                    fix="repair the frame's atom count line",
                ) from None
            for _ in range(n + 1):
                if not readline():
                    raise DataError(
                        f"file ends inside frame {len(natoms)} (header says {n} atoms)",
                        file=path,
                        record=f"{prefix}frame{len(natoms)}",
                        fix="the file is truncated: re-download it or drop the last frame",
                    )
                line_no += 1
            nvec = 0
            while True:
                mark = fh.tell()
                if readline().lstrip().startswith(b"VEC"):
                    nvec += 1
                    line_no += 1
                else:
                    fh.seek(mark)
                    break
            offsets.append(pos)
            natoms.append(n)
            nvecs.append(nvec)
        offsets.append(fh.tell())
    finally:
        fh.close()
    return np.asarray(offsets, np.int64), np.asarray(natoms, np.int64), np.asarray(nvecs, np.int64)


class ExtxyzDataset(Dataset):
    """Frames of an extended XYZ file, of a folder of them, or of the files a glob matches.

    Records: `energy` from info/calculator key `energy_key`; `forces` from the per-atom array or
    calculator result `forces_key`; every other numeric info value and calculator result
    (free_energy, stress, REF_* keys, ...) and other numeric per-atom arrays as targets; text info
    (config_type, ...) in `info`; `tags`; `fixed` from `move_mask`. Non-periodic frames get
    `cell=None`. `class_label` = info[class_key], else the Hill formula.
    One file: `id` = 'frame<i>' (0-based). Several files (a folder or a glob): one dataset over the files
    in name order, `id` = '<file>/frame<i>' with <file> relative to the folder (for a glob, to the
    deepest folder common to the matches) and i counted within the file; `info['file']` names it.

    Args:
        path: a `.xyz`/`.extxyz` file (optionally `.gz`, `.bz2` or `.xz` compressed); a folder holding
            only such files (hidden files and subfolders are left out); or a glob such as 'data/*.xyz'
            ('**' matches subfolders). A folder or glob that holds other files is refused.
        energy_key: info/calculator key of the energy in eV (default 'energy').
        forces_key: per-atom array of the forces in eV/A (default 'forces').
        class_key: info key of the class label (default: Hill formula of the frame).
    """

    format_name: ClassVar[str] = "extxyz"
    description: ClassVar[str] = (
        "extended XYZ (ASE): a file, a folder of them or a glob; plain or .gz/.bz2/.xz; configurable energy/forces keys"
    )
    source_units: ClassVar[dict[str, str]] = {"energy": "eV", "forces": "eV/angstrom", "length": "angstrom"}

    def __init__(
        self,
        path: str | Path,
        *,
        energy_key: str = "energy",
        forces_key: str = "forces",
        class_key: str | None = None,
    ) -> None:
        path = Path(path)
        self.files = extxyz_files(path)
        super().__init__(path, must_exist=False)
        self.energy_key, self.forces_key, self.class_key = energy_key, forces_key, class_key
        self.multi = not path.is_file()
        root = Path(os.path.commonpath([str(f.parent) for f in self.files])) if self.multi else None
        self.names = [f.relative_to(root).as_posix() if root is not None else f.name for f in self.files]
        scans = [_scan(f, f"{name}/" if self.multi else "") for f, name in zip(self.files, self.names)]
        self._first = np.cumsum([0] + [len(n) for _, n, _ in scans]).tolist()  # first frame of each file
        self._starts = np.concatenate([o[:-1] for o, _, _ in scans])
        self._ends = np.concatenate([o[1:] for o, _, _ in scans])
        self._natoms = np.concatenate([n for _, n, _ in scans])
        self._nvec = np.concatenate([v for _, _, v in scans])
        del scans
        if len(self._natoms) == 0:
            where = "the files hold" if self.multi else "the file holds"
            raise DataError(f"{where} no frames", file=self.path, fix="check the file is not empty")
        first = self._frame(0)
        for option, key, default, where in (
            ("energy_key", energy_key, "energy", first.values),
            ("forces_key", forces_key, "forces", first.arrays),
            ("class_key", class_key, None, first.values),
        ):
            if key is not None and key != default and key not in where:
                raise ConfigError(
                    f"{option} '{key}' is not in the first frame",
                    file=self.files[0],
                    fix=f"choose {option} from: {', '.join(sorted(where)) or 'none'}",
                )
        # the default keys are absent but others look like labels (e.g. MACE's REF_energy): say so
        self.hints: list[str] = []
        for option, key, where in (("energy_key", energy_key, first.values), ("forces_key", forces_key, first.arrays)):
            stem = key.rsplit("_", 1)[-1].lower()
            alternatives = sorted(k for k in where if stem in k.lower() and k != key)
            if key not in where and alternatives:
                self.hints.append(
                    f"no '{key}' in the first frame; it has {', '.join(alternatives)}: "
                    f"read it with the reader option {option}={alternatives[0]} (a dataset given as "
                    f"PATH,{option}={alternatives[0]}, or {option}: {alternatives[0]} in its settings)"
                )

    # -- index --------------------------------------------------------------------------------
    def _where(self, index: int) -> tuple[int, int, str]:
        """(file number, frame number within that file, record id) of frame `index`."""
        k = bisect.bisect_right(self._first, index) - 1
        local = index - self._first[k]
        return k, local, f"{self.names[k]}/frame{local}" if self.multi else f"frame{local}"

    def _open(self) -> _Handles:
        return _Handles(self.files)

    def _frame_text(self, index: int) -> str:
        start, end = int(self._starts[index]), int(self._ends[index])
        handle = self.handle().get(self._where(index)[0])
        if isinstance(handle, bytes):
            raw = handle[start:end]
        else:
            handle.seek(start)
            raw = handle.read(end - start)
        return raw.decode("utf-8", errors="replace")

    def _frame(self, index: int) -> _Frame:
        lines = self._frame_text(index).split("\n")
        k, local, rid = self._where(index)
        try:
            return parse_frame(lines, int(self._natoms[index]), int(self._nvec[index]))
        except KeyError as exc:  # ASE's symbols -> numbers lookup
            raise DataError(
                f"unknown element symbol {exc} in frame {local}",
                file=self.files[k],
                record=rid,
                fix="use chemical symbols H ... Og in the species column (no dummy or ghost atoms)",
            ) from None
        except Exception as exc:  # noqa: BLE001 - ASE raises XYZError, ValueError, IndexError, TypeError
            raise DataError(
                f"cannot parse frame {local} ({type(exc).__name__}: {exc})",
                file=self.files[k],
                record=rid,
                fix="repair this frame (atom lines must match the Properties= columns of its comment line)",
            ) from None

    # -- Dataset interface --------------------------------------------------------------------
    @classmethod
    def sniff(cls, path: Path) -> bool:
        if path.is_dir():  # a folder with xyz files; opening it refuses other files beside them
            with os.scandir(path) as entries:
                return any(not e.name.startswith(".") and is_xyz_name(e.name) and e.is_file() for e in entries)
        if not path.is_file() or not is_xyz_name(path.name):
            return False
        if _compressed(path):
            return True
        if path.stat().st_size == 0:
            return True  # an empty .xyz: the reader then says it holds no frames
        with open(path, "rb") as fh:
            return fh.readline().strip().isdigit()

    def source_files(self) -> list[Path]:
        return list(self.files)

    def _length(self) -> int:
        return int(self._natoms.shape[0])

    def _read(self, index: int) -> Record:
        frame = self._frame(index)
        k, local, rid = self._where(index)
        values, arrays = dict(frame.values), dict(frame.arrays)
        energy = values.pop(self.energy_key, None)
        if energy is not None and (isinstance(energy, (bool, np.bool_, str)) or np.size(energy) != 1):
            raise DataError(
                f"'{self.energy_key}' is {energy!r} in this frame's comment line, not a number"
                + (" (a bare key reads as True)" if isinstance(energy, (bool, np.bool_)) else ""),
                file=self.files[k],
                record=rid,
                fix=f"write {self.energy_key}=<value in eV> there, or name the energy's key with energy_key=KEY",
            )
        forces = arrays.pop(self.forces_key, None)
        if self.class_key is not None:
            if self.class_key not in values:
                raise DataError(
                    f"class key '{self.class_key}' missing from this frame's info",
                    file=self.files[k],
                    record=rid,
                    fix="every frame needs the class key, or leave class_key out",
                )
            label = str(values.pop(self.class_key))
        else:
            label = _formula(frame.numbers.tobytes())
        targets: dict[str, Any] = {}
        extra: dict[str, Any] = {"frame": local, "file": self.names[k]} if self.multi else {"frame": local}
        for key, value in values.items():
            if isinstance(value, (bool, np.bool_, str)):
                extra[key] = value
            elif np.isscalar(value):
                targets[key] = float(value)
            elif isinstance(value, np.ndarray) and value.dtype.kind in "iuf":
                targets[key] = value.astype(np.float64)
            else:
                extra[key] = value
        for key, value in arrays.items():
            if value.dtype.kind in "iuf":
                targets[key] = value.astype(np.float64)
        return Record(
            numbers=frame.numbers,
            positions=frame.positions,
            cell=frame.cell,
            pbc=frame.pbc,
            id=rid,
            energy=None if energy is None else float(np.asarray(energy).reshape(())),
            forces=None if forces is None else np.asarray(forces, dtype=np.float64),
            targets=targets,
            class_label=label,
            tags=frame.tags,
            fixed=frame.fixed,
            info=extra,
        )

    def class_labels(self) -> np.ndarray | None:
        """Labels from the comment line (class_key) or the species column, parsing no arrays."""
        from ase.data import atomic_numbers

        labels = []
        for i in range(len(self)):
            lines = self._frame_text(i).splitlines()
            comment = lines[1] if len(lines) > 1 else ""
            if self.class_key is not None:
                info = _comment_values(comment)
                if self.class_key not in info:
                    k, _, rid = self._where(i)
                    raise DataError(
                        f"class key '{self.class_key}' missing",
                        file=self.files[k],
                        record=rid,
                        fix="every frame needs the class key, or leave class_key out",
                    )
                labels.append(str(info[self.class_key]))
                continue
            symbols = [ln.split(None, 1)[0].capitalize() for ln in lines[2 : 2 + int(self._natoms[i])]]
            if ("Properties=" not in comment or "Properties=species:S:1" in comment) and all(
                s in atomic_numbers for s in symbols
            ):
                labels.append(hill_formula(np.asarray([atomic_numbers[s] for s in symbols])))
            else:
                labels.append(hill_formula(self._frame(i).numbers))
        return np.asarray(labels, dtype=object)

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        meta.update(
            {
                "energy_key": self.energy_key,
                "forces_key": self.forces_key,
                "class_key": self.class_key,
                "n_atoms_total": int(self._natoms.sum()),
            }
        )
        if self.multi:
            meta["n_files"] = len(self.files)
        if self.hints:
            meta["hints"] = self.hints
        return meta


def _binary(line: bytes) -> bool:
    """A first line that no text file starts with (NUL bytes, or not UTF-8)."""
    if b"\0" in line:
        return True
    try:
        line.decode()
    except UnicodeDecodeError:
        return True
    return False


def _not_text(path: Path) -> DataError:
    """The error for a binary file read as extended XYZ, naming the format it is detected as, if any."""
    from atomsift.data.registry import detect_format

    try:
        guess = detect_format(path)
    except (DataError, ConfigError):
        guess = None
    if guess == "extxyz":
        guess = None
    return DataError(
        "the file is binary, not extended XYZ (a text format)"
        + (f"; it reads as the '{guess}' format" if guess else ""),
        file=path,
        fix=f"pass --format {guess} (or leave --format out to detect it)"
        if guess
        else "check that the path is the extended XYZ file you meant (a compressed one should end in .gz, .bz2 or .xz)",
    )
