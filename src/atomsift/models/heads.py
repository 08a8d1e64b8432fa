"""Heads: backbone embeddings -> energy (eV), forces (eV/A) or a graph property.

A head is described by a `HeadSpec` (validated, JSON-able, stored in checkpoints) and built with `build_head`:

    spec = HeadSpec(kind="energy", forces="gradient")        # energy MLP summed over atoms, F = -dE/dx
    spec = HeadSpec(kind="energy", forces="direct")          # plus a direct force head on edges / vectors
    spec = HeadSpec(kind="property", reduce="mean", out_dim=1)

Outputs are denormalised inside the head: energy = scale * sum_i mlp(h_i) + shift * N + sum_i atom_ref[Z_i],
forces = force_scale * raw forces; training fills the `scale`, `shift`, `atom_ref` and `force_scale` buffers.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from torch import Tensor, nn

from atomsift.errors import ConfigError, did_you_mean, validation_problems
from atomsift.models.base import BackboneOutput

ForceMode = Literal["direct", "gradient"]
Reduce = Literal["sum", "mean", "max"]


class HeadSpec(BaseModel):
    """Configuration of one named head.

    Attributes:
        kind: "energy" (per-atom MLP reduced over atoms, optionally with forces) or "property".
        forces: for energy heads: None, "direct" (predicted from edge / vector features) or "gradient" (-dE/dx).
        hidden: width of the energy / property MLP's hidden layers (None: the backbone's node width).
        force_hidden: width of the direct-force MLP's hidden layers (None: the backbone's edge width, else node).
        num_layers: number of linear layers in the MLP (1 = a single linear map).
        bias: whether the MLP's last layer has a bias.
        reduce: readout over the atoms of a structure: sum (extensive), mean or max.
        out_dim: outputs per structure of a property head.
    """

    model_config = ConfigDict(extra="forbid")

    kind: Literal["energy", "property"] = "energy"
    forces: ForceMode | None = None
    hidden: int | None = Field(default=None, ge=1)
    force_hidden: int | None = Field(default=None, ge=1)
    num_layers: int = Field(default=2, ge=1)
    bias: bool = True
    reduce: Reduce = "sum"
    out_dim: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _check(self) -> HeadSpec:
        if self.kind == "property" and self.forces is not None:
            raise ValueError("a property head cannot predict forces; use kind='energy'")
        if self.kind == "energy" and self.out_dim != 1:
            raise ValueError("an energy head has out_dim 1")
        return self


def mlp(in_dim: int, hidden: int, out_dim: int, num_layers: int, *, bias: bool = True) -> nn.Sequential:
    """Linear layers with SiLU between them: num_layers = 1 is a single Linear(in_dim, out_dim)."""
    layers: list[nn.Module] = []
    width = in_dim
    for _ in range(num_layers - 1):
        layers += [nn.Linear(width, hidden), nn.SiLU()]
        width = hidden
    layers.append(nn.Linear(width, out_dim, bias=bias))
    return nn.Sequential(*layers)


def reduce_atoms(values: Tensor, batch_index: Tensor, num_structures: int, how: str) -> Tensor:
    """Reduce per-atom rows to per-structure rows.

    Args:
        values: (N, k) per-atom values.
        batch_index: (N,) structure of each atom.
        how: "sum", "mean" or "max".

    Returns:
        (num_structures, k).
    """
    out = values.new_zeros((num_structures, values.shape[1]))
    if how == "sum":
        return out.index_add(0, batch_index, values)
    if how == "mean":
        counts = torch.bincount(batch_index, minlength=num_structures).clamp(min=1).to(values.dtype)
        return out.index_add(0, batch_index, values) / counts[:, None]
    if how == "max":
        index = batch_index[:, None].expand_as(values)
        return out.scatter_reduce(0, index, values, reduce="amax", include_self=False)
    raise ConfigError(f"unknown readout '{how}'", fix="use sum, mean or max")


def forces_from_edges(per_edge: Tensor, edge_unit: Tensor, target: Tensor, num_atoms: int) -> Tensor:
    """Direct forces (N, 3): F_i = sum over edges e with target i of f_e * edge_unit_e.

    Args:
        per_edge: (E,) or (E, 1) force scalar of each edge.
        edge_unit: (E, 3) unit vector of each edge (the backbone's `edge_unit`).
        target: (E,) target atom of each edge.
    """
    vec = per_edge.reshape(-1, 1) * edge_unit
    return vec.new_zeros((num_atoms, 3)).index_add(0, target, vec)


def gradient_forces(energy: Tensor, positions: Tensor, create_graph: bool) -> Tensor:
    """Forces (N, 3) = -d(sum of energies)/d positions; `create_graph` keeps the graph to train on forces."""
    (grad,) = torch.autograd.grad(energy.sum(), positions, create_graph=create_graph)
    return -grad


class EnergyHead(nn.Module):
    """Per-atom MLP reduced over each structure, plus optional direct forces.

    Buffers: scale, shift (eV per atom, added N times), atom_ref (num_elements,) eV per element, force_scale.
    """

    def __init__(self, spec: HeadSpec, node_dim: int, edge_dim: int | None, num_elements: int) -> None:
        super().__init__()
        self.spec = spec
        hidden = spec.hidden or node_dim
        self.energy = mlp(node_dim, hidden, 1, spec.num_layers, bias=spec.bias)
        self.force: nn.Module | None = None
        if spec.forces == "direct":
            self.force = DirectForces(node_dim, edge_dim, spec.force_hidden or edge_dim or node_dim, spec.num_layers)
        self.register_buffer("scale", torch.ones(()))
        self.register_buffer("shift", torch.zeros(()))
        self.register_buffer("atom_ref", torch.zeros(num_elements))
        self.register_buffer("force_scale", torch.ones(()))

    def forward(
        self,
        out: BackboneOutput,
        batch,
        positions: Tensor | None = None,
        create_graph: bool = False,
        mask: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """Energies (B,) eV and, when the spec asks, forces (N, 3) eV/A.

        Args:
            positions: the tensor the backbone read positions from (requires grad) for gradient forces.
            create_graph: keep the graph of -dE/dx so a loss on the forces can be backpropagated (training).
            mask: (B,) bool structures whose gradient forces are wanted (others get zero forces); None: all.
        """
        # the residual is denormalised in the buffers' precision (float32 under bf16 / fp16 autocast), the
        # per-element reference added and reduced in float64: a total of -1e4 eV has a float32 step of 1 meV.
        # A mean readout (fairchem's extensive: false) gives an energy per atom, its reference the mean one.
        per_atom = self.energy(out.node).to(self.atom_ref.dtype) * self.scale + self.shift  # (N, 1)
        wide = torch.float32 if per_atom.device.type == "mps" else torch.float64  # MPS has no float64
        per_atom = per_atom.to(wide) + self.atom_ref.to(wide)[batch.numbers][:, None]
        energy = reduce_atoms(per_atom, batch.batch, batch.num_structures, self.spec.reduce)[:, 0]
        result = {"energy": energy}
        if self.spec.forces == "direct":
            assert self.force is not None
            result["forces"] = self.force(out, batch.num_atoms).to(self.force_scale.dtype) * self.force_scale
        elif self.spec.forces == "gradient":
            if positions is None or not positions.requires_grad:
                raise RuntimeError("gradient forces need positions with requires_grad set before the backbone ran")
            result["forces"] = gradient_forces(energy if mask is None else energy[mask], positions, create_graph)
        return result


class DirectForces(nn.Module):
    """Forces predicted directly: per-edge scalars times edge unit vectors, or a linear map of vector features.

    Edge models (GemNet-OC): F_i = sum over edges e with target i of f(edge_e) * edge_unit_e.
    Vector models (PaiNN): F_i = sum_c w_c v_i[:, c] (equivariant, no bias).
    """

    def __init__(self, node_dim: int, edge_dim: int | None, hidden: int, num_layers: int) -> None:
        super().__init__()
        self.edge_mlp = mlp(edge_dim, hidden, 1, num_layers, bias=False) if edge_dim else None
        self.vector_weight = None if edge_dim else nn.Linear(node_dim, 1, bias=False)

    def forward(self, out: BackboneOutput, num_atoms: int) -> Tensor:
        """(N, 3) forces in normalised units."""
        if self.edge_mlp is not None:
            if out.edge is None or out.edge_index is None or out.edge_unit is None:
                raise ConfigError("this direct force head reads edge embeddings, which the backbone did not return")
            return forces_from_edges(self.edge_mlp(out.edge), out.edge_unit, out.edge_index[1], num_atoms)
        if out.vector is None:
            raise ConfigError(
                "direct forces need edge embeddings or vector features, and this backbone returns neither",
                fix="use forces='gradient'",
            )
        assert self.vector_weight is not None
        return self.vector_weight(out.vector).squeeze(-1)


class PropertyHead(nn.Module):
    """Per-atom MLP reduced (sum / mean / max) to (B, out_dim); value = scale * reduced + shift."""

    def __init__(self, spec: HeadSpec, node_dim: int) -> None:
        super().__init__()
        self.spec = spec
        self.mlp = mlp(node_dim, spec.hidden or node_dim, spec.out_dim, spec.num_layers, bias=spec.bias)
        self.register_buffer("scale", torch.ones(spec.out_dim))
        self.register_buffer("shift", torch.zeros(spec.out_dim))

    def forward(
        self,
        out: BackboneOutput,
        batch,
        positions: Tensor | None = None,
        create_graph: bool = False,
        mask: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """(B, out_dim) property values."""
        values = self.mlp(out.node).to(self.scale.dtype)  # float32 under 16-bit autocast
        reduced = reduce_atoms(values, batch.batch, batch.num_structures, self.spec.reduce)
        return {"property": reduced * self.scale + self.shift}


def build_head(spec: HeadSpec | dict, node_dim: int, edge_dim: int | None, num_elements: int) -> nn.Module:
    """Build the head a spec describes, for a backbone with these widths."""
    if isinstance(spec, dict):
        spec = parse_head_spec(spec)
    if spec.kind == "energy":
        return EnergyHead(spec, node_dim, edge_dim, num_elements)
    return PropertyHead(spec, node_dim)


def parse_head_spec(value: dict, name: str = "head") -> HeadSpec:
    """Validate a head configuration; unknown keys and bad values give a ConfigError naming the head."""
    from pydantic import ValidationError

    try:
        return HeadSpec.model_validate(value)
    except ValidationError as exc:
        problems = validation_problems(exc)
        unknown = [str(e["loc"][-1]) for e in exc.errors() if e["type"] == "extra_forbidden" and e["loc"]]
        raise ConfigError(
            f"invalid configuration for head '{name}': {problems}",
            fix=did_you_mean(unknown, HeadSpec.model_fields) + "allowed keys: " + ", ".join(HeadSpec.model_fields),
        ) from None
