"""Format registry (a plain dict), format auto-detection and `open_dataset`."""

from __future__ import annotations

import glob
import importlib
import inspect
from pathlib import Path
from typing import Any

from atomsift.data.base import Dataset
from atomsift.errors import ConfigError, DataError, did_you_mean

# name -> "module:Class". Order matters for detection: specific formats before generic ones.
FORMATS: dict[str, str] = {
    "ani1x": "atomsift.data.readers.ani1x:ANI1xDataset",
    "transition1x": "atomsift.data.readers.transition1x:Transition1xDataset",
    "spice": "atomsift.data.readers.spice:SpiceDataset",
    "oc-lmdb": "atomsift.data.readers.oc_lmdb:OCLmdbDataset",
    "aselmdb": "atomsift.data.readers.asedb:AseLmdbDataset",
    "oc20-extxyz": "atomsift.data.readers.oc20_extxyz:OC20ExtxyzDataset",
    "qm9-xyz": "atomsift.data.readers.qm9:QM9XyzDataset",
    "qm9-pyg": "atomsift.data.readers.qm9:QM9PygDataset",
    "qm9pack": "atomsift.data.readers.qm9:QM9PackDataset",
    "rmd17": "atomsift.data.readers.rmd17:RMD17Dataset",
    "sgdml": "atomsift.data.readers.sgdml:SGDMLDataset",
    "qmof": "atomsift.data.readers.qmof:QMOFDataset",
    "matbench": "atomsift.data.readers.matbench:MatbenchDataset",
    "adsorbates-json": "atomsift.data.readers.adsorbates:AdsorbatesJsonDataset",
    "ase-db": "atomsift.data.readers.asedb:AseDbDataset",
    "extxyz": "atomsift.data.readers.extxyz:ExtxyzDataset",
}

ALIASES: dict[str, str] = {
    "ani-1x": "ani1x",
    "t1x": "transition1x",
    "oc20": "oc-lmdb",
    "oc22": "oc-lmdb",
    "oc20-lmdb": "oc-lmdb",
    "oc22-lmdb": "oc-lmdb",
    "lmdb": "oc-lmdb",
    "oc20-s2ef": "oc20-extxyz",
    "md22": "sgdml",
    "md17": "sgdml",
    "qm9": "qm9-pyg",
    "ase-lmdb": "aselmdb",
    "xyz": "extxyz",
    "db": "ase-db",
}


def normalize_format(name: str) -> str:
    """Canonical format name for `name` (case-insensitive, '_' == '-', aliases resolved)."""
    key = name.strip().lower().replace("_", "-")
    key = ALIASES.get(key, key)
    if key not in FORMATS:
        raise ConfigError(
            f"unknown format '{name}'",
            fix=f"{did_you_mean([key], [*FORMATS, *ALIASES])}use one of: {', '.join(FORMATS)} (or leave --format out "
            "to detect it)",
        )
    return key


def reader_class(name: str) -> type[Dataset]:
    """The reader class registered as `name`."""
    module_name, _, class_name = FORMATS[normalize_format(name)].partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def detect_format(path: Path) -> str:
    """Name of the first registered format whose `sniff` accepts `path`.

    A path that does not exist but holds a glob wildcard (e.g. 'data/*.xyz') is read by the extxyz reader,
    the one reader that takes patterns (it refuses matches that are not .xyz/.extxyz files).
    """
    if not path.exists():
        if glob.has_magic(str(path)):
            return "extxyz"
        raise DataError(
            "no such file or directory",
            file=path,
            fix="check the path (a bundled dataset is named like 'bundled:oxides'; see `atomsift data bundled`)",
        )
    for name in FORMATS:
        try:
            if reader_class(name).sniff(path):
                return name
        except (OSError, ValueError, KeyError):
            continue
    raise ConfigError(
        "could not tell the format of this path from its name or contents",
        file=path,
        fix=f"name the format: --format NAME where the command has it, else inline as PATH,format=NAME; NAME one "
        f"of: {', '.join(FORMATS)}",
    )


class UnknownReaderOptions(ConfigError):
    """Reader options a format does not take; ``unknown`` and ``accepted`` let callers suggest names."""

    def __init__(self, unknown: list[str], accepted: list[str], format_name: str, path: Path) -> None:
        self.unknown, self.accepted, self.format_name, self.path = unknown, accepted, format_name, path
        super().__init__(
            f"option(s) {', '.join(unknown)} not understood by format '{format_name}'",
            file=path,
            fix=f"options of this format: {', '.join(accepted) or 'none'}",
        )

    def __reduce__(self) -> tuple:  # worker processes send errors back pickled
        return (type(self), (self.unknown, self.accepted, self.format_name, self.path))


def reader_options(cls: type[Dataset]) -> dict[str, Any] | None:
    """A reader's options with their defaults (inspect.Parameter.empty where required); None if it takes any."""
    params = inspect.signature(cls.__init__).parameters
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
        return None
    return {n: p.default for n, p in params.items() if n not in ("self", "path") and p.kind is not p.VAR_POSITIONAL}


def _check_options(cls: type[Dataset], options: dict[str, Any], path: Path) -> None:
    known = reader_options(cls)
    if known is None:
        return
    accepted = list(known)
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise UnknownReaderOptions(unknown, accepted, cls.format_name, path)


def open_dataset(path: str | Path, format: str | None = None, **options: Any) -> Dataset:
    """Open a dataset for random access by index.

    Args:
        path: a file or directory in one of the supported release formats, a glob of extxyz files
            ('data/*.xyz'), 'bundled:NAME', or 'qm9pack' for the QM9 CSVs inside the installed `qm9pack`
            package.
        format: a registered format name; detected from the path when None.
        **options: reader options (e.g. split='train', level='wb97x_dz', classes='map.pkl'); every format also
            takes indices=FILE, a subset file whose indices the dataset is restricted to (data/indexed.py).
            Options that are None are dropped, so CLI flags left out fall back to defaults.

    Returns:
        A `Dataset`: `len(ds)`, `ds[i]` -> `Record`, `ds.class_labels()`, `ds.metadata()`.
    """
    options = {k: v for k, v in options.items() if v is not None}
    text = str(path)
    if text.startswith("bundled:"):
        from atomsift.data.bundled import resolve_bundled

        bundled_path, bundled_format, bundled_options = resolve_bundled(text[len("bundled:") :])
        path = bundled_path
        format = format or bundled_format
        options = {**bundled_options, **options}
    path = Path(path).expanduser()
    if format is None and text == "qm9pack" and not path.exists():
        format = "qm9pack"  # the CSVs inside the installed qm9pack wheel
    if path.is_file() and path.stat().st_size == 0:  # said before format detection or a reader's parse error
        raise DataError("the file is empty (0 bytes)", file=path, fix="check that it was written completely")
    name = normalize_format(format) if format else detect_format(path)
    if name != "extxyz" and not path.exists() and glob.has_magic(str(path)):
        raise ConfigError(
            f"a glob pattern is read by the extxyz format only, not by '{name}'",
            file=path,
            fix="point to the dataset's file or folder, or drop --format for a pattern of .xyz/.extxyz files",
        )
    cls = reader_class(name)
    indices = options.pop("indices", None)  # every format: restrict to a subset file's indices
    _check_options(cls, options, path)
    ds = cls(path, **options)
    if indices is not None:
        from atomsift.data.indexed import IndexedDataset

        return IndexedDataset(ds, indices)
    return ds
