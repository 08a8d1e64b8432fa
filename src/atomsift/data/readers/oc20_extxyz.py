"""OC20 S2EF raw release: `<k>.extxyz(.xz)` frames paired with `<k>.txt(.xz)` reference lines.

Each extxyz frame (docs/formats.md "OC20 S2EF") has the header
`Lattice="..." Properties=species:S:1:pos:R:3:move_mask:L:1:tags:I:1:forces:R:3 energy=<eV>
free_energy=<eV> pbc="T T T"`; line i of the txt file, `random<sid>,frame<fid>,<reference eV>`,
belongs to frame i. Record energy = total energy - reference (the adsorption energy, as in
the LMDB release); the raw total energy is kept in `targets["total_energy"]`.

Random access, and its trade-off: the txt files are read at open (they give the length and
sid/fid/reference per frame, ~24 bytes a frame). A data file's frame byte offsets are found on
the first access to that file and kept (8 bytes a frame). An uncompressed `.extxyz` is then read
frame by frame with seek. A `.extxyz.xz` cannot be seeked, so it is decompressed whole into
memory (~40 MB for a release file of 5,000 slab frames) and only the most recent file is kept:
sequential reading costs one decompression per file, but random access across many `.xz` files
decompresses a file per record. For shuffled training, decompress the release (`xz -d`) or
convert it to LMDB first.
"""

from __future__ import annotations

import lzma
import re
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from ase.data import atomic_numbers as _SYMBOL_TO_Z

from atomsift.data.base import Dataset
from atomsift.data.readers._common import open_failed
from atomsift.data.readers.oc_lmdb import OCClassMap
from atomsift.data.record import Record
from atomsift.errors import DataError

_HEADER_ITEM = re.compile(r'([A-Za-z_][\w\-]*)=(?:"([^"]*)"|(\S+))')
_TXT_LINE = re.compile(r"^\s*random(\d+)\s*,\s*frame(\d+)\s*,\s*(\S+)\s*$")
_XYZ_SUFFIXES = (".extxyz.xz", ".extxyz")
_FIX = "compare the file with the release (it may be truncated or edited) and download it again"


def _stem(path: Path) -> str | None:
    for suffix in _XYZ_SUFFIXES:
        if path.name.endswith(suffix):
            return path.name[: -len(suffix)]
    return None


def _sibling_txt(xyz: Path) -> Path | None:
    stem = _stem(xyz)
    for name in (f"{stem}.txt", f"{stem}.txt.xz"):
        if (xyz.parent / name).is_file():
            return xyz.parent / name
    return None


def _natural(name: str) -> tuple[int, int | str]:
    return (0, int(name)) if name.isdigit() else (1, name)


def find_pairs(path: Path) -> list[tuple[Path, Path | None]]:
    """(extxyz, txt or None) pairs of a file or directory, in natural order of `<k>`."""
    if path.is_file():
        return [(path, _sibling_txt(path))] if _stem(path) is not None else []
    by_stem: dict[str, Path] = {}
    for p in path.iterdir():
        stem = _stem(p)
        if stem is not None and p.is_file() and (stem not in by_stem or p.suffix != ".xz"):
            by_stem[stem] = p  # prefer the uncompressed copy when both are there
    return [(by_stem[s], _sibling_txt(by_stem[s])) for s in sorted(by_stem, key=_natural)]


def _read_bytes(path: Path) -> bytes:
    try:
        if path.name.endswith(".xz"):
            with lzma.open(path, "rb") as f:
                return f.read()
        return path.read_bytes()
    except (OSError, lzma.LZMAError, EOFError) as exc:
        raise open_failed(path, exc, "the file", _FIX) from None


