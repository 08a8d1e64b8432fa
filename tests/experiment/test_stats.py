"""Rank correlations and permutation p-values against scipy and an independent brute-force enumeration."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats as sps

from atomsift.experiment.stats import correlations, interval_ties, kendall_batch, rank_correlation, spearman_batch


def _scipy(method: str, x, y) -> float:
    f = sps.spearmanr if method == "spearman" else sps.kendalltau
    return float(f(x, y).statistic)


def _brute_force_p(method: str, x, y) -> float:
    """Two-sided p over all n! re-pairings: twice the smaller tail (ties of the statistic count), capped at 1."""
    obs = _scipy(method, x, y)
    null = [_scipy(method, np.asarray(x)[list(p)], y) for p in itertools.permutations(range(len(x)))]
    tol = 1e-12
    less = sum(v <= obs + tol for v in null) / len(null)
    greater = sum(v >= obs - tol for v in null) / len(null)
    return min(1.0, 2 * min(less, greater))


@pytest.mark.parametrize("n", [4, 7, 12])
@pytest.mark.parametrize("method", ["spearman", "kendall"])
def test_statistic_equals_scipy_on_random_data_with_and_without_ties(n: int, method: str) -> None:
    rng = np.random.default_rng(n)
    x, y = rng.normal(size=n), rng.normal(size=n)
    xt, yt = np.round(rng.normal(size=n)), np.round(rng.normal(size=n))  # ties
    for a, b in ((x, y), (xt, yt), (x, yt)):
        if np.ptp(a) == 0 or np.ptp(b) == 0:
            continue
        got = rank_correlation(a, b, method)
        assert got["statistic"] == pytest.approx(_scipy(method, a, b), abs=1e-12)
        batch = spearman_batch if method == "spearman" else kendall_batch
        perms = np.stack([rng.permutation(a) for _ in range(5)])
        want = [_scipy(method, p, b) for p in perms]
        np.testing.assert_allclose(batch(perms, b), want, atol=1e-12)


@pytest.mark.parametrize("method", ["spearman", "kendall"])
def test_exact_p_value_equals_brute_force_enumeration(method: str) -> None:
    x = [3.0, 10.2, 50.0, 80.0, 200.0, 7.0]
    y = [63.5, 44.5, 48.5, 68.5, 73.5, 44.5]  # one tie in y
    got = rank_correlation(x, y, method)
    assert got["exact"] is True
    assert got["n_permutations"] == math.factorial(6)
    assert got["p_value"] == pytest.approx(_brute_force_p(method, x, y), abs=1e-12)


def test_min_p_is_the_p_value_of_a_perfect_ranking() -> None:
    for n in (3, 4, 5):
        x = list(range(n))
        res = rank_correlation(x, x, "spearman")
        assert res["statistic"] == pytest.approx(1.0)
        assert res["min_p"] == pytest.approx(2 / math.factorial(n))
        assert res["p_value"] == pytest.approx(res["min_p"])


def test_monte_carlo_is_seeded_and_close_to_the_exact_value() -> None:
    rng = np.random.default_rng(3)
    x = rng.normal(size=7)
    y = x + rng.normal(scale=1.5, size=7)
    exact = _brute_force_p("spearman", x, y)
    mc = rank_correlation(x, y, "spearman", exact_max_n=6, n_resamples=4000, seed=5)
    again = rank_correlation(x, y, "spearman", exact_max_n=6, n_resamples=4000, seed=5)
    assert mc["exact"] is False and mc["n_permutations"] == 4000 and mc["min_p"] is None
    assert mc["p_value"] == again["p_value"]
    assert mc["p_value"] == pytest.approx(exact, abs=0.04)  # ~5 standard errors at 4000 draws
    assert "Monte-Carlo" in mc["reason"] and "seed 5" in mc["reason"]


def test_fewer_than_three_or_constant_values_give_none_with_a_reason() -> None:
    for x, y in (([], []), ([1.0], [2.0]), ([1.0, 2.0], [2.0, 1.0])):
        for res in correlations(x, y).values():
            assert res["statistic"] is None and res["p_value"] is None
            assert "at least 3" in res["reason"]
    res = rank_correlation([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])
    assert res["statistic"] is None and "same CSI" in res["reason"]
    with pytest.raises(ValueError):
        rank_correlation([1.0, 2.0, 3.0], [1.0, 2.0])


def test_interval_ties_flag_overlapping_intervals_only() -> None:
    names = ["a", "b", "c", "d"]
    lows = [1.0, 1.9, 5.0, None]
    highs = [2.0, 3.0, 6.0, None]
    assert interval_ties(names, lows, highs) == [("a", "b")]
    assert interval_ties(["a", "b"], [1.0, 2.0], [2.0, 3.0]) == [("a", "b")]  # touching ends overlap
    assert interval_ties(["a", "b"], [1.0, 2.5], [2.0, 3.0]) == []
