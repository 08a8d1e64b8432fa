"""GemNet-OC at collinear triplets: the dihedral angle of a quadruplet turns abruptly where exactly one of its
triplets c-a-b, a-b-d lies on a line (symmetric crystals), so gradient forces blow up there; the model says so
once per training run."""

from __future__ import annotations

import logging

import torch
from ase.build import molecule

from atomsift.graph import collate
from atomsift.models import AtomsModel
from atomsift.models.backbones.gemnet_oc.batch_bases import COLLINEAR_CHECKS, collinear_quadruplets
from atomsift.models.backbones.gemnet_oc.model import GemNetOC
from atomsift.models.backbones.gemnet_oc.utils import WARNED, forget_data_warnings

GRAPH = {"cutoff": 5.0, "max_neighbors": 30, "use_pbc": True}


def _model(forces: str) -> AtomsModel:
    torch.manual_seed(0)
    return AtomsModel(GemNetOC.from_preset("tiny", **GRAPH), {"energy": {"kind": "energy", "forces": forces}})


def _said(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if "collinear" in r.getMessage()]


def test_singular_quadruplets_are_counted_on_a_symmetric_cell_not_once_rattled_nor_in_linear_molecules(rocksalt):
    model = GemNetOC.from_preset("tiny", **GRAPH)
    count, total = collinear_quadruplets(model.build_graphs(collate([rocksalt()])))
    assert 0 < count < total
    # rattled: every position-dependent triplet bends; the lattice-fixed ones (two images of one atom) are not counted
    assert collinear_quadruplets(model.build_graphs(collate([rocksalt(0.01)])))[0] == 0
    # a linear molecule: both triplets of each quadruplet are collinear, both normals vanish, the gradient stays 0
    acetylene = molecule("C2H2")
    acetylene.rotate(37, (1, 2, 3))
    acetylene.set_tags(2)
    molecular = GemNetOC.from_preset("tiny", cutoff=5.0)
    linear = collinear_quadruplets(molecular.build_graphs(collate([acetylene])))
    assert linear[0] == 0 and linear[1] > 0
    # nearly linear (normals ~1e-5, above rounding): the dihedral's gradient is large again, and counted
    acetylene.rattle(1e-5, seed=1)
    assert collinear_quadruplets(molecular.build_graphs(collate([acetylene])))[0] > 0


def test_gradient_forces_blow_up_at_collinear_triplets(rocksalt):
    """What the warning claims: the same weights give forces orders of magnitude larger on the exact cell."""
    model = _model("gradient")
    exact = model(collate([rocksalt()]))["forces"].detach().abs().max()
    bent = model(collate([rocksalt(0.01)]))["forces"].detach().abs().max()
    assert exact > 30 * bent


def test_the_warning_is_given_once_per_run_and_only_with_gradient_forces(caplog, rocksalt):
    batch = collate([rocksalt()])
    with caplog.at_level(logging.WARNING):
        model = _model("gradient")
        model(batch)
        model(batch)
        _model("gradient")(batch)  # another model of the same run (its EMA or test model)
    said = _said(caplog)
    assert len(said) == 1 and "task.forces=direct" in said[0]
    forget_data_warnings()  # as a new training run does
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _model("direct")(batch)
        _model("gradient")(collate([rocksalt(0.01)]))
    assert not _said(caplog)
    with caplog.at_level(logging.WARNING):
        _model("gradient")(batch)
    assert len(_said(caplog)) == 1


def test_a_model_looks_at_its_first_batches_only_and_muted_passes_do_not_count(caplog, rocksalt):
    model = _model("gradient")
    logger = logging.getLogger("atomsift.models.backbones.gemnet_oc.model")
    logger.setLevel(logging.ERROR)  # as while fitting scale factors
    try:
        for _ in range(COLLINEAR_CHECKS + 1):
            model(collate([rocksalt()]))
    finally:
        logger.setLevel(logging.NOTSET)
    with caplog.at_level(logging.WARNING):
        model(collate([rocksalt()]))  # what the muted passes could not say is said now
    assert _said(caplog)
    WARNED.clear()
    caplog.clear()
    model = _model("gradient")
    with caplog.at_level(logging.WARNING):
        for _ in range(COLLINEAR_CHECKS):
            model(collate([rocksalt(0.01)]))
        model(collate([rocksalt()]))  # after its first batches a model stops looking (each look syncs the device)
    assert not _said(caplog)
