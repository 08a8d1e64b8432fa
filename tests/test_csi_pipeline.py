"""CSI pipeline: config parsing, cache reuse and refusal, ranking, outputs, and the CLI end to end."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from atomsift.csi.config import CSIConfig, DatasetSpec, load_config, parse_dataset_arg
from atomsift.csi.extract import EXTRACTORS, FeatureExtractor, register_extractor
from atomsift.csi.pipeline import run_csi
from atomsift.data import Record
from atomsift.errors import ConfigError, DataError


class RadialExtractor(FeatureExtractor):
    """A cheap deterministic stand-in: per atom, one-hot of its element (H, C, N, O, other) and a
    histogram of neighbour distances (8 bins, 0-6 A). Knows CHNO and the oxide metals, not Pt etc."""

    name = "test-radial"
    dim = 13
    layer = "radial-histogram"
    supported_numbers = frozenset({1, 6, 7, 8, 22, 23, 44, 50, 77})  # CHNO and the bundled oxides

    def weights_hash(self) -> str:
        return "0" * 64

    def features(self, records: list[Record]) -> list[np.ndarray]:
        out = []
        for rec in records:
            bad = [int(z) for z in rec.numbers if int(z) not in self.supported_numbers]
            if bad:
                raise DataError(f"element Z={bad[0]} unknown to extractor {self.name}", record=rec.id)
            onehot = np.zeros((rec.natoms, 5))
            slot = {1: 0, 6: 1, 7: 2, 8: 3}
            onehot[np.arange(rec.natoms), [slot.get(int(z), 4) for z in rec.numbers]] = 1.0
            d = np.linalg.norm(rec.positions[:, None] - rec.positions[None], axis=-1)
            hist = np.stack([np.histogram(row[row > 0], bins=8, range=(0, 6))[0] for row in d]).astype(float)
            out.append(np.concatenate([onehot, hist], axis=1))
        return out


@pytest.fixture(autouse=True)
def _register():
    register_extractor("test-radial", lambda **_: RadialExtractor())
    yield
    EXTRACTORS.pop("test-radial", None)


def config(tmp_path: Path, **kw) -> CSIConfig:
    base = dict(
        upstream={"acac": DatasetSpec(path="bundled:acac"), "ethanol_b": DatasetSpec(path="bundled:ethanol")},
        downstream={"ethanol": DatasetSpec(path="bundled:ethanol")},
        extractor="test-radial",
        n_samples=60,
        bootstrap=20,
        groups=8,
        cache_dir=str(tmp_path / "cache"),
    )
    base.update(kw)
    return CSIConfig(**base)


def test_parse_dataset_argument():
    name, spec = parse_dataset_arg("ani=/data/a,b.h5,format=ani1x,level=wb97x_tz,n_samples=50,sampling=random")
    assert name == "ani" and spec.path == "/data/a,b.h5" and spec.format == "ani1x"
    assert spec.options == {"level": "wb97x_tz"} and spec.n_samples == 50 and spec.sampling == "random"
    with pytest.raises(ConfigError, match="NAME=PATH"):
        parse_dataset_arg("/just/a/path.h5")


def test_config_rejects_unknown_keys(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("extractor: sevenn\nn_sampels: 10\n")
    with pytest.raises(ConfigError, match="n_sampels") as err:
        load_config(path, {})
    assert "c.yaml" in str(err.value)


def test_same_dataset_ranks_first_and_intervals_bracket(tmp_path):
    rows = run_csi(config(tmp_path), tmp_path / "out")
    by_up = {r["upstream"]: r for r in rows}
    assert by_up["ethanol_b"]["rank"] == 1 and by_up["acac"]["rank"] == 2
    assert by_up["ethanol_b"]["csi"] < by_up["acac"]["csi"]
    for r in rows:
        assert r["ci_low"] <= r["ci_high"] and r["csi"] >= 0
        assert r["n_obs_downstream"] == 60 * 9  # flat: every atom of 60 ethanol frames
    assert (tmp_path / "out" / "subsets" / "upstream-acac.json").exists()


def test_mean_aggregation_counts_structures(tmp_path):
    rows = run_csi(config(tmp_path, aggregation="mean", bootstrap=0), tmp_path / "out")
    assert all(r["n_obs_upstream"] == 60 and r["ci_low"] is None for r in rows)


def test_cache_reused_and_refused_on_changed_provenance(tmp_path):
    first = run_csi(config(tmp_path), tmp_path / "out")
    cache_files = sorted(p for p in (tmp_path / "cache").glob("*.npz") if not p.name.endswith(".measures.npz"))
    assert len(cache_files) == 3
    stamps = [f.stat().st_mtime_ns for f in cache_files]
    again = run_csi(config(tmp_path), tmp_path / "out")
    assert [r["csi"] for r in again] == [r["csi"] for r in first]
    assert [f.stat().st_mtime_ns for f in cache_files] == stamps  # reused, not rewritten
    with pytest.raises(ConfigError, match="other settings") as err:
        run_csi(config(tmp_path, seed=1), tmp_path / "out")
    assert "seed" in str(err.value) and "--recompute" in str(err.value)
    assert [f.stat().st_mtime_ns for f in cache_files] == stamps  # never silently overwritten
    redone = run_csi(config(tmp_path, seed=1, recompute=True), tmp_path / "out")
    assert [r["csi"] for r in redone] != [r["csi"] for r in first]


def test_extractor_error_names_element_and_record(tmp_path):
    cfg = config(tmp_path, upstream={"ads": DatasetSpec(path="bundled:adsorbates")})
    with pytest.raises(DataError, match="unknown to extractor") as err:
        run_csi(cfg, tmp_path / "out")
    assert "/" in str(err.value)  # the adsorbates record id metal/adsorbate/site/coverage


def test_cli_end_to_end_with_default_extractor(tmp_path):
    """The real default (SevenNet-0) on a few structures: table, csi.json, csi.csv and the chart."""
    out = tmp_path / "run"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "atomsift.cli",
            "csi",
            "--upstream",
            "ethanol_b=bundled:ethanol",
            "--upstream",
            "oxides=bundled:oxides",
            "--downstream",
            "ethanol=bundled:ethanol",
            "--n-samples",
            "12",
            "--bootstrap",
            "10",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr
    assert "CSI to downstream 'ethanol'" in proc.stdout
    assert (
        "CSI in squared activations (dimensionless) of sevenn-0 (flat); values compare only within one extractor"
        in (proc.stdout)
    )
    rows = json.loads((out / "csi.json").read_text())
    for key in ("upstream", "downstream", "csi", "ci_low", "ci_high", "n_obs_upstream", "n_obs_downstream"):
        assert key in rows[0]
    assert rows[0]["upstream"] == "ethanol_b" and rows[0]["rank"] == 1
    assert (out / "csi.csv").read_text().startswith("downstream,upstream,rank,csi")
    assert (out / "csi_bars.png").stat().st_size > 10_000
    assert (out / "csi_config.yaml").exists()


def test_interval_contains_estimate_even_near_zero(tmp_path):
    """Bootstrapped Frechet distances are biased upward; the bias-shifted interval must still hold the
    estimate, including for a dataset compared with another sample of itself (CSI near 0)."""
    rows = run_csi(config(tmp_path, bootstrap=40), tmp_path / "out")
    for r in rows:
        assert r["ci_low"] <= r["csi"] <= r["ci_high"], r
        assert r["bootstrap_bias"] > 0


def test_demo_csi_settings_are_valid_and_rank_as_documented(tmp_path):
    """The packaged demo config loads, and with a stand-in extractor (the real one runs in make demo)
    each downstream set's own dataset (a different sample of it) ranks first where it is a candidate."""
    from atomsift.cli.demo import demo_csi_config

    cfg = load_config(demo_csi_config(), {})
    assert cfg.extractor == "sevenn" and set(cfg.downstream) == {"ethanol", "oxides"}
    cfg = cfg.model_copy(
        update={
            "extractor": "test-radial",
            "bootstrap": 0,
            "upstream": {k: v for k, v in cfg.upstream.items() if k != "adsorbates"},
        }
    )
    rows = run_csi(cfg, tmp_path)
    best = {r["downstream"]: r["upstream"] for r in rows if r["rank"] == 1}
    assert best == {"ethanol": "acac", "oxides": "oxides"}


