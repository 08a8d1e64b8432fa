"""The four GemNet-OC graphs (main, atom-to-atom, atom-edge, quadruplet), built as fairchem-core 1.10 does.

Which edges a graph holds decides the model's output, so the rules follow fairchem exactly:

* the largest graph (a2a, cutoff_aint / max_neighbors_aint; or the main graph when no atom interaction is
  on) holds the pairs with squared distance <= cutoff**2 and > 1e-4 A^2, over the periodic images
  -rep..rep per periodic lattice direction (rep = ceil(cutoff / plane spacing), the batch maximum);
* per target atom at most ``max_neighbors`` nearest are kept ("strict": exactly that many, ties broken by
  the same padded sort fairchem runs; else all within (k+1)-th distance + 0.01, fairchem's tolerance rule);
* the other graphs are subselections (cutoff, then max neighbours on the distances), skipped where their
  settings equal the larger graph's;
* the quadruplet graph keeps edges with a source or target tagged with one of ``qint_tags``;
* the main graph is symmetrised: the edges with source < target (or, between images of one atom, with the
  earlier image) are kept and their reverses appended, per structure; ``id_swap`` maps an edge to its reverse.

To break ties exactly as fairchem does, squared distances for the first selection are computed with the
same float operations as fairchem's ``radius_graph_pbc`` and candidates are listed in its order (target,
source, image); the neighbour search itself is atomsift.graph's ``radius_graph``.

Conventions (fairchem's): ``edge_index`` = [source, target]; ``vector`` = unit vector source -> target;
``cell_offset`` = c with r_target - r_source + c @ cell = the edge vector; ``num_neighbors`` = edges per
structure.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from atomsift.errors import ConfigError
from atomsift.graph.cells import complete_cells
from atomsift.graph.precision import full_precision
from atomsift.models.base import coincident_atoms_error

Graph = dict[str, Tensor]

_MIN_DIST_SQ = 1e-4  # A^2; pairs closer than this are the same atom (fairchem's rule)
_DEGENERACY_TOLERANCE = 0.01  # fairchem's non-strict max-neighbour tolerance (units of the sorted values)


@dataclass(frozen=True)
class GraphSettings:
    """Cutoffs (A), neighbour limits and switches that decide the four graphs."""

    cutoff: float
    cutoff_qint: float
    cutoff_aeaint: float
    cutoff_aint: float
    max_neighbors: int
    max_neighbors_qint: int
    max_neighbors_aeaint: int
    max_neighbors_aint: int
    enforce_max_neighbors_strictly: bool = True
    use_pbc: bool = True
    quad_interaction: bool = False
    atom_edge_interaction: bool = False
    edge_atom_interaction: bool = False
    atom_interaction: bool = False
    qint_tags: tuple[int, ...] = (0, 1, 2)

    @property
    def uses_a2a(self) -> bool:
        return self.atom_edge_interaction or self.edge_atom_interaction or self.atom_interaction


@dataclass
class InteractionGraphs:
    """Graphs and index sets for one batch (empty dicts for switched-off interactions)."""

    main: Graph
    a2a: Graph
    a2ee2a: Graph
    qint: Graph
    id_swap: Tensor
    trip_idx_e2e: dict[str, Tensor]
    trip_idx_a2e: dict[str, Tensor] = field(default_factory=dict)
    trip_idx_e2a: dict[str, Tensor] = field(default_factory=dict)
    quad_idx: dict[str, Any] = field(default_factory=dict)


def resolve_cutoffs(
    cutoff: float,
    cutoff_qint: float | None,
    cutoff_aeaint: float | None,
    cutoff_aint: float | None,
    *,
    quad: bool,
    aeaint: bool,
    aint: bool,
) -> tuple[float, float, float, float]:
    """fairchem's defaults: unset (or unused) cutoffs fall back to ``cutoff``; aint to the largest of all.

    Returns (cutoff, cutoff_qint, cutoff_aeaint, cutoff_aint). Raises ConfigError if a cutoff exceeds aint.
    """
    for name, value in (
        ("cutoff", cutoff),
        ("cutoff_qint", cutoff_qint),
        ("cutoff_aeaint", cutoff_aeaint),
        ("cutoff_aint", cutoff_aint),
    ):
        if value is not None and not value > 0:
            raise ConfigError(
                f"GemNet-OC {name} must be a positive distance (A), got {value!r}",
                fix=f"set {name} to e.g. 6.0 (fairchem's default) or 12.0 (JMP)",
            )
    c_ae = cutoff_aeaint if (aeaint and cutoff_aeaint is not None) else cutoff
    c_q = cutoff_qint if (quad and cutoff_qint is not None) else cutoff
    c_a = cutoff_aint if (aint and cutoff_aint is not None) else max(cutoff, c_ae, c_q)
    if max(cutoff, c_ae, c_q) > c_a:
        raise ConfigError(
            f"GemNet-OC cutoffs (main {cutoff}, qint {c_q}, aeaint {c_ae}) must not exceed cutoff_aint {c_a}",
            fix="raise cutoff_aint or lower the other cutoffs",
        )
    return float(cutoff), float(c_q), float(c_ae), float(c_a)


def resolve_max_neighbors(
    max_neighbors: int,
    max_neighbors_qint: int | None,
    max_neighbors_aeaint: int | None,
    max_neighbors_aint: int | None,
    *,
    quad: bool,
    aeaint: bool,
    aint: bool,
) -> tuple[int, int, int, int]:
    """Same fallbacks as :func:`resolve_cutoffs` for the neighbour limits."""
    n_ae = max_neighbors_aeaint if (aeaint and max_neighbors_aeaint is not None) else max_neighbors
    n_q = max_neighbors_qint if (quad and max_neighbors_qint is not None) else max_neighbors
    n_a = max_neighbors_aint if (aint and max_neighbors_aint is not None) else max(max_neighbors, n_ae, n_q)
    if max(max_neighbors, n_ae, n_q) > n_a:
        raise ConfigError(
            f"GemNet-OC neighbour limits (main {max_neighbors}, qint {n_q}, aeaint {n_ae}) must not exceed "
            f"max_neighbors_aint {n_a}",
            fix="raise max_neighbors_aint or lower the other limits",
        )
    return int(max_neighbors), int(n_q), int(n_ae), int(n_a)


# --------------------------------------------------------------------------- neighbour selection


def max_neighbors_mask(natoms: Tensor, index: Tensor, values: Tensor, max_neighbors: int, strict: bool) -> Tensor:
    """Boolean mask keeping at most ``max_neighbors`` smallest ``values`` per target atom.

    Reproduces fairchem's ``get_max_neighbors_mask``, including its tie-breaking: values are placed in a
    (num_atoms, max_count) matrix padded with inf in list order and sorted along rows with ``torch.sort``.
    Non-strict: keep every value <= the (k+1)-th smallest + 0.01 (fairchem's rule, so k+1 may be kept).

    Args:
        natoms: (B,) atoms per structure.
        index: (E,) target atom of each edge, sorted.
        values: (E,) distances (or squared distances) to rank by.
        max_neighbors: k.
        strict: fairchem's enforce_max_neighbors_strictly.
    """
    device = index.device
    num_atoms = int(natoms.sum())
    counts = torch.bincount(index, minlength=num_atoms)
    max_count = int(counts.max()) if counts.numel() else 0
    if max_count <= max_neighbors or max_neighbors <= 0:
        return torch.ones_like(index, dtype=torch.bool)
    start = torch.cumsum(counts, 0) - counts
    slot = torch.arange(index.numel(), device=device) - start[index]
    padded = torch.full((num_atoms * max_count,), math.inf, device=device, dtype=values.dtype)
    padded.index_copy_(0, index * max_count + slot, values)
    padded = padded.view(num_atoms, max_count)
    padded, order = torch.sort(padded, dim=1)
    if strict:
        padded, order = padded[:, :max_neighbors], order[:, :max_neighbors]
    else:
        limit = padded[:, max_neighbors] + _DEGENERACY_TOLERANCE
        included = padded <= limit[:, None]
        padded = torch.where(included, padded, torch.full_like(padded, math.inf))
        width = int(included.sum(1).max())
        padded, order = padded[:, :width], order[:, :width]
    order = order + start[:, None]
    keep = torch.masked_select(order, torch.isfinite(padded))
    mask = torch.zeros(index.numel(), dtype=torch.bool, device=device)
    mask[keep] = True
    return mask


def _image_range(cell: Tensor, periodic: Tensor, radius: float) -> list[int]:
    """fairchem's number of images per lattice direction: ceil(radius / plane spacing), batch maximum."""
    reps = []
    for d in range(3):
        if not bool(periodic[:, d].any()):
            reps.append(0)
            continue
        c = cell[periodic[:, d]]
        cross = torch.cross(c[:, (d + 1) % 3], c[:, (d + 2) % 3], dim=-1)  # normal of the other two vectors
        vol = torch.sum(c[:, 0] * torch.cross(c[:, 1], c[:, 2], dim=-1), dim=-1, keepdim=True)
        reps.append(int(torch.ceil(radius * torch.norm(cross / vol, p=2, dim=-1)).max()))
    return reps


def _candidates(batch: Any, radius: float, use_pbc: bool) -> tuple[Tensor, Tensor]:
    """Pairs within ``radius`` (plus a small margin) as (edge_index [source, target], offsets (E, 3))."""
    from atomsift.graph.neighbors import radius_graph

    graph = radius_graph(batch, radius * (1 + 1e-5) + 1e-4, None, pbc=None if use_pbc else False)
    return graph.edge_index, graph.cell_offsets


@torch.no_grad()
def _select_first_graph(
    batch: Any, radius: float, max_neighbors: int, strict: bool, use_pbc: bool
) -> tuple[Tensor, Tensor]:
    """fairchem's radius_graph_pbc on atomsift candidates: (edge_index (2, E), offsets (E, 3) int64),
    sorted by (target, source, image)."""
    pos = batch.positions.detach()
    cell = batch.cell.detach().to(pos.dtype)
    periodic = batch.pbc.to(torch.bool) if use_pbc else torch.zeros_like(batch.pbc, dtype=torch.bool)
    edge_index, offsets = _candidates(batch, radius, use_pbc)
    offsets = offsets.to(torch.long)
    src, tgt = edge_index[0], edge_index[1]

    # a slab or wire built without a vacuum vector (ASE's fcc111 without vacuum: c = 0) gets an orthonormal
    # complement there, as in the pair search; fairchem's formula would divide by a zero volume
    reps = _image_range(complete_cells(cell, periodic, batch.ids) if use_pbc else cell, periodic, radius)
    inside = torch.ones_like(src, dtype=torch.bool)
    for d in range(3):
        inside &= offsets[:, d].abs() <= reps[d]
    src, tgt, offsets = src[inside], tgt[inside], offsets[inside]

    # the image table exactly as fairchem builds it, so that squared distances match bit for bit
    axes = [torch.arange(-r, r + 1, device=pos.device, dtype=pos.dtype) for r in reps]
    unit_cells = torch.cartesian_prod(*axes).view(-1, 3)  # (C, 3), last axis fastest
    table = torch.bmm(cell.transpose(1, 2), unit_cells.t().unsqueeze(0).expand(cell.shape[0], -1, -1))  # (B, 3, C)
    widths = [2 * r + 1 for r in reps]
    image = ((offsets[:, 0] + reps[0]) * widths[1] + offsets[:, 1] + reps[1]) * widths[2] + offsets[:, 2] + reps[2]
    shift = table[batch.batch[src], :, image]  # (E, 3)
    diff = pos[tgt] - (pos[src] + shift)
    sq = diff**2
    dist_sq = sq[:, 0] + sq[:, 1] + sq[:, 2]
    # fairchem drops such pairs as "the same atom"; two distinct atoms (or an atom and its own image) there are
    # an error in the structure, said here as PaiNN says it, not silently lost
    close = torch.le(dist_sq, _MIN_DIST_SQ) & ((src != tgt) | offsets.ne(0).any(dim=1))
    if bool(close.any()):
        edge = int(torch.nonzero(close)[0, 0])
        raise coincident_atoms_error(batch, int(tgt[edge]), int(src[edge]))
    keep = torch.le(dist_sq, radius * radius) & torch.gt(dist_sq, _MIN_DIST_SQ)
    src, tgt, image, offsets, dist_sq = src[keep], tgt[keep], image[keep], offsets[keep], dist_sq[keep]

    # fairchem lists pairs by target, then source, then image
    num_images = math.prod(widths)
    key = (tgt * batch.num_atoms + src) * num_images + image
    order = torch.argsort(key)
    src, tgt, offsets, dist_sq = src[order], tgt[order], offsets[order], dist_sq[order]
    mask = max_neighbors_mask(batch.natoms, tgt, dist_sq, max_neighbors, strict)
    return torch.stack([src[mask], tgt[mask]]), offsets[mask]


def radius_graph_fairchem(batch: Any, radius: float, max_neighbors: int, strict: bool, use_pbc: bool) -> Graph:
    """The largest graph of a batch, with differentiable distances and unit vectors (fairchem's layout)."""
    edge_index, offsets = _select_first_graph(batch, radius, max_neighbors, strict, use_pbc)
    pos = batch.positions
    src, tgt = edge_index
    structure = batch.batch[tgt]
    cell = batch.cell.to(pos.dtype)[structure]  # (E, 3, 3)
    shift = torch.bmm(offsets.to(pos.dtype).view(-1, 1, 3), cell).view(-1, 3)
    distance_vec = pos[src] - pos[tgt] + shift  # target -> source image
    distance = distance_vec.norm(dim=-1)
    nonzero = distance != 0
    if not bool(nonzero.all()):
        edge_index, offsets, distance_vec, distance = (
            edge_index[:, nonzero],
            offsets[nonzero],
            distance_vec[nonzero],
            distance[nonzero],
        )
    return {
        "edge_index": edge_index,
        "distance": distance,
        "vector": -distance_vec / distance[:, None],
        "cell_offset": -offsets,
        "num_neighbors": _per_structure(batch, edge_index[1]),
    }


def _per_structure(batch: Any, target: Tensor) -> Tensor:
    return torch.bincount(batch.batch[target], minlength=batch.num_structures)


def _take(graph: Graph, mask: Tensor) -> Graph:
    out = dict(graph)
    out["edge_index"] = graph["edge_index"][:, mask]
    for key in ("distance", "vector", "cell_offset"):
        out[key] = graph[key][mask]
    return out


def subselect_edges(batch: Any, graph: Graph, cutoff: float | None, max_neighbors: int | None, strict: bool) -> Graph:
    """Keep edges with distance <= cutoff, then the max_neighbors nearest per target (None: skip a step)."""
    sub = dict(graph)
    if cutoff is not None:
        sub = _take(sub, sub["distance"] <= cutoff)
    if max_neighbors is not None:
        mask = max_neighbors_mask(batch.natoms, sub["edge_index"][1], sub["distance"].detach(), max_neighbors, strict)
        if not bool(mask.all()):
            sub = _take(sub, mask)
    sub["num_neighbors"] = _per_structure(batch, sub["edge_index"][1])
    return sub


def subselect_graph(
    batch: Any,
    graph: Graph,
    cutoff: float,
    max_neighbors: int,
    cutoff_orig: float,
    max_neighbors_orig: int,
    strict: bool,
) -> Graph:
    """A subgraph with a smaller cutoff / neighbour limit (steps equal to the original's are skipped)."""
    same_cutoff = abs(cutoff - cutoff_orig) <= 1e-8 + 1e-5 * abs(cutoff_orig)  # numpy.isclose, as fairchem
    return subselect_edges(
        batch,
        graph,
        None if same_cutoff else cutoff,
        None if max_neighbors == max_neighbors_orig else max_neighbors,
        strict,
    )


def symmetrize_edges(graph: Graph, num_structures: int, structure_of_edge: Tensor) -> tuple[Graph, Tensor]:
    """Keep one direction of every edge and append the reverses, structure by structure.

    An edge s -> t is kept if s < t, or (s == t, an edge between images of one atom) if its cell offset is
    lexicographically negative. Per structure the kept edges come first, then their reverses in the same
    order; reverses get negated vectors and offsets.

    Returns:
        (symmetric graph, id_swap (E,) index of each edge's reverse).
    """
    src, tgt = graph["edge_index"]
    c = graph["cell_offset"]
    earlier = (c[:, 0] < 0) | ((c[:, 0] == 0) & (c[:, 1] < 0)) | ((c[:, 0] == 0) & (c[:, 1] == 0) & (c[:, 2] < 0))
    keep = (src < tgt) | ((src == tgt) & earlier)
    kept = torch.nonzero(keep).squeeze(1)
    num_kept = kept.numel()
    half = torch.bincount(structure_of_edge[kept], minlength=num_structures)  # kept edges per structure
    # position of each kept edge inside its structure's block, and the block starts
    first = torch.cumsum(half, 0) - half  # start among kept edges
    block = 2 * first  # start of the structure's block in the new list
    structure = structure_of_edge[kept]
    within = torch.arange(num_kept, device=src.device) - first[structure]
    pos_fwd = block[structure] + within
    pos_rev = pos_fwd + half[structure]
    total = 2 * num_kept
    order = torch.empty(total, dtype=torch.long, device=src.device)
    order[pos_fwd] = torch.arange(num_kept, device=src.device)
    order[pos_rev] = torch.arange(num_kept, 2 * num_kept, device=src.device)

    def both(x: Tensor, negate: bool) -> Tensor:
        x = x[kept]
        return torch.cat([x, -x if negate else x])[order]

    edge_index = torch.cat([graph["edge_index"][:, kept], graph["edge_index"][:, kept].flip(0)], dim=1)[:, order]
    out: Graph = {
        "edge_index": edge_index,
        "cell_offset": both(c, True),
        "distance": both(graph["distance"], False),
        "vector": both(graph["vector"], True),
        "num_neighbors": 2 * half,
    }
    id_swap = torch.empty(total, dtype=torch.long, device=src.device)
    id_swap[pos_fwd] = pos_rev
    id_swap[pos_rev] = pos_fwd
    return out, id_swap


def inner_index(index: Tensor, size: int) -> Tensor:
    """Slot of each element among those with the same (sorted) index: [0 0 1 1 1] -> [0 1 0 1 2]."""
    counts = torch.bincount(index, minlength=size)
    start = torch.cumsum(counts, 0) - counts
    return torch.arange(index.numel(), device=index.device) - start[index]


def select_graphs(batch: Any, s: GraphSettings) -> tuple[Graph, Graph, Graph, Graph]:
    """The selected (unsymmetrised) main, a2a, a2ee2a and qint graphs of a batch ({} where switched off)."""
    strict = s.enforce_max_neighbors_strictly
    a2a: Graph = {}
    a2ee2a: Graph = {}
    qint: Graph = {}
    if s.uses_a2a:
        a2a = radius_graph_fairchem(batch, s.cutoff_aint, s.max_neighbors_aint, strict, s.use_pbc)
        main = subselect_graph(batch, a2a, s.cutoff, s.max_neighbors, s.cutoff_aint, s.max_neighbors_aint, strict)
        a2ee2a = subselect_graph(
            batch, a2a, s.cutoff_aeaint, s.max_neighbors_aeaint, s.cutoff_aint, s.max_neighbors_aint, strict
        )
    else:
        main = radius_graph_fairchem(batch, s.cutoff, s.max_neighbors, strict, s.use_pbc)
    if s.quad_interaction:
        if s.uses_a2a:
            qint = subselect_graph(
                batch, a2a, s.cutoff_qint, s.max_neighbors_qint, s.cutoff_aint, s.max_neighbors_aint, strict
            )
        else:
            qint = subselect_graph(batch, main, s.cutoff_qint, s.max_neighbors_qint, s.cutoff, s.max_neighbors, strict)
        tags = torch.as_tensor(s.qint_tags, dtype=batch.tags.dtype, device=batch.tags.device)
        src_ok = torch.isin(batch.tags[qint["edge_index"][0]], tags)
        tgt_ok = torch.isin(batch.tags[qint["edge_index"][1]], tags)
        qint = _take(qint, src_ok | tgt_ok)
        qint.pop("num_neighbors", None)
    return main, a2a, a2ee2a, qint


def merge_selected(batch: Any, parts: list[tuple[tuple[Graph, ...], Tensor, Tensor]]) -> tuple[Graph, ...]:
    """Join the graphs of disjoint sub-batches: parts are (graphs, atom indices, structure indices).

    Edges are ordered by structure (stable), so each structure's edges stay contiguous and sorted by target,
    as `symmetrize_edges` and the index builders expect.
    """
    merged: list[Graph] = []
    for k in range(len(parts[0][0])):
        pieces = [(graphs[k], atoms, structures) for graphs, atoms, structures in parts]
        if not pieces[0][0]:
            merged.append({})
            continue
        edge_index = torch.cat([atoms[g["edge_index"]] for g, atoms, _ in pieces], dim=1)
        order = torch.sort(batch.batch[edge_index[1]], stable=True).indices
        graph: Graph = {"edge_index": edge_index.index_select(1, order)}
        for key in ("distance", "vector", "cell_offset"):
            graph[key] = torch.cat([g[key] for g, _, _ in pieces]).index_select(0, order)
        if "num_neighbors" in pieces[0][0]:
            graph["num_neighbors"] = _per_structure(batch, graph["edge_index"][1])
        merged.append(graph)
    return tuple(merged)


def drop_edges(graph: Graph, p: float, generator: torch.Generator | None) -> Graph:
    """Edge dropout on an unsymmetrised graph: every directed edge is dropped with probability `p`.

    Symmetrisation then keeps one direction of each pair and appends its reverse, so a pair is dropped (in
    both directions) exactly when its kept direction was: each pair goes with probability `p`.
    """
    draw = torch.rand(graph["edge_index"].shape[1], generator=generator, device="cpu")
    return _take(graph, (draw >= p).to(graph["edge_index"].device))


@full_precision
def build_interaction_graphs(
    batch: Any,
    s: GraphSettings,
    groups: list[tuple[GraphSettings, Tensor]] | None = None,
    edge_dropout: float = 0.0,
    generator: torch.Generator | None = None,
) -> InteractionGraphs:
    """All graphs and triplet / quadruplet indices of a batch, as fairchem's ``get_graphs_and_indices``.

    Args:
        s: the graph settings for the whole batch (used when `groups` is None).
        groups: per group of structures (indices (K,), increasing) its own settings; the groups' graphs are
            selected on their sub-batches and joined before symmetrisation and the index sets.
        edge_dropout: probability of dropping each main-graph pair (training only).
        generator: random generator of the edge dropout.
    """
    from atomsift.graph.batch import sub_batch
    from atomsift.models.backbones.gemnet_oc.indices import get_mixed_triplets, get_quadruplets, get_triplets

    num_atoms = batch.num_atoms
    if groups is None:
        main, a2a, a2ee2a, qint = select_graphs(batch, s)
    else:
        parts = []
        for settings, structures in groups:
            sub, atoms = sub_batch(batch, structures)
            parts.append((select_graphs(sub, settings), atoms, structures))
        main, a2a, a2ee2a, qint = merge_selected(batch, parts)
    if edge_dropout > 0:
        main = drop_edges(main, edge_dropout, generator)
    main, id_swap = symmetrize_edges(main, batch.num_structures, batch.batch[main["edge_index"][1]])
    graphs = InteractionGraphs(
        main=main,
        a2a=a2a,
        a2ee2a=a2ee2a,
        qint=qint,
        id_swap=id_swap,
        trip_idx_e2e=get_triplets(main, num_atoms=num_atoms),
    )
    if s.quad_interaction:
        graphs.quad_idx = get_quadruplets(main, qint, num_atoms)
    if s.atom_edge_interaction:
        graphs.trip_idx_a2e = get_mixed_triplets(a2ee2a, main, num_atoms=num_atoms, return_agg_idx=True)
    if s.edge_atom_interaction:
        graphs.trip_idx_e2a = get_mixed_triplets(main, a2ee2a, num_atoms=num_atoms, return_agg_idx=True)
        a2ee2a["target_neighbor_idx"] = inner_index(a2ee2a["edge_index"][1], num_atoms)
    if s.atom_interaction:
        a2a["target_neighbor_idx"] = inner_index(a2a["edge_index"][1], num_atoms)
    return graphs
