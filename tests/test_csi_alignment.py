"""The measures beyond CSI in the CSI pipeline: columns, caching, out-of-distribution flags, ties, elements
no upstream set has, and the experiment's ranking of measures by their correlation with finetuning."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from rich.console import Console
from tests.test_csi_pipeline import RadialExtractor
from tests.test_csi_pipeline import config as pipeline_config

from atomsift.csi.alignment import score_measures, ties
from atomsift.csi.config import CSIConfig, DatasetSpec
from atomsift.csi.extract import EXTRACTORS, register_extractor
from atomsift.csi.extras import ExtrasAccumulator
from atomsift.csi.frechet import frechet_distance
from atomsift.csi.pipeline import DatasetStats, run_csi, score
from atomsift.csi.report import print_tables, write_outputs
from atomsift.csi.statistics import GroupedStats
from atomsift.errors import ConfigError
from atomsift.experiment.summary import measure_correlations

ALL = ("csi_element", "uncovered", "precision", "recall", "coverage", "mmd", "diversity")


@pytest.fixture(autouse=True)
def _register():
    register_extractor("test-radial", lambda **_: RadialExtractor())
    yield
    EXTRACTORS.pop("test-radial", None)


def config(tmp_path, **kw) -> CSIConfig:
    """The CSI pipeline tests' settings, with fewer resamples and a reservoir below the sample's 540 atoms."""
    return pipeline_config(tmp_path, **{"bootstrap": 10, "reservoir": 300, **kw})


def test_every_measure_is_a_column_and_the_same_dataset_is_closest(tmp_path):
    rows = run_csi(config(tmp_path), tmp_path / "out")
    by = {r["upstream"]: r for r in rows}
    same, other = by["ethanol_b"], by["acac"]
    for m in ALL:
        assert same[m] is not None and other[m] is not None, m
    assert same["coverage"] > other["coverage"] and same["precision"] > other["precision"]
    assert same["mmd"] < other["mmd"] and same["csi_element"] < other["csi_element"]
    assert same["uncovered"] == 0.0 and other["uncovered"] == 0.0  # acac and ethanol are both C, H, O
    assert {e["symbol"] for e in same["per_element"]} == {"H", "C", "O"}
    assert sum(e["share"] for e in same["per_element"]) == pytest.approx(1.0)
    assert same["reservoir_rows_upstream"] == 300  # bounded by `reservoir` (60 ethanol frames hold 540 atoms)
    out = tmp_path / "out"
    write_outputs(rows, out)
    with open(out / "csi.csv") as fh:
        header = next(csv.reader(fh))
    assert all(m in header for m in ALL)
    assert json.loads((out / "csi.json").read_text())[0]["per_element"]
    console = Console(width=250, record=True)
    print_tables(rows, console)
    text = console.export_text()
    assert "coverage" in text and "lower is better aligned" in text


def test_per_element_csi_equals_the_element_frechet_distances(tmp_path):
    rows = run_csi(config(tmp_path, bootstrap=0, measures=["csi_element"]), tmp_path / "out")
    r = next(r for r in rows if r["upstream"] == "acac")
    scored = [e for e in r["per_element"] if e["frechet"] is not None]
    shares = np.array([e["share"] for e in scored])
    expected = float(np.dot(shares / shares.sum(), [e["frechet"] for e in scored]))
    assert r["csi_element"] == pytest.approx(expected, rel=1e-12)
    assert "precision" not in r  # only the measures asked for


def test_csi_only_writes_no_measure_file_and_measure_files_are_reused(tmp_path):
    rows = run_csi(config(tmp_path, measures=["csi"]), tmp_path / "out")
    assert not list((tmp_path / "cache").glob("*.measures.npz")) and "coverage" not in rows[0]
    first = run_csi(config(tmp_path), tmp_path / "out")  # more measures: features once more for their data
    files = sorted((tmp_path / "cache").glob("*.measures.npz"))
    assert len(files) == 3
    stamps = [f.stat().st_mtime_ns for f in files]
    again = run_csi(config(tmp_path), tmp_path / "out")
    assert [f.stat().st_mtime_ns for f in files] == stamps
    for a, b in zip(first, again, strict=True):
        assert all(a[m] == b[m] for m in ALL)
    assert [r["csi"] for r in rows] == [r["csi"] for r in first]
    with pytest.raises(ConfigError, match="reservoir"):
        run_csi(config(tmp_path, reservoir=200), tmp_path / "out")


def test_mean_aggregation_says_why_there_is_no_per_element_csi(tmp_path):
    rows = run_csi(config(tmp_path, aggregation="mean", bootstrap=0, measures=["csi_element"]), tmp_path / "out")
    assert all(r["csi_element"] is None for r in rows)
    console = Console(width=250, record=True)
    print_tables(rows, console)
    assert "per-element CSI not computed: per-element statistics need flat aggregation" in console.export_text()


def test_unknown_measure_is_refused():
    with pytest.raises(Exception, match="unknown measure"):
        CSIConfig(measures=["csi", "coverge"])
    assert CSIConfig(measures="coverage").measures == ["csi", "coverage"]
    assert CSIConfig().measures[0] == "csi" and len(CSIConfig().measures) == 8


def _synthetic(name: str, role: str, rng, mean: float, elements=(6,), n: int = 40) -> DatasetStats:
    g = GroupedStats(2, 4)
    acc = ExtrasAccumulator(2, 200, seed=0, per_element=True, element_memory=1e9, label=name)
    for i in range(n):
        z = rng.choice(elements, size=3)
        x = rng.normal(mean, 1.0, (3, 2))
        g.update(i % 4, x)
        acc.update(z, x, 1)
    return DatasetStats(name, role, g, n, n, "random", False, n_total=n, extras=acc.result())


def _scored(up, down, **kw):
    cfg = CSIConfig(upstream={"x": DatasetSpec(path="x")}, downstream={"y": DatasetSpec(path="y")}, bootstrap=20, **kw)
    rows = score(up, down, cfg)
    diag = score_measures(rows, up, down, cfg)
    return rows, diag


def test_out_of_distribution_rule_and_elements_no_upstream_has():
    rng = np.random.default_rng(0)
    a, b = _synthetic("a", "upstream", rng, 0.0), _synthetic("b", "upstream", rng, 1.0)
    near = _synthetic("near", "downstream", rng, 0.5)
    far = _synthetic("far", "downstream", rng, 6.0, elements=(6, 9))
    rows, diag = _scored([a, b], [near, far])
    ta, tb = a.grouped.total(), b.grouped.total()
    spread = frechet_distance(ta.mean, ta.covariance(), tb.mean, tb.covariance())  # the one upstream pair
    assert diag["far"]["upstream_median_csi"] == pytest.approx(spread)
    far_rows = [r for r in rows if r["downstream"] == "far"]
    nearest = min(r["csi"] for r in far_rows)
    assert far_rows[0]["ood_ratio"] == pytest.approx(nearest / spread) and far_rows[0]["out_of_distribution"]
    assert not any(r["out_of_distribution"] for r in rows if r["downstream"] == "near")
    share = far.extras.counts[9] / sum(far.extras.counts.values())
    assert far_rows[0]["uncovered_by_all"] == f"F {100 * share:.3g} %"
    assert all(r["uncovered"] == pytest.approx(share) for r in far_rows)
    # a threshold above the ratio clears the flag
    rows2, _ = _scored([a, b], [far], ood_ratio=1.01 * nearest / spread)
    assert not rows2[0]["out_of_distribution"]


def test_out_of_distribution_spread_uses_the_runs_shrinkage():
    from atomsift.csi.frechet import shrink_covariance

    rng = np.random.default_rng(2)
    a, b = _synthetic("a", "upstream", rng, 0.0, n=3), _synthetic("b", "upstream", rng, 1.0, n=3)
    _, diag = _scored([a, b], [_synthetic("d", "downstream", rng, 0.5, n=3)], shrinkage=0.5)
    ta, tb = a.grouped.total(), b.grouped.total()
    shrunk = frechet_distance(
        ta.mean, shrink_covariance(ta.covariance(), ta.n, 0.5), tb.mean, shrink_covariance(tb.covariance(), tb.n, 0.5)
    )
    assert diag["d"]["upstream_median_csi"] == pytest.approx(shrunk, rel=1e-12)


def test_one_upstream_set_gives_no_ood_verdict_and_ties_come_from_overlapping_intervals():
    rng = np.random.default_rng(1)
    a = _synthetic("a", "upstream", rng, 0.0)
    rows, _diag = _scored([a], [_synthetic("d", "downstream", rng, 9.0)])
    assert rows[0]["ood_ratio"] is None and rows[0]["out_of_distribution"] is False
    fake = [
        {"upstream": "p", "ci_low": 1.0, "ci_high": 2.0},
        {"upstream": "q", "ci_low": 1.5, "ci_high": 3.0},
        {"upstream": "r", "ci_low": 3.5, "ci_high": 4.0},
        {"upstream": "s", "ci_low": None, "ci_high": None},
    ]
    assert ties(fake) == {"p": ["q"], "q": ["p"], "r": [], "s": []}


def test_measure_correlations_are_oriented_so_positive_means_predicted():
    # coverage (higher is better) falls as the error rises: a perfect prediction, rho = +1
    cands = [
        {"name": f"c{i}", "csi": float(i), "mean": float(10 + i), "measures": {"coverage": 1.0 - 0.1 * i}}
        for i in range(5)
    ]
    cands[0]["csi"], cands[4]["csi"] = 4.0, 0.0  # CSI swaps the best and the worst
    out = {m["measure"]: m for m in measure_correlations(cands)}
    assert out["coverage"]["spearman"]["statistic"] == pytest.approx(1.0)
    assert out["csi"]["spearman"]["statistic"] < 0.5
    assert next(m["measure"] for m in measure_correlations(cands)) == "coverage"


def test_a_downstream_set_of_equal_rows_loses_only_its_kernel_measures():
    """Isolated-atom reference frames give one feature row over and over: no median-distance bandwidth. The
    kernel measures are left out for that set with a warning naming it; its CSI and the other set's
    measures still come out (the whole run used to stop)."""
    rng = np.random.default_rng(3)
    a, b = _synthetic("a", "upstream", rng, 0.0), _synthetic("b", "upstream", rng, 1.0)
    near = _synthetic("near", "downstream", rng, 0.5)
    g = GroupedStats(2, 4)
    acc = ExtrasAccumulator(2, 200, seed=0, per_element=True, element_memory=1e9, label="atoms")
    for i in range(10):
        x = np.full((1, 2), 0.3)
        g.update(i % 4, x)
        acc.update(np.array([29]), x, 1)
    atoms = DatasetStats("atoms", "downstream", g, 10, 10, "random", False, n_total=10, extras=acc.result())
    with pytest.warns(UserWarning, match="downstream 'atoms': no kernel bandwidth from its 10 feature rows"):
        rows, _ = _scored([a, b], [near, atoms])
    for r in rows:
        assert r["csi"] is not None and np.isfinite(r["csi"])
        if r["downstream"] == "atoms":
            assert r["mmd"] is None and r["diversity"] is None and r["coverage"] is not None
        else:
            assert r["mmd"] is not None and r["diversity"] is not None
