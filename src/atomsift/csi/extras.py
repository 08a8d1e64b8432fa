"""What the measures beyond CSI need from a dataset's features, gathered in the same pass as the statistics.

Per sampled dataset (docs/measures.md):

- element counts: atoms of each element in the sample (a structure drawn c times counts c times);
- per-element Gaussian statistics (flat aggregation only): (n, sum x, sum x x^T) of the atoms of each element,
  kept while they fit `element_memory_gb` (elements x d^2 x 8 bytes), else dropped with a warning;
- a feature reservoir: at most `reservoir` rows drawn by seeded weighted reservoir sampling without replacement
  (a structure drawn c times enters once with weight c), so every later kNN / kernel measure reads a bounded,
  reproducible sample (memory reservoir x d x 8 bytes per dataset).

`DatasetExtras` holds them for a dataset, and for a mixture as weighted parts: every sum over atoms of member i is
scaled by the mixture's factor f_i (as the Gaussian statistics are), and the reservoir is kept as its members'
reservoirs with weights, so a kernel mean of the mixture is exact for the weighted sample.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from atomsift.csi.measures import WeightedReservoir
from atomsift.csi.statistics import GaussianStats
from atomsift.errors import DataError

__all__ = ["DatasetExtras", "ExtrasAccumulator", "mix_extras"]


@dataclass
class DatasetExtras:
    """Element counts, per-element statistics and reservoir parts of one dataset or mixture.

    Attributes:
        counts: {Z: atoms of element Z in the sample} (float: mixtures scale them).
        element_stats: {Z: GaussianStats of the atoms of Z} or None (not flat, or over the memory budget).
        parts: reservoir parts [(rows (k_i, d) float64, weight w_i)], weights summing to 1.
        note: why element_stats is None, when it is.
    """

    counts: dict[int, float]
    element_stats: dict[int, GaussianStats] | None
    parts: list[tuple[np.ndarray, float]] = field(default_factory=list)
    note: str = ""

    def element_moments(self, min_rows: int = 2) -> dict[int, tuple[np.ndarray, np.ndarray, int]]:
        """{Z: (mean (d,), covariance (d, d), n)} of the elements with at least `min_rows` rows (none: {})."""
        stats = self.element_stats or {}
        return {z: (s.mean, s.covariance(), s.n) for z, s in stats.items() if s.n >= min_rows}

    def rows(self, size: int, seed: int) -> np.ndarray:
        """One sample of at most `size` rows: a dataset's reservoir, or a mixture's members' rows drawn in
        proportion to their weights (seeded), (k, d) float64."""
        if len(self.parts) == 1:
            return self.parts[0][0]
        rng = np.random.default_rng(seed)
        total = min(size, sum(r.shape[0] for r, _ in self.parts))
        want = np.array([w for _, w in self.parts]) * total
        take = np.minimum(np.floor(want).astype(int), [r.shape[0] for r, _ in self.parts])
        picked = [r[np.sort(rng.choice(r.shape[0], size=int(t), replace=False))] for (r, _), t in zip(self.parts, take)]
        return np.concatenate(picked, axis=0)

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Arrays for an .npz cache file (a single dataset only)."""
        if len(self.parts) != 1:
            raise ValueError("internal: only a dataset's extras are cached, not a mixture's")
        z = np.array(sorted(self.counts), dtype=np.int64)
        out: dict[str, np.ndarray] = {
            "elements": z,
            "element_counts": np.array([self.counts[int(k)] for k in z], dtype=np.float64),
            "reservoir_rows": self.parts[0][0],
            "note": np.array(self.note),
        }
        if self.element_stats is not None:
            zs = np.array(sorted(self.element_stats), dtype=np.int64)
            out["stats_elements"] = zs
            out["stats_n"] = np.array([self.element_stats[int(k)].n for k in zs], dtype=np.int64)
            out["stats_total"] = np.stack([self.element_stats[int(k)].total for k in zs])
            out["stats_outer"] = np.stack([self.element_stats[int(k)].outer for k in zs])
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, Any]) -> DatasetExtras:
        """Inverse of to_arrays; shapes are checked."""
        try:
            note = str(arrays.get("note", ""))
            z = np.asarray(arrays["elements"], dtype=np.int64)
            counts = np.asarray(arrays["element_counts"], dtype=np.float64)
            rows = np.asarray(arrays["reservoir_rows"], dtype=np.float64)
            stats = None
            if "stats_elements" in arrays:
                zs = np.asarray(arrays["stats_elements"], dtype=np.int64)
                stats = {}
                for i, k in enumerate(zs.tolist()):
                    stats[k] = GaussianStats.from_arrays(
                        {
                            "n": arrays["stats_n"][i],
                            "total": arrays["stats_total"][i],
                            "outer": arrays["stats_outer"][i],
                        }
                    )
        except (KeyError, IndexError, ValueError) as exc:
            raise DataError(
                f"inconsistent measure arrays in a statistics cache file ({exc})",
                fix="delete the cache file; it will be recomputed",
            ) from None
        if z.shape != counts.shape or rows.ndim != 2:
            raise DataError(
                "inconsistent element counts or reservoir in a statistics cache file",
                fix="delete the cache file; it will be recomputed",
            )
        return cls(dict(zip(z.tolist(), counts.tolist())), stats, [(rows, 1.0)], note)


