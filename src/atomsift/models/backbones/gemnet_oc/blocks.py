"""GemNet-OC message-passing blocks: interaction block (triplet, quadruplet, atom-edge, edge-atom and
atom-atom interactions); the atom update and output blocks are in outputs.py.

Submodule names equal fairchem-core 1.10's (``trip_interaction.mlp_cbf.bilinear.linear.weight``,
``out_blocks.0.seq_energy_pre.0.linear.weight``, ...), so fairchem state_dicts load by key.

Notation: an edge ``c -> a`` has source c and target a; ``m`` holds one embedding per directed edge of
the main graph, ``h`` one per atom. ``id_swap[e]`` is the index of the reverse edge of ``e``.
"""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor, nn

from atomsift.models.backbones.gemnet_oc.layers import (
    INV_SQRT_2,
    Dense,
    EdgeEmbedding,
    EfficientInteractionBilinear,
    ResidualLayer,
    fused_dense,
)
from atomsift.models.backbones.gemnet_oc.outputs import AtomUpdateBlock, OutputBlock, scatter_sum
from atomsift.models.backbones.gemnet_oc.quadruplets import FactoredQuadBasis
from atomsift.models.backbones.gemnet_oc.scaling import ScaleFactor

__all__ = [
    "AtomUpdateBlock",
    "InteractionBlock",
    "OutputBlock",
    "PairInteraction",
    "QuadrupletInteraction",
    "TripletInteraction",
    "scatter_sum",
]


def _residual_stack(units: int, count: int, activation: str | None) -> nn.ModuleList:
    return nn.ModuleList([ResidualLayer(units, activation=activation) for _ in range(count)])


class TripletInteraction(nn.Module):
    """Message passing over triplets ``b -> a <- c``: the message of edge ``b -> a`` (or of atom b)
    is modulated by the radial basis of ``b -> a`` and the circular basis of the angle c-a-b, and summed
    into edge ``c -> a`` (or, with a second aggregation, into atom a).

    Args:
        emb_size_in: size of the incoming embeddings (edge size, or atom size for atom-to-edge).
        emb_size_out: size of the output embeddings.
        emb_size_trip_in: down-projected size before the bilinear layer.
        emb_size_trip_out: size after the bilinear layer.
        emb_size_rbf: size of the (shared) radial basis projection.
        emb_size_cbf: size of the (shared) circular basis projection.
        symmetric_mp: also update the reverse edge (two up-projections, merged through id_swap).
        swap_output: without symmetric_mp, write the result to the reverse edge.
        activation: activation of the dense layers.
    """

    def __init__(
        self,
        emb_size_in: int,
        emb_size_out: int,
        emb_size_trip_in: int,
        emb_size_trip_out: int,
        emb_size_rbf: int,
        emb_size_cbf: int,
        symmetric_mp: bool = True,
        swap_output: bool = True,
        activation: str | None = None,
    ) -> None:
        super().__init__()
        self.symmetric_mp = symmetric_mp
        self.swap_output = swap_output
        self.dense_ba = Dense(emb_size_in, emb_size_in, activation=activation, bias=False)
        self.mlp_rbf = Dense(emb_size_rbf, emb_size_in, activation=None, bias=False)
        self.scale_rbf = ScaleFactor()
        self.mlp_cbf = EfficientInteractionBilinear(emb_size_trip_in, emb_size_cbf, emb_size_trip_out)
        self.scale_cbf_sum = ScaleFactor()
        self.down_projection = Dense(emb_size_in, emb_size_trip_in, activation=activation, bias=False)
        self.up_projection_ca = Dense(emb_size_trip_out, emb_size_out, activation=activation, bias=False)
        if symmetric_mp:
            self.up_projection_ac = Dense(emb_size_trip_out, emb_size_out, activation=activation, bias=False)

    def forward(
        self,
        m: Tensor,
        bases: dict[str, Any],
        idx: dict[str, Tensor],
        id_swap: Tensor,
        expand_idx: Tensor | None = None,
        idx_agg2: Tensor | None = None,
        idx_agg2_inner: Tensor | None = None,
        agg2_out_size: int | None = None,
        x_ba: Tensor | None = None,
    ) -> Tensor:
        """Args:
            m: (E_in, emb_size_in) input embeddings (edges, or atoms when ``expand_idx`` is given).
            bases: {"rad": (E_b, emb_size_rbf), "cir": (rad_W1, sph) from BasisEmbedding}.
            idx: triplet indices {"in", "out", "out_agg"} (T,).
            id_swap: (E,) reverse edge of each main-graph edge.
            expand_idx: (E_b,) atom of each edge b->a (atom-to-edge: atoms are expanded to edges).
            idx_agg2, idx_agg2_inner, agg2_out_size: second aggregation edges -> atoms (edge-to-atom).
            x_ba: ``dense_ba(m)`` when the caller computed it already (fused with other layers reading m).

        Returns:
            (E, emb_size_out) edge embeddings, or (agg2_out_size, emb_size_out) atom embeddings.
        """
        if x_ba is None:
            x_ba = self.dense_ba(m)
        if expand_idx is not None:
            x_ba = x_ba.index_select(0, expand_idx)
        x_ba = self.scale_rbf(x_ba * self.mlp_rbf(bases["rad"]), ref=x_ba)
        x_ba = self.down_projection(x_ba)
        x_ba = x_ba.index_select(0, idx["in"])  # (T, emb_size_trip_in)
        x = self.mlp_cbf(
            basis=bases["cir"],
            m=x_ba,
            idx_agg_outer=idx["out"],
            idx_agg_inner=idx["out_agg"],
            idx_agg2_outer=idx_agg2,
            idx_agg2_inner=idx_agg2_inner,
            agg2_out_size=agg2_out_size,
        )
        x = self.scale_cbf_sum(x, ref=x_ba)
        if self.symmetric_mp:
            x_ca, x_ac = fused_dense(x, [self.up_projection_ca, self.up_projection_ac])
            x_ac = x_ac.index_select(0, id_swap)  # the same message, written to the reverse edge
            return (x_ca + x_ac).mul_(INV_SQRT_2)
        if self.swap_output:
            x = x.index_select(0, id_swap)
        return self.up_projection_ca(x)


