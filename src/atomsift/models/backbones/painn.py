"""PaiNN: polarizable atom interaction neural network (Schuett, Unke, Gastegger, ICML 2021).

    from atomsift.models.backbones.painn import PaiNN
    model = PaiNN(hidden=128, num_layers=3, cutoff=5.0)
    out = model(batch)             # batch: atomsift.graph.AtomsBatch
    out.node                       # (N, hidden) rotation-invariant scalar features s
    out.vector                     # (N, 3, hidden) rotation-equivariant vector features v

Each atom carries scalar features s (N, F) and vector features v (N, 3, F), v starting at zero. A layer is a
message block (continuous-filter convolution over the neighbour graph: scalars from scalars; vectors from
neighbour vectors and from the edge directions) followed by an update block (per-atom mixing of scalars and
vector norms / dot products). Radial basis: sin(n pi r / rc) / r, n = 1..num_rbf, times a cosine cutoff.
All work is per atom or per edge in flat tensors (channels last); sums over neighbours use `index_add_`.
"""

from __future__ import annotations

import math
import numbers
from typing import Any

import torch
from torch import Tensor, nn

from atomsift.errors import ConfigError
from atomsift.graph.batch import AtomsBatch, graph_groups, sub_batch
from atomsift.graph.neighbors import NeighborGraph, merge_graphs, radius_graph
from atomsift.models.base import Backbone, BackboneOutput, coincident_atoms_error, no_neighbours_error

_NORM_EPS = 1e-8  # added under the square root of |v|^2: keeps the norm differentiable (twice) at v = 0


class ShiftedSoftplus(nn.Module):
    """softplus(x) - log(2), SchNet's activation (zero at x = 0)."""

    def forward(self, x: Tensor) -> Tensor:
        return nn.functional.softplus(x) - math.log(2.0)


ACTIVATIONS: dict[str, type[nn.Module]] = {
    "silu": nn.SiLU,
    "ssp": ShiftedSoftplus,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
}


def _linear(n_in: int, n_out: int, bias: bool = True) -> nn.Linear:
    """nn.Linear with Xavier-uniform weights and zero bias (the initialisation of the PaiNN reference code)."""
    layer = nn.Linear(n_in, n_out, bias=bias)
    nn.init.xavier_uniform_(layer.weight)
    if bias:
        nn.init.zeros_(layer.bias)
    return layer


def _is_int(value: Any) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


class PaiNNMessage(nn.Module):
    """Message block: ds_i = sum_j phi_s(s_j) W_s(r_ij); dv_i = sum_j phi_vv(s_j) W_vv(r_ij) v_j
    + phi_vs(s_j) W_vs(r_ij) r_ij / |r_ij|."""

    def __init__(self, hidden: int, activation: str) -> None:
        super().__init__()
        self.hidden = hidden
        self.context = nn.Sequential(_linear(hidden, hidden), ACTIVATIONS[activation](), _linear(hidden, 3 * hidden))

    def forward(
        self,
        s: Tensor,
        v: Tensor | None,
        basis: Tensor,
        filter_weight: Tensor,
        unit: Tensor,
        source: Tensor,
        target: Tensor,
    ) -> tuple[Tensor, Tensor]:
        """Residual updates (ds (N, F), dv (N, 3, F)).

        Args:
            s: (N, F) scalar features.
            v: (N, 3, F) vector features, or None when they are all zero (the first layer).
            basis: (E, R + 1) radial basis times the cutoff function, with the cutoff function itself appended
                (so that the filter's bias is cut off too).
            filter_weight: (3F, R + 1) this layer's filters [W_s; W_vs; W_vv] (weights and bias column).
            unit: (E, 3) unit vectors from the centre (target) to the neighbour (source).
            source, target: (E,) neighbour j and centre i of each edge.
        """
        f = self.hidden
        # split per atom (N rows) and filter each part separately: no (E, 3F) tensor is built and taken apart
        phi_s, phi_vs, phi_vv = self.context(s).split(f, dim=-1)  # (N, F) each
        w_s, w_vs, w_vv = filter_weight.split(f, dim=0)  # (F, R + 1) each
        ds_e = phi_s.index_select(0, source) * (basis @ w_s.T)  # (E, F)
        ds = ds_e.new_zeros(s.shape).index_add_(0, target, ds_e)  # ds_e's dtype: bf16 / fp16 under autocast
        dv_e = (phi_vs.index_select(0, source) * (basis @ w_vs.T)).unsqueeze(1) * unit.unsqueeze(2)  # (E, 3, F)
        if v is not None:
            u = phi_vv.unsqueeze(1) * v  # (N, 3, F)
            dv_e = dv_e + (basis @ w_vv.T).unsqueeze(1) * u.index_select(0, source)
        dv = dv_e.new_zeros(s.shape[0], 3, f).index_add_(0, target, dv_e)
        return ds, dv