def test_copies_of_a_structure_share_a_bootstrap_group(tmp_path):
    """Balanced sampling of a small class repeats structures; all copies must sit in one bootstrap group,
    and the cache file also holds mu, sigma, n and d."""
    from ase.io import write

    from atomsift.data import open_dataset

    small = tmp_path / "small.xyz"
    write(small, [open_dataset("bundled:ethanol")[i].to_atoms() for i in range(3)], format="extxyz")
    cfg = config(tmp_path, upstream={"small": DatasetSpec(path=str(small), n_samples=12)}, bootstrap=0)
    rows = run_csi(cfg, tmp_path / "out")
    assert rows[0]["n_structures_upstream"] == 12 and rows[0]["n_unique_upstream"] == 3
    arrays = np.load(next((tmp_path / "cache").glob("upstream-small*.balanced.npz")))
    counts = arrays["counts"]
    assert counts.sum() == 108  # 12 draws x 9 atoms
    # each group holds copies of a single structure: its mean row is that structure's mean row exactly
    # (copies spread over groups would give mixtures of the three structures)
    ds = open_dataset(str(small))
    own = [f.mean(axis=0) for f in RadialExtractor().features([ds[i] for i in range(3)])]
    for k in np.flatnonzero(counts):
        group_mean = arrays["sums"][k] / counts[k]
        assert min(np.abs(group_mean - m).max() for m in own) < 1e-12, k
    assert arrays["mu"].shape == (13,) and arrays["sigma"].shape == (13, 13)
    assert int(arrays["n"]) == 108 and int(arrays["d"]) == 13


