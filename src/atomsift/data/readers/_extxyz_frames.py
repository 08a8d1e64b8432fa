"""Parsing one extended-XYZ frame: a vectorised parser for plain frames, ASE's parser for the rest.

`_fast_frame` gives what ASE's extxyz reader gives (same comment-line rules, checked against ASE in the
tests) for plain frames; anything unusual (VEC cell lines, per-component move masks, quoted/bracketed/JSON
values) goes to `_ase_frame`, ASE's own frame parser. Used by `extxyz.ExtxyzDataset`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from ase.data import atomic_numbers
from ase.io.extxyz import REV_PROPERTY_NAME_MAP, SPECIAL_3_3_KEYS, UNPROCESSED_KEYS, key_val_str_to_dict

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


def parse_frame(lines: list[str], natoms: int, nvec: int) -> _Frame:
    """One frame's lines (atom count line first) -> _Frame; the fast parser when it applies."""
    frame = _fast_frame(lines, natoms) if nvec == 0 else None
    return frame if frame is not None else _ase_frame(lines, natoms, nvec)
