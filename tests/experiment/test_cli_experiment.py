"""`atomsift experiment` in a subprocess: the tiny grid end to end, its report recomputed from results.csv,
--report-only, --dry-run, and one-paragraph errors."""

from __future__ import annotations

import csv
import json
import re
import statistics
import subprocess
import sys

import pytest
import yaml
from _grid_helpers import tiny
from scipy import stats as sps


def run(*args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "atomsift", "experiment", *args], capture_output=True, text=True, timeout=timeout
    )


def _config(tmp_path, **overrides):
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(tiny(**overrides), sort_keys=False))
    return str(path)


def test_tiny_grid_end_to_end_and_report_equals_results(tmp_path):
    config = _config(tmp_path, seeds=[0, 1])
    out = tmp_path / "exp"
    done = run("--config", config, "--out", str(out))
    assert done.returncode == 0, done.stderr[-3000:]
    for name in ("results.csv", "results.json", "summary.json", "report.md", "experiment.yaml", "csi/csi.csv"):
        assert (out / name).is_file(), name
    assert "Downstream ethanol" in done.stdout and "Spearman" in done.stdout

    with open(out / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4 * 2  # (acac, oxides, acac+oxides, scratch) x 2 seeds, one task, one budget
    assert {r["status"] for r in rows} == {"ok"}
    # recompute the summary's numbers from results.csv alone
    means, csis = {}, {}
    for r in rows:
        means.setdefault(r["upstream"], []).append(float(r["value"]))
        if r["csi"]:
            csis[r["upstream"]] = float(r["csi"])
    summary = json.loads((out / "summary.json").read_text())
    block = summary["tasks"]["ethanol"]["budgets"]["N=40,E=2"]
    for cand in block["candidates"]:
        # numpy's and the statistics module's sums round differently: equal to the last few ulps, not bitwise
        assert cand["mean"] == pytest.approx(statistics.mean(means[cand["name"]]), rel=1e-12)
        assert cand["std"] == pytest.approx(statistics.stdev(means[cand["name"]]), rel=1e-12)
        assert cand["csi"] == csis[cand["name"]]
    scratch = statistics.mean(means["scratch"])
    assert summary["tasks"]["ethanol"]["scratch"]["mean"] == pytest.approx(scratch, rel=1e-12)
    names = sorted(csis)
    rho = sps.spearmanr([csis[n] for n in names], [statistics.mean(means[n]) for n in names]).statistic
    assert block["correlation"]["all"]["spearman"]["statistic"] == rho
    best = min(names, key=lambda n: statistics.mean(means[n]))
    assert block["best"] == best
    assert block["lowest_csi"] == min(names, key=lambda n: csis[n])
    # the report shows those numbers
    report = (out / "report.md").read_text()
    assert f"{rho:.3f}" in report and best in report

    # a rerun trains nothing; --report-only gathers the same rows
    again = run("--config", config, "--out", str(out))
    assert again.returncode == 0 and "reused" in again.stdout
    assert not re.search(r"[1-9]\d* cells run", again.stdout)
    only = run("--config", config, "--out", str(out), "--report-only", "seeds=[0,1,2]")
    assert only.returncode == 0, only.stderr[-2000:]
    with open(out / "results.csv") as fh:
        rows3 = list(csv.DictReader(fh))
    assert sum(r["status"] == "pending" for r in rows3) == 4 and sum(r["status"] == "ok" for r in rows3) == 8
    # ... but a grid of other settings would report the finished cells as stale and replace the record
    record = (out / "experiment.yaml").read_text()
    other = run("--config", config, "--out", str(out), "--report-only", "pretrain.lr=0.5")
    assert other.returncode == 2 and "Traceback" not in other.stderr, other.stderr[-2000:]
    assert "other settings" in other.stderr and "lr: 0.001 -> 0.5" in " ".join(other.stderr.split())
    assert (out / "experiment.yaml").read_text() == record


def test_dry_run_trains_nothing(tmp_path):
    out = tmp_path / "exp"
    done = run("--config", _config(tmp_path), "--out", str(out), "--dry-run")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "pretraining plan" in done.stdout and "acac+oxides" in done.stdout and "20 train / 10 val" in done.stdout
    assert f"experiment folder {out}: the run would go ahead" in " ".join(done.stdout.split())
    assert not (out / "cells").exists()


def test_errors_are_one_paragraph(tmp_path):
    bad_mix = run(
        "--config", _config(tmp_path, mixtures={"m": {"of": ["acac", "metals"]}}), "--out", str(tmp_path / "a")
    )
    assert bad_mix.returncode == 2 and "metals" in bad_mix.stderr and "Traceback" not in bad_mix.stderr
    empty = run("--config", _config(tmp_path, downstream={}), "--out", str(tmp_path / "b"))
    assert empty.returncode == 2 and "empty" in empty.stderr and "Traceback" not in empty.stderr
    # a downstream without the labels its preset trains: adsorbates have energies only, rmd17 trains forces
    down = tiny()["downstream"]
    down["ethanol"]["path"] = "bundled:adsorbates"
    no_forces = run("--config", _config(tmp_path, downstream=down), "--out", str(tmp_path / "c"))
    assert no_forces.returncode == 2 and "lacks forces" in no_forces.stderr and "Traceback" not in no_forces.stderr
    assert not (tmp_path / "c").exists()  # refused before anything is written, the --out folder included


def test_section_keys_from_the_command_line_are_named_there(tmp_path):
    """A bad key inside the pretrain section set on the command line is blamed on the command line; a finetune
    key the task's own keys override says so instead of being dropped silently."""
    config = _config(tmp_path)
    typo = run("--config", config, "pretrain.lrr=3", "--out", str(tmp_path / "a"), "--dry-run")
    assert typo.returncode == 2 and "Traceback" not in typo.stderr
    assert "lrr (command line: pretrain.lrr=3): unknown key; did you mean 'lr'?" in " ".join(typo.stderr.split())
    shadowed = run(
        "--config", config, "finetune.lr=0.5", "finetune.split.train=5", "--out", str(tmp_path / "b"), "--dry-run"
    )  # fmt: skip
    assert shadowed.returncode == 0, shadowed.stderr[-2000:]
    said = " ".join((shadowed.stdout + shadowed.stderr).split())
    assert said.count("finetune.lr, finetune.split.train from the command line does not apply to 'ethanol'") == 1
    assert "set downstream.ethanol.lr=..., downstream.ethanol.split.train=... instead" in said


def test_contradicting_flags_are_refused_before_any_work(tmp_path):
    """--report-only on a new folder ran the whole CSI and reported nothing; --report-only --dry-run was
    accepted (the dry run silently won)."""
    config = _config(tmp_path)
    out = tmp_path / "exp"
    for flags, needle in (
        (("--report-only",), "holds no experiment"),
        (("--report-only", "--dry-run"), "pass one of them"),
    ):
        proc = run("--config", config, "--out", str(out), *flags)
        assert proc.returncode == 2 and needle in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not out.exists()


def test_a_csi_settings_change_is_refused_before_experiment_yaml_changes(tmp_path):
    """A changed csi section rewrote experiment.yaml, then failed on the statistics cache (or, for bootstrap,
    silently replaced csi.json): refused first, naming the key; --overwrite computes CSI again."""
    from atomsift.experiment.config import ExperimentConfig
    from atomsift.experiment.run import check_csi_settings, run_experiment
    from atomsift.settings import validate

    exp = validate(ExperimentConfig, tiny())
    out = tmp_path / "exp"
    (out / "csi").mkdir(parents=True)
    (out / "csi" / "csi.json").write_text("[]")
    recorded = yaml.safe_dump(exp.model_dump(mode="json"), sort_keys=False)
    (out / "experiment.yaml").write_text(recorded)
    assert check_csi_settings(out, exp, overwrite=False) is False
    changed = validate(ExperimentConfig, {**tiny(), "csi": {**tiny()["csi"], "bootstrap": 5}})
    with pytest.raises(Exception, match=r"other csi settings \(bootstrap: 10 -> 5\)"):
        run_experiment(changed, out)
    assert (out / "experiment.yaml").read_text() == recorded
    import io

    from rich.console import Console

    said = io.StringIO()  # the dry run met no refusal and said nothing of it (exit 0)
    assert run_experiment(changed, out, dry=True, console=Console(file=said, width=400)) == {"refused": True}
    assert "refused: the CSI results" in said.getvalue() and (out / "experiment.yaml").read_text() == recorded
    assert check_csi_settings(out, changed, overwrite=True) is True
    mechanics = validate(ExperimentConfig, {**tiny(), "csi": {**tiny()["csi"], "batch_size": 3}})
    assert check_csi_settings(out, mechanics, overwrite=False) is False


def test_files_of_others_in_out_are_not_replaced(tmp_path):
    """A folder holding report.md / csi.csv / parity plots but no experiment / csi / evaluation of atomsift's
    had them replaced: refused without --overwrite."""
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    (theirs / "report.md").write_text("my notes\n")
    done = run("--config", _config(tmp_path), "--out", str(theirs))
    assert done.returncode == 2 and "report.md but no atomsift experiment" in done.stderr, done.stderr
    (theirs / "csi.csv").write_text("a,b\n")
    csi = subprocess.run(
        [sys.executable, "-m", "atomsift", "csi", "-d", "e=bundled:ethanol", "-u", "a=bundled:acac"]
        + ["--extractor", "soap", "--n-samples", "5", "--out", str(theirs)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert csi.returncode == 2 and "csi.csv but no atomsift csi results" in csi.stderr, csi.stderr
    (theirs / "parity_energy.png").write_bytes(b"png")
    ev = subprocess.run(
        [sys.executable, "-m", "atomsift", "evaluate", str(tmp_path / "model.pt"), "--data", "bundled:ethanol"]
        + ["--out", str(theirs)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ev.returncode == 2 and "parity_energy.png but no evaluation" in ev.stderr, ev.stderr
    assert (theirs / "report.md").read_text() == "my notes\n"


def test_a_grid_on_changed_data_reruns_with_overwrite_and_reports_stale_cells(tmp_path):
    """After a data file changed, the cells were refused as 'changed', but --overwrite then stopped on the CSI
    cache (computed on the old file) and --report-only pointed in a circle (the diff review)."""
    import io
    import shutil

    from rich.console import Console

    from atomsift.data.bundled import resolve_bundled
    from atomsift.experiment.config import ExperimentConfig
    from atomsift.experiment.run import run_experiment
    from atomsift.settings import validate

    data = tmp_path / "acac.xyz"
    shutil.copy(resolve_bundled("acac")[0], data)
    exp = validate(ExperimentConfig, tiny(upstream={"acac": {"path": str(data), "val_size": 10}}, mixtures={}))
    out, quiet = tmp_path / "exp", Console(file=io.StringIO(), width=200)
    run_experiment(exp, out, console=quiet)
    data.write_text(data.read_text().replace("energy=-", "energy=-1", 1))
    with pytest.raises(Exception, match="input files .* changed since they ran"):
        run_experiment(exp, out, console=quiet)
    reported = run_experiment(exp, out, report_only=True, console=quiet)  # shown stale, CSI on the file as it is
    assert reported["status_counts"] == {"stale": 1, "ok": 1}  # acac's finetuning stale, scratch's fine
    rerun = run_experiment(exp, out, overwrite=True, console=quiet)
    assert rerun["status_counts"] == {"ok": 2}
