"""Brute-force radius graphs in fairchem's GemNet-OC dict format, for the index tests."""

from __future__ import annotations

import itertools

import numpy as np
import torch


def brute_graph(
    pos: np.ndarray,
    cells: list[np.ndarray],
    pbc: list[list[bool]],
    batch: np.ndarray,
    cutoff: float,
    shuffle_seed: int | None = None,
    images: int = 3,
) -> dict[str, torch.Tensor]:
    """All edges s->t with |r_s + o @ cell - r_t| <= cutoff, o in [-images, images]^3 on periodic axes.

    ``cell_offset`` is the image o of the source; ``vector`` the unit vector t -> s. Edges are
    sorted by target then distance, or randomly permuted with ``shuffle_seed``.
    """
    pos = np.asarray(pos, dtype=float)
    batch = np.asarray(batch)
    src, dst, offs, vecs = [], [], [], []
    for b in np.unique(batch):
        ids = np.where(batch == b)[0]
        cell = np.asarray(cells[b], dtype=float)
        ranges = [range(-images, images + 1) if p else range(1) for p in pbc[b]]
        for o in itertools.product(*ranges):
            shift = np.asarray(o, dtype=float) @ cell
            for t in ids:
                for s in ids:
                    v = pos[s] + shift - pos[t]
                    d = float(np.linalg.norm(v))
                    if 1e-8 < d <= cutoff:
                        src.append(s)
                        dst.append(t)
                        offs.append(o)
                        vecs.append(v)
    src_a, dst_a = np.asarray(src, dtype=np.int64), np.asarray(dst, dtype=np.int64)
    offs_a = np.asarray(offs, dtype=np.int64).reshape(-1, 3)
    vecs_a = np.asarray(vecs, dtype=float).reshape(-1, 3)
    dist = np.linalg.norm(vecs_a, axis=1)
    if shuffle_seed is None:
        order = np.lexsort((dist, dst_a))
    else:
        order = np.random.default_rng(shuffle_seed).permutation(len(src_a))
    src_a, dst_a, offs_a, vecs_a, dist = src_a[order], dst_a[order], offs_a[order], vecs_a[order], dist[order]
    return {
        "edge_index": torch.from_numpy(np.stack([src_a, dst_a])).reshape(2, -1),
        "cell_offset": torch.from_numpy(offs_a),
        "distance": torch.tensor(dist, dtype=torch.float32),
        "vector": torch.tensor(vecs_a / np.maximum(dist, 1e-12)[:, None], dtype=torch.float32),
        "num_neighbors": torch.from_numpy(np.bincount(dst_a, minlength=len(pos))),
    }


def random_periodic(seed: int, n: int = 6, cutoff: float = 4.0, shuffle: bool = False) -> tuple[dict, int]:
    rng = np.random.default_rng(seed)
    cell = np.eye(3) * rng.uniform(2.5, 3.5) + rng.uniform(-0.3, 0.3, (3, 3))
    pos = rng.uniform(0, 1, (n, 3)) @ cell
    g = brute_graph(
        pos, [cell], [[True, True, True]], np.zeros(n, dtype=int), cutoff, shuffle_seed=seed if shuffle else None
    )
    return g, n


def random_molecules(seed: int, sizes: tuple[int, ...] = (5, 7), cutoff: float = 3.0) -> tuple[dict, int]:
    rng = np.random.default_rng(seed)
    pos = np.concatenate([rng.uniform(0, 3.0, (k, 3)) for k in sizes])
    batch = np.repeat(np.arange(len(sizes)), sizes)
    cells = [np.zeros((3, 3))] * len(sizes)
    g = brute_graph(pos, cells, [[False] * 3] * len(sizes), batch, cutoff)
    return g, int(sum(sizes))
