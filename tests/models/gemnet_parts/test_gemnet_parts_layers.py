"""GemNet-OC layers: keys, formulas, initialiser, and the padded bilinear against a scatter reference."""

from __future__ import annotations

import math

import pytest
import torch

from atomsift.errors import ConfigError, DataError
from atomsift.models.backbones.gemnet_oc.layers import (
    AtomEmbedding,
    BasisEmbedding,
    Dense,
    EdgeEmbedding,
    EfficientInteractionBilinear,
    ResidualLayer,
    ScaledSiLU,
    SiQU,
    fused_dense,
    get_initializer,
    he_orthogonal_init,
)
from atomsift.models.backbones.gemnet_oc.utils import get_inner_idx


def test_activations():
    x = torch.linspace(-3, 3, 11)
    torch.testing.assert_close(ScaledSiLU()(x), torch.nn.functional.silu(x) / 0.6)
    torch.testing.assert_close(SiQU()(x), x * torch.nn.functional.silu(x))


def test_dense_and_residual_keys_and_values():
    d = Dense(4, 3, bias=True, activation="silu")
    assert sorted(d.state_dict()) == ["linear.bias", "linear.weight"]
    assert torch.all(d.linear.bias == 0)
    x = torch.randn(5, 4)
    torch.testing.assert_close(d(x), torch.nn.functional.silu(x @ d.linear.weight.T) / 0.6)
    assert isinstance(Dense(2, 2, activation=None)._activation, torch.nn.Identity)
    with pytest.raises(ConfigError):
        Dense(2, 2, activation="relu")

    r = ResidualLayer(4, nLayers=2, activation="silu")
    assert sorted(r.state_dict()) == ["dense_mlp.0.linear.weight", "dense_mlp.1.linear.weight"]
    torch.testing.assert_close(r(x), (x + r.dense_mlp[1](r.dense_mlp[0](x))) / math.sqrt(2))


def test_he_orthogonal_init_statistics():
    w = he_orthogonal_init(torch.empty(64, 32))
    torch.testing.assert_close(w.mean(dim=1), torch.zeros(64), atol=1e-5, rtol=0)
    torch.testing.assert_close(w.var(dim=1), torch.full((64,), 1 / 32), rtol=1e-3, atol=0)
    w3 = he_orthogonal_init(torch.empty(4, 5, 6))
    torch.testing.assert_close(w3.var(dim=(0, 1)), torch.full((6,), 1 / 20), rtol=1e-3, atol=0)
    assert torch.all(get_initializer("zeros")(torch.ones(2, 2)) == 0)
    with pytest.raises(ConfigError):
        get_initializer("nope")


def test_atom_embedding_uses_z_minus_one_and_rejects_bad_z():
    emb = AtomEmbedding(8, num_elements=10)
    assert list(emb.state_dict()) == ["embeddings.weight"]
    z = torch.tensor([1, 10, 3])
    torch.testing.assert_close(emb(z), emb.embeddings.weight[z - 1])
    for bad in (0, 11):
        with pytest.raises(DataError, match="num_elements"):
            emb(torch.tensor([1, bad]))


def test_edge_embedding():
    e = EdgeEmbedding(atom_features=3, edge_features=2, out_features=4, activation="silu")
    assert list(e.state_dict()) == ["dense.linear.weight"]
    h, m = torch.randn(5, 3), torch.randn(4, 2)
    ei = torch.tensor([[0, 1, 2, 4], [1, 0, 3, 3]])
    torch.testing.assert_close(e(h, m, ei), e.dense(torch.cat([h[ei[0]], h[ei[1]], m], dim=1)))


