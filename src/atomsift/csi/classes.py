"""Upstream candidates per class: the statistics of each class of an upstream dataset's CSI sample, for
`atomsift select --over classes`, and the subset file of each class for pretraining.

A dataset with class labels (ANI-1x formulas, OC20 adsorbate/material classes, ...) becomes one candidate per
class present in its sample, named ``DATASET@CLASS``; a dataset without labels stays one candidate. The
features of the sample are extracted once more (class statistics are not cached) and summed per class:
(n, sum x, sum x x^T), a structure drawn c times counting c times. Memory: classes x d^2 x 8 bytes, bounded by
`stats_memory_gb`. Each class's subset file lists every structure of that class in the whole dataset, so a
pretraining on the selected mixture draws from the class, not only from the CSI sample.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from atomsift.csi.config import CSIConfig
from atomsift.csi.extract import FeatureExtractor, aggregate
from atomsift.csi.statistics import GaussianStats
from atomsift.data.sampling import save_subset
from atomsift.data.spec import open_spec
from atomsift.errors import ConfigError
from atomsift.progress import progress_bar

__all__ = ["ClassCandidate", "class_candidates"]


class _Total:
    """The `grouped.total()` interface over plain statistics (no bootstrap groups per class)."""

    def __init__(self, stats: GaussianStats) -> None:
        self.stats = stats

    def total(self) -> GaussianStats:
        return self.stats


@dataclass
class ClassCandidate:
    """One candidate of a class-level selection (what `select_weights` reads of a `DatasetStats`).

    Attributes:
        name: ``DATASET@CLASS`` (or the dataset's name when it has no classes).
        dataset: the upstream dataset it belongs to.
        label: the class label (None: the whole dataset).
        grouped: `.total()` gives its statistics.
        n_structures: sample draws of the class.
        subset_file: the class's structures in the whole dataset (None: the whole dataset).
    """

    name: str
    dataset: str
    label: str | None
    grouped: Any
    n_structures: int
    subset_file: Path | None = None
    extras: None = None

    @property
    def n_obs(self) -> int:
        return int(self.grouped.total().n)


def _slug(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "_", label)[:60] or "_"


def class_candidates(up: list[Any], extractor: FeatureExtractor, cfg: CSIConfig, out: Path) -> list[ClassCandidate]:
    """Per-class candidates of the upstream sets (whole datasets where there are no class labels).

    Args:
        up: the upstream `DatasetStats` of `gather_stats` (their sample `indices`).
        extractor: the run's extractor.
        cfg: the run's settings (aggregation, batch size, stats_memory_gb).
        out: the run folder; subset files go to ``out/classes/``.
    """
    result: list[ClassCandidate] = []
    per_matrix = extractor.dim * extractor.dim * 8
    budget = int(cfg.stats_memory_gb * 2**30 // per_matrix)
    for u in up:
        ds = open_spec(cfg.upstream[u.name], u.name)
        labels_all = ds.class_labels()
        if labels_all is None or u.indices is None:
            result.append(ClassCandidate(u.name, u.name, None, u.grouped, u.n_structures))
            continue
        sample = np.asarray(u.indices)
        copies: dict[int, int] = {}
        for i in sample.tolist():
            copies[i] = copies.get(i, 0) + 1
        classes = sorted({str(labels_all[i]) for i in copies})
        budget -= len(classes)
        if budget < 0:
            raise ConfigError(
                f"per-class statistics of '{u.name}' ({len(classes)} classes at d = {extractor.dim}) exceed "
                f"stats_memory_gb={cfg.stats_memory_gb}",
                fix="raise stats_memory_gb, or select over datasets (--over datasets)",
            )
        stats = {c: GaussianStats(extractor.dim) for c in classes}
        draws = dict.fromkeys(classes, 0)
        unique = sorted(copies)
        for start in progress_bar(
            range(0, len(unique), cfg.batch_size), desc=f"classes {u.name}", unit="batch", leave=False
        ):
            batch = unique[start : start + cfg.batch_size]
            for idx, feats in zip(batch, extractor.features([ds[i] for i in batch]), strict=True):
                c = str(labels_all[idx])
                rows = aggregate([feats], cfg.aggregation)
                for _ in range(copies[idx]):
                    stats[c].update(rows)
                draws[c] += copies[idx]
        labels_text = np.asarray([str(x) for x in labels_all])
        for c in classes:
            if stats[c].n < 2:
                continue  # a class with one observation has no covariance: it cannot be a candidate
            name = f"{u.name}@{_slug(c)}"
            subset = save_subset(
                out / "classes" / f"{name}.json",
                np.flatnonzero(labels_text == c),
                dataset=str(ds.path),
                format=ds.format_name,
                role="upstream class",
                class_label=c,
                method="all structures of the class",
            )
            result.append(ClassCandidate(name, u.name, c, _Total(stats[c]), draws[c], subset.resolve()))
    if len(result) < 2:
        raise ConfigError(
            "fewer than two candidates to mix after splitting the upstream sets into classes",
            fix="pass more --upstream sets or select over datasets",
        )
    return result