def read_txt(path: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(sid int64, fid int64, reference energy float64 eV) per line of an OC20 S2EF txt file."""
    sids, fids, refs = [], [], []
    text = _read_bytes(path).decode("ascii", errors="replace")
    for lineno, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        m = _TXT_LINE.match(line)
        try:
            if m is None:
                raise ValueError(line)
            sids.append(int(m.group(1)))
            fids.append(int(m.group(2)))
            refs.append(float(m.group(3)))
        except ValueError:
            raise DataError(
                f"line {lineno} is {line[:80]!r}, expected 'random<sid>,frame<fid>,<reference energy>'",
                file=path,
                record=f"line {lineno}",
                fix=_FIX,
            ) from None
    return np.array(sids, np.int64), np.array(fids, np.int64), np.array(refs, np.float64)


def frame_offsets(data: bytes, source: Path) -> np.ndarray:
    """(F+1,) byte offsets of the frames of an extxyz text (the last one = end of the frames)."""
    newlines = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == 10)
    starts = np.concatenate([[0], newlines + 1])
    n_lines = len(newlines) + (0 if data.endswith(b"\n") else 1)
    offsets, line = [], 0
    while line < n_lines:
        first = data[starts[line] : starts[line + 1] if line + 1 < len(starts) else len(data)]
        if not first.strip():
            line += 1
            continue
        try:
            natoms = int(first)
        except ValueError:
            raise DataError(
                f"line {line + 1} should hold an atom count and holds {first[:40]!r}",
                file=source,
                record=f"frame {len(offsets)}",
                fix=_FIX,
            ) from None
        if line + natoms + 2 > n_lines:
            raise DataError(
                f"frame {len(offsets)} is cut off: {natoms} atoms announced, {n_lines - line - 2} lines left",
                file=source,
                record=f"frame {len(offsets)}",
                fix=_FIX,
            )
        offsets.append(int(starts[line]))
        line += natoms + 2
    end = int(starts[line]) if line < len(starts) else len(data)
    return np.array([*offsets, end], dtype=np.int64)


def parse_frame(text: bytes) -> dict[str, Any]:
    """One extxyz frame -> dict of numbers, positions, cell, pbc, info (header), per-atom columns."""
    lines = text.split(b"\n")
    natoms = int(lines[0])
    header = lines[1].decode()
    info = {m.group(1): m.group(2) if m.group(2) is not None else m.group(3) for m in _HEADER_ITEM.finditer(header)}
    spec = info.get("Properties", "species:S:1:pos:R:3").split(":")
    columns = [(spec[i], spec[i + 1], int(spec[i + 2])) for i in range(0, len(spec) - 2, 3)]
    width = sum(c[2] for c in columns)
    table = np.array(b" ".join(lines[2 : 2 + natoms]).split(), dtype="S").reshape(natoms, width)
    out: dict[str, Any] = {"info": info}
    col = 0
    for name, kind, n in columns:
        block = table[:, col : col + n]
        col += n
        if kind == "R":
            out[name] = block.astype(np.float64).reshape(natoms, n) if n > 1 else block[:, 0].astype(np.float64)
        elif kind == "I":
            out[name] = block.astype(np.int64) if n > 1 else block[:, 0].astype(np.int64)
        elif kind == "L":
            out[name] = np.isin(block[:, 0] if n == 1 else block, [b"T", b"True", b"true", b"1"])
        else:
            out[name] = [s.decode() for s in block[:, 0]]
    species = out.get("species")
    out["numbers"] = (
        np.array([_SYMBOL_TO_Z[s] for s in species], dtype=np.int64)
        if species is not None
        else np.asarray(out["Z"], dtype=np.int64)
    )
    lattice = info.get("Lattice")
    out["cell"] = None if lattice is None else np.array(lattice.split(), dtype=np.float64).reshape(3, 3)
    out["pbc"] = np.array([v in ("T", "True", "1") for v in info.get("pbc", "F F F").split()], dtype=bool)
    return out


class _FrameCache:
    """This process's frame offsets per data file, and the most recent decompressed `.xz` text."""

    def __init__(self) -> None:
        self.offsets: dict[int, np.ndarray] = {}
        self.blob: tuple[int, bytes] | None = None

    def close(self) -> None:
        self.blob = None


class OC20ExtxyzDataset(Dataset):
    """OC20 S2EF raw release: `.extxyz(.xz)` frames + `.txt(.xz)` references (one file or a directory).

    Options:
        classes: path to `oc20_data_mapping.pkl` (keys 'random<sid>'); class label = bulk_symbols.

    Record: energy = extxyz energy - txt reference (adsorption energy, eV); targets
    `total_energy`, `reference_energy` (and `free_energy` when present), eV; tags; fixed = not
    move_mask; info sid, fid. Id: `<extxyz file name>/<frame index in file>`. The global order is
    the files in natural order of `<k>` (0, 1, 2, ..., 10), frames in file order.
    """

    format_name: ClassVar[str] = "oc20-extxyz"
    description: ClassVar[str] = "OC20 S2EF raw release (<k>.extxyz.xz + <k>.txt.xz pairs)"
    source_units: ClassVar[dict[str, str]] = {"energy": "eV", "forces": "eV/A", "positions": "A"}

    def __init__(self, path: str | Path, *, classes: str | Path | None = None) -> None:
        super().__init__(path)
        pairs = find_pairs(self.path)
        if not pairs:
            raise DataError(
                "no .extxyz or .extxyz.xz files here",
                file=self.path,
                fix="point to an OC20 S2EF <k>.extxyz(.xz) file or the directory holding them",
            )
        for xyz, txt in pairs:
            if txt is None:
                raise DataError(
                    f"no reference file {_stem(xyz)}.txt or {_stem(xyz)}.txt.xz beside {xyz.name}",
                    file=xyz,
                    fix="keep each <k>.extxyz(.xz) with its <k>.txt(.xz) from the release",
                )
        self.files = [xyz for xyz, _ in pairs]
        self.txt_files: list[Path] = [txt for _, txt in pairs]  # type: ignore[misc]
        tables = [read_txt(txt) for txt in self.txt_files]
        self._sid = np.concatenate([t[0] for t in tables])
        self._fid = np.concatenate([t[1] for t in tables])
        self._ref = np.concatenate([t[2] for t in tables])
        self._starts = np.concatenate([[0], np.cumsum([len(t[0]) for t in tables])]).astype(np.int64)
        if self._starts[-1] == 0:
            raise DataError("the txt files hold no frames", file=self.path, fix=_FIX)
        self.class_map = OCClassMap(classes) if classes is not None else None
        if self.class_map is not None and self.class_map.kind != "oc20":
            raise DataError(
                "this class mapping is keyed by integer sids (OC22); OC20 S2EF needs oc20_data_mapping.pkl",
                file=self.class_map.path,
                fix="pass classes=oc20_data_mapping.pkl",
            )

    @classmethod
    def sniff(cls, path: Path) -> bool:
        pairs = find_pairs(path) if path.is_dir() or _stem(path) is not None else []
        return any(txt is not None for _, txt in pairs)

    def _open(self) -> _FrameCache:
        return _FrameCache()

    def _length(self) -> int:
        return int(self._starts[-1])

    def _file_text(self, k: int, cache: _FrameCache) -> bytes | None:
        """The whole (decompressed) text of an `.xz` file, kept for the latest file; None if plain."""
        if not self.files[k].name.endswith(".xz"):
            return None
        if cache.blob is None or cache.blob[0] != k:
            cache.blob = None
            cache.blob = (k, _read_bytes(self.files[k]))
        return cache.blob[1]

    def _offsets(self, k: int, cache: _FrameCache) -> np.ndarray:
        offsets = cache.offsets.get(k)
        if offsets is None:
            data = self._file_text(k, cache)
            offsets = frame_offsets(_read_bytes(self.files[k]) if data is None else data, self.files[k])
            expected = int(self._starts[k + 1] - self._starts[k])
            if len(offsets) - 1 != expected:
                more = len(offsets) - 1 > expected
                raise DataError(
                    f"{self.files[k].name} holds {len(offsets) - 1} frames but {self.txt_files[k].name} has "
                    f"{expected} lines" + (f": frame {expected} onwards has no txt line" if more else ""),
                    file=self.files[k],
                    record=f"frame {expected if more else len(offsets) - 1}",
                    fix="use the txt file released with this extxyz file (one line per frame)",
                )
            cache.offsets[k] = offsets
        return offsets

    def _frame_bytes(self, k: int, j: int) -> bytes:
        cache = self.handle()
        offsets = self._offsets(k, cache)
        start, end = int(offsets[j]), int(offsets[j + 1])
        data = self._file_text(k, cache)
        if data is not None:
            return data[start:end]
        try:
            with open(self.files[k], "rb") as f:
                f.seek(start)
                return f.read(end - start)
        except OSError as exc:
            raise open_failed(self.files[k], exc, "the extxyz file", _FIX) from None

    def _read(self, index: int) -> Record:
        k = int(np.searchsorted(self._starts, index, side="right")) - 1
        j = index - int(self._starts[k])
        file = self.files[k]
        rid = f"{file.name}/{j}"
        try:
            frame = parse_frame(self._frame_bytes(k, j))
            total = float(frame["info"]["energy"]) if "energy" in frame["info"] else None
        except DataError:
            raise
        except Exception as exc:  # noqa: BLE001 - any malformed frame text
            raise DataError(
                f"cannot parse frame {j} ({type(exc).__name__}: {exc})", file=file, record=rid, fix=_FIX
            ) from None
        ref = float(self._ref[index])
        targets: dict[str, Any] = {"reference_energy": ref}
        if total is not None:
            targets["total_energy"] = total
        if "free_energy" in frame["info"]:
            targets["free_energy"] = float(frame["info"]["free_energy"])
        sid, fid = int(self._sid[index]), int(self._fid[index])
        move_mask = frame.get("move_mask")
        return Record(
            numbers=frame["numbers"],
            positions=np.asarray(frame["pos"], dtype=np.float64),
            id=rid,
            cell=frame["cell"],
            pbc=frame["pbc"],
            energy=None if total is None else total - ref,
            forces=frame.get("forces"),
            targets=targets,
            class_label=None if self.class_map is None else self.class_map.label(sid, file, rid),
            tags=frame.get("tags"),
            fixed=None if move_mask is None else ~np.asarray(move_mask, dtype=bool),
            info={"sid": sid, "fid": fid, "natoms": int(frame["numbers"].shape[0])},
        )

    def class_labels(self) -> np.ndarray | None:
        """bulk_symbols per frame from the txt sids (no frames read)."""
        if self.class_map is None:
            return None
        return np.array([self.class_map.label(int(s), self.path) for s in self._sid], dtype=object)

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        meta["n_files"] = len(self.files)
        meta["energy_meaning"] = "adsorption energy = extxyz energy - txt reference (total in targets)"
        if self.class_map is not None:
            meta["classes"] = str(self.class_map.path)
        return meta
