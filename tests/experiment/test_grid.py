"""The experiment's settings and grid expansion: cells, folders, layered settings, one-paragraph errors."""

from __future__ import annotations

import pytest
from _grid_helpers import TINY_BACKBONE, tiny

from atomsift.errors import ConfigError
from atomsift.experiment.config import ExperimentConfig
from atomsift.experiment.grid import build_jobs
from atomsift.settings import validate


def _cfg(**overrides):
    return validate(ExperimentConfig, tiny(**overrides))


def test_grid_expands_candidates_budgets_seeds_and_scratch(tmp_path):
    exp = _cfg(
        seeds=[0, 1, 2],
        budgets=[{"n_samples": 40, "epochs": 2}, {"n_samples": 20, "epochs": 4}],
        downstream={**tiny()["downstream"], "acac-task": {"path": "bundled:acac", "preset": "energy-forces"}},
    )
    jobs = build_jobs(exp, tmp_path)
    pre = [j for j in jobs if j.pretrain_folder is not None]
    scratch = [j for j in jobs if j.pretrain_folder is None]
    assert len(pre) == 3 * 2 * 3  # acac, oxides, the mixture x 2 budgets x 3 seeds
    assert len(scratch) == 3
    assert all(len(j.finetunes) == 2 for j in jobs)  # every job finetunes on both tasks
    folders = [str(j.pretrain_folder) for j in pre] + [str(c.folder) for j in jobs for c in j.finetunes]
    assert len(set(folders)) == len(folders)  # no two cells share a folder
    job = next(j for j in pre if j.candidate == "acac+oxides" and j.seed == 2 and j.budget.n_samples == 20)
    assert job.pretrain_folder == tmp_path.resolve() / "cells/pretrain/acac+oxides/N20_E4/seed2"
    assert job.pretrain_settings["mixture"] == "balanced"
    assert set(job.pretrain_settings["upstream"]) == {"acac", "oxides"}
    assert (job.pretrain_settings["n_samples"], job.pretrain_settings["epochs"], job.pretrain_settings["seed"]) == (
        20,
        4,
        2,
    )
    for cell in job.finetunes:  # finetuning starts from this pretraining's weights, with the cell's seed
        assert cell.settings["checkpoint"] == str(job.pretrain_folder / "model.pt")
        assert cell.settings["seed"] == 2
    base = scratch[0].finetunes[0].settings
    assert base["from_scratch"] is True and base["backbone"]["name"] == "painn"


def test_settings_layer_preset_then_shared_then_task(tmp_path):
    exp = _cfg(finetune={"heads": {"num_layers": 1}, "lr": 5e-4, "epochs": 7})
    cell = build_jobs(exp, tmp_path)[0].finetunes[0]
    s = cell.settings
    assert s["preset"] == "rmd17"
    assert s["task"]["force_weight"] == 10.0  # from the preset
    assert s["lr"] == 1e-3 and s["epochs"] == 2  # the task's own keys win over the shared ones
    assert s["heads"]["num_layers"] == 1  # the shared section applies where the task is silent
    assert s["split"]["train"] == 20 and s["split"]["seed"] == 42  # merged into the preset's split
    assert cell.metric == "forces_mae_meV_per_A"


def test_rank_metric_of_a_property_task(tmp_path):
    down = {"q": {"path": "bundled:ethanol", "preset": "qm9", "split": {"train": 10, "val": 5, "test": 5}}}
    cell = build_jobs(_cfg(downstream=down), tmp_path)[0].finetunes[0]
    assert cell.metric == "U0_mae_meV"
    down["q"]["rank_on"] = "U0_rmse_meV"
    assert build_jobs(_cfg(downstream=down), tmp_path)[0].finetunes[0].metric == "U0_rmse_meV"


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"mixtures": {"m": {"of": ["acac", "nope"]}}}, ["mixture 'm'", "nope", "not upstream"]),
        ({"downstream": {}}, ["empty", "downstream"]),
        ({"budgets": []}, ["budget"]),
        ({"upstream": {}, "mixtures": {}, "scratch": False}, ["empty"]),
        ({"pretrain": {"backbone": TINY_BACKBONE, "n_samples": 5}}, ["pretrain.n_samples", "per cell"]),
        ({"upstream": {"scratch": {"path": "bundled:acac"}}}, ["'scratch'", "reserved"]),
        ({"seeds": [1, 1]}, ["seed twice"]),
        ({"budget": [{"n_samples": 1, "epochs": 1}]}, ["budget"]),
    ],
)
def test_bad_grids_are_refused_in_one_paragraph(overrides, words):
    with pytest.raises(ConfigError) as err:
        _cfg(**overrides)
    text = err.value.message()
    for word in words:
        assert word in text
    assert "Traceback" not in text


def test_a_task_key_the_finetuning_does_not_know_is_named(tmp_path):
    down = tiny()["downstream"]
    down["ethanol"]["learning_rate"] = 1e-3
    with pytest.raises(ConfigError) as err:
        build_jobs(_cfg(downstream=down), tmp_path)
    assert "learning_rate" in err.value.message() and "ethanol" in err.value.message()


def test_scratch_needs_the_architecture(tmp_path):
    with pytest.raises(ConfigError, match="pretrain.backbone"):
        build_jobs(_cfg(pretrain={"batch_size": 10}, upstream={}, mixtures={}, budgets=[]), tmp_path)


def test_nominal_sizes_give_a_mixtures_shares(tmp_path):
    from atomsift.train.data import mixture_counts

    mixtures = {"m": {"mixture": "temperature", "of": ["acac", "oxides"], "temperature": 1.0,
                      "nominal_sizes": {"acac": 2, "oxides": 1}}}  # fmt: skip
    exp = _cfg(mixtures=mixtures, budgets=[{"n_samples": 30, "epochs": 1}])
    job = next(j for j in build_jobs(exp, tmp_path) if j.candidate == "m")
    s = job.pretrain_settings
    assert s["nominal_sizes"] == {"acac": 2.0, "oxides": 1.0}
    sizes = {"acac": 500, "oxides": 295}
    assert mixture_counts(sizes, 30, s["mixture"], s["temperature"], s["nominal_sizes"]) == {"acac": 20, "oxides": 10}
    bad = {"m": {**mixtures["m"], "nominal_sizes": {"acac": 2}}}
    with pytest.raises(ConfigError, match="nominal_sizes"):
        _cfg(mixtures=bad)


def test_scratch_from_a_checkpoint_backbone_takes_its_architecture(tmp_path):
    pre = {**tiny()["pretrain"], "backbone": {"checkpoint": "/data/jmp-s.pt"}}
    jobs = build_jobs(_cfg(pretrain=pre), tmp_path)
    s = jobs[-1].finetunes[0].settings
    assert s["from_scratch"] is True and s["checkpoint"] == "/data/jmp-s.pt" and s["backbone"] is None
