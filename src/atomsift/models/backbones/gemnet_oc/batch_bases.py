"""The bases of one batch and their shared projections (fairchem-core 1.10's ``GemNetOC.get_bases``).

Radial bases per edge, circular bases per triplet, the spherical basis per quadruplet (in factored form
where it is an outer product, see quadruplets.py), each projected by the model's shared basis layers.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from atomsift.models.backbones.gemnet_oc.graphs import InteractionGraphs
from atomsift.models.backbones.gemnet_oc.layers import BasisEmbedding
from atomsift.models.backbones.gemnet_oc.quadruplets import factored_quad_basis
from atomsift.models.backbones.gemnet_oc.utils import get_angle, inner_product_clamped, log

if TYPE_CHECKING:
    from atomsift.models.backbones.gemnet_oc.model import GemNetOC

__all__ = ["COLLINEAR_CHECKS", "batch_bases", "collinear_quadruplets", "collinear_warning", "quad_angles"]


def quad_angles(graphs: InteractionGraphs) -> tuple[Tensor, Tensor, Tensor]:
    """cos(c-a-b) per output triplet, cos(a-b-d) per input triplet, dihedral c-a-b-d per quadruplet."""
    v_main, v_qint, q = graphs.main["vector"], graphs.qint["vector"], graphs.quad_idx
    v_ba = v_qint.index_select(0, q["triplet_in"]["out"])
    v_db = v_main.index_select(0, q["triplet_in"]["in"])
    cos_abd = inner_product_clamped(v_ba, v_db)
    v_db_cross = torch.cross(v_db, v_ba, dim=-1).index_select(0, q["trip_in_to_quad"])
    v_ca = v_main.index_select(0, q["triplet_out"]["out"])
    v_ba = v_qint.index_select(0, q["triplet_out"]["in"])
    cos_cab = inner_product_clamped(v_ca, v_ba)
    v_ca_cross = torch.cross(v_ca, v_ba, dim=-1).index_select(0, q["trip_out_to_quad"])
    return cos_cab, cos_abd, get_angle(v_ca_cross, v_db_cross)


COLLINEAR_SIN = 1e-4  # sin of an angle below which a quadruplet's triplet counts as collinear
NORMAL_FLOOR = 1e-6  # a plane normal this short is rounding: both normals there keep the angle's gradient small
COLLINEAR_CHECKS = 20  # gradient-force batches a model checks (each check waits for the device)


@torch.no_grad()
def collinear_quadruplets(graphs: InteractionGraphs, tol: float = COLLINEAR_SIN) -> tuple[int, int]:
    """(singular, all) quadruplets c-a-b-d: those whose dihedral angle has an unbounded gradient.

    The dihedral is the angle between the normals of the planes c-a-b and a-b-d. Where one of the two triplets
    is collinear (sin below ``tol``) and its normal moves with the positions, the angle turns by O(1) over a
    displacement of O(sin): the energy has a kink and its gradient (the forces of gradient-force models) grows
    like 1 / sin. Not counted: triplets of two images of one atom (d = b = a, or c = b = a: a lattice-fixed
    angle, no force), and quadruplets whose other normal is at rounding level too (below ``NORMAL_FLOOR``, as in
    exactly linear molecules: the angle's clamp then keeps the gradient small).
    """
    v_main, v_qint, q = graphs.main["vector"], graphs.qint["vector"], graphs.quad_idx
    e_main, e_qint = graphs.main["edge_index"], graphs.qint["edge_index"]
    sines, collinear, moving = [], [], []
    # triplet_in: main edge d->b ("in"), qint edge b->a ("out"); triplet_out: main c->a ("out"), qint b->a ("in")
    for t, main_edge_key, qint_edge_key in ((q["triplet_in"], "in", "out"), (q["triplet_out"], "out", "in")):
        main_edge, qint_edge = t[main_edge_key], t[qint_edge_key]
        cross = torch.linalg.cross(v_main.index_select(0, main_edge), v_qint.index_select(0, qint_edge), dim=-1)
        sines.append(cross.norm(dim=-1))
        collinear.append(sines[-1] < tol)
        src_main, src_qint, tgt_qint = e_main[0, main_edge], e_qint[0, qint_edge], e_qint[1, qint_edge]
        moving.append(~((src_main == src_qint) & (src_qint == tgt_qint)))
    to_in, to_out = q["trip_in_to_quad"], q["trip_out_to_quad"]
    col_in, col_out = collinear[0].index_select(0, to_in), collinear[1].index_select(0, to_out)
    open_in, open_out = sines[0].index_select(0, to_in) > NORMAL_FLOOR, sines[1].index_select(0, to_out) > NORMAL_FLOOR
    singular = (col_in & moving[0].index_select(0, to_in) & open_out) | (
        col_out & moving[1].index_select(0, to_out) & open_in
    )
    return int(singular.sum()), int(to_in.numel())


def collinear_warning(graphs: InteractionGraphs, warned: set[str]) -> bool:
    """Warn once (``warned``: utils.WARNED, cleared per training run) when a gradient-force batch has
    quadruplets with an unbounded gradient (`collinear_quadruplets`); False where it did not look (already
    said, or the model's log muted as while fitting scale factors)."""
    if "collinear" in warned or not log.isEnabledFor(logging.WARNING):
        return False
    if graphs.quad_idx["out"].numel() == 0:
        return True
    count, total = collinear_quadruplets(graphs)
    if count:
        warned.add("collinear")
        log.warning(
            "GemNet-OC with gradient forces: %d of this batch's %d quadruplets have one collinear triplet (atoms "
            "on a line, as in exactly symmetric crystals), where GemNet-OC's dihedral angle turns abruptly "
            "(fairchem's and JMP's alike): the energy has a kink and its gradient, the forces, can be "
            "arbitrarily large. Train such data with direct forces (task.forces=direct); expect gradient-force "
            "errors far above the data's",
            count,
            total,
        )
    return True


def batch_bases(model: GemNetOC, g: InteractionGraphs, num_atoms: int) -> dict[str, Any]:
    """Raw bases of one batch's graphs and their shared projections by ``model``'s layers, as fairchem's
    ``get_bases``."""
    main = g.main
    rad_main = model.radial_basis(main["distance"])
    out: dict[str, Any] = {"rad_raw": rad_main, "qint": {}, "a2e": {}, "e2a": {}, "a2a_rad": None}
    t = g.trip_idx_e2e
    v_main = main["vector"]
    cos_cab = inner_product_clamped(v_main.index_select(0, t["out"]), v_main.index_select(0, t["in"]))
    rad_cir_e2e, cir_e2e = model.cbf_basis_tint(main["distance"], cos_cab)

    if model.quad_interaction:
        q = g.quad_idx
        cos_cab_q, cos_abd, angle_cabd = quad_angles(g)
        rad_cir_q, cir_q = model.cbf_basis_qint(g.qint["distance"], cos_abd)
        out["qint"] = {
            "rad": model.mlp_rbf_qint(rad_main),
            "cir": _embed_basis(model.mlp_cbf_qint, rad_cir_q, cir_q, idx_sph_outer=q["triplet_in"]["out"]),
        }
        sbf = model.sbf_basis_qint
        if model.factor_quadruplets and sbf.factorable and q["out"].numel() > 0:
            rad_sph_q, left, right = sbf.factors(main["distance"], cos_cab_q, angle_cabd)
            rad_W1 = model.mlp_sbf_qint.radial(rad_sph_q, left.shape[1] ** 2)
            num_edges, num_inter = rad_main.shape[0], g.qint["distance"].shape[0]
            out["qint"]["sph"] = factored_quad_basis(rad_W1, left, right, q, num_edges, num_inter)
        else:
            cos_cab_quad = cos_cab_q.index_select(0, q["trip_out_to_quad"])
            rad_sph_q, sph_q = sbf(main["distance"], cos_cab_quad, angle_cabd)
            out["qint"]["sph"] = _embed_basis(model.mlp_sbf_qint, rad_sph_q, sph_q, q)
    if model.atom_edge_interaction:
        a = g.trip_idx_a2e
        rad_a2ee2a = model.radial_basis_aeaint(g.a2ee2a["distance"])
        v_a2e = g.a2ee2a["vector"]
        cos_a2e = inner_product_clamped(v_main.index_select(0, a["out"]), v_a2e.index_select(0, a["in"]))
        rad_cir_a2e, cir_a2e = model.cbf_basis_aeint(main["distance"], cos_a2e)
        out["a2e"] = {
            "rad": model.mlp_rbf_aeint(rad_a2ee2a),
            "cir": _embed_basis(model.mlp_cbf_aeint, rad_cir_a2e, cir_a2e, a),
        }
    if model.edge_atom_interaction:
        e = g.trip_idx_e2a
        v_a2e = g.a2ee2a["vector"]
        cos_e2a = inner_product_clamped(v_a2e.index_select(0, e["out"]), v_main.index_select(0, e["in"]))
        rad_cir_e2a, cir_e2a = model.cbf_basis_eaint(g.a2ee2a["distance"], cos_e2a)
        out["e2a"] = {
            "rad": model.mlp_rbf_eaint(rad_main),
            "cir": _embed_basis(
                model.mlp_cbf_eaint,
                rad_cir_e2a,
                cir_e2a,
                e,
                idx_rad_outer=g.a2ee2a["edge_index"][1],
                idx_rad_inner=g.a2ee2a["target_neighbor_idx"],
                num_atoms=num_atoms,
            ),
        }
    if model.atom_interaction:
        out["a2a_rad"] = model.mlp_rbf_aint(
            rad_basis=model.radial_basis_aint(g.a2a["distance"]),
            idx_rad_outer=g.a2a["edge_index"][1],
            idx_rad_inner=g.a2a["target_neighbor_idx"],
            num_atoms=num_atoms,
        )
    out["e2e"] = {
        "rad": model.mlp_rbf_tint(rad_main),
        "cir": _embed_basis(model.mlp_cbf_tint, rad_cir_e2e, cir_e2e, t),
    }
    out["atom_update"] = model.mlp_rbf_h(rad_main)
    out["output"] = model.mlp_rbf_out(rad_main)
    return out


def _embed_basis(
    module: BasisEmbedding, rad: Tensor, sph: Tensor, idx: dict[str, Tensor] | None = None, **kwargs: Any
) -> Any:
    """``module(rad_basis=rad, sph_basis=sph, **kwargs)``, with a triplet index dict ``idx`` giving
    idx_sph_outer / idx_sph_inner (its "out" / "out_agg"); also for graphs without edges (e.g. no atom with a
    qint tag, isolated atoms), where BasisEmbedding's reshape of an empty tensor fails: the results are then
    empty / zero tensors."""
    if idx is not None:
        kwargs.update(idx_sph_outer=idx["out"], idx_sph_inner=idx["out_agg"])
    if rad.shape[0] > 0:
        return module(rad_basis=rad, sph_basis=sph, **kwargs)
    interm = module.weight.shape[-1]
    rad_W1 = rad.new_zeros((0, interm, sph.shape[-1]))
    if kwargs.get("idx_rad_inner") is not None:
        rad_W1 = rad.new_zeros((kwargs["num_atoms"], interm, 0))
    if kwargs.get("idx_sph_inner") is None:
        return rad.new_zeros((sph.shape[0], interm))
    return rad_W1, sph.new_zeros((0, sph.shape[-1], 0))
