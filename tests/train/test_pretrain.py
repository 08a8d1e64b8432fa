"""Pretraining: the budget is exact, subsets are saved once, and a killed run resumes bit for bit."""

from __future__ import annotations

import json
import math
import re
import warnings

import lightning as L
import numpy as np
import pytest
import torch
from _train_helpers import pretrain_config

from atomsift.data.sampling import load_subset
from atomsift.errors import ConfigError, DataError
from atomsift.models import load_checkpoint
from atomsift.train import runner
from atomsift.train.module import TrainingDiverged
from atomsift.train.pretrain import plan_pretraining, run_pretraining


class Kill(BaseException):
    """Stands for SIGKILL: nothing is saved when it is raised."""


class KillAt(L.Callback):
    def __init__(self, step: int) -> None:
        self.step = step

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            raise Kill()


def _with_callback(monkeypatch, callback: L.Callback) -> None:
    make = runner.make_trainer

    def patched(*args, **kwargs):
        trainer = make(*args, **kwargs)
        trainer.callbacks.append(callback)
        return trainer

    monkeypatch.setattr(runner, "make_trainer", patched)


def test_budget_subsets_and_outputs(tmp_path):
    cfg = pretrain_config()
    summary = run_pretraining(cfg, tmp_path / "run", progress=False)
    assert summary["budget"] == summary["structures_seen"] == 24 * 3
    assert summary["structures_seen_per_dataset"] == {"acac": 36, "oxides": 36}  # balanced: N / 2 each, x E
    assert summary["optimizer_steps"] == 3 * math.ceil(24 / 5)
    run = tmp_path / "run"
    for name in ("config.yaml", "model.pt", "last.pt", "metrics.csv", "summary.json", "checkpoints/last.ckpt"):
        assert (run / name).exists(), name
    train, meta = load_subset(run / "subsets" / "acac.train.json")
    val, _ = load_subset(run / "subsets" / "acac.val.json")
    assert len(train) == 12 and len(val) == 6 and not set(train) & set(val) and meta["sha256_16"]
    model = load_checkpoint(run / "model.pt")
    assert model.load_report.trained is True and set(model.head_specs) == {"acac", "oxides"}
    # heads hold the normalisers: raw eV near the labels' scale even after a few steps
    from atomsift.data import open_dataset

    recs = [open_dataset("bundled:acac")[int(i)] for i in val]
    pred = np.array([r["energy"] for r in model.predict(recs, head="acac")])
    ref = np.array([r.energy for r in recs])
    assert abs(pred.mean() - ref.mean()) < 5 * ref.std() + 1.0


class OptimizerSeen(L.Callback):
    def on_train_start(self, trainer, *args) -> None:
        self.fused = trainer.optimizers[0].defaults["fused"]


def test_cpu_training_uses_the_fused_adamw(tmp_path, monkeypatch):
    """On CPU the one-kernel AdamW (the default per-tensor loop is 2.7x slower); resume stays exact (test below)."""
    seen = OptimizerSeen()
    with monkeypatch.context() as m:
        _with_callback(m, seen)
        run_pretraining(pretrain_config(epochs=1), tmp_path / "a", progress=False)
    assert seen.fused is True