class QuadrupletInteraction(nn.Module):
    """Message passing over quadruplets ``d -> b -> a <- c``: the message of edge ``d -> b`` passes the
    radial basis of d-b, the circular basis of (d_ba, angle a-b-d) and the spherical basis of
    (d_ca, angle c-a-b, dihedral c-a-b-d), and is summed into edge ``c -> a``.

    Args:
        emb_size_edge: edge embedding size.
        emb_size_quad_in: down-projected size before the bilinear layer.
        emb_size_quad_out: size after the bilinear layer.
        emb_size_rbf, emb_size_cbf, emb_size_sbf: sizes of the shared basis projections.
        symmetric_mp: also update the reverse edge.
        activation: activation of the dense layers.
    """

    def __init__(
        self,
        emb_size_edge: int,
        emb_size_quad_in: int,
        emb_size_quad_out: int,
        emb_size_rbf: int,
        emb_size_cbf: int,
        emb_size_sbf: int,
        symmetric_mp: bool = True,
        activation: str | None = None,
    ) -> None:
        super().__init__()
        self.symmetric_mp = symmetric_mp
        self.dense_db = Dense(emb_size_edge, emb_size_edge, activation=activation, bias=False)
        self.mlp_rbf = Dense(emb_size_rbf, emb_size_edge, activation=None, bias=False)
        self.scale_rbf = ScaleFactor()
        self.mlp_cbf = Dense(emb_size_cbf, emb_size_quad_in, activation=None, bias=False)
        self.scale_cbf = ScaleFactor()
        self.mlp_sbf = EfficientInteractionBilinear(emb_size_quad_in, emb_size_sbf, emb_size_quad_out)
        self.scale_sbf_sum = ScaleFactor()
        self.down_projection = Dense(emb_size_edge, emb_size_quad_in, activation=activation, bias=False)
        self.up_projection_ca = Dense(emb_size_quad_out, emb_size_edge, activation=activation, bias=False)
        if symmetric_mp:
            self.up_projection_ac = Dense(emb_size_quad_out, emb_size_edge, activation=activation, bias=False)

    def forward(
        self, m: Tensor, bases: dict[str, Any], idx: dict[str, Any], id_swap: Tensor, x_db: Tensor | None = None
    ) -> Tensor:
        """Args:
            m: (E, emb_size_edge) edge embeddings.
            bases: {"rad": (E, emb_size_rbf), "cir": (T_in, emb_size_cbf), "sph": (rad_W1, sph)}.
            idx: quadruplet indices from get_quadruplets.
            id_swap: (E,) reverse edge of each edge.
            x_db: ``dense_db(m)`` when the caller computed it already (fused with other layers reading m).

        Returns:
            (E, emb_size_edge).
        """
        if x_db is None:
            x_db = self.dense_db(m)
        x_db = self.scale_rbf(x_db * self.mlp_rbf(bases["rad"]), ref=x_db)
        x_db = self.down_projection(x_db)
        x_db = x_db.index_select(0, idx["triplet_in"]["in"])  # (T_in, emb_size_quad_in), one per triplet d->b->a
        x_db = self.scale_cbf(x_db * self.mlp_cbf(bases["cir"]), ref=x_db)
        sph = bases["sph"]
        if isinstance(sph, FactoredQuadBasis):
            x = self.mlp_sbf.combine(sph.rad_W1, sph.aggregate(x_db))
            # the per-quadruplet messages are only formed when a scale factor is being fitted on them
            ref = x_db.index_select(0, idx["trip_in_to_quad"]) if self.scale_sbf_sum.stats is not None else None
        else:
            ref = x_db = x_db.index_select(0, idx["trip_in_to_quad"])  # (Q, emb_size_quad_in)
            x = self.mlp_sbf(sph, x_db, idx["out"], idx["out_agg"])
        x = self.scale_sbf_sum(x, ref=ref)
        if self.symmetric_mp:
            x_ca, x_ac = fused_dense(x, [self.up_projection_ca, self.up_projection_ac])
            x_ac = x_ac.index_select(0, id_swap)
            return (x_ca + x_ac).mul_(INV_SQRT_2)
        return self.up_projection_ca(x)


