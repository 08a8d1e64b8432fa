"""atomsift's GemNet-OC without fairchem: presets, shapes, dtypes, scale factors, loading, bad inputs.

(Parity with fairchem-core 1.10 is in test_gemnet_parity.py, run in an environment that has fairchem.)
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from ase import Atoms
from scipy.spatial.transform import Rotation

from atomsift.errors import ConfigError, DataError
from atomsift.graph import collate
from atomsift.models.backbones.gemnet_oc.compat import (
    FairchemGemNetOC,
    FairchemOutputHeads,
    direct_forces_from_edges,
    gemnet_from_fairchem,
)
from atomsift.models.backbones.gemnet_oc.model import GemNetOC, GemNetOCOutput, ensure_scale_factors
from atomsift.models.backbones.gemnet_oc.presets import PRESETS
from atomsift.models.backbones.gemnet_oc.scaling import ScaleFactor, has_unfitted_scale_factors
from atomsift.models.backbones.gemnet_oc.utils import WARNED
from atomsift.models.base import Backbone

# backbone parameters of fairchem-core 1.10's GemNetOC with these presets, minus out_energy / out_forces
# and its scale-factor parameters (measured with fairchem; atomsift keeps scale factors as buffers)
FAIRCHEM_PARAMS = {"S": 38_873_088, "L": 216_416_256}


def _randomise_scale_factors(model: torch.nn.Module, seed: int = 0) -> None:
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, ScaleFactor):
            m.set_(0.5 + 1.5 * float(torch.rand((), generator=gen)))


def _tiny(seed: int = 0, **overrides) -> GemNetOC:
    torch.manual_seed(seed)
    model = GemNetOC.from_preset("tiny", **overrides)
    _randomise_scale_factors(model, seed)
    return model.eval()


def _model(seed: int = 0, **overrides) -> FairchemGemNetOC:
    backbone = _tiny(seed, **overrides)
    torch.manual_seed(seed + 100)
    heads = FairchemOutputHeads(backbone.node_dim, backbone.edge_dim, direct_forces=backbone.direct_forces)
    return FairchemGemNetOC(backbone, heads).eval()


@pytest.fixture(scope="module")
def structures(ethanol, oxides, triclinic) -> list[Atoms]:
    """A molecule, a rattled oxide and a rattled triclinic cell. Rattled: at exactly collinear c-a-b the
    quadruplet dihedral is undefined (in fairchem too), so symmetric crystals are not exactly invariant."""
    oxide = oxides[0].copy()
    oxide.rattle(stdev=0.02, seed=1)
    return [ethanol[0], oxide, triclinic]


@pytest.mark.parametrize("preset", ["S", "L"])
def test_paper_presets_match_fairchem_sizes(preset):
    with torch.device("meta"):
        model = GemNetOC.from_preset(preset)
    assert sum(p.numel() for p in model.parameters()) == FAIRCHEM_PARAMS[preset]
    assert model.node_dim == 256
    assert model.edge_dim == PRESETS[preset]["emb_size_edge"]
    assert model.num_elements == 121  # atomic numbers 1..120
    assert len(model.int_blocks) == PRESETS[preset]["num_blocks"]


@pytest.mark.parametrize("preset", ["small", "tiny"])
def test_cpu_presets_forward_shapes(preset, structures):
    torch.manual_seed(0)
    model = GemNetOC.from_preset(preset).eval()
    assert isinstance(model, Backbone)
    batch = collate(structures)
    with torch.no_grad():
        out = model(batch)
    assert isinstance(out, GemNetOCOutput)
    n = batch.num_atoms
    e = out.edge_index.shape[1]
    assert out.node.shape == (n, model.node_dim)
    assert out.edge.shape == (e, model.edge_dim)
    assert out.edge_unit.shape == (e, 3)
    assert torch.allclose(out.edge_unit.norm(dim=1), torch.ones(e))
    assert torch.equal(out.edge_index[:, out.id_swap], out.edge_index.flip(0))
    assert int(out.num_neighbors.sum()) == e
    assert len(out.node_blocks) == model.num_blocks + 1
    assert torch.isfinite(out.node).all() and torch.isfinite(out.edge).all()


def test_build_from_registry_and_hparams_round_trip():
    from atomsift.models.registry import build_backbone

    model = build_backbone("gemnet_oc", preset="tiny", emb_size_atom=24)
    hp = model.hparams()
    json.dumps(hp)  # JSON-able
    rebuilt = GemNetOC(**hp)
    assert hp["emb_size_atom"] == 24
    assert list(rebuilt.state_dict()) == list(model.state_dict())
    with pytest.raises(ConfigError):
        build_backbone("gemnet_oc", preset="tiny", no_such_option=1)
    with pytest.raises(ConfigError):
        GemNetOC.from_preset("XL")


def test_edge_unit_sign_matches_gradient_direction(ethanol):
    """F_target += f * edge_unit: edge_unit points from the source to the target atom."""
    model = _tiny()
    batch = collate([ethanol[0]])
    with torch.no_grad():
        out = model(batch)
    src, tgt = out.edge_index
    expected = batch.positions[tgt] - batch.positions[src]
    expected = expected / expected.norm(dim=1, keepdim=True)
    assert torch.allclose(out.edge_unit, expected, atol=1e-6)
    # a repulsive pair force (f > 0 on every edge) pushes each atom away from its neighbours
    forces = direct_forces_from_edges(torch.ones(src.shape[0]), out.edge_unit, tgt, batch.num_atoms)
    centre = batch.positions.mean(0)
    outward = ((batch.positions - centre) * forces).sum(1)
    assert outward.sum() > 0


def test_no_compiled_extensions_imported():
    code = (
        "import sys, torch\n"
        "from ase.build import molecule\n"
        "from atomsift.graph import collate\n"
        "from atomsift.models.backbones.gemnet_oc.model import GemNetOC\n"
        "m = GemNetOC.from_preset('tiny')\n"
        "m(collate([molecule('CH3CH2OH')]))\n"
        "bad = [k for k in ('torch_scatter', 'torch_sparse', 'torch_cluster', 'torch_geometric') if k in sys.modules]\n"
        "print(bad)\n"
        "assert not bad\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr


def test_float64_matches_float32(structures):
    model = _model()
    batch = collate(structures)
    out32 = model(batch)
    out64 = model.double()(batch.to(dtype=torch.float64))
    assert out64["energy"].dtype == torch.float64
    scale_e = out64["energy"].abs().max()
    scale_f = out64["forces"].abs().max()
    assert (out32["energy"].double() - out64["energy"]).abs().max() / scale_e < 1e-4
    assert (out32["forces"].double() - out64["forces"]).abs().max() / scale_f < 1e-4


def test_gradient_forces_equal_finite_differences(triclinic, ethanol):
    model = _model(seed=1, direct_forces=False).double()
    for atoms in (triclinic, ethanol[1]):
        batch = collate([atoms], dtype=torch.float64)
        forces = model(batch)["forces"].detach()
        h = 1e-4
        for atom, axis in [(0, 0), (1, 2), (len(atoms) - 1, 1)]:
            plus, minus = batch.positions.clone(), batch.positions.clone()
            plus[atom, axis] += h
            minus[atom, axis] -= h
            with torch.no_grad():
                e_plus = model(dataclasses.replace(batch, positions=plus))
                e_minus = model(dataclasses.replace(batch, positions=minus))
            fd = -(e_plus["energy"] - e_minus["energy"]) / (2 * h)
            assert torch.allclose(forces[atom, axis], fd[0], rtol=1e-5, atol=1e-7), (atom, axis)


def test_rotation_invariance_and_force_equivariance(structures):
    model = _model(seed=2).double()
    rot = Rotation.random(random_state=4).as_matrix()
    rotated = []
    for a in structures:
        b = a.copy()
        b.positions = a.positions @ rot.T
        if a.cell.rank:
            b.set_cell(a.cell.array @ rot.T, scale_atoms=False)
        rotated.append(b)
    out = model(collate(structures, dtype=torch.float64))
    out_rot = model(collate(rotated, dtype=torch.float64))
    assert torch.allclose(out["energy"], out_rot["energy"], rtol=1e-9, atol=1e-9)
    assert torch.allclose(out["forces"] @ torch.as_tensor(rot).T, out_rot["forces"], atol=1e-8)


def test_batched_equals_one_at_a_time(structures):
    model = _model(seed=3)
    together = model(collate(structures))
    for i, a in enumerate(structures):
        alone = model(collate([a]))
        assert torch.allclose(alone["energy"], together["energy"][i : i + 1], rtol=1e-5, atol=1e-5)


def test_scale_factor_fitting(structures):
    torch.manual_seed(0)
    model = GemNetOC.from_preset("tiny").eval()
    assert has_unfitted_scale_factors(model)
    batches = [collate(structures[:2]), collate(structures[1:])]
    fitted = ensure_scale_factors(model, batches)
    assert fitted and not has_unfitted_scale_factors(model)
    assert model.fitted_scale_factors == fitted
    values = [float(m.scale_factor) for m in model.modules() if isinstance(m, ScaleFactor)]
    assert all(np.isfinite(v) and v > 0 for v in values)
    assert ensure_scale_factors(model, batches) == []  # nothing left to fit


def test_scale_factor_fitting_can_show_progress(structures, capsys):
    """Fitting S's 41 factors takes minutes on a CPU: a bar on stderr counts them (off by default)."""
    model = GemNetOC.from_preset("tiny").eval()
    fitted = ensure_scale_factors(model, [collate(structures)], progress=True)
    err = capsys.readouterr().err
    assert "fitting scale factors:" in err and f"| 0/{len(fitted)} [" in err  # then redrawn as factors finish
    model = GemNetOC.from_preset("tiny").eval()
    ensure_scale_factors(model, [collate(structures)])
    assert "fitting scale factors" not in capsys.readouterr().err


