"""Extended XYZ (ASE's extxyz), plain or compressed (.gz, .bz2, .xz).

Opening scans the file once and keeps the byte offset of every frame (8 bytes per frame); a record
read parses just that frame: plain frames with a vectorised parser that gives what ASE gives (same
comment-line rules, checked against ASE in the tests), anything unusual (VEC cell lines, per-component
move masks, quoted/bracketed/JSON values) with ASE's own extxyz parser. Compressed files are
decompressed into memory once per process (fine up to a few GB; decompress large files to disk first).
"""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import re
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from ase.data import atomic_numbers
from ase.io.extxyz import REV_PROPERTY_NAME_MAP, SPECIAL_3_3_KEYS, UNPROCESSED_KEYS, key_val_str_to_dict

from atomsift.data.base import Dataset
from atomsift.data.readers._common import hill_formula, open_failed
from atomsift.data.record import Record
from atomsift.errors import ConfigError, DataError

_DECOMPRESS = {".gz": gzip.decompress, ".bz2": bz2.decompress, ".xz": lzma.decompress}
_SUFFIXES = (".xyz", ".extxyz")
_BUFFERS: dict[tuple[str, int, int], bytes] = {}
_BUFFERS_LOCK = threading.Lock()
# keys of the parsed frame that are structure, not labels
_STRUCTURAL = {"numbers", "positions", "tags", "move_mask", "initial_charges", "initial_magmoms", "masses"}


@dataclass
class _Frame:
    """One parsed frame: structure, per-frame values (info + calculator results), per-atom arrays."""

    numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray | None
    pbc: np.ndarray
    values: dict[str, Any]
    arrays: dict[str, np.ndarray]
    tags: np.ndarray | None
    fixed: np.ndarray | None


_PER_ATOM_RESULTS = {"forces", "charges", "magmoms", "energies", "stresses"}


_PAIR = re.compile(r'\s*([^\s="]+)(?:\s*=\s*(?:"([^"]*)"|([^\s"=]+)))?')
_PART = re.compile(r"[^\s,]+")
_BOOL = {"T": True, "F": False, "true": True, "false": False}
_BOOL.update({"True": True, "False": False, "TRUE": True, "FALSE": False})


def _comment_values(line: str) -> dict[str, Any]:
    """ASE's `key_val_str_to_dict` for plain comment lines (no brackets, escapes, single quotes, JSON).

    Gives the same keys, types and values; lines with anything unusual go to ASE's parser.
    """
    line = line.strip()
    if any(ch in line for ch in "'{}[]\\") or "_JSON" in line or '""' in line:
        return key_val_str_to_dict(line)
    out: dict[str, Any] = {}
    pos = 0
    while pos < len(line):
        match = _PAIR.match(line, pos)
        if match is None or match.end() == pos:
            return key_val_str_to_dict(line)
        pos = match.end()
        key, quoted, bare = match.groups()
        value: Any = quoted if quoted is not None else bare if bare is not None else "T"
        if key.lower() not in UNPROCESSED_KEYS:
            parts = _PART.findall(value)
            try:
                try:
                    num = np.array(parts, dtype=int)
                except (ValueError, OverflowError):
                    num = np.array(parts, dtype=float)
                value = num[0] if len(num) == 1 else num
            except (ValueError, OverflowError):
                pass
            if key in SPECIAL_3_3_KEYS:
                if not isinstance(value, np.ndarray) or value.shape != (9,):
                    raise ValueError(f"info item {key} is not a 9-long numerical vector")
                value = value.reshape((3, 3), order="F")
            if isinstance(value, str):
                try:
                    flags = [_BOOL[p] for p in parts]
                    value = flags[0] if len(flags) == 1 else flags
                except KeyError:
                    pass
        out[key] = value
    return out


