"""Revised MD17 (`rmd17/npz_data/rmd17_<molecule>.npz`), plus the npz access and the frame selection
(`NpzFramesDataset`) shared with `sgdml`.

Layout (docs/formats.md): `nuclear_charges` (N,), `coords` (F, N, 3) A, `energies` (F,) kcal/mol,
`forces` (F, N, 3) kcal/mol/A, and `old_indices`, `old_energies`, `old_forces` (never read here).

Random access without loading the 100,000-frame arrays: numpy cannot memory-map inside a zip, so
`NpzMembers` finds where each *stored* (uncompressed, as written by `np.savez`) member's array data
starts in the file (zip local header, then the .npy header) and maps it with `np.memmap`. Members of a
compressed npz (`np.savez_compressed`) are read whole, once per process, on first use.
"""

from __future__ import annotations

import abc
import re
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from atomsift.data.base import Dataset
from atomsift.data.readers._common import open_failed
from atomsift.data.readers._npz_objects import load_object_array
from atomsift.data.readers.pyg_pickle import RefusedGlobal
from atomsift.data.record import Record
from atomsift.data.units import KCAL_PER_MOL_TO_EV
from atomsift.errors import ConfigError, DataError

JMP_SEED = 42
"""Seed of JMP's splits: `np.random.RandomState(42).shuffle(np.arange(n))`."""
RMD17_TRAIN, RMD17_VAL = 950, 50
"""JMP's rMD17 split: 1,000 training frames of which 50 go to validation; the rest is test."""
SPLITS = ("train", "val", "test")


def jmp_split(n: int, n_train: int, n_val: int, split: str, seed: int = JMP_SEED) -> np.ndarray:
    """Indices of `split` in JMP's scheme, in JMP's order.

    JMP shuffles `np.arange(n)` with `np.random.RandomState(seed).shuffle` and takes the first
    `n_train` as train, the next `n_val` as val and the rest as test. `RandomState(seed).permutation(n)`
    gives the same order (it is arange + shuffle), which is what this uses.
    """
    perm = np.random.RandomState(seed).permutation(n)
    bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val), "test": (n_train + n_val, n)}
    lo, hi = bounds[split]
    return perm[lo:hi].astype(np.int64)


def check_split(split: str | None, path: Path) -> str | None:
    """`split` lower-cased, or ConfigError when it is not one of train/val/test."""
    if split is None:
        return None
    key = str(split).strip().lower()
    if key not in SPLITS:
        raise ConfigError(
            f"option split={split!r} is not one of {', '.join(SPLITS)}",
            file=path,
            fix=f"pass --split {' / '.join(SPLITS)}, or leave it out to read every frame",
        )
    return key