class PaiNNUpdate(nn.Module):
    """Update block: per-atom coupling of s with the norms and scalar products of linear mixes of v."""

    def __init__(self, hidden: int, activation: str) -> None:
        super().__init__()
        self.hidden = hidden
        self.vector_mix = _linear(hidden, 2 * hidden, bias=False)
        self.context = nn.Sequential(
            _linear(2 * hidden, hidden), ACTIVATIONS[activation](), _linear(hidden, 3 * hidden)
        )

    def forward(self, s: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Residual updates (ds (N, F), dv (N, 3, F)) from s (N, F) and v (N, 3, F)."""
        f = self.hidden
        v_u, v_w = self.vector_mix(v).split(f, dim=-1)  # (N, 3, F) each
        norm = torch.sqrt(v_u.square().sum(dim=1) + _NORM_EPS)  # (N, F)
        a_ss, a_vv, a_sv = self.context(torch.cat([s, norm], dim=-1)).split(f, dim=-1)
        ds = a_ss + a_sv * (v_u * v_w).sum(dim=1)
        dv = a_vv.unsqueeze(1) * v_w
        return ds, dv


class PaiNN(Backbone):
    """PaiNN backbone: scalar node embeddings (N, hidden) and equivariant vector features (N, 3, hidden).

    Args:
        hidden: feature channels F of s and v.
        num_layers: message + update layers.
        num_rbf: radial basis functions sin(n pi r / cutoff) / r.
        cutoff: neighbour cutoff, A (periodic images included where batch.pbc says so).
        max_neighbors: keep at most this many nearest neighbours per atom; None keeps all within the cutoff.
        num_elements: size of the element table; atomic numbers 1..num_elements - 1 are embedded
            (default 119: hydrogen to oganesson).
        shared_filters: one radial filter network for all layers instead of one per layer.
        activation: one of 'silu', 'ssp' (shifted softplus), 'gelu', 'tanh'.
    """

    name = "painn"

    def __init__(
        self,
        hidden: int = 128,
        num_layers: int = 3,
        num_rbf: int = 20,
        cutoff: float = 5.0,
        max_neighbors: int | None = None,
        num_elements: int = 119,
        shared_filters: bool = False,
        activation: str = "silu",
    ) -> None:
        super().__init__()
        for key, value, minimum in (
            ("hidden", hidden, 1),
            ("num_layers", num_layers, 1),
            ("num_rbf", num_rbf, 1),
            ("num_elements", num_elements, 2),
            ("max_neighbors", 1 if max_neighbors is None else max_neighbors, 1),
        ):
            if not _is_int(value) or value < minimum:
                raise ConfigError(
                    f"PaiNN {key} must be an integer >= {minimum}, got {value!r}",
                    fix=f"set {key} to an integer >= {minimum}"
                    + (" (or None to keep every neighbour within the cutoff)" if key == "max_neighbors" else ""),
                )
        if isinstance(cutoff, bool) or not isinstance(cutoff, numbers.Real) or not 0 < cutoff < math.inf:
            raise ConfigError(f"PaiNN cutoff must be a positive number (A), got {cutoff!r}", fix="set e.g. cutoff=5.0")
        if activation not in ACTIVATIONS:
            raise ConfigError(
                f"PaiNN activation {activation!r} is unknown",
                fix=f"use one of: {', '.join(ACTIVATIONS)}",
            )
        self.hidden = int(hidden)
        self.num_layers = int(num_layers)
        self.num_rbf = int(num_rbf)
        self.cutoff = float(cutoff)
        self.max_neighbors = None if max_neighbors is None else int(max_neighbors)
        self.num_elements = int(num_elements)
        self.shared_filters = bool(shared_filters)
        self.activation = activation
        self.node_dim = self.hidden
        self.edge_dim = None

        f = self.hidden
        self.embedding = nn.Embedding(self.num_elements, f)
        # n pi / rc for n = 1..num_rbf, 1/A; a buffer so it follows .to(dtype/device), not saved in checkpoints
        self.register_buffer(
            "rbf_frequencies",
            torch.arange(1, self.num_rbf + 1, dtype=torch.get_default_dtype()) * (math.pi / self.cutoff),
            persistent=False,
        )
        self.filter_net = _linear(self.num_rbf, 3 * f if self.shared_filters else self.num_layers * 3 * f)
        self.interactions = nn.ModuleList(PaiNNMessage(f, activation) for _ in range(self.num_layers))
        self.mixing = nn.ModuleList(PaiNNUpdate(f, activation) for _ in range(self.num_layers))

    def hparams(self) -> dict[str, Any]:
        return {
            "hidden": self.hidden,
            "num_layers": self.num_layers,
            "num_rbf": self.num_rbf,
            "cutoff": self.cutoff,
            "max_neighbors": self.max_neighbors,
            "num_elements": self.num_elements,
            "shared_filters": self.shared_filters,
            "activation": self.activation,
        }

    def radial_basis(self, distance: Tensor) -> Tensor:
        """(E, num_rbf + 1): sin(n pi r / rc) / r times the cosine cutoff, then the cutoff itself; r (E,) in A.

        The filters are W(r) = (rbf(r) A^T + b) fcut(r) = [rbf fcut, fcut] [A, b]^T: one matrix product per
        layer, no separate (E, 3F) cutoff multiplication.
        """
        d = distance.unsqueeze(-1)
        rbf = torch.sin(d * self.rbf_frequencies) / d  # (E, num_rbf)
        fcut = 0.5 * (torch.cos(d * (math.pi / self.cutoff)) + 1.0) * (d < self.cutoff).to(d.dtype)
        return torch.cat([rbf * fcut, fcut], dim=-1)

    def filter_weights(self) -> list[Tensor]:
        """Per layer (3F, num_rbf + 1): the filter network's weight with its bias as the last column."""
        weight = torch.cat([self.filter_net.weight, self.filter_net.bias.unsqueeze(-1)], dim=-1)
        if self.shared_filters:
            return [weight] * self.num_layers
        return list(weight.split(3 * self.hidden, dim=0))

    def neighbor_graph(self, batch: AtomsBatch) -> NeighborGraph:
        """The neighbour graph: the backbone's cutoff and limit, or each dataset's graph settings in the batch.

        The radial filters still end at the backbone's own cutoff, so a dataset cutoff beyond it adds edges
        that carry nothing.
        """
        parts = []
        for settings, structures in graph_groups(batch):
            sub, atoms = (batch, None) if structures is None else sub_batch(batch, structures)
            if settings is None:
                parts.append((radius_graph(sub, self.cutoff, self.max_neighbors), atoms))
            else:
                pbc = None if settings.pbc else False
                parts.append((radius_graph(sub, settings.cutoff, settings.max_neighbors, pbc=pbc), atoms))
        return merge_graphs(parts, batch.num_atoms)

    def forward(self, batch: AtomsBatch) -> BackboneOutput:
        """Embed a batch: node (N, hidden) scalars, vector (N, 3, hidden) equivariant features."""
        self.check_batch(batch)
        graph = self.neighbor_graph(batch)
        error = no_neighbours_error(batch, graph.num_neighbors, self.cutoff, self.name)
        if error is not None:
            raise error

        dtype = self.embedding.weight.dtype
        distance = graph.distance.to(dtype)
        if distance.numel() and not bool((distance > 0).all()):
            edge = int(torch.nonzero(distance <= 0)[0, 0])
            j, i = (int(a) for a in graph.edge_index[:, edge])
            raise coincident_atoms_error(batch, i, j)
        unit = graph.vector.to(dtype) / distance.unsqueeze(-1)  # (E, 3), centre -> neighbour
        source, target = graph.edge_index[0], graph.edge_index[1]
        basis = self.radial_basis(distance)

        s = self.embedding(batch.numbers)  # (N, F)
        v: Tensor | None = None  # (N, 3, F); zero before the first message block
        for message, update, weight in zip(self.interactions, self.mixing, self.filter_weights()):
            ds, dv = message(s, v, basis, weight, unit, source, target)
            s = s + ds
            v = dv if v is None else v + dv
            ds, dv = update(s, v)
            s = s + ds
            v = v + dv
        assert v is not None  # num_layers >= 1
        return BackboneOutput(node=s, vector=v)
