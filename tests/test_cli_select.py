"""`mixture: weights` in pretraining and experiments, and `atomsift select` end to end (its mixture file is read
by `atomsift pretrain`)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from atomsift.errors import ConfigError
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
    assert "keep pretrain's defaults\n# (lr 1e-05, warmup_steps 2000" in (out / "mixture-ethanol.yaml").read_text()
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


def test_indices_option_restricts_any_format_to_a_subset_file(tmp_path):
    from atomsift.data import open_dataset
    from atomsift.data.sampling import save_subset
    from atomsift.errors import DataError

    base = open_dataset("bundled:oxides")
    path = save_subset(tmp_path / "s.json", __import__("numpy").array([5, 3, 7]))
    ds = open_dataset("bundled:oxides", indices=str(path))
    assert len(ds) == 3 and [ds[i].id for i in range(3)] == [base[i].id for i in (5, 3, 7)]
    assert list(ds.class_labels()) == list(base.class_labels()[[5, 3, 7]])
    assert ds.metadata()["indices_sha256"] and path in ds.source_files()
    bad = save_subset(tmp_path / "bad.json", __import__("numpy").array([1, 10_000]))
    with pytest.raises(DataError, match="index 10000"):
        open_dataset("bundled:oxides", indices=str(bad))


def test_select_over_classes_writes_class_subsets_that_pretraining_reads(tmp_path):
    import numpy as np
    from tests.test_csi_pipeline import RadialExtractor

    from atomsift.cli.select import run_select
    from atomsift.csi.classes import class_candidates
    from atomsift.csi.config import CSIConfig, DatasetSpec
    from atomsift.csi.extract import EXTRACTORS, aggregate, register_extractor
    from atomsift.csi.pipeline import gather_stats
    from atomsift.data import open_dataset
    from atomsift.data.sampling import load_subset

    register_extractor("test-radial", lambda **_: RadialExtractor())
    try:
        cfg = CSIConfig(
            upstream={"oxides": DatasetSpec(path="bundled:oxides"), "ethanol_b": DatasetSpec(path="bundled:ethanol")},
            downstream={"ox": DatasetSpec(path="bundled:oxides", n_samples=40)},
            extractor="test-radial",
            n_samples=80,
            bootstrap=0,
            measures=["csi"],
            cache_dir=str(tmp_path / "cache"),
        )
        out = tmp_path / "sel"
        sel = run_select(cfg, out, "csi", over="classes")[0]
        up, _, extractor = gather_stats(cfg, tmp_path / "again")
        cands = {c.name: c for c in class_candidates(up, extractor, cfg, tmp_path / "again")}
    finally:
        EXTRACTORS.pop("test-radial", None)
    assert "ethanol_b@C2H6O" in sel.names and sum(n.startswith("oxides@") for n in sel.names) >= 2
    assert set(sel.names) == set(cands)
    assert sel.value <= min(sel.singles.values()) + 1e-12
    # every class's statistics equal the features of its sample draws (repeats included), summed by hand
    base = open_dataset("bundled:oxides")
    labels = base.class_labels()
    sample = json.loads((out / "subsets" / "upstream-oxides.json").read_text())["indices"]
    for name, cand in cands.items():
        if not name.startswith("oxides@"):
            continue
        rows = np.concatenate(
            [aggregate(RadialExtractor().features([base[i]]), "flat") for i in sample if labels[i] == cand.label]
        )
        total = cand.grouped.total()
        np.testing.assert_allclose(total.mean, rows.mean(axis=0), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(total.covariance(), np.cov(rows, rowvar=False), rtol=1e-9, atol=1e-12)
        indices, meta = load_subset(cand.subset_file)
        assert meta["class_label"] == cand.label and list(indices) == list(np.flatnonzero(labels == cand.label))
    mixture = yaml.safe_load((out / "mixture-ox.yaml").read_text())
    assert set(mixture["upstream"]) <= set(sel.names)
    cfg_p = validate(PretrainConfig, {**mixture, "backbone": BACKBONE, "n_samples": 12}, source="the mixture file")
    with pytest.raises(ConfigError, match="no training structures") as err:  # a class's share rounds to 0
        plan_pretraining(cfg_p)  # (the plan passed, and training crashed drawing an empty subset)
    least = int(err.value.fix.split("at least ")[1].split(",")[0])
    plan = plan_pretraining(cfg_p.model_copy(update={"n_samples": least, "allow_repeats": True}))  # small classes
    assert sum(p.count for p in plan.datasets) == least and min(p.count for p in plan.datasets) == 1
    for p in plan.datasets:
        if "@" in p.name:  # the dataset restricted to one class
            assert set(p.dataset.class_labels()) == {cands[p.name].label}
