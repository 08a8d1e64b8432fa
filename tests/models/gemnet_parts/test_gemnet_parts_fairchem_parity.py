"""Parity of the GemNet-OC parts with fairchem-core 1.10 (run in the fairchem venv).

/work/fairchem-venv/bin/python -m pytest tests/models/gemnet_parts/test_gemnet_parts_fairchem_parity.py -q
"""

from __future__ import annotations

import types

import numpy as np
import pytest
import torch

pytest.importorskip("fairchem.core")
pytest.importorskip("torch_sparse")

import fairchem.core.models.gemnet_oc.interaction_indices as fc_idx
import fairchem.core.models.gemnet_oc.layers.base_layers as fc_base
import fairchem.core.models.gemnet_oc.layers.efficient as fc_eff
import fairchem.core.models.gemnet_oc.layers.embedding_block as fc_emb
import fairchem.core.models.gemnet_oc.layers.radial_basis as fc_rbf
import fairchem.core.models.gemnet_oc.layers.spherical_basis as fc_sph
import fairchem.core.models.gemnet_oc.utils as fc_utils
from _gemnet_parts_graphs import random_molecules, random_periodic
from fairchem.core.common.utils import get_max_neighbors_mask as fc_max_neighbors
from fairchem.core.models.gemnet_oc.gemnet_oc import GemNetOC
from fairchem.core.modules.scaling import ScaleFactor as FcScaleFactor

from atomsift.models.backbones.gemnet_oc import bases, indices, layers, scaling, utils

# ----------------------------------------------------------------- helpers


def _copy_into(ours: torch.nn.Module, theirs: torch.nn.Module) -> None:
    assert sorted(ours.state_dict()) == sorted(theirs.state_dict())
    ours.load_state_dict(theirs.state_dict(), strict=True)


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-5, atol: float = 1e-6) -> None:
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


def _equal_idx(ours, theirs, name: str = "") -> None:
    if isinstance(theirs, dict):
        for k, v in theirs.items():
            if k == "adj_edges":
                continue
            _equal_idx(ours[k], v, f"{name}.{k}")
        return
    assert torch.equal(ours.long(), theirs.long()), name


# ----------------------------------------------------------------- layers


def test_dense_residual_embeddings():
    torch.manual_seed(0)
    for bias, act in ((False, None), (True, "silu"), (False, "swish")):
        fc, ours = fc_base.Dense(6, 5, bias=bias, activation=act), layers.Dense(6, 5, bias=bias, activation=act)
        _copy_into(ours, fc)
        x = torch.randn(7, 6)
        _close(ours(x), fc(x), rtol=0, atol=0)
    fc, ours = (
        fc_base.ResidualLayer(6, nLayers=2, activation="silu"),
        layers.ResidualLayer(6, nLayers=2, activation="silu"),
    )
    _copy_into(ours, fc)
    x = torch.randn(7, 6)
    _close(ours(x), fc(x), rtol=0, atol=0)

    fc, ours = fc_emb.AtomEmbedding(8, 120), layers.AtomEmbedding(8, 120)
    _copy_into(ours, fc)
    z = torch.tensor([1, 6, 8, 120, 79])
    _close(ours(z), fc(z), rtol=0, atol=0)

    fc, ours = fc_emb.EdgeEmbedding(8, 4, 5, activation="silu"), layers.EdgeEmbedding(8, 4, 5, activation="silu")
    _copy_into(ours, fc)
    h, m = torch.randn(5, 8), torch.randn(6, 4)
    ei = torch.tensor([[0, 1, 2, 3, 4, 0], [1, 0, 3, 2, 0, 4]])
    _close(ours(h, m, ei), fc(h, m, ei), rtol=0, atol=0)