def test_a_warmup_longer_than_the_run_is_warned_about(tmp_path):
    """The learning rate of a run shorter than its warm-up never reaches lr: say so (once, with the numbers)."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        run_pretraining(pretrain_config(epochs=1, warmup_steps=1000), tmp_path / "long", progress=False)
        run_pretraining(pretrain_config(epochs=1), tmp_path / "short", progress=False)
    said = [str(w.message) for w in seen if "warmup_steps" in str(w.message)]
    assert len(said) == 1, said
    assert re.search(r"warmup_steps=1000 is not below the run's \d+ optimizer steps", said[0])


def test_resume_after_kill_mid_epoch_is_bit_for_bit(tmp_path, monkeypatch):
    cfg = pretrain_config()
    run_pretraining(cfg, tmp_path / "a", progress=False)
    with monkeypatch.context() as m:
        _with_callback(m, KillAt(7))  # 5 steps per epoch: step 7 is inside the second epoch
        with pytest.raises(Kill):
            run_pretraining(cfg, tmp_path / "b", progress=False)
    assert torch.load(tmp_path / "b/checkpoints/last.ckpt", weights_only=False)["global_step"] == 6
    with pytest.raises(ConfigError, match="--resume"):
        run_pretraining(cfg, tmp_path / "b", progress=False)
    with pytest.raises(ConfigError, match="lr: 0.001 -> 0.002"):
        run_pretraining(pretrain_config(lr=2e-3), tmp_path / "b", progress=False, resume=True)
    summary = run_pretraining(cfg, tmp_path / "b", progress=False, resume=True)
    for name in ("last.pt", "model.pt"):
        full_a = torch.load(tmp_path / "a" / name, weights_only=True)
        full_b = torch.load(tmp_path / "b" / name, weights_only=True)
        a, b = full_a["state_dict"], full_b["state_dict"]
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
        # the resumed run fitted no normalisers (the checkpoint brings them): its metadata used to say {}
        assert (
            full_a["metadata"]["normalizers"] and full_b["metadata"]["normalizers"] == full_a["metadata"]["normalizers"]
        )
    first = json.loads((tmp_path / "a/summary.json").read_text())
    for key in ("structures_seen", "structures_seen_per_dataset", "atoms_seen", "optimizer_steps", "best_val_loss"):
        assert summary[key] == first[key], key
    # a finished run with the same settings is reused, not rerun
    assert run_pretraining(cfg, tmp_path / "b", progress=False)["atoms_seen"] == first["atoms_seen"]


class KillAtEpochEnd(L.Callback):
    """Kills after the epoch-end checkpoint (AtomicCheckpoint's on_train_epoch_end runs first)."""

    def on_train_epoch_end(self, trainer, *args) -> None:
        raise Kill()


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_from_an_epoch_end_is_bit_for_bit_with_loader_workers(tmp_path, monkeypatch, workers):
    """With data-loader workers a resume from an epoch-end checkpoint trained no batch in the next epoch (the demo: 40 of
    60 steps) and finished with exit 0: the workers had already drawn from the finished epoch's sampler."""
    cfg = pretrain_config(epochs=2, num_workers=workers)
    first = run_pretraining(cfg, tmp_path / "a", progress=False)
    with monkeypatch.context() as m:
        _with_callback(m, KillAtEpochEnd())
        with pytest.raises(Kill):
            run_pretraining(cfg, tmp_path / "b", progress=False)
    state = torch.load(tmp_path / "b/checkpoints/last.ckpt", weights_only=False)
    assert state["loops"]["fit_loop"]["epoch_loop.batch_progress"]["is_last_batch"]  # the epoch-end state
    summary = run_pretraining(cfg, tmp_path / "b", progress=False, resume=True)
    assert summary["optimizer_steps"] == first["optimizer_steps"]
    assert summary["structures_seen"] == first["structures_seen"]
    a = torch.load(tmp_path / "a/last.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b/last.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_gemnet_mixed_graphs_and_edge_dropout_resume(tmp_path, monkeypatch):
    """GemNet-OC with each dataset's graph (molecules 4 A / 10, oxides periodic) and edge dropout: resume is exact."""
    cfg = pretrain_config(
        backbone={"name": "gemnet_oc", "preset": "tiny", "hparams": {"num_blocks": 1}},
        upstream={
            "acac": {
                "path": "bundled:acac",
                "val_size": 3,
                "graph": {"cutoff": 4.0, "max_neighbors": 10, "pbc": False},
            },
            "oxides": {
                "path": "bundled:oxides",
                "val_size": 3,
                "graph": {"cutoff": 4.0, "max_neighbors": 10, "pbc": True},
            },
        },
        n_samples=8,
        epochs=2,
        batch_size=4,
        scale_factor_batches=2,
    )
    run_pretraining(cfg, tmp_path / "a", progress=False)
    with monkeypatch.context() as m:
        _with_callback(m, KillAt(3))
        with pytest.raises(Kill):
            run_pretraining(cfg, tmp_path / "b", progress=False)
    run_pretraining(cfg, tmp_path / "b", progress=False, resume=True)
    a = torch.load(tmp_path / "a/last.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b/last.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert all(float(v) != 0 for k, v in a.items() if k.endswith("scale_factor"))  # fitted, never identity


def test_nan_loss_names_the_step_and_structures(tmp_path, monkeypatch):
    from atomsift.train import module

    real = module.structure_losses
    calls = {"n": 0}

    def poisoned(*args, **kwargs):
        calls["n"] += 1
        loss = real(*args, **kwargs)
        return loss * float("nan") if calls["n"] > 6 else loss

    monkeypatch.setattr(module, "structure_losses", poisoned)
    with pytest.raises(TrainingDiverged, match=r"optimizer step 3 .*structures of that batch: (frame|row)"):
        run_pretraining(pretrain_config(), tmp_path / "run", progress=False)


def test_n_above_dataset_size_suggests_epochs(tmp_path):
    cfg = pretrain_config(
        upstream={"oxides": {"path": "bundled:oxides", "val_size": 5}}, mixture="single", n_samples=400
    )
    with pytest.raises(ConfigError, match=r"has 290 available .*n_samples=290 with epochs=5"):
        run_pretraining(cfg, tmp_path / "run", progress=False)
    # in a mixture the suggestion is the largest total N that fits every dataset, with the budget kept (it
    # offered one dataset's size as the total: n_samples=475 with epochs=6, a budget of 2850 for 2000)
    two = {"acac": {"path": "bundled:acac", "val_size": 25}, "oxides": {"path": "bundled:oxides", "val_size": 5}}
    cfg = pretrain_config(upstream=two, mixture="balanced", n_samples=1000, epochs=2)
    with pytest.raises(ConfigError, match=r"n_samples=581 with epochs=4, about the same budget"):
        plan_pretraining(cfg)
    plan_pretraining(pretrain_config(upstream=two, mixture="balanced", n_samples=581, epochs=4))  # 291 + 290: fits
    with pytest.raises(ConfigError, match="has 290 available"):
        plan_pretraining(pretrain_config(upstream=two, mixture="balanced", n_samples=582, epochs=4))
    with pytest.raises(ConfigError, match="gives 'oxides' no training structures") as err:  # was "unexpected
        plan_pretraining(pretrain_config(upstream=two, mixture="balanced", n_samples=1, batch_size=1))  # ValueError"
    assert "raise n_samples to at least 2" in err.value.fix
    cfg = pretrain_config(
        upstream={"oxides": {"path": "bundled:oxides", "val_size": 5}},
        mixture="single",
        n_samples=300,
        epochs=1,
        allow_repeats=True,
        batch_size=100,
    )
    assert run_pretraining(cfg, tmp_path / "ok", progress=False)["structures_seen"] == 300


def test_force_weight_on_data_without_forces_is_refused(tmp_path):
    cfg = pretrain_config(upstream={"ads": {"path": "bundled:adsorbates", "force_weight": 10}}, mixture="single")
    with pytest.raises(ConfigError, match="force_weight 10.0, but its structures have no forces"):
        run_pretraining(cfg, tmp_path / "run", progress=False)
    cfg = pretrain_config(
        upstream={"ads": {"path": "bundled:adsorbates", "val_size": 4}}, mixture="single", n_samples=10, epochs=1
    )
    summary = run_pretraining(cfg, tmp_path / "ok", progress=False)
    assert summary["notes"] == ["'ads' has no forces: it trains its energy head only"]
    assert summary["datasets"]["ads"]["force_weight"] == 0.0


def test_bf16_mixed_precision_trains_like_float32(tmp_path):
    """bf16 autocast on CPU: outputs are denormalised in float32, so energies keep meV resolution."""
    full = run_pretraining(pretrain_config(), tmp_path / "fp32", progress=False)
    half = run_pretraining(pretrain_config(precision="bf16-mixed"), tmp_path / "bf16", progress=False)
    for name in ("acac", "oxides"):
        a = full["best_val_metrics"][f"val/{name}/energy_mae_meV"]
        b = half["best_val_metrics"][f"val/{name}/energy_mae_meV"]
        assert b == pytest.approx(a, rel=0.2), name


def test_float64_training_keeps_the_ema_copy_in_float64(tmp_path):
    """precision "64" converted the model but not its EMA copy (not a submodule): the first EMA update failed."""
    done = run_pretraining(pretrain_config(epochs=1, precision="64"), tmp_path / "fp64", progress=False)
    assert done["structures_seen"] == 24
    assert all(math.isfinite(v) for v in done["best_val_metrics"].values())


def test_missing_logger_package_is_a_config_error(tmp_path):
    import importlib.util

    if importlib.util.find_spec("tensorboard") is not None:
        pytest.skip("tensorboard is installed here")
    with pytest.raises(ConfigError, match="pip install tensorboard"):
        run_pretraining(pretrain_config(loggers=["csv", "tensorboard"]), tmp_path / "run", progress=False)


def test_pretraining_can_continue_from_a_checkpoint(tmp_path):
    from atomsift.train.pretrain import build_model, build_tasks, plan_pretraining

    run_pretraining(pretrain_config(epochs=1), tmp_path / "first", progress=False)
    cfg = pretrain_config(backbone={"checkpoint": str(tmp_path / "first/model.pt")})
    tasks = build_tasks(plan_pretraining(cfg), cfg, tmp_path / "second", resume=False)
    model, info = build_model(cfg, tasks)
    saved = torch.load(tmp_path / "first/model.pt", weights_only=True)["state_dict"]
    state = model.backbone.state_dict()
    assert all(torch.equal(state[k], saved[f"backbone.{k}"]) for k in state)
    assert info["backbone_load_report"]["missing"] == [] and info["backbone_load_report"]["used_ema"] is True


def test_a_run_that_failed_before_training_leaves_no_claim_on_its_folder(tmp_path):
    bad = pretrain_config(
        upstream={"oxides": {"path": "bundled:oxides", "val_size": 5}}, mixture="single", n_samples=400
    )
    with pytest.raises(ConfigError, match="n_samples asks 400"):
        run_pretraining(bad, tmp_path / "run", progress=False)
    # a misspelt hyperparameter or a missing checkpoint is said before anything is written
    typo = pretrain_config(backbone={"name": "painn", "hparams": {"hiden": 16}})
    with pytest.raises(ConfigError, match="did you mean 'hidden' for 'hiden'"):
        run_pretraining(typo, tmp_path / "typo", progress=False)
    missing = pretrain_config(backbone={"checkpoint": str(tmp_path / "nope.pt")})
    with pytest.raises(DataError, match="checkpoint file not found"):
        run_pretraining(missing, tmp_path / "missing", progress=False)
    assert not (tmp_path / "typo").exists() and not (tmp_path / "missing").exists()
    good = pretrain_config(
        upstream={"oxides": {"path": "bundled:oxides", "val_size": 5}}, mixture="single", n_samples=20, epochs=1
    )
    assert run_pretraining(good, tmp_path / "run", progress=False)["structures_seen"] == 20
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="no n_samples"):
        pretrain_config(upstream={"oxides": {"path": "bundled:oxides", "n_samples": 3}}, mixture="single")
    assert pretrain_config(precision=32).precision == "32"


class CtrlCDuringLastValidation(L.Callback):
    """Sets the checkpoint callback's Ctrl-C flag in the last epoch's validation (what the first Ctrl-C does)."""

    def on_validation_end(self, trainer, pl_module) -> None:
        if trainer.current_epoch == trainer.max_epochs - 1:
            next(c for c in trainer.callbacks if isinstance(c, runner.AtomicCheckpoint)).requested = True


def test_a_ctrl_c_in_the_last_validation_still_stops_the_command(tmp_path, monkeypatch):
    """No step boundary follows the last validation: the run stopped there said 'stopping after this step'
    and then finished as if nothing was pressed (an experiment went on to its next cells)."""
    cfg = pretrain_config(epochs=2)
    with monkeypatch.context() as m:
        _with_callback(m, CtrlCDuringLastValidation())
        with pytest.raises(KeyboardInterrupt):
            run_pretraining(cfg, tmp_path / "a", progress=False)
    assert not (tmp_path / "a/summary.json").exists() and (tmp_path / "a/checkpoints/last.ckpt").exists()
    resumed = run_pretraining(cfg, tmp_path / "a", progress=False, resume=True)
    whole = run_pretraining(cfg, tmp_path / "b", progress=False)
    assert resumed["optimizer_steps"] == whole["optimizer_steps"]
    a = torch.load(tmp_path / "a/last.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "b/last.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