class ExtrasAccumulator:
    """Collects DatasetExtras structure by structure.

    Args:
        dim: feature width d.
        reservoir: reservoir rows kept.
        seed: the reservoir's seed.
        per_element: keep per-element Gaussian statistics (flat aggregation).
        element_memory: bytes the per-element statistics may take; beyond it they are dropped.
        label: the dataset, for the warning.
    """

    def __init__(
        self, dim: int, reservoir: int, seed: int, per_element: bool, element_memory: float, label: str
    ) -> None:
        self.dim = dim
        self.reservoir = WeightedReservoir(size=reservoir, seed=seed)
        self.counts: dict[int, float] = {}
        self.element_stats: dict[int, GaussianStats] | None = {} if per_element else None
        self.element_memory = element_memory
        self.label = label
        self.note = "" if per_element else "per-element statistics need flat aggregation"

    def update(self, numbers: np.ndarray, rows: np.ndarray, copies: int) -> None:
        """One structure: atomic numbers (n_atoms,), its feature rows (n_atoms or 1, d), drawn `copies` times."""
        zs, cnt = np.unique(numbers, return_counts=True)
        for z, c in zip(zs.tolist(), cnt.tolist()):
            self.counts[z] = self.counts.get(z, 0.0) + float(c * copies)
        per_atom = rows.shape[0] == numbers.shape[0]
        self.reservoir.update(rows, numbers if per_atom else np.zeros(rows.shape[0], dtype=np.int64), float(copies))
        if self.element_stats is None:
            return
        for z in zs.tolist():
            stats = self.element_stats.get(z)
            if stats is None:
                if (len(self.element_stats) + 1) * self.dim * self.dim * 8 > self.element_memory:
                    self.element_stats = None
                    self.note = (
                        f"per-element statistics of '{self.label}' exceed element_memory_gb at d = {self.dim}: "
                        "dropped (raise element_memory_gb to keep them)"
                    )
                    warnings.warn(self.note, stacklevel=2)
                    return
                stats = self.element_stats[z] = GaussianStats(self.dim)
            sel = rows[numbers == z]
            for _ in range(copies):
                stats.update(sel)

    def result(self) -> DatasetExtras:
        """The collected extras."""
        return DatasetExtras(dict(self.counts), self.element_stats, [(self.reservoir.rows, 1.0)], self.note)


def mix_extras(parts: list[DatasetExtras], factors: np.ndarray, row_weights: np.ndarray) -> DatasetExtras:
    """The extras of a mixture: sums over atoms of member i scaled by factors[i]; reservoir parts weighted by
    row_weights (the members' observation shares, normalised here)."""
    counts: dict[int, float] = {}
    for p, f in zip(parts, factors):
        for z, c in p.counts.items():
            counts[z] = counts.get(z, 0.0) + float(f) * c
    stats: dict[int, GaussianStats] | None = None
    notes = [p.note for p in parts if p.element_stats is None]
    if not notes:
        stats = {}
        for z in sorted({z for p in parts for z in (p.element_stats or {})}):
            members = [(float(f), p.element_stats[z]) for p, f in zip(parts, factors) if z in (p.element_stats or {})]
            # rescale so that the counts add up unchanged (an integer n) while keeping the mixture's proportions
            n = sum(s.n for _, s in members)
            scale = n / sum(f * s.n for f, s in members)
            acc = stats[z] = GaussianStats(members[0][1].dim)
            acc.n = n
            for f, s in members:
                acc.total += f * scale * s.total
                acc.outer += f * scale * s.outer
    w = np.asarray(row_weights, dtype=np.float64)
    w = w / w.sum()
    rows = [(p.parts[0][0], float(wi)) for p, wi in zip(parts, w)]
    return DatasetExtras(counts, stats, rows, notes[0] if notes else "")
