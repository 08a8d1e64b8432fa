"""Triplet and quadruplet indices of GemNet-OC, without torch_sparse.

Graphs are dicts as in fairchem: ``edge_index`` (2, E) with row 0 the source c and row 1 the target a
of edge c->a, and ``cell_offset`` (E, 3) (needed by the mixed triplets and quadruplets). The results
are the same tensors, in the same order, as fairchem-core 1.10's ``interaction_indices``:
fairchem looks up "all edges into atom x" in a SparseTensor sorted by (target, source); here the
same table is a sort plus row pointers.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .utils import get_inner_idx, ragged_range

__all__ = ["get_mixed_triplets", "get_quadruplets", "get_triplets"]


class _Adjacency:
    """Edges grouped by a key atom (rows), ordered within a row by the other atom (as torch_sparse)."""

    def __init__(self, row: Tensor, col: Tensor, num_atoms: int) -> None:
        row, col = row.long(), col.long()
        key = row * num_atoms + col
        # Edge ids in (row, col) order. Ties (periodic images of one pair) keep the order that
        # torch_sparse gives them: edge order if the keys are already sorted, else torch.sort's
        # default (not stable) order, so that the padded layouts match fairchem element by element.
        if key.numel() < 2 or bool((key[1:] >= key[:-1]).all()):
            self.perm = torch.arange(key.numel(), device=key.device)
        else:
            self.perm = torch.sort(key).indices
        self.degree = torch.bincount(row, minlength=num_atoms) if row.numel() else row.new_zeros(num_atoms)
        self.rowptr = torch.cumsum(self.degree, dim=0) - self.degree

    def rows(self, query: Tensor) -> tuple[Tensor, Tensor]:
        """For each query position q (in order) the edges of row ``query[q]``.

        Returns (position of the query (T,), edge id (T,)), grouped by query position.
        """
        counts = self.degree[query]
        total = int(counts.sum())
        owner = torch.repeat_interleave(torch.arange(query.numel(), device=query.device), counts, output_size=total)
        start = torch.repeat_interleave(self.rowptr[query], counts, output_size=total)
        return owner, self.perm[start + ragged_range(counts)]


def get_triplets(graph: dict[str, Tensor], num_atoms: int) -> dict[str, Tensor]:
    """All input edges b->a for every output edge c->a (b->a != c->a; b == c allowed across images).

    Args:
        graph: {"edge_index": (2, E)}.
        num_atoms: total number of atoms.

    Returns:
        {"in": (T,) input edge b->a, "out": (T,) output edge c->a (non-decreasing),
         "out_agg": (T,) rank of the triplet among those of its output edge}.
    """
    idx_s, idx_t = graph["edge_index"]
    adj = _Adjacency(idx_t, idx_s, num_atoms)
    idx_out, idx_in = adj.rows(idx_t)
    keep = idx_in != idx_out
    idx = {"in": idx_in[keep], "out": idx_out[keep]}
    idx["out_agg"] = get_inner_idx(idx["out"], dim_size=idx_s.numel())
    return idx


def get_mixed_triplets(
    graph_in: dict[str, Tensor],
    graph_out: dict[str, Tensor],
    num_atoms: int,
    to_outedge: bool = False,
    return_adj: bool = False,
    return_agg_idx: bool = False,
) -> dict[str, Tensor]:
    """Triplets whose input and output edges come from two graphs over the same atoms.

    For each output edge c->a of ``graph_out`` (in order), all input edges b->a of ``graph_in`` into
    its target a (or into its source c if ``to_outedge``), except the one that closes on the same
    atom in the same image (b == c with equal offsets).

    Args:
        graph_in, graph_out: {"edge_index": (2, E), "cell_offset": (E, 3)}.
        num_atoms: total number of atoms.
        to_outedge: attach input edges at the source of the output edge (a->c direction).
        return_adj: also return "adj_edges": {"row": out edge, "col": atom, "value": in edge}
            (fairchem returns a torch_sparse SparseTensor here; only get_quadruplets uses it).
        return_agg_idx: also return "out_agg".

    Returns:
        {"in": (T,) edges of graph_in, "out": (T,) edges of graph_out (non-decreasing)[, "out_agg"][, "adj_edges"]}.
    """
    idx_out_s, idx_out_t = graph_out["edge_index"]
    idx_in_s, idx_in_t = graph_in["edge_index"]
    adj = _Adjacency(idx_in_t, idx_in_s, num_atoms)
    idx_out, idx_in = adj.rows(idx_out_s if to_outedge else idx_out_t)

    atom_in = idx_in_s[idx_in]
    if to_outedge:
        atom_out = idx_out_t[idx_out]
        offset_sum = graph_out["cell_offset"][idx_out] + graph_in["cell_offset"][idx_in]
    else:
        atom_out = idx_out_s[idx_out]
        offset_sum = graph_out["cell_offset"][idx_out] - graph_in["cell_offset"][idx_in]
    keep = (atom_in != atom_out) | torch.any(offset_sum != 0, dim=-1)

    idx = {"in": idx_in[keep], "out": idx_out[keep]}
    if return_adj:
        idx["adj_edges"] = {"row": idx["out"], "col": atom_in[keep], "value": idx["in"].clone()}
    if return_agg_idx:
        idx["out_agg"] = get_inner_idx(idx["out"], dim_size=idx_out_s.numel())
    return idx


def get_quadruplets(
    main_graph: dict[str, Tensor],
    qint_graph: dict[str, Tensor],
    num_atoms: int,
) -> dict:
    """Quadruplets d->b->a<-c: for each main edge c->a, qint edge b->a and main edge d->b.

    Args:
        main_graph, qint_graph: {"edge_index": (2, E), "cell_offset": (E, 3)} over the same atoms.
        num_atoms: total number of atoms.

    Returns:
        {"triplet_in": {"in": main d->b, "out": qint b->a, "adj_edges": ...},
         "triplet_out": {"in": qint b->a, "out": main c->a},
         "out": (Q,) main edge c->a (non-decreasing), "trip_in_to_quad": (Q,), "trip_out_to_quad": (Q,),
         "out_agg": (Q,) rank of the quadruplet among those of its output edge}.
        Quadruplets with d == c (same atom and image) are removed.
    """
    idx_s = main_graph["edge_index"][0]
    num_qint_edges = qint_graph["edge_index"].shape[1]
    device = idx_s.device
    idx: dict = {}
    idx["triplet_in"] = get_mixed_triplets(main_graph, qint_graph, num_atoms, to_outedge=True, return_adj=True)
    idx["triplet_out"] = get_mixed_triplets(qint_graph, main_graph, num_atoms, to_outedge=False)

    # Input triplets are grouped by their intermediate (qint) edge b->a: row pointers per qint edge.
    trip_in_out = idx["triplet_in"]["out"]
    n_in_per_inter = torch.bincount(trip_in_out, minlength=num_qint_edges)
    start_per_inter = torch.cumsum(n_in_per_inter, dim=0) - n_in_per_inter

    # Each output triplet c->a<-b pairs with every input triplet d->b->a of its edge b->a.
    inter = idx["triplet_out"]["in"]
    counts = n_in_per_inter[inter]
    total = int(counts.sum())
    idx["out"] = torch.repeat_interleave(idx["triplet_out"]["out"], counts, output_size=total)
    idx_inter = torch.repeat_interleave(inter, counts, output_size=total)
    idx["trip_out_to_quad"] = torch.repeat_interleave(
        torch.arange(inter.numel(), device=device), counts, output_size=total
    )
    idx["trip_in_to_quad"] = torch.repeat_interleave(start_per_inter[inter], counts, output_size=total) + ragged_range(
        counts
    )
    idx_in = idx["triplet_in"]["in"][idx["trip_in_to_quad"]]

    # Drop d == c (same atom in the same image).
    offset_cd = (
        main_graph["cell_offset"][idx_in] + qint_graph["cell_offset"][idx_inter] - main_graph["cell_offset"][idx["out"]]
    )
    keep = (idx_s[idx["out"]] != idx_s[idx_in]) | torch.any(offset_cd != 0, dim=-1)
    for key in ("out", "trip_out_to_quad", "trip_in_to_quad"):
        idx[key] = idx[key][keep]
    idx["out_agg"] = get_inner_idx(idx["out"], dim_size=idx_s.numel())
    return idx
