"""Structures stored as pymatgen dicts inside JSON files (QMOF, MatBench), read without pymatgen.

Also a small per-process cache of parsed JSON files, so the large JSON releases are parsed once per
process (data-loader workers forked after the first read inherit the parsed copy).
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np
from ase.data import atomic_numbers

from atomsift.data.readers._common import open_failed
from atomsift.errors import DataError

_OCCUPANCY_TOL = 1e-6


def _site_element(site: dict[str, Any], i: int, file: str | Path, record: str | int) -> int:
    """Atomic number of site `i`; DataError for mixed or partial occupancy, or unknown species."""
    label = site.get("label")
    name = f"site {i}" + (f" ('{label}')" if label else "")
    species = site.get("species")
    if not isinstance(species, list) or not species:
        raise DataError(
            f"{name} has no 'species' list",
            file=file,
            record=record,
            fix="each site of a pymatgen Structure dict needs 'species': [{'element': 'X', 'occu': 1}]",
        )
    occupancy = sum(float(s.get("occu", 1.0)) for s in species)
    if len(species) > 1 or abs(occupancy - 1.0) > _OCCUPANCY_TOL:
        what = ", ".join(f"{s.get('element')}:{s.get('occu', 1.0)}" for s in species)
        raise DataError(
            f"{name} is disordered (species {what}); only fully occupied single-element sites are supported",
            file=file,
            record=record,
            fix="order the structure first (e.g. pymatgen's OrderDisorderedStructureTransformation) or drop it",
        )
    element = str(species[0].get("element", "")).strip()
    z = atomic_numbers.get(element)
    if z is None or z == 0:
        raise DataError(
            f"{name} has species '{element}', which is not a chemical element",
            file=file,
            record=record,
            fix="remove dummy species (X, vacancies) from this structure",
        )
    return z


def structure_from_dict(
    d: dict[str, Any], *, file: str | Path, record: str | int
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
    """Convert a pymatgen `Structure.as_dict()` (or `Molecule.as_dict()`) to arrays.

    Args:
        d: the dict; `lattice.matrix` rows are lattice vectors (A); each site has `species`
            ([{'element', 'occu'}]), Cartesian `xyz` (A) and/or fractional `abc`.
        file, record: named in errors.

    Returns:
        numbers (N,) int64, positions (N, 3) float64 A, cell (3, 3) float64 A or None (molecule),
        pbc (3,) bool (from `lattice.pbc`, default all True for a Structure).

    Raises:
        DataError: a missing key, a disordered or partially occupied site (named), a bad shape.
    """
    if not isinstance(d, dict) or "sites" not in d:
        raise DataError(
            "structure is not a pymatgen Structure dict (no 'sites')",
            file=file,
            record=record,
            fix="expected the output of pymatgen's Structure.as_dict()",
        )
    sites = d["sites"]
    cell: np.ndarray | None = None
    pbc = np.zeros(3, dtype=bool)
    lattice = d.get("lattice")
    if lattice is not None:
        try:
            cell = np.asarray(lattice["matrix"], dtype=np.float64).reshape(3, 3)
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(
                f"lattice has no valid 3x3 'matrix' ({exc})", file=file, record=record, fix="repair the lattice"
            ) from None
        pbc = np.asarray(lattice.get("pbc", (True, True, True)), dtype=bool).reshape(3)
    n = len(sites)
    numbers = np.empty(n, dtype=np.int64)
    positions = np.empty((n, 3), dtype=np.float64)
    for i, site in enumerate(sites):
        numbers[i] = _site_element(site, i, file, record)
        xyz = site.get("xyz")
        try:
            if xyz is not None:
                positions[i] = xyz
            elif cell is not None and site.get("abc") is not None:
                positions[i] = np.asarray(site["abc"], dtype=np.float64) @ cell
            else:
                raise ValueError("neither 'xyz' nor 'abc' (with a lattice) given")
        except (TypeError, ValueError) as exc:
            raise DataError(
                f"site {i} has no valid coordinates ({exc})", file=file, record=record, fix="repair this site"
            ) from None
    return numbers, positions, cell, pbc


# -- per-process JSON cache ---------------------------------------------------------------------
_CACHE: OrderedDict[tuple[str, int, int], Any] = OrderedDict()
_CACHE_SIZE = 4
_LOCK = threading.Lock()
_OPENERS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}


def load_json(path: Path, what: str) -> Any:
    """Parse the JSON file `path` (plain, .gz, .bz2 or .xz), cached per process.

    The whole file is parsed into memory (JSON has no random access); the parsed object is kept for
    the lifetime of the process (at most 4 files), keyed by path, size and modification time.
    Treat the result as read-only.
    """
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    with _LOCK:
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
    opener = _OPENERS.get(path.suffix.lower(), open)
    try:
        with opener(path, "rt", encoding="utf-8") as fh:
            obj = json.load(fh)
    except (OSError, EOFError, ValueError, lzma.LZMAError) as exc:
        raise open_failed(path, exc, what) from None
    with _LOCK:
        _CACHE[key] = obj
        while len(_CACHE) > _CACHE_SIZE:
            _CACHE.popitem(last=False)
    return obj


def clear_json_cache() -> None:
    """Drop every cached JSON file (tests; freeing memory)."""
    with _LOCK:
        _CACHE.clear()
