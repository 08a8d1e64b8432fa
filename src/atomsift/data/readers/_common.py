"""Small helpers shared by readers: formulas, clear open errors, required keys."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from ase.data import chemical_symbols

from atomsift.errors import DataError


def hill_formula(numbers: np.ndarray) -> str:
    """Hill-order formula with explicit counts, e.g. [6, 1, 1, 1, 1] -> 'CH4'."""
    counts = Counter(int(z) for z in numbers)
    symbols = {chemical_symbols[z]: n for z, n in counts.items() if 0 < z < len(chemical_symbols)}
    order = sorted(symbols)
    if "C" in symbols:
        order = ["C"] + (["H"] if "H" in symbols else []) + [s for s in order if s not in ("C", "H")]
    return "".join(f"{s}{symbols[s] if symbols[s] > 1 else ''}" for s in order)


def open_failed(path: Path | str, exc: BaseException, what: str, fix: str | None = None) -> DataError:
    """A DataError for a file that exists but cannot be opened (truncated, corrupt, wrong type)."""
    return DataError(
        f"cannot open {what}: {exc}",
        file=path,
        fix=fix
        or "the file may be truncated or corrupt (compare its size and checksum with the release) "
        "or not be in this format (pass --format to choose another reader)",
    )


def require(container: Any, key: str, path: Path | str, record: str | int | None, fix: str) -> Any:
    """container[key], or a DataError naming the missing key, the file and the record."""
    try:
        return container[key]
    except (KeyError, IndexError, ValueError) as exc:
        raise DataError(f"missing key '{key}' ({exc.__class__.__name__})", file=path, record=record, fix=fix) from None
