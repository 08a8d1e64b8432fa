"""CSI of every candidate to every downstream task, mixtures included, from the `atomsift csi` pipeline.

A mixture's features follow the mixture distribution of its members' features: a structure comes from member
i with probability p_i (the pretraining shares: balanced 1/k, temperature n_i^(1/T) / sum_j n_j^(1/T), with the
mixture's nominal sizes where it gives them); with
flat aggregation each structure adds its atoms, so an observation comes from member i with weight
w_i ~ p_i a_i (a_i: the member's observations per structure; 1 for mean / sum / max aggregation). The
mixture's mean and second moment are then exactly the w-weighted sums of the members' (docs/experiment.md).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from atomsift.csi.config import CSIConfig
from atomsift.csi.extras import mix_extras
from atomsift.csi.mixture import MixtureStats, observation_weights
from atomsift.csi.pipeline import DatasetStats, annotate, gather_stats, score_all
from atomsift.data.spec import DatasetSpec
from atomsift.experiment.config import ExperimentConfig
from atomsift.settings import validate
from atomsift.train.data import temperature_shares


def mixture_shares(exp: ExperimentConfig, name: str, sizes: dict[str, int]) -> list[float]:
    """Structure shares p_i of a mixture's members, as pretraining draws them."""
    mix = exp.mixtures[name]
    if mix.mixture == "temperature":
        shares = temperature_shares(mix.nominal_sizes or {m: sizes[m] for m in mix.of}, mix.temperature)
        return [shares[m] for m in mix.of]
    if mix.mixture == "weights" and mix.weights is not None:
        total = sum(mix.weights.values())
        return [mix.weights[m] / total for m in mix.of]
    return [1.0 / len(mix.of)] * len(mix.of)


def csi_config(exp: ExperimentConfig) -> CSIConfig:
    """The experiment's `csi` section with the grid's upstream datasets and downstream tasks."""
    upstream = {
        name: DatasetSpec(path=s.path, format=s.format, options=s.options, sampling=s.sampling)
        for name, s in exp.upstream.items()
    }
    downstream = {name: d.data_spec() for name, d in exp.downstream.items()}
    return validate(CSIConfig, {**exp.csi, "upstream": upstream, "downstream": downstream}, within="the csi section")


def grid_csi(exp: ExperimentConfig, out: Path, *, recompute: bool = False) -> list[dict[str, Any]]:
    """One row per (candidate, downstream task): the `atomsift csi` rows, mixtures added (`recompute`: replace
    cached statistics made with other settings)."""
    cfg = csi_config(exp)
    if recompute:
        cfg = cfg.model_copy(update={"recompute": True})
    up, down, extractor = gather_stats(cfg, out)
    by_name = {u.name: u for u in up}
    for name, mix in exp.mixtures.items():
        parts = [by_name[m] for m in mix.of]
        shares = mixture_shares(exp, name, {u.name: u.n_total for u in up})
        weights = observation_weights(parts, shares, cfg.aggregation)
        grouped = MixtureStats(parts, weights)
        extras = None
        if all(p.extras is not None for p in parts):
            extras = mix_extras([p.extras for p in parts], grouped.factors, np.asarray(weights))  # type: ignore[misc]
        up.append(
            DatasetStats(
                name=name,
                role="upstream",
                grouped=grouped,  # type: ignore[arg-type]  (total / bootstrap: the interface score uses)
                n_structures=sum(p.n_structures for p in parts),
                n_unique=sum(p.n_unique for p in parts),
                sampling=f"{mix.mixture} mixture of " + "+".join(mix.of),
                cached=all(p.cached for p in parts),
                n_total=sum(p.n_total for p in parts),
                extras=extras,
            )
        )
    return annotate(score_all(up, down, cfg), extractor, cfg)
