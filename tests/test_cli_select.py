"""`mixture: weights` in pretraining and experiments, and `atomsift select` end to end (its mixture file is read
by `atomsift pretrain`)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from atomsift.experiment.config import MixtureSpec
from atomsift.settings import validate
from atomsift.train.config import PretrainConfig
from atomsift.train.data import mixture_counts
from atomsift.train.pretrain import plan_pretraining

BACKBONE = {"name": "painn", "hparams": {"hidden": 8, "num_layers": 1, "cutoff": 4.0}}


def test_weights_mixture_counts_follow_the_shares():
    counts = mixture_counts({"a": 100, "b": 100, "c": 100}, 100, "weights", weights={"a": 3, "b": 1, "c": 0})
    assert counts == {"a": 75, "b": 25, "c": 0}
    counts = mixture_counts({"a": 100, "b": 100}, 7, "weights", weights={"a": 0.5, "b": 0.5})
    assert sum(counts.values()) == 7


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"mixture": "weights"}, "needs weights"),
        ({"mixture": "weights", "weights": {"a": 1.0}}, "missing b"),
        ({"mixture": "weights", "weights": {"a": 1.0, "b": 1.0, "z": 1.0}}, "not mixed: z"),
        ({"mixture": "weights", "weights": {"a": -1.0, "b": 2.0}}, ">= 0"),
        ({"mixture": "balanced", "weights": {"a": 1.0, "b": 1.0}}, "mixture 'weights' only"),
    ],
)
def test_bad_weights_are_refused(data, needle):
    base = {
        "backbone": BACKBONE,
        "upstream": {"a": {"path": "bundled:acac"}, "b": {"path": "bundled:ethanol"}},
        "n_samples": 10,
    }
    with pytest.raises(Exception, match=needle):
        validate(PretrainConfig, {**base, **data}, source="test")
    with pytest.raises(Exception, match=needle):
        MixtureSpec(**{"of": ["a", "b"], **data})


def test_select_cli_writes_a_mixture_that_pretraining_plans(tmp_path):
    out = tmp_path / "sel"
    args = [
        sys.executable, "-m", "atomsift.cli", "select",
        "-u", "acac=bundled:acac", "-u", "ethanol_b=bundled:ethanol", "-u", "oxides=bundled:oxides",
        "-d", "ethanol=bundled:ethanol", "--n-samples", "12", "--bootstrap", "5", "--out", str(out),
    ]  # fmt: skip
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "mixture for 'ethanol' minimising csi" in proc.stdout and "best single set" in proc.stdout
    sel = json.loads((out / "selection.json").read_text())[0]
    assert sel["value"] <= sel["best_single_value"] + 1e-9 and sel["value"] <= sel["uniform"] + 1e-9
    assert sum(sel["shares"].values()) == pytest.approx(1.0)
    assert json.loads((out / "csi.json").read_text())  # the single sets' table, as `atomsift csi` writes it
    mixture = yaml.safe_load((out / "mixture-ethanol.yaml").read_text())
    kept = {k for k, v in sel["shares"].items() if v > 0}
    assert set(mixture["upstream"]) == kept
    cfg = validate(PretrainConfig, {**mixture, "backbone": BACKBONE, "n_samples": 40}, source="the mixture file")
    plan = plan_pretraining(cfg)
    assert sum(p.count for p in plan.datasets) == 40
    if cfg.mixture == "weights":
        for p in plan.datasets:
            assert p.count == pytest.approx(40 * sel["shares"][p.name], abs=1)


def test_select_refuses_a_knn_measure_in_one_paragraph(tmp_path):
    args = [sys.executable, "-m", "atomsift.cli", "select", "-u", "a=bundled:acac", "-u", "b=bundled:oxides",
            "-d", "e=bundled:ethanol", "--measure", "coverage", "--out", str(tmp_path / "x")]  # fmt: skip
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "cannot be optimised" in proc.stderr and "Traceback" not in proc.stderr