class PairInteraction(nn.Module):
    """Atom-to-atom message passing on the a2a graph, with a bilinear layer over the radial basis.

    Args:
        emb_size_atom: atom embedding size.
        emb_size_pair_in: down-projected size before the bilinear layer.
        emb_size_pair_out: size after the bilinear layer.
        emb_size_rbf: size of the radial basis projection.
        activation: activation of the dense layers.
    """

    def __init__(
        self,
        emb_size_atom: int,
        emb_size_pair_in: int,
        emb_size_pair_out: int,
        emb_size_rbf: int,
        activation: str | None = None,
    ) -> None:
        super().__init__()
        self.bilinear = Dense(emb_size_rbf * emb_size_pair_in, emb_size_pair_out, activation=None, bias=False)
        self.scale_rbf_sum = ScaleFactor()
        self.down_projection = Dense(emb_size_atom, emb_size_pair_in, activation=activation, bias=False)
        self.up_projection = Dense(emb_size_pair_out, emb_size_atom, activation=activation, bias=False)

    def forward(
        self, h: Tensor, rad_basis: Tensor, edge_index: Tensor, target_neighbor_idx: Tensor, x_b: Tensor | None = None
    ) -> Tensor:
        """Args:
            h: (N, emb_size_atom) atom embeddings.
            rad_basis: (N, emb_size_rbf, Kmax) radial basis padded per target atom.
            edge_index: (2, E_a2a) [source, target] of the a2a graph (sorted by target).
            target_neighbor_idx: (E_a2a,) slot of each edge among its target's edges.
            x_b: ``down_projection(h)`` when the caller computed it already (fused with other layers reading h).

        Returns:
            (N, emb_size_atom).
        """
        num_atoms = h.shape[0]
        if x_b is None:
            x_b = self.down_projection(h)
        x_ba = x_b.index_select(0, edge_index[0])  # (E_a2a, emb_size_pair_in)
        kmax = int(target_neighbor_idx.max()) + 1 if target_neighbor_idx.numel() > 0 else 0
        # padded (N, Kmax, emb_size_pair_in) through one flat row index (cheaper than a two-index put)
        x2 = x_ba.new_zeros(num_atoms * kmax, x_ba.shape[-1])
        x2.index_copy_(0, edge_index[1] * kmax + target_neighbor_idx, x_ba)
        x2 = x2.view(num_atoms, kmax, x_ba.shape[-1])
        x_ba2 = rad_basis @ x2  # (N, emb_size_rbf, emb_size_pair_in)
        h_out = self.bilinear(x_ba2.reshape(num_atoms, -1))
        h_out = self.scale_rbf_sum(h_out, ref=x_ba)
        return self.up_projection(h_out)


