"""Streaming summary of a dataset for `atomsift data inspect`."""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Any

import numpy as np
from ase.data import chemical_symbols

from atomsift.data.base import Dataset
from atomsift.errors import ConfigError, DataError
from atomsift.progress import progress_bar


def _norm(name: str) -> str:
    return re.sub(r"[\s_\-]", "", name.lower())


def resolve_target(ds: Dataset, targets: dict[str, Any], name: str) -> str:
    """The key of `targets` meant by `name`: exact, the reader's aliases, then case/underscore-blind."""
    if name in targets:
        return name
    canonical = ds.resolve_target(name)
    if canonical in targets:
        return canonical
    matches = [key for key in targets if _norm(key) == _norm(name)]
    if len(matches) == 1:
        return matches[0]
    raise ConfigError(
        f"target '{name}' not found in this dataset",
        file=ds.path,
        fix=f"targets present: {', '.join(sorted(targets)) or 'none'} (or 'energy')",
    )


def summarize(
    ds: Dataset, target: str | None = None, max_records: int | None = None, progress: bool = True
) -> dict[str, Any]:
    """One pass over the dataset: counts, elements, energy mean, force RMS, classes, target mean.

    `forces_rms_eV_per_A` is sqrt(mean of F^2 over every atom and Cartesian component).
    Energies in eV; a target's mean in the unit the reader documents for it.
    """
    if max_records is not None and max_records < 1:
        raise ConfigError(f"--max-records must be at least 1, got {max_records}", fix="leave it out to read everything")
    n_total = len(ds)
    if n_total == 0:
        raise DataError("the dataset holds no structures", file=ds.path, fix="check the path, split and filters")
    n = n_total if max_records is None else min(n_total, max_records)
    n_atoms = 0
    natoms_min, natoms_max = math.inf, 0
    element_counts: Counter[int] = Counter()
    e_mean = e_m2 = 0.0  # Welford: a one-pass sum of squares loses the spread of -1e5 eV energies entirely
    e_count = 0
    f_sq = 0.0
    f_count = 0
    t_sum = 0.0
    t_count = t_not_number = 0
    target_key: str | None = None
    periodic = 0
    for i in progress_bar(range(n), desc=f"inspect {ds.path.name}", unit="rec", disable=not progress, leave=False):
        rec = ds[i]
        k = rec.natoms
        n_atoms += k
        natoms_min, natoms_max = min(natoms_min, k), max(natoms_max, k)
        zs, counts = np.unique(rec.numbers, return_counts=True)
        element_counts.update(dict(zip(zs.tolist(), counts.tolist(), strict=True)))
        periodic += bool(np.any(rec.pbc))
        if rec.energy is not None:
            e_count += 1
            delta = rec.energy - e_mean
            e_mean += delta / e_count
            e_m2 += delta * (rec.energy - e_mean)
        if rec.forces is not None:
            f_sq += float(np.square(rec.forces).sum())
            f_count += rec.forces.size
        if target is not None:
            if target == "energy":
                value = rec.energy
            else:
                if target_key is None and rec.targets:
                    target_key = resolve_target(ds, rec.targets, target)
                value = rec.targets.get(target_key) if target_key is not None else None
            if value is not None and np.ndim(value) == 0 and np.isfinite(value):
                t_sum += float(value)
                t_count += 1
            elif value is not None and np.ndim(value) == 0:
                t_not_number += 1
    if target not in (None, "energy") and target_key is None:
        resolve_target(ds, {}, target)  # raises: no record carries any target
    labels = ds.class_labels()
    out: dict[str, Any] = {
        "path": str(ds.path),
        "format": ds.format_name,
        "n_structures": n,
        "n_structures_total": n_total,
        "n_atoms_total": n_atoms,
        "natoms_min": int(natoms_min),
        "natoms_max": int(natoms_max),
        "elements": sorted(chemical_symbols[z] for z in element_counts),
        "element_counts": {chemical_symbols[z]: int(c) for z, c in sorted(element_counts.items())},
        "n_periodic": periodic,
        "energy_mean_eV": e_mean if e_count else None,
        "energy_std_eV": math.sqrt(e_m2 / e_count) if e_count else None,  # ddof 0
        "n_with_energy": e_count,
        "forces_rms_eV_per_A": math.sqrt(f_sq / f_count) if f_count else None,
        "n_classes": len(set(labels[:n].tolist())) if labels is not None else None,  # of the structures read
    }
    if target is not None:
        out["target"] = target if target == "energy" else target_key
        out["target_mean"] = t_sum / t_count if t_count else None
        out["n_with_target"] = t_count
        out["n_target_nan_or_inf"] = t_not_number  # training and evaluation count them as missing, and say so
    out["metadata"] = ds.metadata()
    return out
