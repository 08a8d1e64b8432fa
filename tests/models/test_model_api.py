"""AtomsModel: heads, predict, ASE calculator, atomsift checkpoints and the checkpoint CSI extractor."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule

from atomsift.errors import ConfigError, DataError
from atomsift.graph import collate
from atomsift.models.checkpoint import checkpoint_kind, load_checkpoint, save_checkpoint
from atomsift.models.heads import reduce_atoms
from atomsift.models.model import AtomsModel
from atomsift.models.registry import build_backbone

TINY = {"hidden": 16, "num_layers": 2, "num_rbf": 8, "cutoff": 4.0}


def _model(**heads) -> AtomsModel:
    torch.manual_seed(0)
    heads = heads or {"energy": {"kind": "energy", "forces": "gradient"}}
    return AtomsModel(build_backbone("painn", **TINY), heads).double()


def _structures():
    water = molecule("H2O")
    ethanol = molecule("CH3CH2OH")
    salt = bulk("NaCl", "rocksalt", a=5.64)
    salt.rattle(0.05, seed=1)
    return [water, ethanol, salt]


def test_heads_outputs_and_shapes():
    model = _model(
        energy={"kind": "energy", "forces": "gradient"},
        direct={"kind": "energy", "forces": "direct"},
        gap={"kind": "property", "reduce": "mean", "out_dim": 2},
        peak={"kind": "property", "reduce": "max"},
    )
    batch = collate(_structures(), dtype=torch.float64)
    out = model(batch)
    assert out["energy"].shape == (3,) and out["forces"].shape == (batch.num_atoms, 3)
    assert model(batch, head="direct")["forces"].shape == (batch.num_atoms, 3)
    assert model(batch, head="gap")["property"].shape == (3, 2)
    assert model(batch, head="peak")["property"].shape == (3, 1)
    with pytest.raises(ConfigError, match="no head 'nope'"):
        model(batch, head="nope")
    keys = list(model.state_dict())
    assert all(k.startswith(("backbone.", "heads.")) for k in keys)
    assert any(k.startswith("heads.gap.") for k in keys)


def test_reduce_atoms_against_loops():
    values = torch.randn(7, 3, dtype=torch.float64)
    index = torch.tensor([0, 0, 1, 1, 1, 2, 2])
    for how, fn in (("sum", torch.sum), ("mean", torch.mean), ("max", lambda x, dim: x.max(dim).values)):
        got = reduce_atoms(values, index, 3, how)
        want = torch.stack([fn(values[index == b], dim=0) for b in range(3)])
        torch.testing.assert_close(got, want)
    with pytest.raises(ConfigError):
        reduce_atoms(values, index, 3, "median")


def test_bad_head_config_is_rejected():
    with pytest.raises(ConfigError, match="unknown_key"):
        _model(energy={"kind": "energy", "unknown_key": 1})
    with pytest.raises(ConfigError, match="property head cannot predict forces"):
        _model(p={"kind": "property", "forces": "gradient"})
    with pytest.raises(ConfigError, match="at least one head"):
        AtomsModel(build_backbone("painn", **TINY), {})
    with pytest.raises(ConfigError, match="did you mean 'out_dim' for 'out_dimm'"):
        _model(p={"kind": "property", "out_dimm": 2})
    with pytest.raises(ConfigError, match="did you mean 'painn' for 'pain'"):  # the other lookups had one
        build_backbone("pain")
    # GemNet-OC has no default size: named presets instead of a TypeError listing 19 arguments
    with pytest.raises(ConfigError, match="needs a size") as err:
        build_backbone("gemnet_oc")
    assert "small" in err.value.fix and "--preset" in err.value.fix


def test_total_energies_keep_sub_meV_resolution_in_a_float32_model():
    """A per-element reference of -1240.125 eV per atom (exact in float32; U0-sized totals): the float32 model's energies agree with
    the float64 model's to well below a meV (summed in float32 they were off by up to ~0.5 meV), labels too."""
    model = _model()
    model.heads["energy"].atom_ref[:] = -1240.125
    structures = [molecule("CH3CH2OH"), molecule("C6H6"), molecule("CH3COOH")]
    wide = [r["energy"] for r in model.eval().predict(structures)]
    narrow = model.float().eval().predict(structures)
    assert all(abs(r["energy"] - w) < 2e-5 for r, w in zip(narrow, wide))
    assert abs(wide[0] - 9 * -1240.125) > 1e-3  # the network adds its own (nonzero) residual