class InteractionBlock(nn.Module):
    """One GemNet-OC interaction block: edge updates from triplets (+ quadruplets, + atom-to-edge),
    atom updates (+ edge-to-atom, + atom-to-atom), then edges refreshed from the new atom embeddings.

    Args: embedding sizes as in GemNetOC (``emb_size_a2a_*`` = GemNetOC's ``emb_size_aint_*``),
        num_before_skip / num_after_skip (edge residual layers around the skip connection),
        num_concat (residual layers after the atom-to-edge concatenation), num_atom (atom update layers),
        num_atom_emb_layers (residual layers on the atom embedding), the four interaction switches, activation.
    """

    def __init__(
        self,
        emb_size_atom: int,
        emb_size_edge: int,
        emb_size_trip_in: int,
        emb_size_trip_out: int,
        emb_size_quad_in: int,
        emb_size_quad_out: int,
        emb_size_a2a_in: int,
        emb_size_a2a_out: int,
        emb_size_rbf: int,
        emb_size_cbf: int,
        emb_size_sbf: int,
        num_before_skip: int,
        num_after_skip: int,
        num_concat: int,
        num_atom: int,
        num_atom_emb_layers: int = 0,
        quad_interaction: bool = False,
        atom_edge_interaction: bool = False,
        edge_atom_interaction: bool = False,
        atom_interaction: bool = False,
        activation: str | None = None,
    ) -> None:
        super().__init__()
        self.dense_ca = Dense(emb_size_edge, emb_size_edge, activation=activation, bias=False)
        self.trip_interaction = TripletInteraction(
            emb_size_edge,
            emb_size_edge,
            emb_size_trip_in,
            emb_size_trip_out,
            emb_size_rbf,
            emb_size_cbf,
            symmetric_mp=True,
            swap_output=True,
            activation=activation,
        )
        self.quad_interaction = (
            QuadrupletInteraction(
                emb_size_edge,
                emb_size_quad_in,
                emb_size_quad_out,
                emb_size_rbf,
                emb_size_cbf,
                emb_size_sbf,
                symmetric_mp=True,
                activation=activation,
            )
            if quad_interaction
            else None
        )
        self.atom_edge_interaction = (
            TripletInteraction(
                emb_size_atom,
                emb_size_edge,
                emb_size_trip_in,
                emb_size_trip_out,
                emb_size_rbf,
                emb_size_cbf,
                symmetric_mp=True,
                swap_output=True,
                activation=activation,
            )
            if atom_edge_interaction
            else None
        )
        self.edge_atom_interaction = (
            TripletInteraction(
                emb_size_edge,
                emb_size_atom,
                emb_size_trip_in,
                emb_size_trip_out,
                emb_size_rbf,
                emb_size_cbf,
                symmetric_mp=False,
                swap_output=False,
                activation=activation,
            )
            if edge_atom_interaction
            else None
        )
        self.atom_interaction = (
            PairInteraction(emb_size_atom, emb_size_a2a_in, emb_size_a2a_out, emb_size_rbf, activation=activation)
            if atom_interaction
            else None
        )
        self.layers_before_skip = _residual_stack(emb_size_edge, num_before_skip, activation)
        self.layers_after_skip = _residual_stack(emb_size_edge, num_after_skip, activation)
        self.atom_emb_layers = _residual_stack(emb_size_atom, num_atom_emb_layers, activation)
        self.atom_update = AtomUpdateBlock(emb_size_atom, emb_size_edge, emb_size_rbf, num_atom, activation=activation)
        self.concat_layer = EdgeEmbedding(emb_size_atom, emb_size_edge, emb_size_edge, activation=activation)
        self.residual_m = _residual_stack(emb_size_edge, num_concat, activation)
        # the merged sums are divided by sqrt(number of summands) to keep their variance
        self.inv_sqrt_num_eint = 1.0 / math.sqrt(2.0 + quad_interaction + atom_edge_interaction)
        self.inv_sqrt_num_aint = 1.0 / math.sqrt(1.0 + edge_atom_interaction + atom_interaction)

    def forward(
        self,
        h: Tensor,
        m: Tensor,
        bases_qint: dict[str, Any],
        bases_e2e: dict[str, Any],
        bases_a2e: dict[str, Any],
        bases_e2a: dict[str, Any],
        basis_a2a_rad: Tensor | None,
        basis_atom_update: Tensor,
        edge_index_main: Tensor,
        a2ee2a_graph: dict[str, Tensor],
        a2a_graph: dict[str, Tensor],
        id_swap: Tensor,
        trip_idx_e2e: dict[str, Tensor],
        trip_idx_a2e: dict[str, Tensor],
        trip_idx_e2a: dict[str, Tensor],
        quad_idx: dict[str, Any],
    ) -> tuple[Tensor, Tensor]:
        """Update atom embeddings h (N, emb_size_atom) and edge embeddings m (E, emb_size_edge)."""
        num_atoms = h.shape[0]
        # the first layers of every branch that reads m, as one matrix product
        readers = [self.dense_ca, self.trip_interaction.dense_ba]
        if self.quad_interaction is not None:
            readers.append(self.quad_interaction.dense_db)
        if self.edge_atom_interaction is not None:
            readers.append(self.edge_atom_interaction.dense_ba)
        m_proj = fused_dense(m, readers)
        x = m_proj[0] + self.trip_interaction(m, bases_e2e, trip_idx_e2e, id_swap, x_ba=m_proj[1])
        if self.quad_interaction is not None:
            x.add_(self.quad_interaction(m, bases_qint, quad_idx, id_swap, x_db=m_proj[2]))
        # the first layers of the branches that read h, as one matrix product
        h_readers = []
        if self.atom_edge_interaction is not None:
            h_readers.append(self.atom_edge_interaction.dense_ba)
        if self.atom_interaction is not None:
            h_readers.append(self.atom_interaction.down_projection)
        h_proj = fused_dense(h, h_readers) if h_readers else []
        if self.atom_edge_interaction is not None:
            x.add_(
                self.atom_edge_interaction(
                    h, bases_a2e, trip_idx_a2e, id_swap, expand_idx=a2ee2a_graph["edge_index"][0], x_ba=h_proj[0]
                )
            )
        x.mul_(self.inv_sqrt_num_eint)

        h_new = h
        if self.edge_atom_interaction is not None:
            h_new = h_new + self.edge_atom_interaction(
                m,
                bases_e2a,
                trip_idx_e2a,
                id_swap,
                idx_agg2=a2ee2a_graph["edge_index"][1],
                idx_agg2_inner=a2ee2a_graph["target_neighbor_idx"],
                agg2_out_size=num_atoms,
                x_ba=m_proj[-1],
            )
        if self.atom_interaction is not None:
            h_new = h_new + self.atom_interaction(
                h, basis_a2a_rad, a2a_graph["edge_index"], a2a_graph["target_neighbor_idx"], x_b=h_proj[-1]
            )
        h = h_new * self.inv_sqrt_num_aint

        # edge update with a skip connection
        for layer in self.layers_before_skip:
            x = layer(x)
        m = (m + x).mul_(INV_SQRT_2)
        for layer in self.layers_after_skip:
            m = layer(m)

        # atom update with a skip connection
        for layer in self.atom_emb_layers:
            h = layer(h)
        h = (h + self.atom_update(h, m, basis_atom_update, edge_index_main[1])).mul_(INV_SQRT_2)

        # edges refreshed from the updated atoms
        m2 = self.concat_layer(h, m, edge_index_main)
        for layer in self.residual_m:
            m2 = layer(m2)
        m = (m + m2).mul_(INV_SQRT_2)
        return h, m
