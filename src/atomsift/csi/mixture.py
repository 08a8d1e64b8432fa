"""Statistics of a weighted mixture of datasets, exact from its members' sums.

A structure comes from member i with probability p_i; with flat aggregation each structure adds its atoms, so
an observation comes from member i with weight w_i ~ p_i a_i (a_i: the member's observations per structure; 1
for mean / sum / max aggregation). The mixture's mean and second moment are the w-weighted sums of the members'.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from atomsift.csi.statistics import GaussianStats

__all__ = ["MixtureStats", "combine", "mixture_factors", "observation_weights"]


def mixture_factors(weights: Any, counts: Any) -> np.ndarray:
    """(k,) scale f_i of member i's sums so that its share of the (unchanged) total count N is w_i.

    Args:
        weights: observation weights w_i (any positive scale; normalised here).
        counts: the members' observation counts n_i.
    """
    w = np.asarray(weights, dtype=np.float64)
    n = np.asarray(counts, dtype=np.float64)
    return w / w.sum() * n.sum() / n


def combine(stats: list[GaussianStats], factors: np.ndarray) -> GaussianStats:
    """The mixture's statistics: sum_i f_i (n_i, total_i, outer_i)."""
    out = GaussianStats(stats[0].dim)
    out.n = round(float(sum(f * s.n for f, s in zip(factors, stats))))
    for f, s in zip(factors, stats):
        out.total += f * s.total
        out.outer += f * s.outer
    return out


class MixtureStats:
    """Grouped statistics of a weighted mixture of datasets (the interface `score` uses: total, bootstrap).

    Args:
        parts: the members' statistics.
        weights: observation weights w_i (any positive scale; normalised here).
    """

    def __init__(self, parts: list[Any], weights: list[float]) -> None:
        self.parts = parts
        self.factors = mixture_factors(weights, [p.grouped.total().n for p in parts])

    def total(self) -> GaussianStats:
        return combine([p.grouped.total() for p in self.parts], self.factors)

    def bootstrap(self, n_resamples: int, seed: int) -> Iterator[GaussianStats]:
        """Replicates: each member resampled independently (its own seed), then mixed with the same weights."""
        streams = [p.grouped.bootstrap(n_resamples, seed + 7919 * (i + 1)) for i, p in enumerate(self.parts)]
        for reps in zip(*streams):
            yield combine(list(reps), self.factors)


def observation_weights(parts: list[Any], shares: list[float], aggregation: str) -> list[float]:
    """w_i ~ p_i a_i: structure shares times observations per structure (flat aggregation) or 1."""
    if aggregation != "flat":
        return list(shares)
    return [p * d.n_obs / max(d.n_structures, 1) for p, d in zip(shares, parts)]
