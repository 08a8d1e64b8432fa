"""GemNet-OC at collinear triplets: the dihedral angle of a quadruplet is undefined where c-a-b or a-b-d lie on a
line (symmetric crystals), so gradient forces blow up there; the model says so once."""

from __future__ import annotations

import logging

import torch
from ase.build import bulk

from atomsift.graph import collate
from atomsift.models import AtomsModel
from atomsift.models.backbones.gemnet_oc.batch_bases import collinear_triplets
from atomsift.models.backbones.gemnet_oc.model import GemNetOC
from atomsift.models.backbones.gemnet_oc.utils import WARNED

GRAPH = {"cutoff": 5.0, "max_neighbors": 30, "use_pbc": True}


def _rocksalt(rattle: float = 0.0):
    atoms = bulk("MgO", "rocksalt", a=4.21, cubic=True)  # every atom has neighbours on lines through it
    # turned off the axes: along x, y, z the cross products of collinear edges round to exactly 0, which the
    # angle's clamp stops; in any other orientation they round to ~1e-8 and the gradient passes through
    atoms.rotate(37, (1, 2, 3), rotate_cell=True)
    if rattle:
        atoms.rattle(rattle, seed=3)
    atoms.set_tags(2)
    return atoms


def _model(forces: str) -> AtomsModel:
    torch.manual_seed(0)
    return AtomsModel(GemNetOC.from_preset("tiny", **GRAPH), {"energy": {"kind": "energy", "forces": forces}})


def test_collinear_triplets_are_counted_on_a_symmetric_cell_and_not_once_rattled():
    model = GemNetOC.from_preset("tiny", **GRAPH)
    count, total = collinear_triplets(model.build_graphs(collate([_rocksalt()])))
    assert 0 < count < total
    # rattled: every position-dependent triplet bends; the lattice-fixed ones (two images of one atom) are not counted
    assert collinear_triplets(model.build_graphs(collate([_rocksalt(0.01)])))[0] == 0


def test_gradient_forces_blow_up_at_collinear_triplets():
    """What the warning claims: the same weights give forces orders of magnitude larger on the exact cell."""
    model = _model("gradient")
    exact = model(collate([_rocksalt()]))["forces"].detach().abs().max()
    bent = model(collate([_rocksalt(0.01)]))["forces"].detach().abs().max()
    assert exact > 30 * bent


def test_the_warning_is_given_once_and_only_with_gradient_forces(caplog):
    batch = collate([_rocksalt()])
    with caplog.at_level(logging.WARNING):
        model = _model("gradient")
        model(batch)
        model(batch)
    said = [r.getMessage() for r in caplog.records if "collinear" in r.getMessage()]
    assert len(said) == 1 and "task.forces=direct" in said[0]
    with caplog.at_level(logging.WARNING):
        _model("gradient")(batch)  # another model in the same process (a run's EMA or test model)
    assert len([r for r in caplog.records if "collinear" in r.getMessage()]) == 1
    WARNED.clear()  # as in a new process
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        _model("direct")(batch)
        _model("gradient")(collate([_rocksalt(0.01)]))
    assert not [r for r in caplog.records if "collinear" in r.getMessage()]


def test_a_muted_pass_leaves_the_warning_for_later(caplog):
    model = _model("gradient")
    logger = logging.getLogger("atomsift.models.backbones.gemnet_oc.model")
    logger.setLevel(logging.ERROR)  # as while fitting scale factors
    try:
        model(collate([_rocksalt()]))
    finally:
        logger.setLevel(logging.NOTSET)
    with caplog.at_level(logging.WARNING):
        model(collate([_rocksalt()]))
    assert "collinear" in caplog.text
