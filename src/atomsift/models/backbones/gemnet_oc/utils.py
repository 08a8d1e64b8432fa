"""Index and geometry helpers of GemNet-OC in pure PyTorch.

Same names, arguments and results as ``fairchem.core.models.gemnet_oc.utils`` (and
``get_max_neighbors_mask`` from ``fairchem.core.common.utils``); segment reductions and sparse
matrices are replaced by bincount / index_add_ / cumsum / repeat_interleave.
"""

from __future__ import annotations

import logging

import torch
from torch import Tensor

# tag_warnings speaks for the model: under model.py's logger, the one train/setup.py mutes while fitting scales
log = logging.getLogger("atomsift.models.backbones.gemnet_oc.model")

OC20_TAGS = (0, 1, 2)  # subsurface, surface, adsorbate
# kinds of data warning already given (tag_warnings, batch_bases.collinear_warning): once per training run
# (forget_data_warnings at its start) or process, not per model, as a run's training, EMA and test models
# would each repeat it
WARNED: set[str] = set()


def forget_data_warnings() -> None:
    """Let GemNet-OC's data warnings be said again (a new training run in the same process)."""
    WARNED.clear()


__all__ = [
    "WARNED",
    "calculate_interatomic_vectors",
    "forget_data_warnings",
    "get_angle",
    "get_edge_id",
    "get_inner_idx",
    "get_max_neighbors_mask",
    "get_projected_angle",
    "inner_product_clamped",
    "mask_neighbors",
    "ragged_range",
    "repeat_blocks",
    "segment_sum",
    "tag_warnings",
    "vector_rejection",
]


def _exclusive_cumsum(x: Tensor) -> Tensor:
    return torch.cumsum(x, dim=0) - x


def segment_sum(values: Tensor, sizes: Tensor) -> Tensor:
    """Sum consecutive segments of ``values`` (first axis) with lengths ``sizes`` (G,) -> (G, ...)."""
    seg = torch.repeat_interleave(torch.arange(sizes.numel(), device=sizes.device), sizes)
    out = values.new_zeros((sizes.numel(), *values.shape[1:]))
    return out.index_add_(0, seg, values)


def ragged_range(sizes: Tensor) -> Tensor:
    """Concatenated ranges: sizes [1, 4, 2, 3] -> [0, 0 1 2 3, 0 1, 0 1 2] (int64)."""
    sizes = sizes.long()
    total = int(sizes.sum())
    if total == 0:
        return sizes.new_empty(0)
    starts = torch.repeat_interleave(_exclusive_cumsum(sizes), sizes, output_size=total)
    return torch.arange(total, device=sizes.device) - starts


def repeat_blocks(
    sizes: Tensor,
    repeats: Tensor | int,
    continuous_indexing: bool = True,
    start_idx: int = 0,
    block_inc: Tensor | int = 0,
    repeat_inc: Tensor | int = 0,
) -> Tensor:
    """Repeat blocks of consecutive indices.

    Block g has ``sizes[g]`` indices starting at ``base_g`` and is written ``repeats[g]`` times, the
    k-th copy shifted by ``k * repeat_inc[g]``. ``base_g = start_idx`` plus the sizes of all earlier
    blocks (if continuous_indexing, counting blocks with zero repeats too) plus the block increments
    of the earlier blocks (``g * block_inc`` for an int, ``block_inc[:g].sum()`` for a (G-1,) tensor).

    Examples (sizes=[1,3,2], repeats=[3,2,3]):
        continuous_indexing=False -> [0 0 0  0 1 2 0 1 2  0 1 0 1 0 1]
        continuous_indexing=True  -> [0 0 0  1 2 3 1 2 3  4 5 4 5 4 5]
        ... and repeat_inc=4      -> [0 4 8  1 2 3 5 6 7  4 5 8 9 12 13]
    """
    sizes = sizes.long()
    if sizes.dim() != 1 or bool((sizes < 0).any()):
        raise ValueError("repeat_blocks: sizes must be a 1-d tensor of non-negative counts")
    num = sizes.numel()
    device = sizes.device

    def per_block(x: Tensor | int) -> Tensor:
        if isinstance(x, Tensor):
            return x.to(device=device, dtype=torch.long).expand(num) if x.dim() == 0 else x.to(device).long()
        return torch.full((num,), int(x), dtype=torch.long, device=device)

    reps = per_block(repeats)
    if bool((reps < 0).any()):
        raise ValueError("repeat_blocks: repeats must be non-negative")
    rinc = per_block(repeat_inc)

    base = torch.full((num,), int(start_idx), dtype=torch.long, device=device)
    if continuous_indexing:
        base = base + _exclusive_cumsum(sizes)
    if isinstance(block_inc, Tensor) and block_inc.dim() > 0:
        base[1:] += torch.cumsum(block_inc.to(device).long(), dim=0)[: num - 1]
    else:
        base = base + torch.arange(num, device=device) * int(block_inc)

    counts = sizes * reps
    total = int(counts.sum())
    block = torch.repeat_interleave(torch.arange(num, device=device), counts, output_size=total)
    pos = ragged_range(counts)
    size_e = sizes[block]
    copy, within = torch.div(pos, size_e, rounding_mode="floor"), torch.remainder(pos, size_e)
    return base[block] + copy * rinc[block] + within