def test_memory_budget_limits_groups_or_refuses(tmp_path):
    with pytest.raises(ConfigError, match="stats_memory_gb") as err:
        run_csi(config(tmp_path, stats_memory_gb=1e-6), tmp_path / "out")
    assert "soap instead of soap-full" in str(err.value)
    with pytest.warns(UserWarning, match="bootstrap groups fit"):
        run_csi(config(tmp_path / "w", stats_memory_gb=13 * 13 * 8 * 3 * 4 / 2**30), tmp_path / "out_w")


def test_unusable_device_and_too_few_structures(tmp_path):
    with pytest.raises(ConfigError, match="not available here"):
        run_csi(config(tmp_path, device="cuda:3"), tmp_path / "out")
    with pytest.warns(UserWarning, match="fewer than 2 distinct structures"):
        rows = run_csi(config(tmp_path / "one", n_samples=1), tmp_path / "out_one")
    assert all(r["ci_low"] is None for r in rows)


def test_duplicate_dataset_names_are_refused(tmp_path):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "atomsift.cli",
            "csi",
            "-u",
            "a=bundled:acac",
            "-u",
            "a=bundled:oxides",
            "-d",
            "b=bundled:ethanol",
            "--out",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and "'a' is given twice" in proc.stderr and "Traceback" not in proc.stderr


def test_one_tiny_upstream_keeps_the_other_intervals(tmp_path):
    from ase.io import write

    from atomsift.data import open_dataset

    one = tmp_path / "one.xyz"
    write(one, [open_dataset("bundled:ethanol")[0].to_atoms()], format="extxyz")
    cfg = config(tmp_path, upstream={"one": DatasetSpec(path=str(one)), "acac": DatasetSpec(path="bundled:acac")})
    with pytest.warns(UserWarning, match="involving one"):
        rows = {r["upstream"]: r for r in run_csi(cfg, tmp_path / "out")}
    assert rows["one"]["ci_low"] is None
    assert (
        rows["acac"]["ci_low"] is not None and rows["acac"]["ci_low"] <= rows["acac"]["csi"] <= rows["acac"]["ci_high"]
    )


