"""Small, fast training settings shared by the training tests (tiny PaiNN on bundled data)."""

from __future__ import annotations

from atomsift.train.config import PretrainConfig

TINY_PAINN = {"name": "painn", "hparams": {"hidden": 16, "num_layers": 2, "num_rbf": 8, "cutoff": 4.0}}


def pretrain_config(**overrides) -> PretrainConfig:
    data = {
        "backbone": TINY_PAINN,
        "heads": {"num_layers": 2},
        "upstream": {
            "acac": {"path": "bundled:acac", "val_size": 6},
            "oxides": {"path": "bundled:oxides", "val_size": 6},
        },
        "mixture": "balanced",
        "n_samples": 24,
        "epochs": 3,
        "batch_size": 5,
        "lr": 1e-3,
        "warmup_steps": 2,
        "checkpoint_every": 2,
    }
    data.update(overrides)
    return PretrainConfig.model_validate(data)
