"""The quadruplet sum of GemNet-OC in factored form, for the outer-product spherical bases.

With ``sbf`` "legendre_outer" (the S / L / small presets) or "gaussian_outer", the basis of quadruplet
q = (d->b->a<-c) is an outer product ``sph[q, l1 * L + l2] = A[p, l1] * B[q, l2]``: A depends on the
cosine of angle c-a-b only, i.e. on the output triplet p = (c->a, b->a), and B on the dihedral c-a-b-d.
The bilinear layer needs, per output edge e = c->a and message channel k,

    S[e, l1 L + l2, k] = sum over quadruplets q into e of sph[q, l1 L + l2] * x[t(q), k]

(x: one message per input triplet t = d->b->a). fairchem forms the (Q, K) copy x[t(q)], pads it per output
edge and multiplies by the padded (E, L*L, Kmax) basis: Q * L^2 * K multiply-adds plus several passes over
Q * K numbers forwards and backwards. Here the sum is split in two:

    Y[p, l2, k] = sum over d of B[q(p, d), l2] x[t(d), k]      one bmm per intermediate edge b->a
    S[e, l1, l2, k] = sum over p into e of A[p, l1] Y[p, l2, k]  one bmm per output edge c->a

Q * L * K + P * L^2 * K multiply-adds (P output triplets, P << Q), and no per-quadruplet copy of x. The
result is the same sum in another order: equal in exact arithmetic (float64 tests agree to 1e-12); in
float32 it differs from the padded route by rounding. Quadruplets removed for d == c are zeros of the padded B.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from atomsift.models.backbones.gemnet_oc.utils import get_inner_idx

__all__ = ["FactoredQuadBasis", "factored_quad_basis"]


@dataclass
class FactoredQuadBasis:
    """The quadruplet basis of one batch in factored, padded form (built once per forward pass).

    Attributes:
        rad_W1: (E, interm, L*L) projected radial basis per output edge (as BasisEmbedding's rad_W1).
        left: (E, L, Kp) A per output edge, its output triplets padded to Kp with zeros.
        right: (R, Kout * L, Kin) B per intermediate edge: row (output slot, l2), column input slot.
        in_rows: (T_in,) row ``r * Kin + slot`` of each input triplet in the padded messages.
        out_rows: (E * Kp,) row of Y (R * Kout, L * K) feeding each padded output slot (row 0 for empty
            slots, whose A is zero).
    """

    rad_W1: Tensor
    left: Tensor
    right: Tensor
    in_rows: Tensor
    out_rows: Tensor

    def aggregate(self, x: Tensor) -> Tensor:
        """Messages per input triplet (T_in, K) -> basis-weighted sums per output edge (E, L*L, K)."""
        num_inter, _, k_in = self.right.shape
        num_edges, num_l, k_p = self.left.shape
        channels = x.shape[1]
        padded = x.new_zeros((num_inter * k_in, channels)).index_copy(0, self.in_rows, x)
        y = torch.bmm(self.right, padded.view(num_inter, k_in, channels))  # (R, Kout * L, K)
        y = y.view(-1, num_l * channels).index_select(0, self.out_rows).view(num_edges, k_p, num_l * channels)
        return torch.bmm(self.left, y).view(num_edges, num_l * num_l, channels)


def factored_quad_basis(
    rad_W1: Tensor, left: Tensor, right: Tensor, quad_idx: dict, num_edges: int, num_inter: int
) -> FactoredQuadBasis:
    """Pad the two factors of the quadruplet basis.

    Args:
        rad_W1: (E, interm, L*L) projected radial basis of the main edges.
        left: (P, L) factor per output triplet (``quad_idx["triplet_out"]``).
        right: (Q, L) factor per quadruplet.
        quad_idx: get_quadruplets' indices (triplet_in / triplet_out / trip_in_to_quad / trip_out_to_quad).
        num_edges: E, main edges; num_inter: R, intermediate (qint) edges.
    """
    num_l = left.shape[1]
    inter_in = quad_idx["triplet_in"]["out"]  # (T_in,) intermediate edge, non-decreasing
    inter_out = quad_idx["triplet_out"]["in"]  # (P,) intermediate edge, any order
    edge_out = quad_idx["triplet_out"]["out"]  # (P,) output edge, non-decreasing
    slot_in = get_inner_idx(inter_in, num_inter)
    slot_out = get_inner_idx(inter_out, num_inter)
    slot_e = get_inner_idx(edge_out, num_edges)
    k_in, k_out, k_p = (int(s.max()) + 1 for s in (slot_in, slot_out, slot_e))

    p, t = quad_idx["trip_out_to_quad"], quad_idx["trip_in_to_quad"]
    pos = (inter_out[p] * k_out + slot_out[p]) * k_in + slot_in[t]
    b = right.new_zeros((num_inter * k_out * k_in, num_l)).index_copy(0, pos, right)
    b = b.view(num_inter, k_out, k_in, num_l).transpose(2, 3).reshape(num_inter, k_out * num_l, k_in)

    a = left.new_zeros((num_edges * k_p, num_l)).index_copy(0, edge_out * k_p + slot_e, left)
    a = a.view(num_edges, k_p, num_l).transpose(1, 2).contiguous()

    out_rows = torch.zeros(num_edges * k_p, dtype=torch.long, device=left.device)
    out_rows[edge_out * k_p + slot_e] = inter_out * k_out + slot_out
    return FactoredQuadBasis(rad_W1, a, b, inter_in * k_in + slot_in, out_rows)