def test_gemnet_from_fairchem_round_trip(structures):
    """Save atomsift weights in fairchem's layout (module. prefix, out_energy / out_forces) and load them back."""
    model = _model(seed=4)
    hparams = model.backbone.hparams()
    assert hparams.pop("absolute_rbf_cutoff") is None  # atomsift / JMP option, not in fairchem configs
    config = {"name": "gemnet_oc", **hparams, "regress_forces": True, "otf_graph": True}
    state = {f"module.{k}": v for k, v in model.backbone.state_dict().items()}
    state.update({f"module.{k}": v for k, v in model.heads.state_dict().items()})
    backbone, heads, report = gemnet_from_fairchem(config, state)
    report.raise_if(strict=True)
    assert report.clean and "otf_graph" in report.ignored_config_keys
    loaded = FairchemGemNetOC(backbone, heads).eval()
    batch = collate(structures)
    assert torch.equal(loaded(batch)["energy"], model(batch)["energy"])


def test_gemnet_from_fairchem_reports_problems():
    config = {"name": "gemnet_oc", **PRESETS["tiny"], "direct_forces": True}
    with pytest.raises(ConfigError, match="no_such_key"):
        gemnet_from_fairchem({**config, "no_such_key": 1}, {})
    with pytest.raises(ConfigError):
        gemnet_from_fairchem({**config, "name": "painn"}, {})
    source = _tiny(seed=5)
    state = {k: v for k, v in source.state_dict().items() if not k.endswith("scale_factor")}
    state["module.extra.weight"] = torch.zeros(1)
    _, _, report = gemnet_from_fairchem({**config, "scale_file": "scaling.json"}, state)
    assert report.unexpected_keys == ["extra.weight"]
    assert report.missing_keys == ["out_energy.linear.weight", "out_forces.linear.weight"]
    assert report.unfitted_scale_factors and any("scaling.json" in note for note in report.notes)
    with pytest.raises(ConfigError):
        report.raise_if(strict=True)
    report.raise_if(strict=False)