def test_refused_run_writes_nothing(tmp_path):
    out = tmp_path / "out"
    run_csi(config(tmp_path), out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    with pytest.raises(ConfigError, match="other settings"):
        run_csi(config(tmp_path, n_samples=61), out)
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["csi", "-u", "a=bundled:acac", "-d", "b=bundled:ethanol", "--shrinkage", "abc"], "--shrinkage 'abc'"),
        (["data", "inspect", "bundled:acac", "--max-records", "0"], "--max-records must be at least 1"),
    ],
)
def test_more_bad_cli_input_is_one_paragraph(tmp_path, args, needle):
    proc = subprocess.run(
        [sys.executable, "-m", "atomsift.cli", *args, *(["--out", str(tmp_path)] if args[0] == "csi" else [])],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2 and needle in proc.stderr and "Traceback" not in proc.stderr


def test_config_dataset_list_instead_of_mapping(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("upstream:\n  - bundled:acac\n")
    with pytest.raises(ConfigError, match="must map dataset names"):
        load_config(path, {})


def test_sample_above_dataset_size_shows_distinct_structures_repeats_and_same_dataset(tmp_path):
    """--n-samples above a dataset's size: the table shows distinct structures (never more than the dataset
    holds), marks class-balanced repeats with their reason, and notes an upstream that is the downstream
    dataset, found by its file (not its name)."""
    import csv

    from rich.console import Console

    from atomsift.csi.report import print_tables, write_outputs
    from atomsift.data import open_dataset

    oxides_file = str(open_dataset("bundled:oxides").path)
    cfg = config(
        tmp_path,
        upstream={
            "ox_balanced": DatasetSpec(path="bundled:oxides"),
            "ox_file": DatasetSpec(path=oxides_file, sampling="random"),
            "acac": DatasetSpec(path="bundled:acac"),
        },
        downstream={"oxides": DatasetSpec(path="bundled:oxides")},
        n_samples=400,
        bootstrap=0,
    )
    rows = {r["upstream"]: r for r in run_csi(cfg, tmp_path / "out")}
    bal, same, acac = rows["ox_balanced"], rows["ox_file"], rows["acac"]
    # balanced: 20 classes x 20 draws; classes of more than 20 give 20, smaller ones repeat some structures
    drawn = json.loads((tmp_path / "out" / "subsets" / "upstream-ox_balanced.json").read_text())["indices"]
    assert len(drawn) == bal["n_structures_upstream"] == 400 and bal["n_total_upstream"] == 295
    assert bal["n_unique_upstream"] == len(set(drawn)) < 295
    assert bal["n_structures_downstream"] == bal["n_unique_downstream"] == bal["n_total_downstream"] == 295
    assert bal["same_dataset"] and not bal["same_sample"] and bal["csi"] > 0
    assert same["same_dataset"] and same["same_sample"] and same["csi"] == pytest.approx(0.0, abs=1e-8)
    assert not acac["same_dataset"] and acac["n_unique_upstream"] == acac["n_structures_upstream"] == 400

    console = Console(record=True, width=200)
    print_tables(list(rows.values()), console)
    lines = console.export_text().splitlines()
    assert any(f"{bal['n_unique_upstream']} of 295 (400 draws)*" in line for line in lines)
    assert any("400 of 500" in line and "draws" not in line for line in lines)
    assert sum(line.startswith("* ox_balanced: drawn with repeats (class balancing") for line in lines) == 1
    assert "downstream 'oxides': random sample, 295 of 295 structures, " in "\n".join(lines)
    notes = {line.split("'")[1]: line for line in lines if line.startswith("note: upstream")}
    assert set(notes) == {"ox_balanced", "ox_file"}
    assert all("and downstream 'oxides' are the same dataset; " in notes[k] for k in notes)
    assert "identical samples, so CSI is 0" in notes["ox_file"]
    assert "sampling differences (balanced vs random draws)" in notes["ox_balanced"]
    assert any("test-radial" in line and "values compare only within one extractor" in line for line in lines)

    paths = write_outputs(list(rows.values()), tmp_path / "out")
    with open(paths["csv"], newline="") as f:
        table = list(csv.DictReader(f))  # a plain CSV: header first, no comment lines
    assert len(table) == 3 and {r["extractor"] for r in table} == {"test-radial"}
    assert all("extractor=test-radial" in r["comparable_within"] and r["csi_units"] for r in table)
    assert {r["upstream"]: r["same_dataset"] for r in table} == {
        "ox_balanced": "True",
        "ox_file": "True",
        "acac": "False",
    }
    saved = json.loads(paths["json"].read_text())
    assert isinstance(saved, list) and saved[0]["comparable_within"] == rows[saved[0]["upstream"]]["comparable_within"]


def test_random_sample_never_repeats_or_exceeds_the_dataset(tmp_path):
    cfg = config(tmp_path, upstream={"acac": DatasetSpec(path="bundled:acac", sampling="random")}, n_samples=5000)
    cfg = cfg.model_copy(update={"bootstrap": 0})
    row = run_csi(cfg, tmp_path / "out")[0]
    assert row["n_structures_upstream"] == row["n_unique_upstream"] == row["n_total_upstream"] == 500
    assert row["n_structures_downstream"] == row["n_unique_downstream"] == 1000


def test_upstream_sampling_sets_the_default_of_upstream_sets(tmp_path):
    from atomsift.csi.pipeline import sample_indices
    from atomsift.data import open_dataset

    ds = open_dataset("bundled:adsorbates")  # classes: the 7 metals
    spec = DatasetSpec(path="bundled:adsorbates")
    cfg = CSIConfig(n_samples=70)
    _, method = sample_indices(ds, spec, "upstream", cfg)
    assert method == "balanced"
    idx, method = sample_indices(ds, spec, "upstream", CSIConfig(n_samples=70, upstream_sampling="random"))
    assert method == "random" and len(set(idx.tolist())) == 70
    own = DatasetSpec(path="bundled:adsorbates", sampling="balanced")  # a spec's own sampling wins
    assert sample_indices(ds, own, "upstream", CSIConfig(n_samples=70, upstream_sampling="random"))[1] == "balanced"
    assert sample_indices(ds, spec, "downstream", cfg)[1] == "random"
