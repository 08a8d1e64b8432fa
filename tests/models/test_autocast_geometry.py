"""Graphs and edge vectors under 16-bit autocast (Lightning's bf16-mixed / 16-mixed) equal float32's.

autocast computes matrix products (bmm, einsum) in bf16; the periodic image shifts S @ cell were such products,
so under bf16-mixed GemNet-OC picked other neighbours and both backbones got edge vectors rounded to bf16.
"""

from __future__ import annotations

import pytest
import torch

from atomsift.graph import collate, radius_graph
from atomsift.models.backbones.gemnet_oc.model import GemNetOC
from atomsift.models.backbones.painn import PaiNN


@pytest.fixture(scope="module")
def periodic(oxides, triclinic, silicon):
    """Periodic cells only, with images several cell lengths away (large shifts)."""
    return collate(oxides + [triclinic, silicon], dtype=torch.float32)


def _bf16():
    return torch.autocast("cpu", dtype=torch.bfloat16)


def test_radius_graph_under_autocast_is_the_float32_graph(periodic):
    plain = radius_graph(periodic, 6.0, 30)
    with _bf16():
        low = radius_graph(periodic, 6.0, 30)
    assert low.vector.dtype == torch.float32
    assert torch.equal(low.edge_index, plain.edge_index) and torch.equal(low.cell_offsets, plain.cell_offsets)
    assert torch.equal(low.vector, plain.vector) and torch.equal(low.distance, plain.distance)


def test_gemnet_graphs_under_autocast_are_the_float32_graphs(periodic):
    torch.manual_seed(0)
    model = GemNetOC.from_preset("tiny").eval()
    plain = model.build_graphs(periodic)
    with _bf16():
        low = model.build_graphs(periodic)
    for name in ("main", "a2a", "a2ee2a", "qint"):
        a, b = getattr(plain, name), getattr(low, name)
        assert torch.equal(a["edge_index"], b["edge_index"]), name
        assert b["vector"].dtype == torch.float32 and torch.equal(a["vector"], b["vector"]), name
        assert torch.equal(a["distance"], b["distance"]), name


def test_painn_under_autocast_sees_float32_geometry(periodic, monkeypatch):
    torch.manual_seed(0)
    model = PaiNN(hidden=16, num_layers=1, cutoff=5.0).eval()
    seen = []
    original = model.radial_basis
    monkeypatch.setattr(model, "radial_basis", lambda d: seen.append(d) or original(d))
    model(periodic)
    with _bf16():
        model(periodic)
    assert seen[1].dtype == torch.float32 and torch.equal(seen[0], seen[1])
