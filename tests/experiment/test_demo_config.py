"""The demo's grid (atomsift/configs/experiment_demo.yaml, what `make demo` runs): its shape, and a scaled-down
run of exactly that grid (same data, extractor and tasks; tiny budget and epochs) through `atomsift experiment`."""

from __future__ import annotations

import csv
import subprocess
import sys

from atomsift.cli.demo import demo_config
from atomsift.experiment.config import ExperimentConfig
from atomsift.experiment.grid import build_jobs
from atomsift.settings import resolve_settings


def test_demo_grid_has_the_papers_roles(tmp_path):
    exp = resolve_settings(ExperimentConfig, demo_config("experiment_demo.yaml"))
    assert list(exp.upstream) == ["organic", "reactive", "catalysis", "oxides", "acac"]
    assert {n: d.preset for n, d in exp.downstream.items()} == {"ethanol": "rmd17", "qm9": "qm9"}
    assert exp.scratch and len(exp.seeds) == 2 and len(exp.budgets) == 1
    jobs = build_jobs(exp, tmp_path)
    assert sum(len(j.finetunes) for j in jobs) == (5 + 1) * 2 * 2
    metrics = {c.downstream: c.metric for j in jobs for c in j.finetunes}
    assert metrics == {"ethanol": "forces_mae_meV_per_A", "qm9": "U0_mae_meV"}


def test_demo_runs_end_to_end_scaled_down(tmp_path):
    # the packaged grid with budget, epochs and CSI sample scaled down; everything else as make demo runs it
    small = tmp_path / "small.yaml"
    text = demo_config("experiment_demo.yaml").read_text()
    for old, new, count in (
        ("{n_samples: 250, epochs: 20}", "{n_samples: 20, epochs: 1}", 1),
        ("epochs: 40\n", "epochs: 1\n", 2),  # epochs and cosine_epochs
        ("epochs: 30\n", "epochs: 1\n", 2),
        ("n_samples: 200\n", "n_samples: 8\n", 1),
        ("bootstrap: 50\n", "bootstrap: 5\n", 1),
    ):
        assert text.count(old) == count, old  # the scaled-down copy must really be small
        text = text.replace(old, new)
    small.write_text(text)
    out = tmp_path / "exp"
    proc = subprocess.run(
        [sys.executable, "-m", "atomsift", "experiment", "--config", str(small), "--out", str(out), "seeds=[0]"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(out / "results.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6 * 2 and {r["status"] for r in rows} == {"ok"}
    assert {r["metric"] for r in rows} == {"forces_mae_meV_per_A", "U0_mae_meV"}
    assert "Downstream ethanol" in proc.stdout and "Downstream qm9" in proc.stdout
