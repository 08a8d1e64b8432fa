"""Target normalisation fitted on a training subset, shared by pretraining and finetuning.

Energies (and energy-like targets such as QM9's U0) get a linear reference: the least-squares fit of the
energy on the element counts of each structure, E ~ sum_Z c_Z n_Z, without intercept (docs/method.md). The
model is trained on (E - sum_Z c_Z n_Z) / s_E with s_E the standard deviation of that residual, and forces
on F / s_F with s_F the standard deviation of all force components. Heads hold c (atom_ref), s_E (scale)
and s_F (force_scale) as buffers, so a trained model predicts raw eV and eV/A. Property targets are z-scored:
(y - mean) / std, the head holding shift = mean and scale = std.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch

from atomsift.data.record import Record
from atomsift.errors import DataError

_MIN_STD = 1e-8  # below this a label is constant: scale 1 instead of dividing by ~0


class MissingTarget(DataError):
    """No training structure carries the target: callers that know the dataset add the reader's hints."""


@dataclass
class Normalizer:
    """What one head needs to map normalised outputs to physical units.

    Attributes:
        atom_ref: (num_elements,) reference per element (zeros without a linear reference), target units.
        scale: standard deviation of the (referenced) target, target units.
        shift: mean added after scaling (0 for referenced energies), target units.
        force_scale: standard deviation of force components, eV/A (1 without forces).
        n_structures: structures the fit used.
        elements: atomic numbers that had a reference fitted.
    """

    atom_ref: np.ndarray
    scale: float
    shift: float
    force_scale: float
    n_structures: int
    elements: list[int]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["atom_ref"] = {int(z): float(self.atom_ref[z]) for z in self.elements}
        return d

    def apply_to(self, head: torch.nn.Module) -> None:
        """Fill an EnergyHead's or PropertyHead's normalisation buffers."""
        with torch.no_grad():
            if hasattr(head, "atom_ref"):
                head.atom_ref.copy_(torch.as_tensor(self.atom_ref, dtype=head.atom_ref.dtype))
                head.force_scale.fill_(self.force_scale)
            head.scale.fill_(self.scale)
            head.shift.fill_(self.shift)


def element_counts(numbers: Sequence[np.ndarray], num_elements: int) -> np.ndarray:
    """(n, num_elements) float64 counts of each atomic number per structure."""
    out = np.zeros((len(numbers), num_elements))
    for row, z in zip(out, numbers):
        np.add.at(row, np.asarray(z, dtype=np.int64), 1.0)
    return out


def fit_linear_reference(counts: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Least squares values ~ counts @ c over the present elements (minimum-norm when counts are rank-deficient).

    Args:
        counts: (n, num_elements) element counts. values: (n,) targets.

    Returns:
        c (num_elements,) (zero for absent elements) and the residual values - counts @ c (n,).
    """
    present = np.flatnonzero(counts.sum(axis=0) > 0)
    c = np.zeros(counts.shape[1])
    if present.size:
        sol, *_ = np.linalg.lstsq(counts[:, present], values, rcond=None)
        c[present] = sol
    return c, values - counts @ c


def fit_normalizer(
    records: Sequence[Record],
    *,
    target: str = "energy",
    linear_reference: bool = True,
    num_elements: int = 120,
    forces: bool = True,
    source: str = "",
) -> Normalizer:
    """Fit the normaliser of one head on training records.

    Args:
        target: "energy" (record.energy) or the name of a scalar in record.targets.
        linear_reference: fit per-element references (energies); else z-score (mean and std).
        forces: also fit the force scale (records without forces are skipped for it).
        source: the dataset's name, for error messages.
    """
    values, numbers, force_rows = [], [], []
    present: set[str] = set()
    not_numbers: list[str] = []
    for rec in records:
        present.update(k for k, v in rec.targets.items() if np.ndim(v) == 0)
        value = rec.energy if target == "energy" else rec.targets.get(target)
        if value is None:
            continue
        value = np.asarray(value, dtype=np.float64)
        if value.size != 1:
            raise DataError(
                f"target '{target}' of dataset '{source}' has shape {value.shape}; heads predict one number",
                record=rec.id,
                fix="choose a scalar target",
            )
        if not np.isfinite(value).all():  # missing, as in collate: left out of the loss too
            not_numbers.append(rec.id)
            continue
        values.append(float(value.reshape(())))
        numbers.append(rec.numbers)
        if forces and rec.forces is not None:
            force_rows.append(np.asarray(rec.forces, dtype=np.float64).ravel())
    if not_numbers:
        warnings.warn(
            f"{len(not_numbers)} training structure(s) of '{source}' have the target '{target}' NaN or inf (first: "
            f"{not_numbers[0]}): they count as without it, left out of its normaliser and its loss",
            stacklevel=2,
        )
    if not values:
        there = f"their scalar labels: {', '.join(sorted(present))}" if present else "they carry no other labels"
        raise MissingTarget(
            f"no training structure of '{source}' has the target '{target}' ({there})",
            fix="set task.target to one of those labels, or check the split",
        )
    y = np.asarray(values)
    if linear_reference:
        atom_ref, residual = fit_linear_reference(element_counts(numbers, num_elements), y)
        shift = 0.0
    else:
        atom_ref, residual = np.zeros(num_elements), y - y.mean()
        shift = float(y.mean())
    scale = float(residual.std()) if len(y) > 1 else 1.0
    force_scale = 1.0
    if force_rows:
        f = np.concatenate(force_rows)
        force_scale = float(f.std()) if f.size > 1 else 1.0
    present = sorted(int(z) for z in np.unique(np.concatenate(numbers)))
    return Normalizer(
        atom_ref=atom_ref,
        scale=scale if scale > _MIN_STD else 1.0,
        shift=shift,
        force_scale=force_scale if force_scale > _MIN_STD else 1.0,
        n_structures=len(y),
        elements=present if linear_reference else [],
    )
