"""Mixture weights over upstream datasets that minimise an alignment measure to one downstream set.

The mixture draws a structure from dataset i with probability p_i (the pretraining shares of `mixture:
weights`). With flat aggregation each structure adds its atoms, so an observation comes from dataset i with
weight w_i ~ p_i a_i (a_i: atoms per structure of i's sample); the measures are functions of w:

- csi: the mixture's mean and second moment are the w-weighted sums of the members' (exact), so CSI(w) is one
  Frechet distance per evaluation;
- csi_element: the same per element, each element's members weighted by their atoms of that element;
- mmd: MMD^2(w) = w^T G w - 2 w^T g + k_dd (kernel means between the reservoirs): a convex quadratic.

w is optimised on the simplex by SLSQP from the uniform mixture and from next to each of the 5 best single sets; the best
of those and of the single datasets themselves is kept, so the selection is never worse than the best single
set under the measure. kNN measures (precision, recall, coverage) are step functions of w and are not optimised.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.optimize

from atomsift.csi.config import CSIConfig
from atomsift.csi.extras import mix_extras
from atomsift.csi.frechet import FrechetReference
from atomsift.csi.measures import kernel_mean, median_bandwidth, mixture_mmd2, per_element_frechet
from atomsift.csi.mixture import combine, mixture_factors
from atomsift.errors import ConfigError

SELECTABLE = ("csi", "csi_element", "mmd")
MIN_SHARE = 1e-3
"""Atom shares below this are set to 0 in the selection (the reported value is that of the rounded mixture)."""
MAX_VERTEX_STARTS = 5  # starts next to the 5 best single candidates (classes can make k large)

__all__ = ["SELECTABLE", "Selection", "select_weights", "structure_shares"]


@dataclass
class Selection:
    """The selected mixture for one downstream set.

    Attributes:
        downstream: the downstream set.
        measure: the measure minimised.
        names: upstream datasets, in order.
        atom_weights: (k,) observation weights w (sum 1).
        shares: (k,) structure shares p (sum 1): what `atomsift pretrain` draws with `mixture: weights`.
        value: the measure of the selected mixture.
        singles: {name: the measure of the dataset alone}.
        uniform: the measure of the mixture with equal structure shares.
        evaluations: objective evaluations spent.
    """

    downstream: str
    measure: str
    names: list[str]
    atom_weights: np.ndarray
    shares: np.ndarray
    value: float
    singles: dict[str, float]
    uniform: float
    evaluations: int

    def as_dict(self) -> dict[str, Any]:
        best = min(self.singles, key=self.singles.__getitem__)
        return {
            "downstream": self.downstream,
            "measure": self.measure,
            "value": self.value,
            "shares": dict(zip(self.names, self.shares.tolist())),
            "atom_weights": dict(zip(self.names, self.atom_weights.tolist())),
            "singles": self.singles,
            "best_single": best,
            "best_single_value": self.singles[best],
            "uniform": self.uniform,
            "evaluations": self.evaluations,
        }


def atoms_per_structure(up: list[Any], aggregation: str) -> np.ndarray:
    """(k,) observations per structure of each dataset's sample (1 unless aggregation is flat)."""
    if aggregation != "flat":
        return np.ones(len(up))
    return np.array([u.n_obs / max(u.n_structures, 1) for u in up], dtype=np.float64)


def structure_shares(atom_weights: np.ndarray, per_structure: np.ndarray) -> np.ndarray:
    """p_i ~ w_i / a_i (normalised): the structure shares that give observation weights w."""
    p = np.asarray(atom_weights, dtype=np.float64) / per_structure
    return p / p.sum()


def _vertex(w: np.ndarray) -> int | None:
    """The index of the only non-zero weight, or None for a mixture."""
    nonzero = np.flatnonzero(np.asarray(w) > 0)
    return int(nonzero[0]) if nonzero.size == 1 else None


