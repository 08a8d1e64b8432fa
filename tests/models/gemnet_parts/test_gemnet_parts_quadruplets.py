"""The factored quadruplet sum (quadruplets.py) against a per-quadruplet loop and against fairchem's padded route."""

from __future__ import annotations

import pytest
import torch
from _gemnet_parts_graphs import random_periodic
from ase import Atoms

from atomsift.graph import collate
from atomsift.models.backbones.gemnet_oc.batch_bases import batch_bases
from atomsift.models.backbones.gemnet_oc.compat import FairchemGemNetOC, FairchemOutputHeads
from atomsift.models.backbones.gemnet_oc.indices import get_quadruplets
from atomsift.models.backbones.gemnet_oc.model import GemNetOC, ensure_scale_factors
from atomsift.models.backbones.gemnet_oc.quadruplets import FactoredQuadBasis, factored_quad_basis
from atomsift.models.backbones.gemnet_oc.scaling import ScaleFactor


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_aggregate_equals_sum_over_quadruplets(seed):
    main, n = random_periodic(seed, n=6, cutoff=4.0, shuffle=seed == 2)
    keep = main["distance"] <= 3.0  # the intermediate (qint) graph: a shorter cutoff
    qint = {k: (v[:, keep] if k == "edge_index" else v[keep]) for k, v in main.items() if k != "num_neighbors"}
    q = get_quadruplets(main, qint, n)
    num_edges, num_inter, num_quads = main["edge_index"].shape[1], qint["edge_index"].shape[1], q["out"].numel()
    assert num_quads > 100  # enough quadruplets, with removed d == c ones, for the test to mean something
    gen = torch.Generator().manual_seed(seed)
    L, K = 4, 3
    left = torch.randn(q["triplet_out"]["out"].numel(), L, generator=gen, dtype=torch.float64)
    right = torch.randn(num_quads, L, generator=gen, dtype=torch.float64)
    x = torch.randn(q["triplet_in"]["in"].numel(), K, generator=gen, dtype=torch.float64)
    rad = torch.randn(num_edges, 2, L * L, dtype=torch.float64)

    got = factored_quad_basis(rad, left, right, q, num_edges, num_inter).aggregate(x)

    sph = (left[q["trip_out_to_quad"], :, None] * right[:, None, :]).reshape(num_quads, L * L)
    msg = sph[:, :, None] * x[q["trip_in_to_quad"], None, :]  # (Q, L*L, K)
    expected = torch.zeros(num_edges, L * L, K, dtype=torch.float64).index_add_(0, q["out"], msg)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)


def _models(direct_forces: bool, preset: str = "tiny") -> FairchemGemNetOC:
    torch.manual_seed(7)
    backbone = GemNetOC.from_preset(preset, direct_forces=direct_forces)
    gen = torch.Generator().manual_seed(8)
    for m in backbone.modules():
        if isinstance(m, ScaleFactor):
            m.set_(0.5 + 1.5 * float(torch.rand((), generator=gen)))
    heads = FairchemOutputHeads(backbone.node_dim, backbone.edge_dim, direct_forces=direct_forces)
    return FairchemGemNetOC(backbone, heads).double()


@pytest.fixture(scope="module")
def structures(ethanol, oxides, triclinic) -> list[Atoms]:
    oxide = oxides[0].copy()
    oxide.rattle(stdev=0.02, seed=1)
    return [ethanol[0], oxide, triclinic]


@pytest.mark.parametrize("direct_forces", [True, False], ids=["direct", "gradient"])
def test_model_factored_equals_padded(structures, direct_forces, monkeypatch):
    """Energies, forces and a training step's parameter gradients (double backward for gradient forces) agree
    in float64 between the factored and the padded quadruplet route."""
    model = _models(direct_forces)
    batch = collate(structures, dtype=torch.float64)
    graphs = model.backbone.build_graphs(batch)
    assert isinstance(batch_bases(model.backbone, graphs, batch.num_atoms)["qint"]["sph"], FactoredQuadBasis)
    assert graphs.quad_idx["out"].numel() > 1000

    results = {}
    for factored in (True, False):
        monkeypatch.setattr(GemNetOC, "factor_quadruplets", factored)
        model.zero_grad()
        out = model(batch)
        loss = out["energy"].square().sum() + out["forces"].square().sum()
        loss.backward()
        grads = {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}
        results[factored] = (out["energy"].detach(), out["forces"].detach(), grads)

    (e1, f1, g1), (e0, f0, g0) = results[True], results[False]
    torch.testing.assert_close(e1, e0, rtol=1e-12, atol=0)
    torch.testing.assert_close(f1, f0, rtol=1e-10, atol=1e-12 * float(f0.abs().max()))
    assert g1.keys() == g0.keys() and any("quad_interaction" in k for k in g1)
    for key in g0:
        scale = float(g0[key].abs().max()) or 1.0
        torch.testing.assert_close(g1[key], g0[key], rtol=1e-9, atol=1e-11 * scale, msg=key)


def test_scale_factor_fitting_same_on_both_routes(structures, monkeypatch):
    """Fitting forms the per-quadruplet messages as the reference variance, so both routes fit the same values."""
    batches = [collate(structures[:2], dtype=torch.float64), collate(structures[1:], dtype=torch.float64)]
    fitted = {}
    for factored in (True, False):
        monkeypatch.setattr(GemNetOC, "factor_quadruplets", factored)
        torch.manual_seed(0)
        model = GemNetOC.from_preset("tiny").double().eval()
        ensure_scale_factors(model, batches)
        fitted[factored] = {n: float(m.scale_factor) for n, m in model.named_modules() if isinstance(m, ScaleFactor)}
    assert "int_blocks.0.quad_interaction.scale_sbf_sum" in fitted[True]
    for name, value in fitted[False].items():
        assert fitted[True][name] == pytest.approx(value, rel=1e-9), name


@pytest.mark.parametrize("direct_forces", [True, False], ids=["direct", "gradient"])
def test_radial_basis_floor_leaves_energies_and_forces_bitwise_equal(structures, direct_forces, monkeypatch):
    """The floor on the Gaussian basis (no subnormals, bases.py) changes no bit of float32 energies and forces."""
    from atomsift.models.backbones.gemnet_oc import bases

    model = _models(direct_forces, "small").float()  # 32 Gaussians: subnormal tails (tiny's 8 have none)
    batch = collate(structures)
    floored = model(batch)
    monkeypatch.setattr(bases, "TINY_BASIS_VALUE", -1.0)  # keep every value: the plain formula
    monkeypatch.setattr(bases, "ENVELOPE_FLOOR", -1.0)
    monkeypatch.setattr(bases, "_EXP_FLOOR", -1e30)
    plain = model(batch)
    rad = model.backbone.radial_basis(model.backbone.build_graphs(batch).main["distance"])
    tiny = torch.finfo(torch.float32).tiny
    assert bool(((rad != 0) & (rad.abs() < tiny)).any())  # the plain basis does hold subnormals here
    assert torch.equal(floored["energy"], plain["energy"]) and torch.equal(floored["forces"], plain["forces"])
