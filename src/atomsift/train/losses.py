"""Per-structure losses and error sums, in normalised units (loss) and physical units (metrics).

For a structure i of task k with head outputs (E_i, F_i):

    loss_i = w_E,k |E_i - E*_i| / s_E,k + w_F,k (1 / n_i) sum_a ||F_ia - F*_ia||_2 / s_F,k

(s = the head's scale buffers, docs/method.md); a term is skipped where its weight is 0 or the structure
lacks that label. The step's loss is sum_i weight_i loss_i / (structures in the step), so the gradient is
the mean over the step's structures whatever the number of processes.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class TaskInfo:
    """What the training module needs of a task: its head, label and loss weights.

    Attributes:
        name: task (dataset) name; head: its head's name in the model; target: "energy" or a target name;
        kind: "energy" or "property"; forces: the head predicts forces; energy_weight, force_weight: weights;
        unit: the target's unit in the data (energies: eV).
    """

    name: str
    head: str
    target: str = "energy"
    kind: str = "energy"
    forces: bool = True
    energy_weight: float = 1.0
    force_weight: float = 0.0
    unit: str = "eV"


def target_of(batch, task: TaskInfo) -> tuple[Tensor | None, Tensor | None]:
    """(labels (B,), mask (B,)) of the task's target in the batch; (None, None) when no structure has it."""
    if task.target == "energy":
        return batch.energy, batch.energy_mask
    value = batch.targets.get(task.target)
    if value is None:
        return None, None
    return value.reshape(value.shape[0], -1)[:, 0], batch.target_masks[task.target]


def prediction_of(out: dict[str, Tensor], task: TaskInfo) -> Tensor:
    """The head's scalar prediction per structure (B,)."""
    return out["energy"] if task.kind == "energy" else out["property"][:, 0]


def per_atom_force_error(pred: Tensor, ref: Tensor, batch) -> Tensor:
    """(B,) mean over each structure's atoms of ||F_pred - F_ref||_2 (eV/A)."""
    norms = torch.linalg.vector_norm(pred - ref, dim=-1)
    sums = norms.new_zeros(batch.num_structures).index_add(0, batch.batch, norms)
    return sums / batch.natoms.to(norms.dtype)


def structure_losses(out: dict[str, Tensor], batch, task: TaskInfo, scale: Tensor, force_scale: Tensor) -> Tensor:
    """(B,) normalised loss of every structure for this task's head (zero where no label applies)."""
    loss = batch.positions.new_zeros(batch.num_structures)
    if task.energy_weight > 0:
        labels, mask = target_of(batch, task)
        if labels is not None:
            err = (prediction_of(out, task) - labels).abs() / scale
            loss = loss + task.energy_weight * torch.where(mask, err, torch.zeros_like(err))
    if task.force_weight > 0 and task.forces and batch.forces is not None:
        err = per_atom_force_error(out["forces"], batch.forces, batch) / force_scale
        loss = loss + task.force_weight * torch.where(batch.forces_mask, err, torch.zeros_like(err))
    return loss


ERROR_KEYS = ("n", "target_abs", "target_sq", "n_per_atom", "target_abs_per_atom", "n_force", "force_abs", "force_sq")


def error_sums(out: dict[str, Tensor], batch, task: TaskInfo, rows: Tensor) -> dict[str, Tensor]:
    """Sums of absolute and squared errors over the structures `rows` (B,) bool, in the data's units.

    Keys: n, target_abs, target_sq (per structure), target_abs_per_atom, n_force, force_abs, force_sq (per force
    component). Metrics are these sums over a whole split divided by their counts.
    """
    zero = batch.positions.new_zeros(())
    sums = dict.fromkeys(ERROR_KEYS, zero)
    labels, mask = target_of(batch, task)
    if labels is not None:
        use = rows & mask
        err = (prediction_of(out, task).detach() - labels)[use]
        sums["n"] = use.sum().to(zero.dtype)
        sums["target_abs"] = err.abs().sum()
        sums["target_sq"] = err.square().sum()
        sums["n_per_atom"] = sums["n"]
        sums["target_abs_per_atom"] = (err.abs() / batch.natoms[use].to(err.dtype)).sum()
    if task.forces and batch.forces is not None and "forces" in out:
        atoms = (rows & batch.forces_mask)[batch.batch]
        err = (out["forces"].detach() - batch.forces)[atoms]
        sums["n_force"] = torch.as_tensor(err.numel(), dtype=zero.dtype)
        sums["force_abs"] = err.abs().sum()
        sums["force_sq"] = err.square().sum()
    return sums
