"""Triplet/quadruplet indices and index utilities on hand-made and brute-force graphs."""

from __future__ import annotations

import math

import numpy as np
import torch
from _gemnet_parts_graphs import brute_graph, random_molecules, random_periodic

from atomsift.models.backbones.gemnet_oc.indices import get_mixed_triplets, get_quadruplets, get_triplets
from atomsift.models.backbones.gemnet_oc.utils import (
    get_angle,
    get_edge_id,
    get_inner_idx,
    get_max_neighbors_mask,
    inner_product_clamped,
    mask_neighbors,
    ragged_range,
    repeat_blocks,
)


def _t(x):
    return torch.tensor(x, dtype=torch.long)


# ----------------------------------------------------------------- utilities


def test_ragged_range_and_inner_idx():
    assert ragged_range(_t([1, 4, 2, 3])).tolist() == [0, 0, 1, 2, 3, 0, 1, 0, 1, 2]
    assert ragged_range(_t([0, 2, 0, 1])).tolist() == [0, 1, 0]
    assert ragged_range(_t([0, 0])).tolist() == []
    assert get_inner_idx(_t([0, 0, 0, 1, 1, 1, 1, 2, 2]), 3).tolist() == [0, 1, 2, 0, 1, 2, 3, 0, 1]
    assert get_inner_idx(_t([2, 0, 2, 1, 0]), 3).tolist() == [0, 0, 1, 0, 1]


def test_repeat_blocks_documented_examples():
    s, r = _t([1, 3, 2]), _t([3, 2, 3])
    assert repeat_blocks(s, r, continuous_indexing=False).tolist() == [0, 0, 0, 0, 1, 2, 0, 1, 2, 0, 1, 0, 1, 0, 1]
    assert repeat_blocks(s, r).tolist() == [0, 0, 0, 1, 2, 3, 1, 2, 3, 4, 5, 4, 5, 4, 5]
    assert repeat_blocks(s, r, repeat_inc=4).tolist() == [0, 4, 8, 1, 2, 3, 5, 6, 7, 4, 5, 8, 9, 12, 13]
    assert repeat_blocks(s, r, start_idx=5).tolist() == [5, 5, 5, 6, 7, 8, 6, 7, 8, 9, 10, 9, 10, 9, 10]
    assert repeat_blocks(s, r, block_inc=1).tolist() == [0, 0, 0, 2, 3, 4, 2, 3, 4, 6, 7, 6, 7, 6, 7]
    assert repeat_blocks(_t([0, 3, 2]), r).tolist() == [0, 1, 2, 0, 1, 2, 3, 4, 3, 4, 3, 4]
    assert repeat_blocks(_t([2, 3, 2]), _t([2, 0, 2])).tolist() == [0, 1, 0, 1, 5, 6, 5, 6]
    # the symmetrize_edges use: each image's directed edges, then their counter-edges
    assert repeat_blocks(_t([2, 1]), 2, repeat_inc=3).tolist() == [0, 1, 3, 4, 2, 5]


def test_mask_neighbors_and_edge_id():
    assert mask_neighbors(_t([2, 0, 3]), torch.tensor([True, False, True, True, False])).tolist() == [1, 0, 2]
    g, n = random_periodic(3)
    ids = get_edge_id(g["edge_index"], g["cell_offset"], n)
    assert ids.unique().numel() == ids.numel()


def test_angles():
    u = torch.tensor([[1.0, 0, 0], [1.0, 0, 0], [0, 2.0, 0]])
    v = torch.tensor([[0, 1.0, 0], [-1.0, 0, 0], [0, 3.0, 0]])
    torch.testing.assert_close(get_angle(u, v), torch.tensor([math.pi / 2, math.pi, 0.0]), atol=1e-6, rtol=0)
    assert inner_product_clamped(torch.tensor([[1.0 + 1e-6, 0, 0]]), torch.tensor([[1.0, 0, 0]])).item() == 1.0


def test_max_neighbors_mask_strict_and_degenerate():
    # one structure, atom 0 has edges at 1.0, 2.0, 2.0, 3.0; atom 1 has one edge
    index = _t([0, 0, 0, 0, 1])
    dist = torch.tensor([2.0, 1.0, 3.0, 2.0, 1.0])
    mask, per_image = get_max_neighbors_mask(_t([2]), index, dist, 2, enforce_max_strictly=True)
    assert mask.tolist() == [True, True, False, False, True] and per_image.tolist() == [3]
    mask, per_image = get_max_neighbors_mask(_t([2]), index, dist, 2)
    assert mask.tolist() == [True, True, False, True, True] and per_image.tolist() == [4]
    mask, per_image = get_max_neighbors_mask(_t([1, 1]), index, dist, 10)
    assert mask.all() and per_image.tolist() == [4, 1]


# ----------------------------------------------------------------- triplets


def _triangle() -> dict:
    # atoms 0, 1, 2, all pairs, molecule
    src = [1, 2, 0, 2, 0, 1]
    dst = [0, 0, 1, 1, 2, 2]
    return {"edge_index": _t([src, dst]), "cell_offset": torch.zeros(6, 3, dtype=torch.long)}


def test_triplets_triangle():
    idx = get_triplets(_triangle(), num_atoms=3)
    # out edge c->a pairs with the other edge into a
    assert idx["out"].tolist() == [0, 1, 2, 3, 4, 5]
    assert idx["in"].tolist() == [1, 0, 3, 2, 5, 4]
    assert idx["out_agg"].tolist() == [0] * 6


def _single_atom_cubic() -> dict:
    pos = np.zeros((1, 3))
    return brute_graph(pos, [np.eye(3) * 2.0], [[True] * 3], np.zeros(1, dtype=int), 2.1)