def test_bad_inputs_give_clear_errors(ethanol):
    model = _tiny()
    heavy = ethanol[0].copy()
    heavy.numbers[0] = 119  # tiny embeds up to 120: fine
    model(collate([heavy]))
    heavy.numbers[0] = 121
    with pytest.raises(DataError, match="121"):
        model(collate([heavy]))
    nan = ethanol[0].copy()
    nan.positions[2, 1] = np.nan
    with pytest.raises(DataError):
        model(collate([nan]))
    far = Atoms("H2", positions=[[0, 0, 0], [0, 0, 30.0]])
    far.info["atomsift_id"] = "far-apart"
    with pytest.raises(DataError, match="far-apart"):
        model(collate([far]))


def test_single_atom_structure_has_an_energy(ethanol):
    """An isolated atom has no edges; its energy is still defined (fairchem gives one too)."""
    model = _model(seed=6)
    out = model(collate([Atoms("O", positions=[[0, 0, 0]]), ethanol[0]]))
    assert torch.isfinite(out["energy"]).all()
    assert torch.all(out["forces"][0] == 0)


@pytest.mark.parametrize("direct_forces", [True, False], ids=["direct", "gradient"])
def test_training_step_reaches_every_weight(structures, direct_forces):
    """A force loss backpropagates (double backward for gradient forces) into the backbone's weights."""
    model = _model(seed=7, direct_forces=direct_forces).train()
    out = model(collate(structures))
    loss = out["energy"].pow(2).mean() + out["forces"].pow(2).mean()
    loss.backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    assert all(g is not None and torch.isfinite(g).all() for g in grads.values())
    assert grads["backbone.atom_emb.embeddings.weight"].abs().sum() > 0
    assert grads["backbone.int_blocks.0.quad_interaction.mlp_sbf.bilinear.linear.weight"].abs().sum() > 0


