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


FORCES_MAE = "forces_mae_meV_per_A"
FORCES_RMSE = "forces_rmse_meV_per_A"


def target_metric_names(task: TaskInfo) -> dict[str, str]:
    """The keys of the target's errors: 'mae', 'rmse' and, for energies, 'per_atom_mae'."""
    label, stem = unit_label(task.unit, task.kind)[0], target_key(task)
    names = {"mae": f"{stem}_mae_{label}", "rmse": f"{stem}_rmse_{label}"}
    if task.kind == "energy":
        names["per_atom_mae"] = f"{stem}_per_atom_mae_{label}"
    return names


def metric_names(task: TaskInfo) -> set[str]:
    """Every error key `metrics_from_sums` reports for a task with all its labels."""
    return set(target_metric_names(task).values()) | ({FORCES_MAE, FORCES_RMSE} if task.forces else set())


def metrics_from_sums(sums: dict[str, float], task: TaskInfo) -> dict[str, float | int]:
    """MAE and RMSE of the target (and forces) from summed errors; NaN-free: absent parts are left out."""
    out: dict[str, float | int] = {}
    n = sums.get("n", 0.0)
    if n > 0:
        factor = unit_label(task.unit, task.kind)[1]
        names = target_metric_names(task)
        out["n_structures"] = int(n)
        out[names["mae"]] = factor * sums["target_abs"] / n
        out[names["rmse"]] = factor * math.sqrt(sums["target_sq"] / n)
        if "per_atom_mae" in names:
            out[names["per_atom_mae"]] = factor * sums["target_abs_per_atom"] / n
    nf = sums.get("n_force", 0.0)
    if nf > 0:
        out[FORCES_MAE] = 1000.0 * sums["force_abs"] / nf
        out[FORCES_RMSE] = 1000.0 * math.sqrt(sums["force_sq"] / nf)
    return out