class NpzMembers:
    """Arrays of an .npz file by key, memory-mapped where the member is stored uncompressed.

    Args:
        path: the .npz file. Raises DataError when it is not a readable zip (e.g. truncated).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        try:
            self._zip = zipfile.ZipFile(path)
            infos = self._zip.infolist()
        except (zipfile.BadZipFile, OSError, EOFError, ValueError) as exc:
            raise open_failed(path, exc, "npz archive") from None
        self._infos = {i.filename[:-4]: i for i in infos if i.filename.endswith(".npy")}
        self._arrays: dict[str, np.ndarray] = {}

    def keys(self) -> list[str]:
        return list(self._infos)

    def __contains__(self, key: str) -> bool:
        return key in self._infos

    def close(self) -> None:
        self._arrays.clear()
        self._zip.close()

    def _fail(self, key: str, exc: BaseException) -> DataError:
        return DataError(
            f"cannot read array '{key}': {exc.__class__.__name__}: {exc}",
            file=self.path,
            record=key,
            fix="the file may be truncated or corrupt; compare its size and checksum with the release",
        )

    def _info(self, key: str) -> zipfile.ZipInfo:
        if key not in self._infos:
            raise DataError(
                f"missing key '{key}' (keys present: {', '.join(sorted(self._infos)) or 'none'})",
                file=self.path,
                record=key,
                fix="check that this is the release file of this format (see docs/formats.md)",
            )
        return self._infos[key]

    def header(self, key: str) -> tuple[tuple[int, ...], np.dtype, bool, int | None]:
        """(shape, dtype, fortran_order, data offset in the file or None when compressed) of `key`."""
        info = self._info(key)
        try:
            if info.compress_type == zipfile.ZIP_STORED and not info.flag_bits & 0x1:
                with open(self.path, "rb") as f:
                    f.seek(info.header_offset)
                    local = f.read(30)
                    if len(local) < 30 or local[:4] != b"PK\x03\x04":
                        raise ValueError("bad zip local header")
                    name_len, extra_len = struct.unpack("<HH", local[26:30])
                    f.seek(info.header_offset + 30 + name_len + extra_len)
                    shape, fortran, dtype = _read_npy_header(f)
                    return shape, dtype, fortran, f.tell()
            with self._zip.open(info) as f:
                shape, fortran, dtype = _read_npy_header(f)
                return shape, dtype, fortran, None
        except DataError:
            raise
        except Exception as exc:  # noqa: BLE001 - zipfile, struct and numpy raise many types for corrupt input
            raise self._fail(key, exc) from None

    def array(self, key: str) -> np.ndarray:
        """The array `key`: a read-only view of an `np.memmap` for stored members, else loaded once.

        Object arrays (pickled by numpy) are read with `_npz_objects.load_object_array`'s allow-list:
        a pickle naming anything else raises DataError and nothing of it runs.
        """
        if key in self._arrays:
            return self._arrays[key]
        shape, dtype, fortran, offset = self.header(key)
        try:
            if offset is not None and not dtype.hasobject and int(np.prod(shape)) > 0:
                size = self.path.stat().st_size
                if offset + int(np.prod(shape)) * dtype.itemsize > size:
                    raise ValueError(f"array data runs past the end of the file ({size} bytes)")
                order = "F" if fortran else "C"
                mm = np.memmap(self.path, dtype=dtype, mode="r", offset=offset, shape=shape, order=order)
                arr: np.ndarray = mm.view(np.ndarray)  # plain ndarray over the map: cheaper indexing
            elif dtype.hasobject:
                with self._zip.open(self._infos[key]) as f:
                    _read_npy_header(f)
                    arr = load_object_array(f)
                if arr.shape != shape:
                    raise ValueError(f"the pickled array has shape {arr.shape}, the header says {shape}")
            else:
                with self._zip.open(self._infos[key]) as f:
                    arr = np.lib.format.read_array(f, allow_pickle=False)
        except RefusedGlobal as exc:
            raise DataError(
                f"the object array '{key}' refers to {exc.qualname}, which a plain sGDML / rMD17 entry "
                "never holds (numpy stores object arrays as pickles, which can run code: not loaded)",
                file=self.path,
                record=key,
                fix="use the release file as published; if you trust this file, re-save the entry as a plain "
                "string or number array (np.savez with np.asarray(value, dtype=str))",
            ) from None
        except Exception as exc:  # noqa: BLE001
            raise self._fail(key, exc) from None
        self._arrays[key] = arr
        return arr

    def scalar_text(self, key: str, default: str | None = None) -> str | None:
        """A small string entry (e.g. 'name', 'e_unit') as str; `default` when absent.

        Entries stored as object arrays (str / bytes elements) are read through the allow-list of `array`.
        """
        if key not in self._infos:
            return default
        value = self.array(key)
        value = value.item() if value.size == 1 else value
        if isinstance(value, bytes):
            return value.decode("utf-8", "replace")
        return str(value)


def npz_has_keys(path: Path, keys: tuple[str, ...], damaged_prefixes: tuple[str, ...] = ()) -> bool:
    """True for an .npz holding all `keys`; also for an unreadable .npz whose name starts with one of
    `damaged_prefixes` (so that opening it reports the damage instead of 'unknown format')."""
    if path.suffix.lower() != ".npz" or not path.is_file():
        return False
    try:
        with zipfile.ZipFile(path) as zf:
            names = set(zf.namelist())
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return path.name.startswith(damaged_prefixes) if damaged_prefixes else False
    return all(f"{k}.npy" in names for k in keys)


def _read_npy_header(f: Any) -> tuple[tuple[int, ...], bool, np.dtype]:
    version = np.lib.format.read_magic(f)
    if version == (1, 0):
        return np.lib.format.read_array_header_1_0(f)
    return np.lib.format.read_array_header_2_0(f)


def read_index_file(split_file: str | Path, n: int, path: Path) -> np.ndarray:
    """0-based frame indices from a text/csv file of integers (one per line or comma-separated)."""
    split_path = Path(split_file).expanduser()
    try:
        text = split_path.read_text()
    except OSError as exc:
        raise DataError(f"cannot read split_file: {exc}", file=split_path, fix="check the path") from None
    tokens = [t for t in re.split(r"[,\s]+", text) if t]
    try:
        values = [float(t) for t in tokens]
        if not all(v.is_integer() for v in values):
            raise ValueError(f"{next(t for t, v in zip(tokens, values) if not v.is_integer())!r} is not an integer")
        idx = np.array(values, dtype=np.int64)
    except ValueError as exc:
        raise DataError(
            f"split_file holds a value that is not an integer index ({exc})",
            file=split_path,
            fix="give a file of 0-based integer frame indices, one per line (as rmd17/splits/index_*.csv)",
        ) from None
    if idx.size == 0:
        raise DataError("split_file holds no indices", file=split_path, fix="give a non-empty index file")
    bad = (idx < 0) | (idx >= n)
    if np.any(bad):
        raise DataError(
            f"split_file index {int(idx[bad][0])} is out of range for {n} frames in {path.name}",
            file=split_path,
            fix="use 0-based frame indices of this molecule's npz file",
        )
    return idx


class NpzFramesDataset(Dataset):
    """Base of the readers of one molecule's npz trajectory (rMD17, sGDML): all frames, JMP's split,
    or the frames of an index file.

    Subclasses call `super().__init__(path, split, split_file)`, set `n_frames`, `_numbers` (N,) and
    `_label` (class label and id prefix), then `_select_frames`; they supply `_frame_values`.
    """

    def __init__(self, path: str | Path, split: str | None, split_file: str | Path | None) -> None:
        super().__init__(path)
        self.split = check_split(split, self.path)
        if self.split is not None and split_file is not None:
            raise ConfigError("options split and split_file exclude each other", file=self.path, fix="pass one")
        self.split_file = None if split_file is None else str(split_file)
        self.n_frames = 0
        self._numbers = np.zeros(0, dtype=np.int64)
        self._label = ""
        self._frames: np.ndarray | None = None

    def _select_frames(self, n_train_val: tuple[int, int] | None) -> None:
        """The frames of `split` (JMP's (n_train, n_val), required when split is set) or of
        `split_file`; DataError when none is left."""
        if self.split is not None:
            assert n_train_val is not None, "JMP split sizes are needed with split"
            self._frames = jmp_split(self.n_frames, *n_train_val, self.split)
        elif self.split_file is not None:
            self._frames = read_index_file(self.split_file, self.n_frames, self.path)
        if self._length() == 0:
            what = f" in split '{self.split}'" if self.split else ""
            raise DataError(f"the dataset holds no frames{what}", file=self.path, fix="check the file and the split")

    @abc.abstractmethod
    def _frame_values(self, npz: NpzMembers, frame: int) -> tuple[np.ndarray, float, np.ndarray]:
        """Positions (N, 3) A, energy eV and forces (N, 3) eV/A of `frame`."""

    def _open(self) -> NpzMembers:
        return NpzMembers(self.path)

    def _length(self) -> int:
        return self.n_frames if self._frames is None else int(self._frames.shape[0])

    def _read(self, index: int) -> Record:
        frame = index if self._frames is None else int(self._frames[index])
        positions, energy, forces = self._frame_values(self.handle(), frame)
        return Record(
            numbers=self._numbers.copy(),
            positions=positions,
            energy=energy,
            forces=forces,
            class_label=self._label,
            id=f"{self._label}/{frame}",
            info={"frame": frame},
        )

    def frame_indices(self) -> np.ndarray:
        """(len,) frame index in the npz of each record."""
        return np.arange(self.n_frames, dtype=np.int64) if self._frames is None else self._frames.copy()

    def class_labels(self) -> np.ndarray:
        return np.full(self._length(), self._label, dtype=object)


class RMD17Dataset(NpzFramesDataset):
    """Revised MD17 frames of one molecule, in eV, eV/A and A.

    Args:
        path: `rmd17_<molecule>.npz`.
        split: None (all frames), or 'train' / 'val' / 'test' of JMP's split
            (`RandomState(42).permutation(F)`: first 950 train, next 50 val, the rest test; JMP's order).
        split_file: a file of 0-based frame indices (e.g. `rmd17/splits/index_train_01.csv`) selecting
            frames in the file's order; not together with `split`.

    Records: id = '<molecule>/<frame>' (frame = index in the npz); class_label = molecule name
    (from the file name `rmd17_<molecule>.npz`, else the file stem). `old_*` keys are never read.
    """

    format_name = "rmd17"
    description = "revised MD17 npz (rmd17_<molecule>.npz; kcal/mol, kcal/mol/A)"
    source_units = {"energy": "kcal/mol", "forces": "kcal/mol/angstrom", "positions": "angstrom"}

    def __init__(self, path: str | Path, *, split: str | None = None, split_file: str | Path | None = None) -> None:
        super().__init__(path, split, split_file)
        stem = self.path.stem
        self.molecule = self._label = stem[len("rmd17_") :] if stem.startswith("rmd17_") and len(stem) > 6 else stem
        npz = self.handle()
        shapes = {k: npz.header(k)[0] for k in ("nuclear_charges", "coords", "energies", "forces")}
        natoms = shapes["nuclear_charges"][0] if len(shapes["nuclear_charges"]) == 1 else -1
        nframes = shapes["coords"][0] if len(shapes["coords"]) == 3 else -1
        if (
            natoms < 1
            or shapes["coords"] != (nframes, natoms, 3)
            or shapes["energies"] != (nframes,)
            or shapes["forces"] != (nframes, natoms, 3)
        ):
            raise DataError(
                "array shapes disagree: " + ", ".join(f"{k} {v}" for k, v in shapes.items()),
                file=self.path,
                fix="expected nuclear_charges (N,), coords (F, N, 3), energies (F,), forces (F, N, 3)",
            )
        self.n_frames = int(nframes)
        self._numbers = np.array(npz.array("nuclear_charges"), dtype=np.int64)
        self._select_frames((RMD17_TRAIN, RMD17_VAL))

    @classmethod
    def sniff(cls, path: Path) -> bool:
        return npz_has_keys(path, ("nuclear_charges",), damaged_prefixes=("rmd17_",))

    def _frame_values(self, npz: NpzMembers, frame: int) -> tuple[np.ndarray, float, np.ndarray]:
        return (
            np.array(npz.array("coords")[frame], dtype=np.float64),
            float(npz.array("energies")[frame]) * KCAL_PER_MOL_TO_EV,
            np.array(npz.array("forces")[frame], dtype=np.float64) * KCAL_PER_MOL_TO_EV,
        )

    def metadata(self) -> dict[str, Any]:
        meta = super().metadata()
        meta.update(molecule=self.molecule, n_frames_in_file=self.n_frames, split=self.split)
        if self.split_file is not None:
            meta["split_file"] = self.split_file
        return meta
