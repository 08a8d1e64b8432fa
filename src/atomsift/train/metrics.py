"""Metric names in the field's units, from error sums (atomsift.train.losses.error_sums).

Energies are reported in meV (`energy_mae_meV`, `energy_rmse_meV`, `energy_per_atom_mae_meV`), forces in
meV/A (`forces_mae_meV_per_A`, `forces_rmse_meV_per_A`, per Cartesian component), other targets in their
own unit (`<target>_mae_<unit>`; energy-like targets in eV, such as QM9's U0, in meV). `evaluate`, validation and the
experiment tables use these names.
"""

from __future__ import annotations

import math
import re

from atomsift.train.losses import TaskInfo


def unit_label(unit: str, kind: str = "energy") -> tuple[str, float]:
    """(label for metric keys, factor from the data's unit): energies in eV -> (meV, 1000); others as they are."""
    if unit == "eV" and kind == "energy":
        return "meV", 1000.0
    return re.sub(r"[^A-Za-z0-9]+", "_", unit.replace("^-1", "-1")).strip("_") or "units", 1.0


def target_key(task: TaskInfo) -> str:
    """The metric stem of a task's target: 'energy', or the target name made key-safe."""
    return "energy" if task.target == "energy" else re.sub(r"[^A-Za-z0-9]+", "_", task.target).strip("_")


def metrics_from_sums(sums: dict[str, float], task: TaskInfo) -> dict[str, float | int]:
    """MAE and RMSE of the target (and forces) from summed errors; NaN-free: absent parts are left out."""
    out: dict[str, float | int] = {}
    n = sums.get("n", 0.0)
    if n > 0:
        label, factor = unit_label(task.unit, task.kind)
        stem = target_key(task)
        out["n_structures"] = int(n)
        out[f"{stem}_mae_{label}"] = factor * sums["target_abs"] / n
        out[f"{stem}_rmse_{label}"] = factor * math.sqrt(sums["target_sq"] / n)
        if task.kind == "energy":
            out[f"{stem}_per_atom_mae_{label}"] = factor * sums["target_abs_per_atom"] / n
    nf = sums.get("n_force", 0.0)
    if nf > 0:
        out["forces_mae_meV_per_A"] = 1000.0 * sums["force_abs"] / nf
        out["forces_rmse_meV_per_A"] = 1000.0 * math.sqrt(sums["force_sq"] / nf)
    return out
