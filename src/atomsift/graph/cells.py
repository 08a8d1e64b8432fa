"""Cell geometry shared by the pair finders: completed cells, wrapping, lattice shifts and lengths.

`lattice_shift` and `squared_length` are written elementwise so that both pair finders (the torch search
in `neighbors` and the vesin backend) get bit-identical float64 squared distances for the same pair.
"""

from __future__ import annotations

import torch
from torch import Tensor

from atomsift.errors import DataError
from atomsift.graph.batch import AtomsBatch


def _gather(x: Tensor, index: Tensor) -> Tensor:
    return x.index_select(0, index)


def _cross(a: Tensor, b: Tensor) -> Tensor:
    """Row-wise cross product of (..., 3) tensors (closed form; cheaper than linalg for tiny batches)."""
    a0, a1, a2 = a.unbind(-1)
    b0, b1, b2 = b.unbind(-1)
    return torch.stack([a1 * b2 - a2 * b1, a2 * b0 - a0 * b2, a0 * b1 - a1 * b0], dim=-1)


def reciprocal(cell: Tensor) -> tuple[Tensor, Tensor]:
    """Reciprocal rows (B, 3, 3) with recip[b, k] . cell[b, l] = delta_kl, and |det| (B,)."""
    a0, a1, a2 = cell.unbind(1)
    cross = torch.stack([_cross(a1, a2), _cross(a2, a0), _cross(a0, a1)], dim=1)
    det = (a0 * cross[:, 0]).sum(-1)
    return cross / det[:, None, None], det.abs()


def complete_cells(cell: Tensor, pbc: Tensor, ids: list[str]) -> Tensor:
    """Cells usable for fractional coordinates: periodic rows kept, degenerate rest filled in.

    Structures without pbc get the identity; structures whose non-periodic lattice vectors are zero
    (or dependent) get an orthonormal complement of their periodic vectors there.
    """
    any_pbc = pbc.any(dim=1)
    eye = torch.eye(3, dtype=cell.dtype, device=cell.device)
    out = torch.where(any_pbc[:, None, None], cell, eye)
    unit = out / torch.linalg.vector_norm(out, dim=-1, keepdim=True).clamp_min(1e-300)
    _, unit_det = reciprocal(unit)
    bad = torch.nonzero(any_pbc & ~(unit_det >= 1e-6)).flatten().tolist()
    for b in bad:  # rare: slabs or wires built without a vacuum vector
        periodic = out[b][pbc[b]]
        if (
            torch.linalg.matrix_rank(periodic).item() < periodic.shape[0]
            or (torch.linalg.vector_norm(periodic, dim=-1) < 1e-8).any()
        ):
            raise DataError(
                "lattice vectors along periodic directions are zero or linearly dependent",
                record=ids[b] if b < len(ids) else b,
                fix="give this structure a proper cell, or make it non-periodic (pbc=False)",
            )
        _, _, vh = torch.linalg.svd(periodic, full_matrices=True)
        out[b][~pbc[b]] = vh[periodic.shape[0] :]
    return out


def lattice_shift(offsets: Tensor, cell: Tensor) -> Tensor:
    """S @ cell per row, (M, 3) A, from float offsets (M, 3) and cells (M, 3, 3), written elementwise."""
    return offsets[:, 0:1] * cell[:, 0] + offsets[:, 1:2] * cell[:, 1] + offsets[:, 2:3] * cell[:, 2]


def squared_length(vec: Tensor) -> Tensor:
    """Squared length over the last axis (size 3), A^2, elementwise: the same bits for any shape or layout.

    No square root: torch's vectorised float64 sqrt is not correctly rounded (it differs from numpy's and
    math.sqrt in the last bit for ~1% of values), so pairs are selected and sorted on squared distances.
    """
    x, y, z = vec.unbind(-1)
    return x * x + y * y + z * z


def wrap(pos: Tensor, cell: Tensor, pbc: Tensor, batch: AtomsBatch) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Positions moved into their cells along periodic directions (float64).

    Returns (full cells (B, 3, 3), their reciprocal rows (B, 3, 3), wrapped positions (N, 3) A, and the
    integer lattice shift k (N, 3) taken off each atom: pos = wrapped + k @ cell).
    """
    atom_struct = batch.batch.to(pos.device)
    no_cell = pbc.any(dim=1) & (cell.abs().sum(dim=(1, 2)) == 0)
    if bool(no_cell.any()):
        b = int(torch.nonzero(no_cell)[0])
        raise DataError(
            "periodic structure has no cell",
            record=batch.ids[b] if b < len(batch.ids) else b,
            fix="give it a cell, or build the graph with pbc=False",
        )
    full = complete_cells(cell, pbc, batch.ids)
    recip, _ = reciprocal(full)
    frac = torch.einsum("nl,nkl->nk", pos, _gather(recip, atom_struct))
    k = torch.where(_gather(pbc, atom_struct), torch.floor(frac), torch.zeros_like(frac))
    wrapped = pos - torch.einsum("nk,nkl->nl", k, _gather(full, atom_struct))
    return full, recip, wrapped, k.to(torch.int64)