def _random_agg(num_outer: int, num_items: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    outer = torch.sort(torch.randint(0, num_outer, (num_items,), generator=gen)).values
    return outer, get_inner_idx(outer, num_outer)


def test_basis_embedding_and_bilinear_match_scatter_reference():
    torch.set_default_dtype(torch.float64)
    try:
        gen = torch.Generator().manual_seed(0)
        E, T, R, S, I, Cin, Cout = 7, 20, 5, 3, 4, 6, 2
        rad, sph, m = torch.randn(E, R), torch.randn(T, S), torch.randn(T, Cin)
        out, agg = _random_agg(E, T, gen)
        be = BasisEmbedding(R, I, S)
        assert list(be.state_dict()) == ["weight"] and be.weight.shape == (R, S, I)
        rad_W1, sph_pad = be(rad, sph, idx_sph_outer=out, idx_sph_inner=agg)
        bil = EfficientInteractionBilinear(Cin, I, Cout)
        assert list(bil.state_dict()) == ["bilinear.linear.weight"]
        got = bil((rad_W1, sph_pad), m, out, agg)

        # fairchem's layout: the (R, S, I) weight is flattened and the result read as (E, I, S)
        W = (rad @ be.weight.reshape(R, -1)).reshape(E, I, S)
        per_trip = torch.einsum("tis,ts->ti", W[out], sph)[:, :, None] * m[:, None, :]  # (T, I, Cin)
        summed = torch.zeros(E, I, Cin).index_add_(0, out, per_trip)
        torch.testing.assert_close(got, bil.bilinear(summed.reshape(E, -1)))

        # Without the padded layout the basis embedding returns per-triplet projections.
        torch.testing.assert_close(be(rad, sph, idx_sph_outer=out), torch.einsum("tis,ts->ti", W[out], sph))
        # Plain radial embedding.
        be2 = BasisEmbedding(R, I)
        assert be2.weight.shape == (I, R)
        torch.testing.assert_close(be2(rad), rad @ be2.weight.T)
    finally:
        torch.set_default_dtype(torch.float32)


def test_bilinear_with_atom_aggregation_matches_reference():
    torch.set_default_dtype(torch.float64)
    try:
        gen = torch.Generator().manual_seed(1)
        A, E, T, R, S, I, Cin, Cout = 4, 9, 25, 5, 3, 4, 6, 2
        rad_e, sph, m = torch.randn(E, R), torch.randn(T, S), torch.randn(T, Cin)
        out, agg = _random_agg(E, T, gen)
        atom, slot = _random_agg(A, E, gen)
        be = BasisEmbedding(R, I, S)
        rad_W1, sph_pad = be(
            rad_e, sph, idx_rad_outer=atom, idx_rad_inner=slot, idx_sph_outer=out, idx_sph_inner=agg, num_atoms=A
        )
        bil = EfficientInteractionBilinear(Cin, I, Cout)
        got = bil((rad_W1, sph_pad), m, out, agg, atom, slot, A)

        W = (rad_e @ be.weight.reshape(R, -1)).reshape(E, I, S)
        sph_m = torch.zeros(E, S, Cin).index_add_(0, out, sph[:, :, None] * m[:, None, :])
        per_edge = torch.einsum("eis,esc->eic", W, sph_m)
        summed = torch.zeros(A, I, Cin).index_add_(0, atom, per_edge)
        torch.testing.assert_close(got, bil.bilinear(summed.reshape(A, -1)))
    finally:
        torch.set_default_dtype(torch.float32)


def test_bilinear_empty_inputs():
    be = BasisEmbedding(5, 4, 3)
    rad = torch.randn(3, 5)
    empty = torch.zeros(0, dtype=torch.long)
    basis = be(rad, torch.zeros(0, 3), idx_sph_outer=empty, idx_sph_inner=empty)
    out = EfficientInteractionBilinear(6, 4, 2)(basis, torch.zeros(0, 6), empty, empty)
    assert out.shape == (3, 2) and torch.all(out == 0)


@pytest.mark.parametrize("activation", ["silu", None])
def test_fused_dense_matches_separate_layers(activation):
    """One product over concatenated weights: the same outputs and gradients as each layer on its own."""
    torch.manual_seed(0)
    layers = [Dense(12, n, activation=activation) for n in (12, 5, 7)]
    x = torch.randn(30, 12, requires_grad=True)
    fused = fused_dense(x, layers)
    separate = [layer(x) for layer in layers]
    assert [f.shape for f in fused] == [(30, 12), (30, 5), (30, 7)]
    for f, s in zip(fused, separate):  # float32 rounding apart: MKL may pick another kernel for the wider product
        torch.testing.assert_close(f, s)
    weights = [torch.randn_like(s) for s in separate]
    grads_fused = torch.autograd.grad(sum((f * w).sum() for f, w in zip(fused, weights)), [x, layers[1].linear.weight])
    grads_sep = torch.autograd.grad(sum((s * w).sum() for s, w in zip(separate, weights)), [x, layers[1].linear.weight])
    for a, b in zip(grads_fused, grads_sep):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_fused_dense_falls_back_for_mixed_layers():
    """Layers with a bias or different activations are applied one by one (still the same values)."""
    torch.manual_seed(1)
    layers = [Dense(6, 4, activation="silu"), Dense(6, 3, activation=None), Dense(6, 2, bias=True, activation="silu")]
    x = torch.randn(9, 6)
    for f, layer in zip(fused_dense(x, layers), layers):
        torch.testing.assert_close(f, layer(x), rtol=0, atol=0)
    assert fused_dense(x, layers[:2])[1].shape == (9, 3)


def test_residual_layer_formula_and_input_untouched():
    """(x + mlp(x)) / sqrt(2) computed in place on the branch output must leave the input as it was."""
    torch.manual_seed(2)
    layer = ResidualLayer(8, nLayers=2, activation="silu")
    x = torch.randn(5, 8)
    before = x.clone()
    out = layer(x)
    torch.testing.assert_close(out, (before + layer.dense_mlp(before)) / math.sqrt(2.0))
    torch.testing.assert_close(x, before, rtol=0, atol=0)
    torch.testing.assert_close(ResidualLayer(8, nLayers=0)(x), 2.0 * x / math.sqrt(2.0))
