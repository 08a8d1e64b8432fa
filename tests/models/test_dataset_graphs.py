"""Per-dataset graph settings at call time: a mixed batch equals each structure run with its own settings."""

from __future__ import annotations

import pytest
import torch

from atomsift.data import open_dataset
from atomsift.graph import GraphSettings, collate
from atomsift.models import build_backbone

F64 = torch.float64
MOL = GraphSettings(cutoff=4.0, max_neighbors=5, pbc=False)
CRYSTAL = GraphSettings(cutoff=5.0, max_neighbors=12, pbc=True)


def _records():
    eth, ox = open_dataset("bundled:ethanol"), open_dataset("bundled:oxides")
    return [eth[0], ox[3], eth[5], ox[7]], [0, 1, 0, 1]


@pytest.mark.parametrize("name", ["painn", "gemnet_oc"])
def test_mixed_batch_equals_structures_alone(name):
    torch.manual_seed(0)
    kwargs = {"hidden": 16, "num_layers": 2} if name == "painn" else {"preset": "tiny"}
    backbone = build_backbone(name, **kwargs).to(F64).eval()
    records, which = _records()
    graphs = (MOL, CRYSTAL)
    batch = collate(records, dtype=F64, dataset=which, dataset_names=["mol", "crystal"], dataset_graphs=graphs)
    together = backbone(batch).node
    start = 0
    for rec, d in zip(records, which):
        alone = collate([rec], dtype=F64, dataset=[0], dataset_names=["x"], dataset_graphs=[graphs[d]])
        node = backbone(alone).node
        torch.testing.assert_close(together[start : start + rec.natoms], node, rtol=1e-10, atol=1e-10)
        start += rec.natoms
    # the settings matter: the oxides read without their dataset settings give other features
    plain = backbone(collate(records, dtype=F64)).node
    assert not torch.allclose(plain, together)


def test_gemnet_settings_follow_jmp_proportions():
    backbone = build_backbone("gemnet_oc", preset="small")  # S's graph: four equal cutoffs, 30 / 8 / 20 / 1000
    s = backbone.settings_for(GraphSettings(cutoff=8.0, max_neighbors=30, pbc=False))
    assert (s.cutoff, s.cutoff_qint, s.cutoff_aeaint, s.cutoff_aint) == (8.0, 8.0, 8.0, 8.0)
    assert (s.max_neighbors, s.max_neighbors_qint, s.max_neighbors_aeaint, s.max_neighbors_aint) == (30, 8, 20, 1000)
    assert not s.use_pbc
    s = backbone.settings_for(GraphSettings(cutoff=7.0, max_neighbors=100, pbc=False))
    assert (s.max_neighbors, s.max_neighbors_qint, s.max_neighbors_aeaint, s.max_neighbors_aint) == (100, 26, 66, 3333)


def test_gemnet_edge_dropout_only_in_training_and_seeded():
    torch.manual_seed(0)
    backbone = build_backbone("gemnet_oc", preset="tiny").to(F64)
    records, _ = _records()
    batch = collate(records[:2], dtype=F64)
    backbone.eval()
    reference = backbone.build_graphs(batch).main["edge_index"].shape[1]
    backbone.edge_dropout = 0.5
    assert backbone.build_graphs(batch).main["edge_index"].shape[1] == reference  # eval: no dropout
    backbone.train()
    counts = []
    for _ in range(2):
        backbone.edge_dropout_generator = torch.Generator().manual_seed(3)
        counts.append(backbone.build_graphs(batch).main["edge_index"])
    assert torch.equal(counts[0], counts[1])
    kept = counts[0].shape[1]
    assert kept % 2 == 0 and 0.35 * reference < kept < 0.65 * reference  # symmetric: pairs go together
