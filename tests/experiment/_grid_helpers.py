"""A tiny experiment grid on the bundled data (seconds per cell) for the experiment tests."""

from __future__ import annotations

import copy
from typing import Any

TINY_BACKBONE = {"name": "painn", "hparams": {"hidden": 16, "num_layers": 1, "cutoff": 4.0}}

TINY: dict[str, Any] = {
    "upstream": {
        "acac": {"path": "bundled:acac", "val_size": 10},
        "oxides": {"path": "bundled:oxides", "val_size": 10},
    },
    "mixtures": {"acac+oxides": {"mixture": "balanced", "of": ["acac", "oxides"]}},
    "downstream": {
        "ethanol": {
            "path": "bundled:ethanol",
            "preset": "rmd17",
            "split": {"train": 20, "val": 10, "test": 30},
            "graph": {"cutoff": 4.0, "max_neighbors": 30, "pbc": False},
            "epochs": 2,
            "batch_size": 10,
            "lr": 1e-3,
        }
    },
    "budgets": [{"n_samples": 40, "epochs": 2}],
    "seeds": [0],
    "scratch": True,
    "pretrain": {"backbone": TINY_BACKBONE, "heads": {"num_layers": 1}, "batch_size": 10, "lr": 1e-3},
    "finetune": {"heads": {"num_layers": 1}},
    "csi": {"extractor": "soap", "n_samples": 20, "bootstrap": 10},
}


def tiny(**overrides: Any) -> dict[str, Any]:
    """A copy of the tiny grid with top-level keys replaced."""
    data = copy.deepcopy(TINY)
    data.update(copy.deepcopy(overrides))
    return data
