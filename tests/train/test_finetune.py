"""Finetuning: every backbone tensor is loaded, partial checkpoints are refused, outputs in physical units."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from _train_helpers import TINY_PAINN, pretrain_config
from ase.build import bulk
from ase.calculators.emt import EMT
from ase.io import write

from atomsift.errors import ConfigError, DataError
from atomsift.models import load_checkpoint
from atomsift.settings import resolve_settings
from atomsift.train.config import FinetuneConfig
from atomsift.train.finetune import build_finetune_model, load_preset, run_finetuning, split_indices
from atomsift.train.pretrain import run_pretraining


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory) -> str:
    out = tmp_path_factory.mktemp("pt") / "run"
    run_pretraining(pretrain_config(epochs=2), out, progress=False)
    return str(out / "model.pt")


def finetune_config(**overrides) -> FinetuneConfig:
    base = load_preset("rmd17")
    flat = {
        "data": {"path": "bundled:ethanol"},
        "split": {"train": 30, "val": 10, "test": 20, "seed": 42},
        "epochs": 2,
        "batch_size": 5,
        "lr": 1e-3,
        **overrides,
    }
    return resolve_settings(FinetuneConfig, base={**base, **flat})


def test_every_backbone_tensor_is_loaded(pretrained):
    cfg = finetune_config(checkpoint=pretrained)
    model, report = build_finetune_model(cfg, {"kind": "energy", "forces": "gradient"}, "energy")
    saved = torch.load(pretrained, weights_only=True)
    ema = saved["ema_state_dict"] if saved.get("ema_state_dict") else saved["state_dict"]
    backbone = {k[len("backbone.") :]: v for k, v in ema.items() if k.startswith("backbone.")}
    state = model.backbone.state_dict()
    assert backbone.keys() == state.keys() and len(backbone) > 5
    assert all(torch.equal(state[k], backbone[k]) for k in backbone)
    assert report["missing"] == [] and report["unexpected"] == [] and set(report["heads_dropped"]) == {"acac", "oxides"}
    assert list(model.head_specs) == ["energy"]  # a new head for the task
    scratch, _ = build_finetune_model(
        finetune_config(checkpoint=pretrained, from_scratch=True), {"kind": "energy", "forces": "gradient"}, "energy"
    )
    assert scratch.backbone.hparams() == model.backbone.hparams()
    assert not all(torch.equal(v, state[k]) for k, v in scratch.backbone.state_dict().items())


def test_missing_backbone_weights_are_refused_unless_partial(pretrained, tmp_path):
    saved = torch.load(pretrained, weights_only=True)
    key = next(k for k in saved["state_dict"] if k.startswith("backbone.embedding"))
    saved["state_dict"].pop(key)
    damaged = tmp_path / "damaged.pt"
    torch.save(saved, damaged)
    with pytest.raises(ConfigError, match=r"1 missing \(embedding.weight\).*allow_partial"):
        build_finetune_model(finetune_config(checkpoint=str(damaged)), {"kind": "energy"}, "energy")
    _, report = build_finetune_model(
        finetune_config(checkpoint=str(damaged), allow_partial=True), {"kind": "energy"}, "energy"
    )
    assert report["missing"] == ["embedding.weight"]


def test_a_negative_split_count_is_refused():
    with pytest.raises(ConfigError, match="split.train = -1: a count cannot be negative"):
        split_indices(100, finetune_config(checkpoint="x.pt", split={"train": -1, "val": 10}).split)


def test_split_counts_fractions_rest_and_file(tmp_path):
    from atomsift.train.config import SplitSpec

    s = split_indices(100, SplitSpec(train=0.8, val=0.1, test="rest"))
    assert [len(s[k]) for k in ("train", "val", "test")] == [80, 10, 10]
    assert len(set(np.concatenate(list(s.values())))) == 100
    again = split_indices(100, SplitSpec(train=0.8, val=0.1, test="rest"))
    assert all(np.array_equal(s[k], again[k]) for k in s)  # seed 42 by default: the same split every time
    with pytest.raises(ConfigError, match="asks 120 structures"):
        split_indices(100, SplitSpec(train=100, val=20))


def test_finetune_run_writes_split_report_and_test_metrics(pretrained, tmp_path):
    metrics = run_finetuning(finetune_config(checkpoint=pretrained), tmp_path / "ft", progress=False)
    run = tmp_path / "ft"
    split = json.loads((run / "split.json").read_text())
    assert [len(split[k]) for k in ("train", "val", "test")] == [30, 10, 20]
    assert json.loads((run / "load_report.json").read_text())["missing"] == []
    assert metrics["n_structures"] == 20 and metrics["split"] == "test"
    assert {"forces_mae_meV_per_A", "forces_rmse_meV_per_A", "energy_mae_meV"} <= set(metrics)
    model = load_checkpoint(run / "model.pt")
    graph = model.graph_for()
    assert (graph.cutoff, graph.max_neighbors, graph.pbc) == (7.0, 100, False)  # the rmd17 preset's graph
    assert model.metadata["task"]["target"] == "energy" and model.load_report.trained
    # a finished run is reused as it is: its starting weights need not be there any more
    moved = tmp_path / "moved.pt"
    shutil.copy(pretrained, moved)
    first = run_finetuning(finetune_config(checkpoint=str(moved)), tmp_path / "ft2", progress=False)
    moved.unlink()
    assert run_finetuning(finetune_config(checkpoint=str(moved)), tmp_path / "ft2", progress=False) == first


def test_trained_model_predicts_raw_units_and_drives_ase(tmp_path):
    """Fit a tiny PaiNN to EMT energies and forces of rattled Cu / Ni cells; predictions come out in eV and eV/A."""
    rng = np.random.default_rng(0)
    frames = []
    for i in range(40):
        atoms = bulk("Cu", "fcc", a=3.6, cubic=True)
        atoms.numbers[rng.random(4) < 0.4] = 28
        atoms.rattle(0.1, seed=i)
        atoms.calc = EMT()
        atoms.get_forces()
        frames.append(atoms)
    path = tmp_path / "emt.xyz"
    write(path, frames)
    cfg = resolve_settings(
        FinetuneConfig,
        base={
            **load_preset("energy-forces"),
            "from_scratch": True,
            "backbone": TINY_PAINN,
            "data": {"path": str(path)},
            "split": {"train": 30, "val": 5, "test": 5},
            "epochs": 60,
            "batch_size": 5,
            "lr": 5e-3,
            "layerwise_lr": None,
            "cosine_epochs": None,
            "plateau_factor": None,
            "task": {"energy_weight": 1.0, "force_weight": 1.0, "forces": "gradient", "metric": "loss"},
        },
    )
    run_finetuning(cfg, tmp_path / "ft", progress=False)
    model = load_checkpoint(tmp_path / "ft" / "model.pt")
    energies = np.array([a.get_potential_energy() for a in frames])
    forces = np.concatenate([a.get_forces() for a in frames])
    pred = model.predict(frames)
    e_mae = np.mean(np.abs([p["energy"] for p in pred] - energies))
    f_mae = np.mean(np.abs(np.concatenate([p["forces"] for p in pred]) - forces))
    assert e_mae < 0.25 * energies.std(), (e_mae, energies.std())  # eV, not normalised units
    assert f_mae < 0.5 * np.abs(forces).mean(), (f_mae, np.abs(forces).mean())
    atoms = frames[3].copy()
    atoms.calc = model.as_calculator()
    assert atoms.get_potential_energy() == pytest.approx(pred[3]["energy"], rel=1e-6)
    np.testing.assert_allclose(atoms.get_forces(), pred[3]["forces"], rtol=1e-5, atol=1e-6)


def test_bad_finetune_settings(pretrained):
    with pytest.raises(ConfigError, match="unknown finetuning preset 'rmd71'.*rmd17"):
        load_preset("rmd71")
    with pytest.raises(ConfigError, match="checkpoint"):
        resolve_settings(FinetuneConfig, base={**load_preset("rmd17"), "data": {"path": "bundled:ethanol"}})
    with pytest.raises(ConfigError, match="task.energy_weigth"):
        finetune_config(checkpoint=pretrained, task={"energy_weigth": 1})
    # the per-element reference is fitted to totals: a mean readout divided it by N (700 eV off)
    with pytest.raises(ConfigError, match="energy head sums its per-atom energies"):
        finetune_config(checkpoint=pretrained, task={"readout": "mean"})


def test_a_missing_checkpoint_is_said_before_the_run_folder_is_made(tmp_path):
    with pytest.raises(DataError, match="checkpoint file not found"):
        run_finetuning(finetune_config(checkpoint=str(tmp_path / "nope.pt")), tmp_path / "run", progress=False)
    scratch = finetune_config(from_scratch=True, backbone={"name": "painn", "hparams": {"num_layayers": 2}})
    with pytest.raises(ConfigError, match="did you mean 'num_layers' for 'num_layayers'"):
        run_finetuning(scratch, tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_preset_splits_are_jmps(pretrained):
    from atomsift.data.readers.rmd17 import jmp_split
    from atomsift.train.config import SplitSpec

    ours = split_indices(1000, SplitSpec(train=950, val=50, test="rest", seed=42))
    for name in ("train", "val", "test"):
        assert np.array_equal(ours[name], jmp_split(1000, 950, 50, name)), name
    with pytest.raises(ConfigError, match="no test structures"):
        run_finetuning(
            finetune_config(checkpoint=pretrained, split={"train": 950, "val": 50, "test": "rest"}),
            Path("/nonexistent/never-written"),
            progress=False,
        )


def test_evaluate_split_test_reads_the_runs_test_options(pretrained, tmp_path):
    """A run whose test set is read with test_options (matbench's test fold): its split.json test indices refer
    to that set, so `evaluate --split test` must read it the same way (it scored frames of the training file)."""
    from atomsift.data.spec import DatasetSpec
    from atomsift.train.evaluate import evaluate_checkpoint

    last = tmp_path / "last20.json"
    last.write_text(json.dumps(list(range(980, 1000))))
    cfg = finetune_config(
        checkpoint=pretrained,
        split={"train": 30, "val": 10, "test": 0, "seed": 42},
        test_options={"indices": str(last)},
    )
    metrics = run_finetuning(cfg, tmp_path / "ft", progress=False)
    assert metrics["n_structures"] == 20
    assert json.loads((tmp_path / "ft" / "split.json").read_text())["test_options"] == {"indices": str(last)}
    again = evaluate_checkpoint(
        tmp_path / "ft" / "model.pt", DatasetSpec(path="bundled:ethanol"), split="test", out=tmp_path / "ev"
    )
    assert again["test_options"] == {"indices": str(last)} and again["n_structures"] == 20
    for key in ("forces_mae_meV_per_A", "energy_mae_meV"):
        assert again[key] == pytest.approx(metrics[key], rel=1e-6), key
    # the run's split applied to another dataset (large enough for its indices) is refused, not scored
    with pytest.raises(ConfigError, match="split indexes bundled:ethanol, not bundled:bench-organic"):
        evaluate_checkpoint(
            tmp_path / "ft" / "model.pt", DatasetSpec(path="bundled:bench-organic"), split="val", out=tmp_path / "x"
        )


def test_evaluate_counts_the_structures_each_mae_averages_over(pretrained):
    """n_structures counts what was evaluated; the energy MAE averages over the structures with energies only,
    and metrics.json says how many (it gave 40 beside an MAE of 17)."""
    import dataclasses

    from atomsift.data import open_dataset
    from atomsift.train.evaluate import evaluate_model, task_of_model

    ds = open_dataset("bundled:ethanol")
    records = [ds[i] if i % 3 else dataclasses.replace(ds[i], energy=None) for i in range(9)]
    model = load_checkpoint(pretrained)
    task = task_of_model(model, None)
    metrics = evaluate_model(model, records, task)["metrics"]
    assert (metrics["n_structures"], metrics["n_with_target"]) == (9, 6)
    assert metrics.get("n_with_forces", 9) == 9
    predicted = model.predict(records, head=task.head)
    errors = [abs(float(p["energy"]) - r.energy) for p, r in zip(predicted, records) if r.energy is not None]
    assert metrics["energy_mae_meV"] == pytest.approx(1000 * sum(errors) / 6, rel=1e-9)


def test_predict_names_and_scores_the_heads_own_target(pretrained, capsys):
    """`model predict` with a U0 head: rows say U0_eV (they said energy_eV) and the MAE is against the U0
    labels under the unit evaluate reports (it compared with the record's energy, and only that)."""
    from atomsift.cli.model import _print_mae, _rows
    from atomsift.data import open_dataset
    from atomsift.train.evaluate import evaluate_model
    from atomsift.train.losses import TaskInfo

    ds = open_dataset("bundled:bench-qm9")
    records = [ds[i] for i in range(4)]
    model = load_checkpoint(pretrained)
    task = TaskInfo("qm9", model.head_name(None), target="U0", forces=False)
    results = model.predict(records, head=task.head)
    rows = _rows(records, results, task)
    assert all("U0_eV" in r and "energy_eV" not in r for r in rows)
    metrics = evaluate_model(model, records, task, results=results)["metrics"]
    mae = sum(abs(r["U0_eV"] - rec.targets["U0"]) for r, rec in zip(rows, records)) / 4
    assert metrics["U0_mae_meV"] == pytest.approx(1000 * mae, rel=1e-9) and metrics["n_with_target"] == 4
    _print_mae(metrics, "t")
    assert "U0 (meV)" in capsys.readouterr().out
    records[1].targets["U0"] = float("nan")  # the MAE came out nan, naming nothing
    metrics = evaluate_model(model, records, task, results=results)["metrics"]
    assert metrics["n_with_target"] == 3 and np.isfinite(metrics["U0_mae_meV"])
    assert f"1 structure(s) have the label 'U0' NaN or inf (first: {records[1].id})" in metrics["warning"]


def test_a_training_checkpoint_points_to_the_runs_model(pretrained):
    """`model info RUN/checkpoints/last.ckpt` said 'unrecognised checkpoint layout' and listed other formats."""
    ckpt = Path(pretrained).parent / "checkpoints" / "last.ckpt"
    with pytest.raises(DataError, match="Lightning training checkpoint") as err:
        load_checkpoint(ckpt)
    assert str(Path(pretrained)) in err.value.fix


def test_evaluate_split_accepts_the_runs_data_named_from_another_folder(pretrained, tmp_path, monkeypatch):
    """split.json keeps the path as typed ('data/eth.xyz'); evaluated from a subfolder as '../data/eth.xyz'
    the same file was refused as another dataset."""
    from atomsift.data.spec import DatasetSpec
    from atomsift.train.evaluate import evaluate_checkpoint

    (tmp_path / "data").mkdir()
    (tmp_path / "sub").mkdir()
    shutil.copy(open_bundled_ethanol_path(), tmp_path / "data" / "eth.xyz")
    monkeypatch.chdir(tmp_path)
    cfg = finetune_config(checkpoint=pretrained, data={"path": "data/eth.xyz"}, epochs=1)
    metrics = run_finetuning(cfg, Path("ft"), progress=False)
    monkeypatch.chdir(tmp_path / "sub")
    again = evaluate_checkpoint(
        Path("../ft/model.pt"), DatasetSpec(path="../data/eth.xyz"), split="test", out=Path("../ev")
    )
    assert again["forces_mae_meV_per_A"] == pytest.approx(metrics["forces_mae_meV_per_A"], rel=1e-6)


def open_bundled_ethanol_path() -> Path:
    from atomsift.data.bundled import resolve_bundled

    return Path(resolve_bundled("ethanol")[0])


def test_finetuning_in_float64(pretrained, tmp_path):
    """precision "64" failed at the first step: Lightning's generic batch conversion walked into the frozen
    graph settings a finetuning batch carries."""
    metrics = run_finetuning(
        finetune_config(checkpoint=pretrained, precision="64", epochs=1), tmp_path / "ft", progress=False
    )
    assert metrics["forces_mae_meV_per_A"] > 0 and (tmp_path / "ft" / "model.pt").is_file()


def test_a_structure_the_model_refuses_in_training_names_its_file(pretrained, tmp_path):
    """Atoms on top of each other are found by the model, which knows the record id only: the error had no
    File part (the bad-input review)."""
    import ase.io

    frames = ase.io.read(open_bundled_ethanol_path(), index=":12")
    frames[3].positions[1] = frames[3].positions[0]
    data = tmp_path / "dup.xyz"
    ase.io.write(data, frames, format="extxyz")
    cfg = finetune_config(
        checkpoint=pretrained, data={"path": str(data)}, split={"train": 8, "val": 2, "test": 2, "seed": 0}
    )
    with pytest.raises(DataError, match="sit on top of each other") as err:
        run_finetuning(cfg, tmp_path / "ft", progress=False)
    assert err.value.file == str(data) and err.value.record == "frame3"