def test_basis_embedding_and_bilinear():
    torch.manual_seed(1)
    g, n = random_periodic(11, n=5, cutoff=3.5)
    trip = indices.get_triplets(g, n)
    E, T = g["edge_index"].shape[1], trip["in"].numel()
    R, S, interm, cin, cout = 6, 4, 5, 7, 3
    rad, sph, m = torch.randn(E, R), torch.randn(T, S), torch.randn(T, cin)

    fc_be, be = fc_eff.BasisEmbedding(R, interm, S), layers.BasisEmbedding(R, interm, S)
    _copy_into(be, fc_be)
    kw = {"idx_sph_outer": trip["out"], "idx_sph_inner": trip["out_agg"]}
    ours_basis, fc_basis = be(rad, sph, **kw), fc_be(rad, sph, **kw)
    for a, b in zip(ours_basis, fc_basis, strict=True):
        _close(a, b, rtol=0, atol=0)
    _close(be(rad, sph, idx_sph_outer=trip["out"]), fc_be(rad, sph, idx_sph_outer=trip["out"]))

    fc_bil, bil = (
        fc_eff.EfficientInteractionBilinear(cin, interm, cout),
        layers.EfficientInteractionBilinear(cin, interm, cout),
    )
    _copy_into(bil, fc_bil)
    _close(bil(ours_basis, m, trip["out"], trip["out_agg"]), fc_bil(fc_basis, m, trip["out"], trip["out_agg"]))

    # atom-level second aggregation (edge -> atom), as in the edge-to-atom interaction
    slot = utils.get_inner_idx(g["edge_index"][1], n)
    kw2 = {"idx_rad_outer": g["edge_index"][1], "idx_rad_inner": slot, "num_atoms": n, **kw}
    ours_basis, fc_basis = be(rad, sph, **kw2), fc_be(rad, sph, **kw2)
    for a, b in zip(ours_basis, fc_basis, strict=True):
        _close(a, b, rtol=0, atol=0)
    args = (m, trip["out"], trip["out_agg"], g["edge_index"][1], slot, n)
    _close(bil(ours_basis, *args), fc_bil(fc_basis, *args))

    fc_be, be = fc_eff.BasisEmbedding(R, interm), layers.BasisEmbedding(R, interm)
    _copy_into(be, fc_be)
    _close(be(rad), fc_be(rad), rtol=0, atol=0)
    kw3 = {"idx_rad_outer": g["edge_index"][1], "idx_rad_inner": slot, "num_atoms": n}
    _close(be(rad, **kw3), fc_be(rad, **kw3), rtol=0, atol=0)


# ----------------------------------------------------------------- bases

RBFS = [{"name": "gaussian"}, {"name": "spherical_bessel"}, {"name": "bernstein"}]
ENVS = [{"name": "polynomial", "exponent": 5}, {"name": "exponential"}]


@pytest.mark.parametrize("rbf", RBFS)
@pytest.mark.parametrize("env", ENVS)
def test_radial_basis(rbf, env):
    fc = fc_rbf.RadialBasis(16, 6.0, rbf=dict(rbf), envelope=dict(env), scale_basis=True)
    ours = bases.RadialBasis(16, 6.0, rbf=dict(rbf), envelope=dict(env), scale_basis=True)
    fc.scale_rbf.set_(1.7)
    _copy_into(ours, fc)
    d = torch.rand(200) * 6.5 + 0.05
    _close(ours(d), fc(d))