def get_inner_idx(idx: Tensor, dim_size: int) -> Tensor:
    """Rank of each element among the elements with the same value, in order of occurrence.

    idx=[0 0 0 1 1 1 1 2 2] -> [0 1 2 0 1 2 3 0 1]. fairchem requires sorted ``idx``; this also
    accepts unsorted input (and agrees with fairchem on sorted input).
    """
    idx = idx.long()
    if idx.numel() == 0:
        return idx.new_empty(0)
    counts = torch.bincount(idx, minlength=dim_size)
    ranks = ragged_range(counts)
    if bool((idx[1:] >= idx[:-1]).all()):
        return ranks
    order = torch.sort(idx, stable=True).indices
    out = torch.empty_like(idx)
    out[order] = ranks
    return out


def mask_neighbors(neighbors: Tensor, edge_mask: Tensor) -> Tensor:
    """Number of kept edges per consecutive group: neighbors (G,) counts, edge_mask (E,) bool -> (G,)."""
    return segment_sum(edge_mask.long(), neighbors.long())


def get_edge_id(edge_idx: Tensor, cell_offsets: Tensor, num_atoms: int) -> Tensor:
    """Unique integer id of each (source, target, cell offset) edge; edge_idx (2, E), cell_offsets (E, 3)."""
    if cell_offsets.numel() == 0:
        return edge_idx[0] + edge_idx[1] * num_atoms
    cell_basis = cell_offsets.max() - cell_offsets.min() + 1
    weights = torch.stack([torch.ones_like(cell_basis), cell_basis, cell_basis * cell_basis])
    cell_id = (cell_offsets * weights[None, :]).sum(-1).long()
    return edge_idx[0] + edge_idx[1] * num_atoms + cell_id * num_atoms**2