def test_graphs_without_edges(ethanol):
    """No atom with a qint tag, an a2e cutoff below every bond, and a batch of isolated atoms."""
    molecule = ethanol[0]
    for overrides in ({"qint_tags": [1]}, {"cutoff_aeaint": 0.5}):
        model = _model(seed=8, **overrides)
        assert torch.isfinite(model(collate([molecule]))["energy"]).all()
    out = _model(seed=8, direct_forces=False)(collate([Atoms("O"), Atoms("H")]))
    assert torch.isfinite(out["energy"]).all() and torch.all(out["forces"] == 0)


def test_a_slab_without_a_vacuum_vector_equals_the_same_slab_with_one():
    """ASE's fcc111 without vacuum has c = 0 (pbc T, T, F); fairchem's image count divided by its zero volume."""
    from ase.build import fcc111

    torch.manual_seed(0)
    model = GemNetOC.from_preset("tiny", direct_forces=False).double()
    bare = fcc111("Cu", (2, 2, 3))
    bare.positions += np.random.default_rng(0).normal(0.0, 0.05, bare.positions.shape)  # no exact ties
    assert not bare.cell[2].any() and list(bare.pbc) == [True, True, False]
    padded = bare.copy()
    padded.cell[2] = [0.0, 0.0, 30.0]
    padded.positions[:, 2] += 5.0
    a, b = (model(collate([s], dtype=torch.float64)).node for s in (bare, padded))
    assert torch.isfinite(a).all() and torch.allclose(a, b, rtol=0, atol=1e-10)


def test_a_batch_of_another_dtype_is_a_clear_error(structures):
    from atomsift.models import AtomsModel

    model = AtomsModel(GemNetOC.from_preset("tiny"), {"energy": {"kind": "energy", "forces": "gradient"}}).double()
    with pytest.raises(ConfigError, match="the batch is float32 on cpu, the model's weights are float64"):
        model(collate(structures))  # torch failed deep inside a layer; PaiNN mixed float32 and float64 outputs
    assert model(collate(structures, dtype=torch.float64))["forces"].dtype == torch.float64


def test_ase_layer_tags_and_missing_qint_tags_are_warned_about_once(caplog):
    import logging

    from ase.build import add_adsorbate, fcc111

    slab = fcc111("Cu", (2, 2, 3), vacuum=7.0)
    add_adsorbate(slab, "O", 1.5, "fcc")  # ASE: layers tagged 1, 2, 3 from the top, the adsorbate 0
    model = GemNetOC.from_preset("tiny", qint_tags=[1, 2])
    with caplog.at_level(logging.WARNING):
        model(collate([slab]))
        model(collate([slab]))
    said = [r.getMessage() for r in caplog.records if "GemNet-OC" in r.getMessage()]
    assert len(said) == 1 and "tags [3] are not OC20's" in said[0]
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        GemNetOC.from_preset("tiny", qint_tags=[1, 2])(collate([slab]))
    assert not caplog.records  # once per process, not per model (a run's training, EMA and test models)
    WARNED.clear()  # as in a new process
    muted = GemNetOC.from_preset("tiny", qint_tags=[1, 2])
    logger = logging.getLogger("atomsift.models.backbones.gemnet_oc.model")
    logger.setLevel(logging.ERROR)  # as while fitting scale factors before training
    try:
        muted(collate([slab]))
    finally:
        logger.setLevel(logging.NOTSET)
    with caplog.at_level(logging.WARNING):
        muted(collate([slab]))  # what the muted pass could not say is said now
    assert "tags [3] are not OC20's" in caplog.text
    caplog.clear()
    WARNED.clear()
    slab.set_tags(2)
    with caplog.at_level(logging.WARNING):
        GemNetOC.from_preset("tiny", qint_tags=[1, 2])(collate([slab]))
    assert not caplog.records
    slab.set_tags(0)
    WARNED.clear()
    with caplog.at_level(logging.WARNING):
        GemNetOC.from_preset("tiny", qint_tags=[1, 2])(collate([slab]))
    assert "no atom of this batch has a tag in qint_tags=[1, 2]" in caplog.text


@pytest.mark.parametrize("backbone", ["gemnet_oc", "painn"])
def test_a_duplicated_atom_is_named_by_every_backbone(backbone):
    """fairchem's graph drops pairs closer than 0.01 A as 'the same atom': GemNet-OC ran on, PaiNN refused."""
    from ase.build import molecule

    from atomsift.models import build_backbone

    water = molecule("H2O")
    water.append(water[1])
    model = GemNetOC.from_preset("tiny") if backbone == "gemnet_oc" else build_backbone("painn", hidden=8)
    with pytest.raises(DataError, match="atoms 1 and 3 sit on top of each other"):
        model(collate([water]))
