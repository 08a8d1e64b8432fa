"""Rank agreement between CSI and finetuning results: Spearman rho, Kendall tau-b, permutation p-values.

The p-value is two-sided (scipy.stats.permutation_test, permutation_type="pairings": the metric values are
re-paired with the CSI values). With n <= `EXACT_MAX_N` candidates all n! pairings are enumerated (exact);
above that a seeded Monte-Carlo sample of `N_RESAMPLES` pairings is drawn. With a handful of candidates even
a perfect ranking cannot reach a small p-value: `min_p` says how small the exact test can go.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from scipy import stats

from atomsift.csi.alignment import interval_ties  # noqa: F401  (re-exported: the summary's ties)

EXACT_MAX_N = 8  # 8! = 40320 pairings: enumerated in well under a second
N_RESAMPLES = 9999  # Monte-Carlo pairings above EXACT_MAX_N
MIN_N = 3  # fewer candidates: no correlation is reported
METHODS = ("spearman", "kendall")


def _ranks(a: np.ndarray) -> np.ndarray:
    """Average ranks along the last axis (ties share their mean rank), as spearmanr uses."""
    return stats.rankdata(a, axis=-1)


def spearman_batch(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """Spearman rho of `x` (..., n) against `y` (n,) along the last axis: Pearson r of average ranks."""
    rx = _ranks(np.moveaxis(np.asarray(x, dtype=float), axis, -1))
    ry = _ranks(np.asarray(y, dtype=float))
    rx = rx - rx.mean(axis=-1, keepdims=True)
    ry = ry - ry.mean()
    return (rx @ ry) / np.sqrt((rx * rx).sum(axis=-1) * (ry @ ry))


def kendall_batch(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    """Kendall tau-b of `x` (..., n) against `y` (n,) along the last axis (pairs counted once; ties as in tau-b)."""
    x = np.moveaxis(np.asarray(x, dtype=float), axis, -1)
    y = np.asarray(y, dtype=float)
    n = y.shape[-1]
    iu = np.triu_indices(n, k=1)
    sx = np.sign(x[..., :, None] - x[..., None, :])[..., iu[0], iu[1]]  # (..., n(n-1)/2)
    sy = np.sign(y[:, None] - y[None, :])[iu]
    concordance = (sx * sy).sum(axis=-1)
    return concordance / np.sqrt(np.abs(sx).sum(axis=-1) * np.abs(sy).sum())


_BATCH = {"spearman": spearman_batch, "kendall": kendall_batch}


def _scipy_statistic(method: str, x: np.ndarray, y: np.ndarray) -> float:
    if method == "spearman":
        return float(stats.spearmanr(x, y).statistic)
    return float(stats.kendalltau(x, y).statistic)  # variant "b"


def rank_correlation(
    x: Sequence[float],
    y: Sequence[float],
    method: str = "spearman",
    *,
    exact_max_n: int = EXACT_MAX_N,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> dict[str, Any]:
    """One rank correlation of paired values with its two-sided permutation p-value.

    Args:
        x, y: paired values (n,), e.g. CSI and the seed-mean test metric of n candidates.
        method: "spearman" (rho) or "kendall" (tau-b).
        exact_max_n: enumerate all n! pairings when n <= this, else draw `n_resamples` at random.
        seed: seed of the Monte-Carlo pairings.

    Returns:
        dict with `method`, `n`, `statistic` and `p_value` (None with a `reason` when n < 3 or a side is
        constant), `exact` (bool), `n_permutations` (pairings in the null distribution), `min_p` (the smallest
        p-value the exact test could give at this n and these ties; None for Monte-Carlo) and `reason`.
    """
    if method not in _BATCH:
        raise ValueError(f"unknown rank correlation {method!r}; use one of {METHODS}")
    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if xa.shape != ya.shape or xa.ndim != 1:
        raise ValueError(f"x and y must be paired 1-d sequences, got shapes {xa.shape} and {ya.shape}")
    n = int(xa.size)
    out: dict[str, Any] = {
        "method": method,
        "n": n,
        "statistic": None,
        "p_value": None,
        "exact": None,
        "n_permutations": None,
        "min_p": None,
        "reason": None,
    }
    if n < MIN_N:
        out["reason"] = f"{n} candidate(s): a rank correlation needs at least {MIN_N}"
        return out
    if np.ptp(xa) == 0 or np.ptp(ya) == 0:
        side = "CSI" if np.ptp(xa) == 0 else "metric"
        out["reason"] = f"every candidate has the same {side} value: no ranking to correlate"
        return out
    exact = n <= exact_max_n
    batch = _BATCH[method]
    result = stats.permutation_test(
        (xa,),
        lambda xp, axis=-1: batch(xp, ya, axis=axis),
        permutation_type="pairings",
        vectorized=True,
        n_resamples=np.inf if exact else n_resamples,
        alternative="two-sided",
        rng=np.random.default_rng(seed),
    )
    null = np.asarray(result.null_distribution)
    out.update(
        statistic=_scipy_statistic(method, xa, ya),
        p_value=float(result.pvalue),
        exact=exact,
        n_permutations=int(null.size),
    )
    if exact:  # the most extreme statistic any pairing can reach, and its two-sided p-value
        tol = 100 * np.finfo(float).eps * np.abs(null).max()
        top = min(np.count_nonzero(null >= null.max() - tol), np.count_nonzero(null <= null.min() + tol))
        out["min_p"] = float(min(1.0, 2.0 * top / null.size))
        out["reason"] = f"exact permutation test over all {n}! = {null.size} pairings"
    else:
        out["reason"] = f"Monte-Carlo permutation test, {null.size} random pairings (seed {seed})"
    return out


def correlations(x: Sequence[float], y: Sequence[float], *, seed: int = 0, **kwargs: Any) -> dict[str, dict[str, Any]]:
    """Spearman and Kendall (`rank_correlation` of each) of the same paired values, keyed by method."""
    return {m: rank_correlation(x, y, m, seed=seed, **kwargs) for m in METHODS}
