"""benchmarks/train_throughput.py: its bare PyTorch loop must keep doing exactly TrainModule's work.

The benchmark compares Lightning's loop with a hand-written loop on the same batches; that comparison only
means something while both compute the same thing. On a tiny PaiNN with a large learning rate, the two must
end with the same losses, weights and EMA weights; a bare loop that drops a part of the step (here: the EMA
update) no longer does, so a change to training_step, the clipping, the schedule or the EMA that the
benchmark does not follow fails here.
"""

from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import pytest
from _train_helpers import TINY_PAINN

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "train_throughput.py"
FAST = {"lr": 1e-2, "warmup_steps": 0}  # weights move by ~1e-2 per step, so a mismatch shows


@pytest.fixture(scope="module")
def bench():
    import sys

    sys.path.insert(0, str(SCRIPT.parent))  # the script's own folder, as when run as a script (_machine)
    try:
        spec = importlib.util.spec_from_file_location("train_throughput", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(SCRIPT.parent))
    return module


@pytest.fixture
def tiny(bench, monkeypatch):
    monkeypatch.setitem(bench.MODELS, "tiny", (TINY_PAINN, 4, (5, 1), (5, 1)))
    return bench


@pytest.mark.parametrize("data", ["acac", "oxides"])
def test_lightning_and_bare_loop_do_the_same_work(tiny, tmp_path, data):
    row = tiny.measure("tiny", data, pairs=5, warmup=1, out=tmp_path, settings=FAST)
    assert row["pairs"] == 5
    assert row["dloss"] <= 1e-6 and row["dweights"] <= 1e-6, (row["dloss"], row["dweights"])
    for key in ("a_ms", "b_ms", "a_cpu_ms", "b_cpu_ms", "load_ms"):
        assert row[key] > 0 and math.isfinite(row[key]), key
    assert row["ratio"][1] <= row["ratio"][0] <= row["ratio"][2]


def test_a_bare_loop_that_skips_work_is_caught(tiny, tmp_path, monkeypatch):
    init = tiny.BareLoop.__init__

    def without_ema(self, module):
        init(self, module)
        self.m.ema.update_parameters = lambda model: None

    monkeypatch.setattr(tiny.BareLoop, "__init__", without_ema)
    row = tiny.measure("tiny", "acac", pairs=5, warmup=1, out=tmp_path, settings=FAST)
    assert row["dweights"] > 1e-4
