"""The backbone interface: a batch of structures in, per-atom (and per-edge) embeddings out, no heads inside.

    out = backbone(batch)            # batch: atomsift.graph.AtomsBatch
    out.node                         # (N, backbone.node_dim) per-atom embeddings
    out.edge, out.edge_index         # (E, edge_dim), (2, E) where the model has edge embeddings

Heads (models/heads.py) turn these into energies, forces and graph properties; CSI feature extraction runs the
backbone alone.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor, nn

from atomsift.errors import DataError

if TYPE_CHECKING:
    from atomsift.graph.batch import AtomsBatch


@dataclass
class BackboneOutput:
    """What a backbone returns for a batch of N atoms (E edges of its main graph).

    Attributes:
        node: (N, node_dim) per-atom embeddings.
        edge: (E, edge_dim) per-edge embeddings, or None for models without them.
        edge_index: (2, E) int64 [source, target] atoms of `edge`, or None.
        edge_unit: (E, 3) unit vectors for direct forces: F[target] += f_e * edge_unit[e], or None.
        vector: (N, 3, node_dim) rotation-equivariant vector features (PaiNN), or None.
    """

    node: Tensor
    edge: Tensor | None = None
    edge_index: Tensor | None = None
    edge_unit: Tensor | None = None
    vector: Tensor | None = None


class Backbone(nn.Module, abc.ABC):
    """Base class of every backbone.

    Subclasses set `name` (the registry key), `node_dim`, `edge_dim` (None without edge embeddings) and
    `num_elements` (atomic numbers 1 .. num_elements - 1 can be embedded), and implement `hparams` and
    `forward`. A backbone builds its own neighbour graph(s) from the batch.
    """

    name: ClassVar[str]
    node_dim: int
    edge_dim: int | None = None
    num_elements: int

    @abc.abstractmethod
    def hparams(self) -> dict[str, Any]:
        """Constructor keyword arguments, JSON-able: `type(self)(**self.hparams())` rebuilds the architecture."""

    @abc.abstractmethod
    def forward(self, batch: AtomsBatch) -> BackboneOutput:
        """Embed a batch. Raises DataError for elements outside the embedding table or non-finite positions."""

    def check_batch(self, batch: AtomsBatch) -> None:
        """Raise DataError naming the structure when an element is unknown to this backbone or a position is NaN."""
        numbers = batch.numbers
        bad = (numbers < 1) | (numbers >= self.num_elements)
        if bool(bad.any()):
            atom = int(torch.nonzero(bad)[0, 0])
            z = int(numbers[atom])
            raise DataError(
                f"atomic number {z} is outside the '{self.name}' backbone's embedding table "
                f"(it embeds 1..{self.num_elements - 1})",
                record=_structure_id(batch, atom),
                fix="drop structures with that element, or build the backbone with a larger num_elements",
            )
        finite = torch.isfinite(batch.positions).all(dim=1)
        if not bool(finite.all()):
            atom = int(torch.nonzero(~finite)[0, 0])
            raise DataError(
                f"atom {atom} has a non-finite position {batch.positions[atom].tolist()}",
                record=_structure_id(batch, atom),
                fix="remove or repair the structure; positions must be finite numbers in Angstrom",
            )


def _structure_id(batch: AtomsBatch, atom: int) -> str:
    """The id of the structure that holds global atom index `atom`."""
    index = int(batch.batch[atom])
    ids = getattr(batch, "ids", None)
    return str(ids[index]) if ids and index < len(ids) else f"structure {index} of the batch"


def no_neighbours_error(batch: AtomsBatch, num_neighbors: Tensor, cutoff: float, model: str) -> DataError | None:
    """A DataError for the first structure in which no atom has a neighbour within `cutoff`, else None.

    Args:
        num_neighbors: (N,) number of edges per target atom in the backbone's graph.
    """
    per_structure = torch.zeros(batch.num_structures, dtype=torch.long, device=num_neighbors.device)
    per_structure.index_add_(0, batch.batch, num_neighbors.to(torch.long))
    lonely = (per_structure == 0) & (batch.natoms > 1)
    if not bool(lonely.any()):
        return None
    index = int(torch.nonzero(lonely)[0, 0])
    ids = getattr(batch, "ids", None)
    return DataError(
        f"no atom has a neighbour within the {cutoff:g} A cutoff of the '{model}' backbone",
        record=str(ids[index]) if ids else f"structure {index} of the batch",
        fix="check the units of the positions (Angstrom expected), or use a larger cutoff",
    )


def coincident_atoms_error(batch: AtomsBatch, i: int, j: int) -> DataError:
    """A DataError naming two atoms (global indices i, j of the batch) that sit on the same spot."""
    structure = int(batch.batch[i])
    first = int(batch.natoms[:structure].sum())
    ids = getattr(batch, "ids", None)
    return DataError(
        f"atoms {i - first} and {j - first} sit on top of each other (closer than 0.01 A, or images of one atom)",
        record=str(ids[structure]) if ids else f"structure {structure} of the batch",
        fix="remove duplicated atoms from the structure (or give a periodic cell its real lattice vectors)",
    )
