"""A grid killed mid-cell (SIGKILL, no clean-up) is refused without --resume and finished by it, with the
numbers of an uninterrupted run (CPU training resumes exactly from its checkpoint)."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time

import yaml
from _grid_helpers import tiny


def _grid(tmp_path):
    pre = {**tiny()["pretrain"], "checkpoint_every": 2}
    data = tiny(
        upstream={"acac": tiny()["upstream"]["acac"]},
        mixtures={},
        scratch=False,
        budgets=[{"n_samples": 40, "epochs": 40}],
        pretrain=pre,
    )
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return str(path)


def _cmd(config, out, *extra):
    return [sys.executable, "-m", "atomsift", "experiment", "--config", config, "--out", str(out), *extra]


def _values(out):
    with open(out / "results.csv") as fh:
        return [(r["upstream"], r["status"], r["value"]) for r in csv.DictReader(fh)]


def test_killed_cell_resumes_to_the_uninterrupted_result(tmp_path):
    config = _grid(tmp_path)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same threads in every run: the same float sums
    clean = tmp_path / "clean"
    assert subprocess.run(_cmd(config, clean), capture_output=True, timeout=600, env=env).returncode == 0

    out = tmp_path / "killed"
    proc = subprocess.Popen(_cmd(config, out), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    ckpt = out / "cells" / "pretrain" / "acac" / "N40_E40" / "seed0" / "checkpoints" / "last.ckpt"
    deadline = time.time() + 300
    while not ckpt.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)  # a few more steps past the first checkpoint
    assert proc.poll() is None, "the run ended before it could be killed: make the grid longer"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=60)
    assert not (ckpt.parent.parent / "summary.json").exists()

    refused = subprocess.run(_cmd(config, out), capture_output=True, text=True, timeout=600, env=env)
    assert refused.returncode == 2 and "--resume" in refused.stderr and "Traceback" not in refused.stderr
    resumed = subprocess.run(_cmd(config, out, "--resume"), capture_output=True, text=True, timeout=600, env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _values(out) == _values(clean)
    assert _values(out)[0][1] == "ok"