@lru_cache(maxsize=64)
def _columns(prop_str: str) -> tuple[tuple[str, str, int, int], ...] | None:
    """(ase_name, type, first column, n columns) per property; None if a type is not R/I/L/S."""
    fields = prop_str.split(":")
    out, col = [], 0
    try:
        for name, ptype, ncols in zip(fields[::3], fields[1::3], (int(x) for x in fields[2::3])):
            if ptype not in "RILS" or len(ptype) != 1:
                return None
            out.append((REV_PROPERTY_NAME_MAP.get(name, name), ptype, col, ncols))
            col += ncols
    except ValueError:
        return None
    return tuple(out)


def _fast_frame(lines: list[str], natoms: int) -> _Frame | None:
    """Vectorised parse of a plain frame (what ASE's parser would give); None to defer to ASE."""
    info = _comment_values(lines[1]) if lines[1].strip() else {}
    columns = _columns(str(info.pop("Properties", "species:S:1:pos:R:3")))
    if columns is None:
        return None
    lattice = info.pop("Lattice", None)
    pbc = np.asarray(info.pop("pbc", lattice is not None), dtype=bool) * np.ones(3, dtype=bool)
    width = columns[-1][2] + columns[-1][3]
    tokens = " ".join(lines[2 : 2 + natoms]).split()
    if len(tokens) != natoms * width:
        return None
    table = np.asarray(tokens).reshape(natoms, width)
    arrays: dict[str, np.ndarray] = {}
    for name, ptype, col, ncols in columns:
        block = table[:, col] if ncols == 1 else table[:, col : col + ncols]
        if ptype == "R":
            arrays[name] = block.astype(np.float64)
        elif ptype == "I":
            arrays[name] = block.astype(np.int64)
        elif ptype == "L":
            if not np.all(np.isin(block, ("T", "F", "True", "False"))):
                return None
            arrays[name] = np.isin(block, ("T", "True"))
        else:
            arrays[name] = block
    if "numbers" in arrays:
        numbers = arrays.pop("numbers").astype(np.int64)
        arrays.pop("symbols", None)
    elif "symbols" in arrays:
        try:
            numbers = np.asarray([atomic_numbers[str(x).capitalize()] for x in arrays.pop("symbols")], np.int64)
        except KeyError:
            return None
    else:
        return None
    if "positions" not in arrays:
        return None
    positions = arrays.pop("positions")
    fixed = None
    if "move_mask" in arrays:
        mask = arrays.pop("move_mask")
        if mask.ndim != 1:
            return None
        fixed = ~mask
    tags = arrays.pop("tags", None)
    for name in _STRUCTURAL:
        arrays.pop(name, None)
    stress = info.get("stress")
    if isinstance(stress, np.ndarray) and stress.shape == (3, 3):
        info["stress"] = stress[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
    return _Frame(
        numbers=numbers,
        positions=positions,
        cell=np.array(lattice.T, dtype=np.float64) if lattice is not None and pbc.any() else None,
        pbc=pbc,
        values=info,
        arrays={k: v for k, v in arrays.items() if v.dtype.kind in "biuf"},
        tags=None if tags is None else tags.astype(np.int64),
        fixed=fixed,
    )


def _ase_frame(lines: list[str], natoms: int, nvec: int) -> _Frame:
    """Parse with ASE's extxyz frame parser (VEC cell lines, per-component move masks, ...)."""
    from ase.io import extxyz

    atoms = extxyz._read_xyz_frame(iter(lines[1:]), natoms, nvec=nvec)
    results = dict(atoms.calc.results) if atoms.calc is not None else {}
    arrays = {k: v for k, v in atoms.arrays.items() if k not in _STRUCTURAL}
    arrays.update({k: results.pop(k) for k in list(results) if k in _PER_ATOM_RESULTS})
    fixed = None
    for c in atoms.constraints:
        if type(c).__name__ == "FixAtoms":
            fixed = np.zeros(natoms, dtype=bool) if fixed is None else fixed
            fixed[c.index] = True
    pbc = np.asarray(atoms.pbc, dtype=bool)
    return _Frame(
        numbers=np.asarray(atoms.numbers, dtype=np.int64),
        positions=np.asarray(atoms.positions, dtype=np.float64),
        cell=np.array(atoms.cell.array, dtype=np.float64) if pbc.any() else None,
        pbc=pbc,
        values={**atoms.info, **results},
        arrays={k: np.asarray(v) for k, v in arrays.items() if np.asarray(v).dtype.kind in "biuf"},
        tags=np.asarray(atoms.arrays["tags"], dtype=np.int64) if "tags" in atoms.arrays else None,
        fixed=fixed,
    )


@lru_cache(maxsize=4096)
def _formula(numbers: bytes) -> str:
    return hill_formula(np.frombuffer(numbers, dtype=np.int64))


def _compressed(path: Path) -> bool:
    return path.suffix.lower() in _DECOMPRESS


def _load_bytes(path: Path) -> bytes:
    """The decompressed content of `path`, once per process."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    with _BUFFERS_LOCK:
        if key in _BUFFERS:
            return _BUFFERS[key]
    try:
        data = _DECOMPRESS[path.suffix.lower()](path.read_bytes())
    except (OSError, EOFError, lzma.LZMAError, ValueError) as exc:
        raise open_failed(path, exc, "compressed extxyz file") from None
    with _BUFFERS_LOCK:
        _BUFFERS.clear()  # keep one decompressed file per process
        _BUFFERS[key] = data
    return data


class ExtxyzDataset(Dataset):
    """Frames of an extended XYZ file.

    Records: `energy` from info/calculator key `energy_key`; `forces` from the per-atom array or
    calculator result `forces_key`; every other numeric info value and calculator result
    (free_energy, stress, REF_* keys, ...) and other numeric per-atom arrays as targets; text info
    (config_type, ...) in `info`; `tags`; `fixed` from `move_mask`. Non-periodic frames get
    `cell=None`. `id` = 'frame<i>' (0-based). `class_label` = info[class_key], else the Hill formula.

    Args:
        path: `.xyz`/`.extxyz` file, optionally `.gz`, `.bz2` or `.xz` compressed.
        energy_key: info/calculator key of the energy in eV (default 'energy').
        forces_key: per-atom array of the forces in eV/A (default 'forces').
        class_key: info key of the class label (default: Hill formula of the frame).
    """

    format_name: ClassVar[str] = "extxyz"
    description: ClassVar[str] = "extended XYZ (ASE), plain or .gz/.bz2/.xz; configurable energy/forces keys"
    source_units: ClassVar[dict[str, str]] = {"energy": "eV", "forces": "eV/angstrom", "length": "angstrom"}

    def __init__(
        self,
        path: str | Path,
        *,
        energy_key: str = "energy",
        forces_key: str = "forces",
        class_key: str | None = None,
    ) -> None:
        super().__init__(path)
        self.energy_key, self.forces_key, self.class_key = energy_key, forces_key, class_key
        self._offsets, self._natoms, self._nvec = self._scan()
        if len(self._natoms) == 0:
            raise DataError("the file holds no frames", file=self.path, fix="check the file is not empty")
        first = self._frame(0)
        for option, key, default, where in (
            ("energy_key", energy_key, "energy", first.values),
            ("forces_key", forces_key, "forces", first.arrays),
            ("class_key", class_key, None, first.values),
        ):
            if key is not None and key != default and key not in where:
                raise ConfigError(
                    f"{option} '{key}' is not in the first frame",
                    file=self.path,
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
                    f"pass -o {option}={alternatives[0]} to read it"
                )

    # -- index --------------------------------------------------------------------------------
    def _scan(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Byte offsets (F+1,), atom counts (F,) and VEC-line counts (F,) of every frame."""
        try:
            if _compressed(self.path):
                fh: Any = io.BytesIO(_load_bytes(self.path))
            else:
                fh = open(self.path, "rb")  # noqa: SIM115 (closed below)
        except OSError as exc:
            raise open_failed(self.path, exc, "extxyz file") from None
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
                            file=self.path,
                            record=f"frame{len(natoms)}",
                            fix="remove the blank line",
                        )
                    break
                try:
                    n = int(line)
                    if n < 1:
                        raise ValueError(n)
                except ValueError:
                    prev = f"; frame {len(natoms) - 1} may have a wrong atom count" if natoms else ""
                    raise DataError(
                        f"line {line_no} should hold the atom count of frame {len(natoms)} but reads "
                        f"{line[:60].decode(errors='replace').strip()!r}{prev}",
                        file=self.path,
                        record=f"frame{len(natoms)}",
                        fix="repair the frame's atom count line",
                    ) from None
                for _ in range(n + 1):
                    if not readline():
                        raise DataError(
                            f"file ends inside frame {len(natoms)} (header says {n} atoms)",
                            file=self.path,
                            record=f"frame{len(natoms)}",
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

    def _open(self) -> Any:
        if _compressed(self.path):
            return _load_bytes(self.path)
        try:
            return open(self.path, "rb")
        except OSError as exc:
            raise open_failed(self.path, exc, "extxyz file") from None

    def _close(self, handle: Any) -> None:
        if not isinstance(handle, bytes):
            handle.close()

    def _frame_text(self, index: int) -> str:
        start, end = int(self._offsets[index]), int(self._offsets[index + 1])
        handle = self.handle()
        if isinstance(handle, bytes):
            raw = handle[start:end]
        else:
            handle.seek(start)
            raw = handle.read(end - start)
        return raw.decode("utf-8", errors="replace")

    def _frame(self, index: int) -> _Frame:
        lines = self._frame_text(index).split("\n")
        natoms, nvec = int(self._natoms[index]), int(self._nvec[index])
        try:
            frame = _fast_frame(lines, natoms) if nvec == 0 else None
            return frame if frame is not None else _ase_frame(lines, natoms, nvec)
        except KeyError as exc:  # ASE's symbols -> numbers lookup
            raise DataError(
                f"unknown element symbol {exc} in frame {index}",
                file=self.path,
                record=f"frame{index}",
                fix="use chemical symbols H ... Og in the species column (no dummy or ghost atoms)",
            ) from None
        except Exception as exc:  # noqa: BLE001 - ASE raises XYZError, ValueError, IndexError, TypeError
            raise DataError(
                f"cannot parse frame {index} ({type(exc).__name__}: {exc})",
                file=self.path,
                record=f"frame{index}",
                fix="repair this frame (atom lines must match the Properties= columns of its comment line)",
            ) from None

    # -- Dataset interface --------------------------------------------------------------------
    @classmethod
    def sniff(cls, path: Path) -> bool:
        if not path.is_file():
            return False
        name = path.name.lower()
        for suffix in _DECOMPRESS:
            if name.endswith(suffix):
                name = name[: -len(suffix)]
        if not name.endswith(_SUFFIXES):
            return False
        if _compressed(path):
            return True
        if path.stat().st_size == 0:
            return True  # an empty .xyz: the reader then says it holds no frames
        with open(path, "rb") as fh:
            return fh.readline().strip().isdigit()

    def _length(self) -> int:
        return int(self._natoms.shape[0])

    def _read(self, index: int) -> Record:
        frame = self._frame(index)
        rid = f"frame{index}"
        values, arrays = dict(frame.values), dict(frame.arrays)
        energy = values.pop(self.energy_key, None)
        forces = arrays.pop(self.forces_key, None)
        if self.class_key is not None:
            if self.class_key not in values:
                raise DataError(
                    f"class key '{self.class_key}' missing from this frame's info",
                    file=self.path,
                    record=rid,
                    fix="every frame needs the class key, or leave class_key out",
                )
            label = str(values.pop(self.class_key))
        else:
            label = _formula(frame.numbers.tobytes())
        targets: dict[str, Any] = {}
        extra: dict[str, Any] = {"frame": index}
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
            energy=None if energy is None else float(energy),
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
                    raise DataError(
                        f"class key '{self.class_key}' missing",
                        file=self.path,
                        record=f"frame{i}",
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
        if self.hints:
            meta["hints"] = self.hints
        return meta