def _angles(num: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    d = torch.rand(num, generator=g) * 5 + 0.5
    cos = torch.rand(num, generator=g) * 2 - 1
    cos[:2] = torch.tensor([-1.0, 1.0])
    theta = torch.rand(num, generator=g) * np.pi
    return d, cos, theta


@pytest.mark.parametrize("cbf", [{"name": "spherical_harmonics"}, {"name": "gaussian"}])
def test_circular_basis(cbf):
    rb_fc, rb = fc_rbf.RadialBasis(16, 6.0), bases.RadialBasis(16, 6.0)
    fc = fc_sph.CircularBasisLayer(7, rb_fc, cbf=dict(cbf), scale_basis=True)
    ours = bases.CircularBasisLayer(7, rb, cbf=dict(cbf), scale_basis=True)
    fc.scale_cbf.set_(0.8)
    _copy_into(ours, fc)
    d, cos, _ = _angles(300)
    for a, b in zip(ours(d, cos), fc(d, cos), strict=True):
        _close(a, b, rtol=1e-4, atol=1e-5)
    d64, cos64 = d.double(), cos.double()
    for a, b in zip(ours.double()(d64, cos64), fc.double()(d64, cos64), strict=True):
        _close(a, b, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize(
    "sbf", [{"name": "legendre_outer"}, {"name": "spherical_harmonics"}, {"name": "gaussian_outer"}]
)
def test_spherical_basis(sbf):
    rb_fc, rb = fc_rbf.RadialBasis(16, 6.0), bases.RadialBasis(16, 6.0)
    fc = fc_sph.SphericalBasisLayer(7, rb_fc, sbf=dict(sbf), scale_basis=True)
    ours = bases.SphericalBasisLayer(7, rb, sbf=dict(sbf), scale_basis=True)
    fc.scale_sbf.set_(1.3)
    _copy_into(ours, fc)
    d, cos, theta = _angles(300)
    for a, b in zip(ours(d, cos, theta), fc(d, cos, theta), strict=True):
        _close(a, b, rtol=1e-4, atol=1e-5)
    args64 = (d.double(), cos.double(), theta.double())
    for a, b in zip(ours.double()(*args64), fc.double()(*args64), strict=True):
        _close(a, b, rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------- indices


def _subgraph(g: dict, cutoff: float) -> dict:
    keep = g["distance"] <= cutoff
    return {k: (v[:, keep] if k == "edge_index" else v[keep]) for k, v in g.items() if k != "num_neighbors"}


def _symmetrized(g: dict, n: int) -> dict:
    fake = types.SimpleNamespace(select_symmetric_edges=lambda *a: GemNetOC.select_symmetric_edges(None, *a))
    sym, _ = GemNetOC.symmetrize_edges(fake, g, torch.zeros(n, dtype=torch.long))
    return sym


GRAPHS = {
    "periodic": lambda: random_periodic(0),
    "periodic_shuffled": lambda: random_periodic(1, shuffle=True),
    "periodic_small_cell": lambda: random_periodic(2, n=3, cutoff=5.0),
    "molecules": lambda: random_molecules(4),
}


@pytest.mark.parametrize("name", list(GRAPHS))
def test_indices_equal_fairchem(name):
    g, n = GRAPHS[name]()
    if name == "periodic":
        g = _symmetrized(g, n)  # the main graph as GemNet-OC sees it: per-image blocks, not target-sorted
    sub = _subgraph(g, 3.0)
    _equal_idx(indices.get_triplets(g, n), fc_idx.get_triplets(g, n), "triplets")
    for g_in, g_out, to_out in ((sub, g, False), (g, sub, False), (g, sub, True)):
        ours = indices.get_mixed_triplets(g_in, g_out, n, to_outedge=to_out, return_agg_idx=True)
        fc = fc_idx.get_mixed_triplets(g_in, g_out, n, to_outedge=to_out, return_agg_idx=True)
        _equal_idx(ours, fc, f"mixed{to_out}")
    ours, fc = indices.get_quadruplets(g, sub, n), fc_idx.get_quadruplets(g, sub, n)
    _equal_idx(ours, fc, "quad")
    assert ours["out"].numel() > 0


def test_symmetrize_utilities_equal_fairchem():
    g, n = random_periodic(7)
    mask = g["edge_index"][0] < g["edge_index"][1]
    sizes = torch.bincount(torch.zeros(int(mask.sum()), dtype=torch.long), minlength=1)
    _equal_idx(
        utils.repeat_blocks(sizes, 2, repeat_inc=int(mask.sum())),
        fc_utils.repeat_blocks(sizes, 2, continuous_indexing=True, repeat_inc=int(mask.sum())),
    )
    offs = -g["cell_offset"].float()
    _equal_idx(utils.get_edge_id(g["edge_index"], offs, n), fc_utils.get_edge_id(g["edge_index"], offs, n))
    _equal_idx(
        utils.mask_neighbors(g["num_neighbors"], g["distance"] < 3.0),
        fc_utils.mask_neighbors(g["num_neighbors"], g["distance"] < 3.0),
    )
    tgt = g["edge_index"][1]
    _equal_idx(utils.get_inner_idx(tgt, n), fc_utils.get_inner_idx(tgt, n))
    _equal_idx(utils.ragged_range(torch.tensor([3, 0, 2, 5])), fc_utils.ragged_range(torch.tensor([3, 0, 2, 5])))


def test_repeat_blocks_random_equal_fairchem():
    rng = np.random.default_rng(0)
    for _ in range(60):
        k = int(rng.integers(2, 7))
        sizes = torch.tensor(rng.integers(1, 4, k))
        repeats = torch.tensor(rng.integers(0, 4, k)) if rng.random() < 0.6 else int(rng.integers(1, 4))
        if isinstance(repeats, torch.Tensor) and int(repeats.sum()) == 0:
            repeats[0] = 1
        kw = {
            "continuous_indexing": bool(rng.random() < 0.7),
            "start_idx": int(rng.integers(0, 3)),
            "block_inc": int(rng.integers(0, 3)) if rng.random() < 0.5 else torch.tensor(rng.integers(0, 3, k - 1)),
            "repeat_inc": int(rng.integers(0, 4)) if rng.random() < 0.5 else torch.tensor(rng.integers(0, 4, k)),
        }
        _equal_idx(utils.repeat_blocks(sizes, repeats, **kw), fc_utils.repeat_blocks(sizes, repeats, **kw), str(kw))
    for zero_sizes in ([0, 3, 2], [2, 0, 0, 1], [1, 2, 0]):
        s = torch.tensor(zero_sizes)
        for reps in (2, torch.tensor([1, 2, 3, 1][: len(zero_sizes)])):
            _equal_idx(utils.repeat_blocks(s, reps, repeat_inc=3), fc_utils.repeat_blocks(s, reps, repeat_inc=3))


@pytest.mark.parametrize("strict", [True, False])
def test_max_neighbors_mask_equal_fairchem(strict):
    g, _n = random_molecules(6, sizes=(6, 9), cutoff=4.0)
    natoms = torch.tensor([6, 9])
    d = g["distance"].clone()
    d[3] = d[4]  # a tie
    for dist in (d, torch.round(d * 2) / 2):  # the second has many ties
        for k in (1, 3, 5, 100):
            ours = utils.get_max_neighbors_mask(natoms, g["edge_index"][1], dist, k, enforce_max_strictly=strict)
            fc = fc_max_neighbors(natoms, g["edge_index"][1], dist, k, enforce_max_strictly=strict)
            _equal_idx(ours[0], fc[0], f"mask k={k}")
            _equal_idx(ours[1], fc[1], f"counts k={k}")


def test_geometry_helpers_equal_fairchem():
    g = torch.Generator().manual_seed(5)
    a, b = torch.randn(50, 3, generator=g), torch.randn(50, 3, generator=g)
    b[0] = 2 * a[0]
    _close(utils.get_angle(a, b), fc_utils.get_angle(a, b))
    _close(utils.vector_rejection(a, b), fc_utils.vector_rejection(a, b))
    n = b.clone()
    n[1] = torch.tensor([1.0, 0.0, 0.0])
    _close(utils.get_projected_angle(a, n), fc_utils.get_projected_angle(a, n))
    au, bu = a / a.norm(dim=1, keepdim=True), b / b.norm(dim=1, keepdim=True)
    _close(utils.inner_product_clamped(au, bu), fc_utils.inner_product_clamped(au, bu), rtol=0, atol=0)
    pos = torch.randn(6, 3, generator=g)
    s, t = torch.tensor([0, 1, 2]), torch.tensor([3, 4, 5])
    off = torch.randn(3, 3, generator=g)
    for x, y in zip(
        utils.calculate_interatomic_vectors(pos, s, t, off),
        fc_utils.calculate_interatomic_vectors(pos, s, t, off),
        strict=True,
    ):
        _close(x, y)


# ----------------------------------------------------------------- scale factors


def test_scale_factor_state_dict_and_fit_equal_fairchem():
    fc, ours = FcScaleFactor(), scaling.ScaleFactor()
    assert list(fc.state_dict()) == list(ours.state_dict()) == ["scale_factor"]
    fc.set_(1.25)
    ours.load_state_dict(fc.state_dict(), strict=True)
    assert float(ours.scale_factor) == 1.25
    FcScaleFactor().load_state_dict(ours.state_dict(), strict=True)

    torch.manual_seed(0)
    xs = [3.0 * torch.randn(40, 8) + 1.0 for _ in range(3)]
    refs = [torch.randn(40, 8) * 0.5 for _ in range(3)]
    fc, ours = FcScaleFactor(), scaling.ScaleFactor()
    for module in (fc, ours):
        with module.fit_context_():
            for x, r in zip(xs, refs, strict=True):
                module(x, ref=r)
            _, _ratio, _value = module.fit_()
    assert float(ours.scale_factor) == pytest.approx(float(fc.scale_factor), rel=1e-12)
