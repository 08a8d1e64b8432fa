"""load_checkpoint on fairchem-core 1.10 checkpoint files ({"config": {"model"}, "state_dict": {"module.*"}}).

Here the file is written from atomsift's own GemNet-OC (same keys as fairchem's); test_gemnet_parity.py repeats
this with fairchem's own model where fairchem is installed.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import fcc111, molecule

from atomsift.errors import ConfigError, DataError
from atomsift.graph import collate
from atomsift.models import load_checkpoint
from atomsift.models.backbones.gemnet_oc.compat import FairchemGemNetOC, FairchemOutputHeads
from atomsift.models.backbones.gemnet_oc.model import GemNetOC
from atomsift.models.backbones.gemnet_oc.scaling import ScaleFactor


def _fairchem_file(tmp_path, direct: bool, **extra):
    torch.manual_seed(1)
    backbone = GemNetOC.from_preset("tiny", direct_forces=direct)
    heads = FairchemOutputHeads(backbone.node_dim, backbone.edge_dim, direct_forces=direct)
    for module in backbone.modules():  # fitted scale factors, as in a trained fairchem file
        if isinstance(module, ScaleFactor):
            module.scale_factor.fill_(0.5 + torch.rand(()).item())
    hparams = {k: v for k, v in backbone.hparams().items() if k != "absolute_rbf_cutoff"}
    state = {f"module.{k}": v for k, v in backbone.state_dict().items()}
    state.update({f"module.{k}": v for k, v in heads.state_dict().items()})
    config = {"model": {"name": "gemnet_oc", **hparams, "regress_forces": True, "otf_graph": True, **extra}}
    path = tmp_path / "fairchem.pt"
    torch.save({"config": config, "state_dict": state, "epoch": 3}, path)
    return path, FairchemGemNetOC(backbone, heads).eval()


def _structures():
    slab = fcc111("Pt", size=(2, 2, 3), vacuum=6.0)
    slab.rattle(0.05, seed=2)
    slab.set_tags([0] * 4 + [1] * 8)
    water = molecule("H2O")
    water.rattle(0.02, seed=1)
    return [water, slab]


@pytest.mark.parametrize("direct", [True, False], ids=["direct", "gradient"])
def test_fairchem_file_loads_and_predicts_like_fairchem_heads(tmp_path, direct):
    path, reference = _fairchem_file(tmp_path, direct)
    model = load_checkpoint(path)
    assert model.load_report.clean, model.load_report.summary()
    assert model.head_specs["energy"].forces == ("direct" if direct else "gradient")
    structures = _structures()
    want = reference(collate(structures))
    got = model.predict(structures)
    np.testing.assert_allclose([g["energy"] for g in got], want["energy"].detach().numpy(), rtol=1e-5)
    np.testing.assert_allclose(
        np.concatenate([g["forces"] for g in got]), want["forces"].detach().numpy(), rtol=1e-4, atol=1e-5
    )


def test_a_fairchem_file_with_intensive_energies_averages_over_atoms(tmp_path):
    """extensive: false (a mean readout) loads and predicts as fairchem's heads do (a readout check made for
    training configs refused it for a while)."""
    path, reference = _fairchem_file(tmp_path, True, extensive=False)
    reference.heads.extensive = False
    model = load_checkpoint(path)
    assert model.head_specs["energy"].reduce == "mean"
    structures = _structures()
    want = reference(collate(structures))["energy"].detach().numpy()
    np.testing.assert_allclose([g["energy"] for g in model.predict(structures)], want, rtol=1e-5)


def test_fairchem_file_problems(tmp_path):
    path, _ = _fairchem_file(tmp_path, True)
    obj = torch.load(path, weights_only=True)
    del obj["state_dict"]["module.out_energy.linear.weight"]
    torch.save(obj, tmp_path / "missing.pt")
    with pytest.raises(DataError, match="out_energy"):
        load_checkpoint(tmp_path / "missing.pt")
    path, _ = _fairchem_file(tmp_path, True, forces_coupled=True)
    with pytest.raises(ConfigError, match="forces_coupled"):
        load_checkpoint(path)
    path, _ = _fairchem_file(tmp_path, True, no_such_option=1)
    with pytest.raises(ConfigError, match="no_such_option"):
        load_checkpoint(path)