def test_periodic_single_atom_counts():
    g = _single_atom_cubic()
    assert g["edge_index"].shape[1] == 6
    trip = get_triplets(g, 1)
    assert trip["out"].numel() == 30 and bool((trip["in"] != trip["out"]).all())
    assert trip["out_agg"].tolist() == list(range(5)) * 6
    # mixed triplets exclude exactly the closing edge with the same image
    e2e = get_mixed_triplets(g, g, 1, return_agg_idx=True)
    assert e2e["out"].numel() == 30  # in-edge b->a equal to out-edge c->a removed
    outward = get_mixed_triplets(g, g, 1, to_outedge=True)
    assert outward["out"].numel() == 30  # d->b with d in the image of a removed
    quad = get_quadruplets(g, g, 1)
    assert quad["out"].numel() == 6 * 5 * 5


def _brute_triplets(g: dict) -> set[tuple[int, int]]:
    s, t = g["edge_index"].tolist()
    return {(i, o) for o in range(len(s)) for i in range(len(s)) if i != o and t[i] == t[o]}


def _brute_mixed(g_in: dict, g_out: dict, to_outedge: bool) -> set[tuple[int, int]]:
    si, ti = g_in["edge_index"].tolist()
    so, to = g_out["edge_index"].tolist()
    oi, oo = g_in["cell_offset"].tolist(), g_out["cell_offset"].tolist()
    res = set()
    for o in range(len(so)):
        for i in range(len(si)):
            if to_outedge:
                if ti[i] != so[o]:
                    continue
                same = si[i] == to[o] and all(a + b == 0 for a, b in zip(oi[i], oo[o], strict=True))
            else:
                if ti[i] != to[o]:
                    continue
                same = si[i] == so[o] and all(a == b for a, b in zip(oi[i], oo[o], strict=True))
            if not same:
                res.add((i, o))
    return res


def _check_agg(out: torch.Tensor, agg: torch.Tensor) -> None:
    assert bool((out[1:] >= out[:-1]).all())
    for e in out.unique().tolist():
        assert sorted(agg[out == e].tolist()) == list(range(int((out == e).sum())))


def test_triplets_and_mixed_match_brute_force():
    for g, n in (
        random_periodic(0, n=4, cutoff=3.5),
        random_periodic(1, n=4, cutoff=3.5, shuffle=True),
        random_molecules(2),
    ):
        trip = get_triplets(g, n)
        assert set(zip(trip["in"].tolist(), trip["out"].tolist(), strict=True)) == _brute_triplets(g)
        _check_agg(trip["out"], trip["out_agg"])
        sub = {
            k: v[g["distance"] <= 3.0] if k != "edge_index" else v[:, g["distance"] <= 3.0]
            for k, v in g.items()
            if k != "num_neighbors"
        }
        for g_in, g_out, to_out in ((sub, g, False), (g, sub, False), (g, sub, True)):
            mixed = get_mixed_triplets(g_in, g_out, n, to_outedge=to_out, return_agg_idx=True)
            got = set(zip(mixed["in"].tolist(), mixed["out"].tolist(), strict=True))
            assert got == _brute_mixed(g_in, g_out, to_out)
            _check_agg(mixed["out"], mixed["out_agg"])


def test_quadruplets_match_brute_force():
    g, n = random_periodic(5, n=3, cutoff=3.2)
    q = {
        k: (v[:, g["distance"] <= 2.8] if k == "edge_index" else v[g["distance"] <= 2.8])
        for k, v in g.items()
        if k != "num_neighbors"
    }
    quad = get_quadruplets(g, q, n)
    tin, tout = quad["triplet_in"], quad["triplet_out"]
    got = set()
    for k in range(quad["out"].numel()):
        ti, to = quad["trip_in_to_quad"][k].item(), quad["trip_out_to_quad"][k].item()
        d_b, b_a = tin["in"][ti].item(), tin["out"][ti].item()
        assert tout["in"][to].item() == b_a and tout["out"][to].item() == quad["out"][k].item()
        got.add((quad["out"][k].item(), b_a, d_b))
    assert len(got) == quad["out"].numel()

    s, t = g["edge_index"].tolist()
    qs, qt = q["edge_index"].tolist()
    off, qoff = g["cell_offset"].tolist(), q["cell_offset"].tolist()
    ref = set()
    for ca in range(len(s)):
        for ba in range(len(qs)):
            if qt[ba] != t[ca] or (qs[ba] == s[ca] and qoff[ba] == off[ca]):
                continue
            for db in range(len(s)):
                if t[db] != qs[ba]:
                    continue
                d_off = [x + y for x, y in zip(off[db], qoff[ba], strict=True)]
                if s[db] == qt[ba] and all(v == 0 for v in d_off):
                    continue  # d == a
                if s[db] == s[ca] and d_off == off[ca]:
                    continue  # d == c
                ref.add((ca, ba, db))
    assert got == ref and len(ref) > 100
    _check_agg(quad["out"], quad["out_agg"])


def test_empty_graphs():
    empty = {"edge_index": torch.zeros(2, 0, dtype=torch.long), "cell_offset": torch.zeros(0, 3, dtype=torch.long)}
    assert all(v.numel() == 0 for v in get_triplets(empty, 3).values())
    quad = get_quadruplets(_triangle(), empty, 3)
    assert quad["out"].numel() == 0 and quad["out_agg"].numel() == 0
    mixed = get_mixed_triplets(empty, _triangle(), 3, return_agg_idx=True)
    assert mixed["out"].numel() == 0
