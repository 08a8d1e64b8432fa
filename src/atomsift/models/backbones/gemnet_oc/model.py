"""GemNet-OC backbone (Gasteiger et al. 2022) in pure PyTorch, weight-compatible with fairchem-core 1.10.

    from atomsift.models.backbones.gemnet_oc.model import GemNetOC
    model = GemNetOC.from_preset("S")            # JMP-S sizes (presets.py); "L", "small", "tiny"
    out = model(batch)                           # batch: atomsift.graph.AtomsBatch
    out.node    # (N, emb_size_atom) per-atom features after fairchem's out_mlp_E
    out.edge    # (E, emb_size_edge) per-edge features after out_mlp_F (direct_forces models), else None
    out.edge_unit  # (E, 3) unit vector source -> target: F[target] += f_e * edge_unit[e]

The heads (fairchem's ``out_energy`` / ``out_forces``) are outside the backbone; compat.py has modules that
apply them as fairchem does. Module names (and so state_dict keys) equal fairchem's GemNetOC without
``out_energy`` and ``out_forces``. Hyperparameters keep fairchem's names and meanings, except that
``num_elements`` counts embedded elements (atomic numbers 1..num_elements), so the Backbone attribute
``num_elements`` (exclusive upper bound) is one larger.

For gradient forces, set ``batch.positions.requires_grad_(True)`` before calling the backbone.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from atomsift.errors import ConfigError
from atomsift.models.backbones.gemnet_oc.bases import CircularBasisLayer, RadialBasis, SphericalBasisLayer
from atomsift.models.backbones.gemnet_oc.batch_bases import COLLINEAR_CHECKS, batch_bases, collinear_warning
from atomsift.models.backbones.gemnet_oc.blocks import InteractionBlock
from atomsift.models.backbones.gemnet_oc.graphs import (
    GraphSettings,
    InteractionGraphs,
    build_interaction_graphs,
    resolve_cutoffs,
    resolve_max_neighbors,
)
from atomsift.models.backbones.gemnet_oc.layers import (
    AtomEmbedding,
    BasisEmbedding,
    Dense,
    EdgeEmbedding,
    ResidualLayer,
)
from atomsift.models.backbones.gemnet_oc.outputs import OutputBlock
from atomsift.models.backbones.gemnet_oc.scaling import fit_scale_factors, unfitted_scale_factors
from atomsift.models.backbones.gemnet_oc.utils import WARNED, tag_warnings
from atomsift.models.base import Backbone, BackboneOutput, no_neighbours_error

__all__ = ["GemNetOC", "GemNetOCOutput", "ensure_scale_factors"]

log = logging.getLogger(__name__)

# fairchem's GemNet-OC "silu" / "swish" is the scaled SiLU (JMP: "scaled_silu"); fairchem 1.10 has no other
_ACTIVATIONS = {"silu": "silu", "swish": "silu", "scaled_silu": "silu"}


@dataclass
class GemNetOCOutput(BackboneOutput):
    """BackboneOutput plus GemNet-OC specifics.

    Attributes:
        id_swap: (E,) index of the reverse of each main-graph edge.
        num_neighbors: (B,) main-graph edges per structure (each structure's edges are contiguous).
        node_blocks: per-block atom features (num_blocks + 1 tensors (N, emb_size_atom)), before out_mlp_E.
        edge_blocks: per-block edge features before out_mlp_F (direct-force models), else empty.
    """

    id_swap: Tensor | None = None
    num_neighbors: Tensor | None = None
    node_blocks: list[Tensor] = field(default_factory=list)
    edge_blocks: list[Tensor] = field(default_factory=list)


class GemNetOC(Backbone):
    """GemNet-OC backbone. Arguments as fairchem-core 1.10's GemNetOC (see presets.py for values):

    Args:
        num_spherical, num_radial: angular / radial basis sizes.
        num_blocks: interaction blocks.
        emb_size_atom, emb_size_edge: atom / edge embedding sizes (node_dim / edge_dim).
        emb_size_trip_in/out, emb_size_quad_in/out, emb_size_aint_in/out: bilinear layer sizes.
        emb_size_rbf, emb_size_cbf, emb_size_sbf: shared basis projection sizes.
        num_before_skip, num_after_skip, num_concat, num_atom, num_output_afteratom, num_atom_emb_layers,
            num_global_out_layers: residual layer counts.
        direct_forces: build the per-edge force features (out_mlp_F); False for gradient-force models.
        use_pbc: honour the batch's cells and pbc flags (False: treat every structure as a molecule).
        cutoff, cutoff_qint, cutoff_aeaint, cutoff_aint: graph cutoffs in A (None: fairchem's fallback).
        max_neighbors, max_neighbors_qint, max_neighbors_aeaint, max_neighbors_aint: neighbour limits.
        enforce_max_neighbors_strictly: exactly max_neighbors per atom (else ties within 0.01 are kept).
        rbf, rbf_spherical, envelope, cbf, sbf: basis specs, e.g. {"name": "gaussian"}.
        activation: "silu" (the scaled SiLU; "swish" and "scaled_silu" are aliases).
        quad_interaction, atom_edge_interaction, edge_atom_interaction, atom_interaction: switches.
        scale_basis: scale factors on the raw bases.
        qint_tags: atom tags whose edges take part in quadruplet interactions.
        num_elements: atomic numbers 1..num_elements can be embedded.
        absolute_rbf_cutoff: if set, every radial basis scales distances by this cutoff (A) instead of its
            graph's cutoff (JMP's ``absolute_rbf_cutoff``, 12 A in its models); None: fairchem's behaviour.
    """

    name: ClassVar[str] = "gemnet_oc"
    #: sum quadruplets in factored form when the spherical basis is an outer product (quadruplets.py); the
    #: same sums as fairchem's padded route in another order (float64: equal to 1e-12). False: fairchem's route.
    factor_quadruplets: bool = True

    def __init__(
        self,
        *,
        num_spherical: int,
        num_radial: int,
        num_blocks: int,
        emb_size_atom: int,
        emb_size_edge: int,
        emb_size_trip_in: int,
        emb_size_trip_out: int,
        emb_size_quad_in: int,
        emb_size_quad_out: int,
        emb_size_aint_in: int,
        emb_size_aint_out: int,
        emb_size_rbf: int,
        emb_size_cbf: int,
        emb_size_sbf: int,
        num_before_skip: int,
        num_after_skip: int,
        num_concat: int,
        num_atom: int,
        num_output_afteratom: int,
        num_atom_emb_layers: int = 0,
        num_global_out_layers: int = 2,
        direct_forces: bool = True,
        use_pbc: bool = True,
        cutoff: float = 6.0,
        cutoff_qint: float | None = None,
        cutoff_aeaint: float | None = None,
        cutoff_aint: float | None = None,
        max_neighbors: int = 50,
        max_neighbors_qint: int | None = None,
        max_neighbors_aeaint: int | None = None,
        max_neighbors_aint: int | None = None,
        enforce_max_neighbors_strictly: bool = True,
        rbf: dict[str, Any] | None = None,
        rbf_spherical: dict[str, Any] | None = None,
        envelope: dict[str, Any] | None = None,
        cbf: dict[str, Any] | None = None,
        sbf: dict[str, Any] | None = None,
        activation: str = "silu",
        quad_interaction: bool = False,
        atom_edge_interaction: bool = False,
        edge_atom_interaction: bool = False,
        atom_interaction: bool = False,
        scale_basis: bool = False,
        qint_tags: Iterable[int] = (0, 1, 2),
        num_elements: int = 83,
        absolute_rbf_cutoff: float | None = None,
    ) -> None:
        super().__init__()
        if num_blocks < 1:
            raise ConfigError(f"GemNet-OC needs num_blocks >= 1, got {num_blocks}", fix="set num_blocks to 1 or more")
        if not isinstance(activation, str) or activation.lower() not in _ACTIVATIONS:
            raise ConfigError(f"unknown GemNet-OC activation {activation!r}", fix="use 'silu' (the scaled SiLU)")
        rbf = dict(rbf) if rbf else {"name": "gaussian"}
        rbf_spherical = dict(rbf_spherical) if rbf_spherical else None
        envelope = dict(envelope) if envelope else {"name": "polynomial", "exponent": 5}
        cbf = dict(cbf) if cbf else {"name": "spherical_harmonics"}
        sbf = dict(sbf) if sbf else {"name": "spherical_harmonics"}
        qint_tags = tuple(int(t) for t in qint_tags)
        self._hparams: dict[str, Any] = {
            "num_spherical": num_spherical,
            "num_radial": num_radial,
            "num_blocks": num_blocks,
            "emb_size_atom": emb_size_atom,
            "emb_size_edge": emb_size_edge,
            "emb_size_trip_in": emb_size_trip_in,
            "emb_size_trip_out": emb_size_trip_out,
            "emb_size_quad_in": emb_size_quad_in,
            "emb_size_quad_out": emb_size_quad_out,
            "emb_size_aint_in": emb_size_aint_in,
            "emb_size_aint_out": emb_size_aint_out,
            "emb_size_rbf": emb_size_rbf,
            "emb_size_cbf": emb_size_cbf,
            "emb_size_sbf": emb_size_sbf,
            "num_before_skip": num_before_skip,
            "num_after_skip": num_after_skip,
            "num_concat": num_concat,
            "num_atom": num_atom,
            "num_output_afteratom": num_output_afteratom,
            "num_atom_emb_layers": num_atom_emb_layers,
            "num_global_out_layers": num_global_out_layers,
            "direct_forces": direct_forces,
            "use_pbc": use_pbc,
            "cutoff": cutoff,
            "cutoff_qint": cutoff_qint,
            "cutoff_aeaint": cutoff_aeaint,
            "cutoff_aint": cutoff_aint,
            "max_neighbors": max_neighbors,
            "max_neighbors_qint": max_neighbors_qint,
            "max_neighbors_aeaint": max_neighbors_aeaint,
            "max_neighbors_aint": max_neighbors_aint,
            "enforce_max_neighbors_strictly": enforce_max_neighbors_strictly,
            "rbf": rbf,
            "rbf_spherical": rbf_spherical,
            "envelope": envelope,
            "cbf": cbf,
            "sbf": sbf,
            "activation": activation,
            "quad_interaction": quad_interaction,
            "atom_edge_interaction": atom_edge_interaction,
            "edge_atom_interaction": edge_atom_interaction,
            "atom_interaction": atom_interaction,
            "scale_basis": scale_basis,
            "qint_tags": list(qint_tags),
            "num_elements": num_elements,
            "absolute_rbf_cutoff": absolute_rbf_cutoff,
        }
        act = _ACTIVATIONS[activation.lower()]
        self.num_blocks = num_blocks
        self.direct_forces = direct_forces
        self.quad_interaction = quad_interaction
        self.atom_edge_interaction = atom_edge_interaction
        self.edge_atom_interaction = edge_atom_interaction
        self.atom_interaction = atom_interaction
        self.node_dim = emb_size_atom
        self.edge_dim = emb_size_edge if direct_forces else None
        self.num_elements = num_elements + 1  # Backbone convention: exclusive upper bound
        self.edge_dropout = 0.0  # set by training (JMP pretraining: 0.1); active in train mode only
        self._collinear_checks = 0  # gradient-force batches checked for singular quadruplets (batch_bases)
        self.edge_dropout_generator: torch.Generator | None = None

        switches = {
            "quad": quad_interaction,
            "aeaint": atom_edge_interaction or edge_atom_interaction,
            "aint": atom_interaction,
        }
        cutoffs = resolve_cutoffs(cutoff, cutoff_qint, cutoff_aeaint, cutoff_aint, **switches)
        limits = resolve_max_neighbors(
            max_neighbors, max_neighbors_qint, max_neighbors_aeaint, max_neighbors_aint, **switches
        )
        self.graph_settings = GraphSettings(
            *cutoffs,
            *limits,
            enforce_max_neighbors_strictly=enforce_max_neighbors_strictly,
            use_pbc=use_pbc,
            quad_interaction=quad_interaction,
            atom_edge_interaction=atom_edge_interaction,
            edge_atom_interaction=edge_atom_interaction,
            atom_interaction=atom_interaction,
            qint_tags=qint_tags,
        )
        self._absolute_rbf_cutoff = absolute_rbf_cutoff
        self._init_bases(num_radial, num_spherical, rbf, rbf_spherical or rbf, envelope, cbf, sbf, scale_basis)
        self._init_shared_projections(num_radial, num_spherical, emb_size_rbf, emb_size_cbf, emb_size_sbf)

        self.atom_emb = AtomEmbedding(emb_size_atom, num_elements)
        self.edge_emb = EdgeEmbedding(emb_size_atom, num_radial, emb_size_edge, activation=act)
        self.int_blocks = nn.ModuleList(
            InteractionBlock(
                emb_size_atom=emb_size_atom,
                emb_size_edge=emb_size_edge,
                emb_size_trip_in=emb_size_trip_in,
                emb_size_trip_out=emb_size_trip_out,
                emb_size_quad_in=emb_size_quad_in,
                emb_size_quad_out=emb_size_quad_out,
                emb_size_a2a_in=emb_size_aint_in,
                emb_size_a2a_out=emb_size_aint_out,
                emb_size_rbf=emb_size_rbf,
                emb_size_cbf=emb_size_cbf,
                emb_size_sbf=emb_size_sbf,
                num_before_skip=num_before_skip,
                num_after_skip=num_after_skip,
                num_concat=num_concat,
                num_atom=num_atom,
                num_atom_emb_layers=num_atom_emb_layers,
                quad_interaction=quad_interaction,
                atom_edge_interaction=atom_edge_interaction,
                edge_atom_interaction=edge_atom_interaction,
                atom_interaction=atom_interaction,
                activation=act,
            )
            for _ in range(num_blocks)
        )
        self.out_blocks = nn.ModuleList(
            OutputBlock(
                emb_size_atom=emb_size_atom,
                emb_size_edge=emb_size_edge,
                emb_size_rbf=emb_size_rbf,
                nHidden=num_atom,
                nHidden_afteratom=num_output_afteratom,
                activation=act,
                direct_forces=direct_forces,
            )
            for _ in range(num_blocks + 1)
        )
        self.out_mlp_E = nn.Sequential(
            Dense(emb_size_atom * (num_blocks + 1), emb_size_atom, activation=act),
            *[ResidualLayer(emb_size_atom, activation=act) for _ in range(num_global_out_layers)],
        )
        if direct_forces:
            self.out_mlp_F = nn.Sequential(
                Dense(emb_size_edge * (num_blocks + 1), emb_size_edge, activation=act),
                *[ResidualLayer(emb_size_edge, activation=act) for _ in range(num_global_out_layers)],
            )

    # ------------------------------------------------------------------ construction helpers

    def _init_bases(self, num_radial, num_spherical, rbf, rbf_spherical, envelope, cbf, sbf, scale_basis) -> None:
        """Radial / circular / spherical bases, shared where fairchem shares them."""
        s = self.graph_settings

        def radial(cutoff: float, spec: dict) -> RadialBasis:
            cutoff = self._absolute_rbf_cutoff or cutoff
            return RadialBasis(
                num_radial=num_radial, cutoff=cutoff, rbf=spec, envelope=envelope, scale_basis=scale_basis
            )

        self.radial_basis = radial(s.cutoff, rbf)
        radial_spherical = radial(s.cutoff, rbf_spherical)  # shared by several angular bases
        if self.quad_interaction:
            self.cbf_basis_qint = CircularBasisLayer(
                num_spherical, radial(s.cutoff_qint, rbf_spherical), cbf, scale_basis
            )
            self.sbf_basis_qint = SphericalBasisLayer(num_spherical, radial_spherical, sbf, scale_basis)
        if self.atom_edge_interaction:
            self.radial_basis_aeaint = radial(s.cutoff_aeaint, rbf)
            self.cbf_basis_aeint = CircularBasisLayer(num_spherical, radial_spherical, cbf, scale_basis)
        if self.edge_atom_interaction:
            self.radial_basis_aeaint = radial(s.cutoff_aeaint, rbf)
            self.cbf_basis_eaint = CircularBasisLayer(
                num_spherical, radial(s.cutoff_aeaint, rbf_spherical), cbf, scale_basis
            )
        if self.atom_interaction:
            self.radial_basis_aint = radial(s.cutoff_aint, rbf)
        self.cbf_basis_tint = CircularBasisLayer(num_spherical, radial_spherical, cbf, scale_basis)

    def _init_shared_projections(self, num_radial, num_spherical, emb_size_rbf, emb_size_cbf, emb_size_sbf) -> None:
        """Basis down-projections shared by all interaction blocks."""

        def dense() -> Dense:
            return Dense(num_radial, emb_size_rbf, activation=None, bias=False)

        if self.quad_interaction:
            self.mlp_rbf_qint = dense()
            self.mlp_cbf_qint = BasisEmbedding(num_radial, emb_size_cbf, num_spherical)
            self.mlp_sbf_qint = BasisEmbedding(num_radial, emb_size_sbf, num_spherical**2)
        if self.atom_edge_interaction:
            self.mlp_rbf_aeint = dense()
            self.mlp_cbf_aeint = BasisEmbedding(num_radial, emb_size_cbf, num_spherical)
        if self.edge_atom_interaction:
            self.mlp_rbf_eaint = dense()
            self.mlp_cbf_eaint = BasisEmbedding(num_radial, emb_size_cbf, num_spherical)
        if self.atom_interaction:
            self.mlp_rbf_aint = BasisEmbedding(num_radial, emb_size_rbf)
        self.mlp_rbf_tint = dense()
        self.mlp_cbf_tint = BasisEmbedding(num_radial, emb_size_cbf, num_spherical)
        self.mlp_rbf_h = dense()
        self.mlp_rbf_out = dense()

    @classmethod
    def from_preset(cls, preset: str, **overrides: Any) -> GemNetOC:
        """Build from a named preset of presets.py ("S", "L", "small", "tiny"), updated by ``overrides``."""
        from atomsift.models.backbones.gemnet_oc.presets import PRESETS

        if preset not in PRESETS:
            raise ConfigError(f"GemNet-OC has no preset {preset!r}", fix=f"use one of: {', '.join(PRESETS)}")
        return cls(**{**PRESETS[preset], **overrides})

    def hparams(self) -> dict[str, Any]:
        """Constructor keyword arguments (JSON-able); ``GemNetOC(**model.hparams())`` rebuilds the architecture."""
        return {
            k: (dict(v) if isinstance(v, dict) else list(v) if isinstance(v, list) else v)
            for k, v in self._hparams.items()
        }

    # ------------------------------------------------------------------ forward

    def settings_for(self, graph: Any) -> GraphSettings:
        """The four graphs' settings for a dataset's graph (atomsift.graph.GraphSettings: cutoff, max_neighbors,
        pbc): this model's cutoffs and neighbour limits scaled so the main graph has the dataset's cutoff and
        limit (for S and L, whose four cutoffs are equal and limits 30 / 8 / 20 / 1000, JMP's rule: every
        cutoff equal to the dataset's, limits in those proportions, rounded down)."""
        s = self.graph_settings
        c, k = graph.cutoff / s.cutoff, graph.max_neighbors / s.max_neighbors
        return replace(
            s,
            cutoff=float(graph.cutoff),
            cutoff_qint=s.cutoff_qint * c,
            cutoff_aeaint=s.cutoff_aeaint * c,
            cutoff_aint=s.cutoff_aint * c,
            max_neighbors=int(graph.max_neighbors),
            max_neighbors_qint=max(1, int(s.max_neighbors_qint * k)),
            max_neighbors_aeaint=max(1, int(s.max_neighbors_aeaint * k)),
            max_neighbors_aint=max(1, int(s.max_neighbors_aint * k)),
            use_pbc=bool(graph.pbc),
        )

    def build_graphs(self, batch: Any) -> InteractionGraphs:
        """The four graphs and index sets of ``batch`` (DataError if a structure has no edges at all).

        Structures of datasets with their own graph settings (``batch.dataset_graphs``) get graphs built with
        `settings_for` those settings; in training mode with ``edge_dropout`` > 0 main-graph pairs are dropped.
        """
        from atomsift.graph.batch import graph_groups

        groups = graph_groups(batch)
        settings = self.graph_settings if groups[0][0] is None else self.settings_for(groups[0][0])
        per_group = None
        if len(groups) > 1:
            per_group = [(self.settings_for(g), structures) for g, structures in groups]
        dropout = self.edge_dropout if self.training else 0.0
        graphs = build_interaction_graphs(batch, settings, per_group, dropout, self.edge_dropout_generator)
        error = no_neighbours_error(
            batch,
            torch.bincount(graphs.main["edge_index"][1], minlength=batch.num_atoms),
            settings.cutoff,
            self.name,
        )
        if error is not None:
            raise error
        if self.quad_interaction and not {"odd", "none"} <= WARNED:
            tag_warnings(batch.tags, tuple(self.graph_settings.qint_tags), WARNED)
        return graphs

    def forward(self, batch: Any) -> GemNetOCOutput:
        """Embed a batch: per-atom features (N, emb_size_atom) and, with direct forces, per-edge features."""
        self.check_batch(batch)
        g = self.build_graphs(batch)
        num_atoms = batch.num_atoms
        if self.quad_interaction and g.main["vector"].requires_grad and self._collinear_checks < COLLINEAR_CHECKS:
            self._collinear_checks += collinear_warning(g, WARNED)  # forces by gradient: the first batches only
        b = batch_bases(self, g, num_atoms)
        edge_index = g.main["edge_index"]
        idx_t = edge_index[1]

        h = self.atom_emb(batch.numbers)
        m = self.edge_emb(h, b["rad_raw"], edge_index)
        x_E, x_F = self.out_blocks[0](h, m, b["output"], idx_t)
        xs_E, xs_F = [x_E], [x_F]
        for i, block in enumerate(self.int_blocks):
            h, m = block(
                h=h,
                m=m,
                bases_qint=b["qint"],
                bases_e2e=b["e2e"],
                bases_a2e=b["a2e"],
                bases_e2a=b["e2a"],
                basis_a2a_rad=b["a2a_rad"],
                basis_atom_update=b["atom_update"],
                edge_index_main=edge_index,
                a2ee2a_graph=g.a2ee2a,
                a2a_graph=g.a2a,
                id_swap=g.id_swap,
                trip_idx_e2e=g.trip_idx_e2e,
                trip_idx_a2e=g.trip_idx_a2e,
                trip_idx_e2a=g.trip_idx_e2a,
                quad_idx=g.quad_idx,
            )
            x_E, x_F = self.out_blocks[i + 1](h, m, b["output"], idx_t)
            xs_E.append(x_E)
            xs_F.append(x_F)

        node = self.out_mlp_E(torch.cat(xs_E, dim=-1))
        edge = self.out_mlp_F(torch.cat(xs_F, dim=-1)) if self.direct_forces else None
        return GemNetOCOutput(
            node=node,
            edge=edge,
            edge_index=edge_index,
            edge_unit=g.main["vector"],
            id_swap=g.id_swap,
            num_neighbors=g.main["num_neighbors"],
            node_blocks=xs_E,
            edge_blocks=xs_F if self.direct_forces else [],
        )


def ensure_scale_factors(
    model: nn.Module, batches: Iterable[Any], *, forward_fn: Any = None, refit: bool = False, progress: bool = False
) -> list[str]:
    """Fit the model's unfitted scale factors on a few batches (all of them with ``refit``).

    Sets ``model.fitted_scale_factors`` to the names fitted here (so callers can tell the user; they are also
    logged at INFO level). Does nothing when every factor is already fitted and ``refit`` is False.

    Args:
        model: a GemNetOC (or any module holding its ScaleFactors).
        batches: a few AtomsBatch objects (fairchem uses 16); read once per factor.
        forward_fn: called with each batch (default: ``model(batch)``).
        progress: show a progress bar on stderr (one step per factor).

    Returns:
        Module paths of the factors fitted, in fitting order.
    """
    todo = unfitted_scale_factors(model)
    if not todo and not refit:
        return []
    fitted = fit_scale_factors(model, batches, forward_fn, refit=refit, progress=progress)
    names = list(fitted)
    model.fitted_scale_factors = names
    log.info("GemNet-OC: fitted %d scale factor(s): %s", len(names), ", ".join(names))
    return names