def _objective(measure: str, up: list[Any], dn: Any, cfg: CSIConfig) -> Callable[[np.ndarray], float]:
    """The measure as a function of the observation weights w (k,)."""
    from atomsift.csi.pipeline import moments

    totals = [u.grouped.total() for u in up]  # once: every evaluation mixes these
    n = np.array([t.n for t in totals], dtype=np.float64)
    if measure == "csi":
        ref = FrechetReference(*moments(dn.grouped.total(), cfg))

        def csi(w: np.ndarray) -> float:
            i = _vertex(w)  # a single set: its own statistics (a mixture's n would change the ddof scaling)
            stats = totals[i] if i is not None else combine(totals, mixture_factors(w, n))
            return ref.distance(*moments(stats, cfg))

        return csi
    if any(u.extras is None for u in [*up, dn]):
        raise ConfigError(f"selecting by {measure} needs the measure data of every dataset (measures: [{measure}])")
    if measure == "csi_element":
        down = dn.extras.element_moments()
        if not down or any(u.extras.element_stats is None for u in up):
            raise ConfigError(
                "per-element statistics are missing (aggregation is not flat, or they exceeded element_memory_gb)",
                fix="use --measure csi, or aggregation flat with a larger element_memory_gb",
            )

        def csi_element(w: np.ndarray) -> float:
            i = _vertex(w)
            mixed = up[i].extras if i is not None else mix_extras([u.extras for u in up], mixture_factors(w, n), w)
            value, _ = per_element_frechet(down, mixed.element_moments())
            return float("inf") if value is None else value

        return csi_element
    if measure == "mmd":
        rows_d = dn.extras.rows(cfg.reservoir, cfg.seed)
        h = median_bandwidth(rows_d)
        rows = [u.extras.rows(cfg.reservoir, cfg.seed) for u in up]
        g = np.array([kernel_mean(r, rows_d, h) for r in rows])
        gmat = np.array([[kernel_mean(a, b, h) for b in rows] for a in rows])
        kdd = kernel_mean(rows_d, rows_d, h)
        return lambda w: mixture_mmd2(gmat, g, kdd, w)  # `select_weights` passes w >= 0 summing to 1
    raise ConfigError(
        f"cannot select mixture weights by '{measure}'",
        fix=f"use --measure {' or '.join(SELECTABLE)} (kNN measures are step functions of the weights)",
    )


def select_weights(up: list[Any], dn: Any, cfg: CSIConfig, measure: str = "csi") -> Selection:
    """Observation weights on the simplex minimising `measure` between the mixture of `up` and `dn`.

    Args:
        up: the upstream `DatasetStats` (datasets, not mixtures), at least two.
        dn: one downstream `DatasetStats`.
        cfg: the run's settings (aggregation, shrinkage, reservoir, seed).
        measure: one of SELECTABLE.
    """
    if len(up) < 2:
        raise ConfigError("selecting a mixture needs at least two upstream datasets", fix="pass more --upstream sets")
    k = len(up)
    f = _objective(measure, up, dn, cfg)
    calls = 0

    def counted(w: np.ndarray) -> float:
        nonlocal calls
        calls += 1
        w = np.clip(np.asarray(w, dtype=np.float64), 0.0, None)
        return f(w / w.sum()) if w.sum() > 0 else float("inf")

    per_structure = atoms_per_structure(up, cfg.aggregation)
    singles = {u.name: counted(np.eye(k)[i]) for i, u in enumerate(up)}
    uniform_w = per_structure / per_structure.sum()  # equal structure shares
    uniform = counted(uniform_w)
    candidates: list[tuple[float, np.ndarray]] = [(v, np.eye(k)[i]) for i, v in enumerate(singles.values())]
    candidates.append((uniform, uniform_w))
    nearest = sorted(range(k), key=lambda i: candidates[i][0])[:MAX_VERTEX_STARTS]
    starts = [np.full(k, 1.0 / k), uniform_w] + [0.7 * np.eye(k)[i] + 0.3 / k for i in nearest]
    for x0 in starts:
        res = scipy.optimize.minimize(
            counted,
            x0,
            method="SLSQP",
            bounds=[(0.0, 1.0)] * k,
            constraints=[{"type": "eq", "fun": lambda w: np.sum(w) - 1.0}],
            options={"ftol": 1e-12, "maxiter": 200},
        )
        w = np.clip(res.x, 0.0, None)
        if w.sum() > 0:
            w = w / w.sum()
            candidates.append((counted(w), w))
    _, best = min(candidates, key=lambda c: c[0])
    best = np.where(best < MIN_SHARE, 0.0, best)  # below 0.1 %: optimiser noise, and no structure at N < 1000
    best = best / best.sum()
    return Selection(
        downstream=dn.name,
        measure=measure,
        names=[u.name for u in up],
        atom_weights=best,
        shares=structure_shares(best, per_structure),
        value=float(counted(best)),
        singles=singles,
        uniform=uniform,
        evaluations=calls,
    )
