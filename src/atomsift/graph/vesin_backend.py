"""Full neighbour lists from the vesin library (compiled cell lists), as `_find_pairs` returns them.

`radius_graph` uses this on CPU for batches with periodic structures, where vesin finds pairs faster
than the brute-force torch search (benchmarks/RESULTS.md, "Neighbour lists"). The graph is the same
edge for edge: vesin only proposes pairs (at a cutoff a hair longer than asked), then each pair's
distance is recomputed from atomsift's own wrapped positions and lattice shifts with the same
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
from atomsift.graph.cells import lattice_shift, length, wrap

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


def use_vesin(backend: str | None, device: torch.device, pbc: Tensor) -> bool:
    """Whether `radius_graph` finds pairs with vesin (see its `backend` argument)."""
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
    return device.type == "cpu" and bool(pbc.any()) and vesin_available()


def find_pairs_vesin(
    pos: Tensor, cell: Tensor, pbc: Tensor, batch: AtomsBatch, cutoff: float
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Unsorted (target, source, offsets, distance) of all pairs within the cutoff, one vesin call per structure.

    Args: pos (N, 3) float64 A; cell (B, 3, 3) float64 A; pbc (B, 3) bool; cutoff in A. Tensors may live on
    any device: the search runs on CPU and the results are moved back.
    """
    import vesin

    device = pos.device
    pos_cpu, cell_cpu, pbc_cpu = pos.cpu(), cell.cpu(), pbc.cpu()
    if bool(pbc_cpu.any()):
        full, _, wrapped, k = wrap(pos_cpu, cell_cpu, pbc_cpu, batch)
    else:
        full, wrapped, k = torch.zeros_like(cell_cpu), pos_cpu, torch.zeros(pos_cpu.shape, dtype=torch.int64)
    finder = vesin.NeighborList(cutoff=cutoff + _MARGIN, full_list=True, n_threads=1)
    wrapped_np, full_np, pbc_np = wrapped.numpy(), full.numpy(), pbc_cpu.numpy()
    targets, sources, images = [], [], []
    start = 0
    for b, n in enumerate(batch.natoms.tolist()):
        if n > 0:
            i, j, s = finder.compute(wrapped_np[start : start + n], full_np[b], pbc_np[b], "ijS")
            targets.append(i.astype(np.int64) + start)
            sources.append(j.astype(np.int64) + start)
            images.append(s.astype(np.int64))
        start += n
    if targets:
        target = torch.from_numpy(np.concatenate(targets))
        source = torch.from_numpy(np.concatenate(sources))
        image = torch.from_numpy(np.concatenate(images).reshape(-1, 3))
    else:
        target = source = torch.zeros(0, dtype=torch.int64)
        image = torch.zeros((0, 3), dtype=torch.int64)
    # the distance exactly as the torch search computes it: r_j + (S @ cell - r_i), wrapped positions
    atom_struct = batch.batch.cpu()
    shift = lattice_shift(image.to(wrapped.dtype), full.index_select(0, atom_struct.index_select(0, target)))
    rel = shift - wrapped.index_select(0, target)
    dist = length(wrapped.index_select(0, source) + rel)
    inside = torch.where(dist <= cutoff)[0]
    target, source, image, dist = (x.index_select(0, inside) for x in (target, source, image, dist))
    # back to the caller's (unwrapped) positions: r_j + S' cell - r_i with r = wrapped + k cell
    offsets = image - k.index_select(0, source) + k.index_select(0, target)
    return tuple(x.to(device) for x in (target, source, offsets, dist))  # type: ignore[return-value]