def calculate_interatomic_vectors(
    R: Tensor, id_s: Tensor, id_t: Tensor, offsets_st: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Distances (E,) and unit vectors (E, 3) from source to target: R_t - R_s (+ offsets_st)."""
    V_st = R[id_t] - R[id_s]
    if offsets_st is not None:
        V_st = V_st + offsets_st
    D_st = torch.sqrt(torch.sum(V_st**2, dim=1))
    return D_st, V_st / D_st[:, None]


def inner_product_clamped(x: Tensor, y: Tensor) -> Tensor:
    """Dot product over the last axis, clamped to [-1, 1] (for unit vectors)."""
    return torch.sum(x * y, dim=-1).clamp(min=-1, max=1)


def get_angle(R_ac: Tensor, R_ab: Tensor) -> Tensor:
    """Angle (radians, in [0, pi]) between vectors (N, 3) via atan2(|u x v|, u.v); |u x v| >= 1e-9."""
    x = torch.sum(R_ac * R_ab, dim=-1)
    y = torch.linalg.cross(R_ac, R_ab, dim=-1).norm(dim=-1).clamp(min=1e-9)
    return torch.atan2(y, x)


def vector_rejection(R_ab: Tensor, P_n: Tensor) -> Tensor:
    """Component of R_ab (N, 3) orthogonal to the plane normals P_n (N, 3)."""
    a_dot_n = torch.sum(R_ab * P_n, dim=-1)
    n_dot_n = torch.sum(P_n * P_n, dim=-1)
    return R_ab - (a_dot_n / n_dot_n)[:, None] * P_n


def get_projected_angle(R_ab: Tensor, P_n: Tensor, eps: float = 1e-4) -> Tensor:
    """Signed angle of R_ab projected on the plane with normal P_n, from x cross P_n (y cross P_n if tiny)."""
    R_ab_proj = torch.linalg.cross(R_ab, P_n, dim=-1)
    zero_angle = torch.linalg.cross(P_n.new_tensor([[1.0, 0.0, 0.0]]).expand_as(P_n), P_n, dim=-1)
    use_y = torch.norm(zero_angle, dim=-1) < eps
    y_axis = P_n.new_tensor([[0.0, 1.0, 0.0]]).expand_as(P_n)
    zero_angle = torch.where(use_y[:, None], torch.linalg.cross(y_axis, P_n, dim=-1), zero_angle)
    angle = get_angle(zero_angle, R_ab_proj)
    flip = torch.sum(torch.linalg.cross(zero_angle, R_ab_proj, dim=-1) * P_n, dim=-1) < 0
    return torch.where(flip, -angle, angle)


def get_max_neighbors_mask(
    natoms: Tensor,
    index: Tensor,
    atom_distance: Tensor,
    max_num_neighbors_threshold: int,
    degeneracy_tolerance: float = 0.01,
    enforce_max_strictly: bool = False,
) -> tuple[Tensor, Tensor]:
    """Keep at most ``max_num_neighbors_threshold`` nearest edges per target atom (fairchem's rule).

    Args:
        natoms: (B,) atoms per structure.
        index: (E,) target atom of each edge, sorted.
        atom_distance: (E,) edge lengths.
        max_num_neighbors_threshold: k; <= 0 keeps everything.
        degeneracy_tolerance: non-strict mode keeps every edge not longer than the (k+1)-th
            nearest edge of its atom (0-based position k) plus this tolerance. Note that this
            always keeps at least k+1 edges where an atom has more than k (fairchem 1.10's rule).
        enforce_max_strictly: keep exactly the k nearest (ties broken as torch.sort breaks them).

    Returns:
        mask (E,) bool, num_neighbors_image (B,) kept edges per structure.
    """
    device = index.device
    num_atoms = int(natoms.sum())
    num_neighbors = torch.bincount(index, minlength=num_atoms) if index.numel() else index.new_zeros(num_atoms)
    max_num = int(num_neighbors.max()) if num_atoms else 0
    k = int(max_num_neighbors_threshold)

    def per_image(counts: Tensor) -> Tensor:
        return segment_sum(counts, natoms.long())

    if max_num <= k or k <= 0:
        kept = num_neighbors.clamp(max=k) if k > 0 else num_neighbors
        return torch.ones_like(index, dtype=torch.bool), per_image(kept)

    # Dense (num_atoms, max_num) distance table, inf-padded; index is sorted by atom.
    offset = _exclusive_cumsum(num_neighbors)
    slot = torch.arange(index.numel(), device=device) - offset[index]
    table = torch.full((num_atoms, max_num), float("inf"), device=device, dtype=atom_distance.dtype)
    table[index, slot] = atom_distance
    table, order = torch.sort(table, dim=1)  # torch.sort's default tie order, as fairchem

    if enforce_max_strictly:
        table, order = table[:, :k], order[:, :k]
        kept = num_neighbors.clamp(max=k)
    else:
        limit = table[:, k] + degeneracy_tolerance
        included = table <= limit[:, None]
        table = torch.where(included, table, torch.full_like(table, float("inf")))
        n_incl = included.sum(dim=1)
        width = int(n_incl.max())
        table, order = table[:, :width], order[:, :width]
        kept = torch.minimum(num_neighbors, n_incl)

    finite = torch.isfinite(table)
    edge_ids = (order + offset[:, None])[finite]
    mask = torch.zeros(index.numel(), dtype=torch.bool, device=device)
    mask[edge_ids] = True
    return mask, per_image(kept)


def tag_warnings(tags: Tensor, qint_tags: tuple[int, ...], warned: set[str]) -> None:
    """Warn once per model about tags that silently change the quadruplet interactions.

    Tags outside OC20's 0 / 1 / 2 are most likely ASE's: its surface builders (fcc111, ...) number the layers
    from the top (1, 2, 3, ...) and give adsorbates 0. And when no atom has a tag in ``qint_tags`` the
    quadruplets contribute nothing. ``warned`` holds the kinds already said (the model passes ``WARNED``).
    """
    if not log.isEnabledFor(logging.WARNING):  # muted (scale-factor fitting): say it at the next chance instead
        return
    present = set(torch.unique(tags).tolist())
    odd = sorted(present - set(OC20_TAGS))
    if odd and "odd" not in warned:
        warned.add("odd")
        log.warning(
            "GemNet-OC: tags %s are not OC20's (0 subsurface, 1 surface, 2 adsorbate); ASE's surface builders put "
            "layer numbers in tags (adsorbates 0). Quadruplets use atoms tagged %s: set OC20 tags, or "
            "atoms.set_tags(2) to treat every atom alike",
            odd,
            list(qint_tags),
        )
    if not present & set(qint_tags) and "none" not in warned:
        warned.add("none")
        log.warning(
            "GemNet-OC: no atom of this batch has a tag in qint_tags=%s, so quadruplet interactions "
            "contribute nothing (JMP tags all atoms of non-OC structures 2)",
            list(qint_tags),
        )