def test_misuse_of_predict_and_the_calculator_says_what_to_do():
    model = _model(energy={"kind": "energy", "forces": "gradient"})
    with pytest.raises(ConfigError, match="predict takes a list of structures, got one Atoms"):
        model.predict(molecule("H2O"))
    assert model.predict([]) == []
    only_property = _model(gap={"kind": "property"})
    with pytest.raises(ConfigError, match="this model has no energy head"):  # was "pick an energy head: ." (none)
        only_property.as_calculator()


def test_predict_matches_forward_and_units():
    model = _model()
    structures = _structures()
    results = model.predict(structures, batch_size=2)
    assert len(results) == 3
    batch = collate(structures, dtype=torch.float64)
    out = model.eval()(batch)
    np.testing.assert_allclose([r["energy"] for r in results], out["energy"].detach().numpy(), rtol=1e-12)
    for r, s in zip(results, structures):
        assert isinstance(r["energy"], float) and r["forces"].shape == (len(s), 3)
    np.testing.assert_allclose(np.concatenate([r["forces"] for r in results]), out["forces"].detach().numpy())


def test_gradient_forces_train_with_double_backward():
    model = _model().train()
    batch = collate(_structures(), dtype=torch.float64)
    out = model(batch)
    loss = out["forces"].square().mean() + out["energy"].abs().mean()
    loss.backward()
    grads = [p.grad for p in model.backbone.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    assert sum(float(g.abs().sum()) for g in grads) > 0


def test_checkpoint_round_trip_and_ema(tmp_path):
    model = _model(energy={"kind": "energy", "forces": "gradient"}, gap={"kind": "property"})
    path = save_checkpoint(model, tmp_path / "m.pt", metadata={"note": "test"})
    loaded = load_checkpoint(path)
    assert checkpoint_kind(torch.load(path, weights_only=True)) == "atomsift"
    assert loaded.load_report.clean and not loaded.load_report.used_ema
    assert list(loaded.head_specs) == ["energy", "gap"] and loaded.metadata["note"] == "test"
    structures = _structures()
    want = model.predict(structures)
    got = loaded.double().predict(structures)
    for a, b in zip(want, got):
        assert a["energy"] == pytest.approx(b["energy"], rel=1e-12)
    # EMA weights are preferred when present, raw weights on request
    ema = {k: v + 0.01 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    save_checkpoint(model, tmp_path / "ema.pt", ema_state_dict=ema)
    with_ema = load_checkpoint(tmp_path / "ema.pt")
    assert with_ema.load_report.used_ema
    key = next(k for k in ema if k.startswith("backbone.") and ema[k].is_floating_point())
    torch.testing.assert_close(with_ema.state_dict()[key], ema[key].float())
    raw = load_checkpoint(tmp_path / "ema.pt", ema=False)
    torch.testing.assert_close(raw.state_dict()[key], model.state_dict()[key].float())
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temporary file


def test_bad_checkpoint_files(tmp_path):
    with pytest.raises(DataError, match="not found"):
        load_checkpoint(tmp_path / "absent.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(DataError, match="the file is not a PyTorch checkpoint"):
        load_checkpoint(tmp_path / "junk.pt")
    (tmp_path / "summary.json").write_text('{"best_epoch": 3}\n')  # a run's JSON given by mistake
    with pytest.raises(DataError, match=r"is a JSON file, not a checkpoint.*model\.pt"):
        load_checkpoint(tmp_path / "summary.json")
    (tmp_path / "zipped.pt").write_bytes(b"PK\x03\x04 but cut")
    with pytest.raises(DataError, match="truncated or not a PyTorch checkpoint"):
        load_checkpoint(tmp_path / "zipped.pt")
    path = save_checkpoint(_model(), tmp_path / "m.pt")
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="junk|truncated"):
        load_checkpoint(tmp_path / "cut.pt")
    torch.save({"weights": torch.zeros(3), "when": __import__("datetime").date(2024, 1, 1)}, tmp_path / "pickled.pt")
    with pytest.raises(ConfigError, match="datetime.date.*trusted=True"):
        load_checkpoint(tmp_path / "pickled.pt")
    with pytest.raises(DataError, match="unrecognised checkpoint layout"):
        load_checkpoint(tmp_path / "pickled.pt", trusted=True)
    torch.save({"weights": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(DataError, match="unrecognised checkpoint layout"):
        load_checkpoint(tmp_path / "other.pt")
    payload = torch.load(path, weights_only=True)
    payload["state_dict"]["backbone.extra"] = torch.zeros(1)
    torch.save(payload, tmp_path / "extra.pt")
    with pytest.raises(DataError, match="unexpected key"):
        load_checkpoint(tmp_path / "extra.pt")
    assert load_checkpoint(tmp_path / "extra.pt", strict=False).load_report.unexpected_keys == ["backbone.extra"]


def test_ase_calculator_relaxes_and_runs_md():
    from ase.md.verlet import VelocityVerlet
    from ase.optimize import BFGS

    model = _model()
    atoms = molecule("CH3CH2OH")
    atoms.rattle(0.05, seed=3)
    atoms.calc = model.as_calculator()
    e0 = atoms.get_potential_energy()
    np.testing.assert_allclose(atoms.get_forces(), model.predict([atoms])[0]["forces"], rtol=1e-10, atol=1e-12)
    BFGS(atoms, logfile=None).run(fmax=0.05, steps=20)
    assert atoms.get_potential_energy() < e0
    VelocityVerlet(atoms, timestep=0.5).run(5)
    assert np.isfinite(atoms.get_potential_energy())
    with pytest.raises(ConfigError, match="predicts a property"):
        _model(p={"kind": "property"}).as_calculator()


def test_checkpoint_feature_extractor(tmp_path):
    from atomsift.csi.extract import get_extractor
    from atomsift.data.record import Record

    model = _model()
    path = save_checkpoint(model, tmp_path / "m.pt")
    ex = get_extractor(f"checkpoint:{path}", dtype="float64", batch_size=2)
    assert ex.dim == TINY["hidden"] and ex.layer == "node" and len(ex.weights_hash()) == 64
    structures = _structures()
    records = [
        Record(
            numbers=a.numbers, positions=a.positions, id=f"s{i}", cell=a.cell.array if a.pbc.any() else None, pbc=a.pbc
        )
        for i, a in enumerate(structures)
    ]
    rows = ex.features(records)
    assert [r.shape for r in rows] == [(len(a), TINY["hidden"]) for a in structures]
    want = model.backbone(collate(structures, dtype=torch.float64)).node.detach().numpy()
    np.testing.assert_allclose(np.concatenate(rows), want, rtol=1e-10, atol=1e-12)
    big = Record(numbers=np.array([1, 150]), positions=np.zeros((2, 3)) + [[0, 0, 0], [0, 0, 1]], id="odd")
    with pytest.raises(DataError, match="odd"):
        ex.features([big])


def test_unavailable_device_and_bad_cutoff_are_config_errors(tmp_path):
    path = save_checkpoint(_model(), tmp_path / "m.pt")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match="not available here"):
            load_checkpoint(path, device="cuda")
    with pytest.raises(ConfigError, match="unknown torch device"):
        load_checkpoint(path, device="gpu7")
    with pytest.raises(ConfigError, match="cutoff must be a positive distance"):
        build_backbone("gemnet_oc", preset="tiny", cutoff=-1.0)
