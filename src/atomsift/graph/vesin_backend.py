"""Full neighbour lists from the vesin library (compiled cell lists), as `_find_pairs` returns them.

`radius_graph` uses this on CPU for batches with periodic structures, where vesin finds pairs faster
than the brute-force torch search (benchmarks/RESULTS.md, "Neighbour lists"). The graph is the same
edge for edge: vesin only proposes pairs (at a cutoff a hair longer than asked), then each pair's
squared distance is recomputed from atomsift's own wrapped positions and lattice shifts with the same
elementwise float64 arithmetic as the torch search, the cutoff is applied to that distance, and
atomsift's nearest-first limit, tie rule and ordering run on the result as before.
"""

from __future__ import annotations

import functools
import os

import numpy as np
import torch
from torch import Tensor

from atomsift.errors import ConfigError
from atomsift.graph.batch import AtomsBatch
from atomsift.graph.cells import lattice_shift, squared_length, wrap

_MARGIN = 1e-8  # A added to the cutoff vesin is asked for; the exact cutoff is applied afterwards


@functools.cache
def vesin_available() -> bool:
    """True if the `vesin` package can be imported."""
    try:
        import vesin  # noqa: F401
    except ImportError:
        return False
    return True


BACKENDS = ("auto", "torch", "vesin")
MOLECULE_ATOMS = 200  # "auto" uses vesin for molecules from this size on


def use_vesin(backend: str | None, device: torch.device, pbc: Tensor, natoms: list[int]) -> bool:
    """Whether `radius_graph` finds pairs with vesin (see its `backend` argument); natoms: atoms per structure.

    "auto" picks vesin on CPU for a single structure, or for batches holding a periodic structure or a
    molecule of at least `MOLECULE_ATOMS` atoms: there it was as fast or faster than the torch search
    (benchmarks/RESULTS.md: small periodic cells, full lists as fast, 30 nearest 1.1-1.4x; 216-atom cells
    1.4-2x; one small molecule 1.4x; separately measured: cells of 1000-4000 atoms 12-23x, molecules of
    500-1000 atoms 2-3x), while for batches of small molecules the torch search is 3x faster (one vesin
    call per structure costs ~50 us).
    """
    name = backend if backend is not None else os.environ.get("ATOMSIFT_NEIGHBOR_BACKEND", "auto").strip() or "auto"
    if name not in BACKENDS:
        where = "radius_graph(backend=...)" if backend is not None else "environment variable ATOMSIFT_NEIGHBOR_BACKEND"
        raise ConfigError(
            f"unknown neighbour-list backend {name!r} in {where}", fix=f"use one of {', '.join(BACKENDS)}"
        )
    if name == "torch":
        return False
    if name == "vesin":
        if not vesin_available():
            raise ConfigError(
                "the neighbour-list backend 'vesin' was asked for but the vesin package is not installed",
                fix="pip install vesin, or use backend 'auto' or 'torch'",
            )
        return True
    wins = len(natoms) == 1 or bool(pbc.any()) or max(natoms, default=0) >= MOLECULE_ATOMS
    return device.type == "cpu" and wins and vesin_available()


def find_pairs_vesin(
    pos: Tensor, cell: Tensor, pbc: Tensor, batch: AtomsBatch, cutoff: float, max_neighbors: int | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Unsorted (target, source, offsets, squared distance A^2) of the pairs within the cutoff, found by vesin.

    Args: pos (N, 3) float64 A; cell (B, 3, 3) float64 A; pbc (B, 3) bool; cutoff in A. Tensors may live on
    any device: the search runs on CPU and the results are moved back. With `max_neighbors`, pairs that
    cannot be among any target's nearest (the cheap superset `_near_enough` keeps, judged on vesin's own
    distances with a margin far above their rounding) are dropped before the exact recomputation.
    """
    import vesin

    from atomsift.graph.neighbors import _near_enough

    device = pos.device
    pos, cell, pbc = pos.cpu(), cell.cpu(), pbc.cpu()
    if bool(pbc.any()):
        full, _, wrapped, k = wrap(pos, cell, pbc, batch)
    else:
        full, wrapped, k = torch.zeros_like(cell), pos, torch.zeros(pos.shape, dtype=torch.int64)
    finder = vesin.NeighborList(cutoff=cutoff + _MARGIN, full_list=True, n_threads=1)
    wrapped_np, full_np, pbc_np = wrapped.numpy(), full.numpy(), pbc.numpy()
    natoms = batch.natoms.tolist()
    parts, start = [], 0
    for b, n in enumerate(natoms):
        if n > 0:
            i, j, image, d = finder.compute(wrapped_np[start : start + n], full_np[b], pbc_np[b], "ijSd")
            parts.append((i.view(np.int64) + start, j.view(np.int64) + start, image, d))
        start += n
    if not parts:
        empty = torch.zeros(0, dtype=torch.int64, device=device)
        return (
            empty,
            empty,
            torch.zeros((0, 3), dtype=torch.int64, device=device),
            torch.zeros(0, dtype=pos.dtype, device=device),
        )
    target, source, image, approx = (torch.from_numpy(np.concatenate(x)) for x in zip(*parts))
    if max_neighbors is not None:
        near = _near_enough(target, approx * approx, pos.shape[0], max_neighbors)
        if near is not None:  # ascending targets: structures stay contiguous and in order
            target, source, image = target[near], source[near], image[near]
    # exact squared distances, as the torch search computes them: r_j + (S @ cell - r_i), wrapped positions
    struct = batch.batch.cpu().index_select(0, target)
    counts = torch.bincount(struct, minlength=len(natoms)).tolist()
    image_f = image.to(torch.float64)
    dist2 = torch.empty(target.shape, dtype=torch.float64)
    e0 = 0
    for b, m in enumerate(counts):  # per structure: its cell broadcasts, nothing is gathered per edge
        if m:
            rel = lattice_shift(image_f[e0 : e0 + m], full[b : b + 1]) - wrapped.index_select(0, target[e0 : e0 + m])
            dist2[e0 : e0 + m] = squared_length(wrapped.index_select(0, source[e0 : e0 + m]) + rel)
            e0 += m
    inside = torch.where(dist2 <= cutoff * cutoff)[0]
    target, source, image, dist2 = (x.index_select(0, inside) for x in (target, source, image, dist2))
    # back to the caller's (unwrapped) positions: r_j + S' cell - r_i with r = wrapped + k cell
    offsets = image.to(torch.int64) - k.index_select(0, source) + k.index_select(0, target)
    return tuple(x.to(device) for x in (target, source, offsets, dist2))  # type: ignore[return-value]
