"""Frechet distance: analytic cases, an independent scipy sqrtm cross-check, singular and bad inputs."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import scipy.linalg

from atomsift.csi.frechet import (
    CSIWarning,
    FrechetReference,
    check_observations,
    frechet_distance,
    shrink_covariance,
)
from atomsift.errors import ConfigError


def random_spd(rng: np.random.Generator, d: int, cond: float = 10.0) -> np.ndarray:
    """Well-conditioned SPD matrix: random eigenbasis, eigenvalues spread over [1/cond, 1]."""
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    w = np.geomspace(1.0 / cond, 1.0, d)
    s = (q * w) @ q.T
    return 0.5 * (s + s.T)


def sqrtm_reference(mu1, s1, mu2, s2) -> float:
    """Independent route: ||dmu||^2 + Tr(S1 + S2 - 2 real(sqrtm(S1 S2)))."""
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(np.real(covmean)))


def test_identical_statistics_give_zero():
    rng = np.random.default_rng(0)
    for d in (1, 7, 64):
        s = random_spd(rng, d, cond=100.0)
        mu = rng.standard_normal(d)
        value = frechet_distance(mu, s, mu, s)
        assert 0.0 <= value <= 1e-9 * np.trace(s)


def test_identical_rank_deficient_statistics_give_zero():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((20, 64))
    s = np.cov(x, rowvar=False)
    mu = x.mean(axis=0)
    assert 0.0 <= frechet_distance(mu, s, mu, s) <= 1e-9 * np.trace(s)


def test_equal_covariances_give_squared_mean_difference():
    rng = np.random.default_rng(2)
    d = 32
    s = random_spd(rng, d)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    expected = float(np.sum((mu1 - mu2) ** 2))
    assert frechet_distance(mu1, s, mu2, s) == pytest.approx(expected, rel=1e-9, abs=1e-9 * np.trace(s))


def test_diagonal_covariances_match_closed_form():
    rng = np.random.default_rng(3)
    d = 50
    a, b = rng.uniform(0.1, 3.0, d), rng.uniform(0.0, 3.0, d)
    b[:5] = 0.0  # singular second covariance
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    expected = float(np.sum((np.sqrt(a) - np.sqrt(b)) ** 2) + np.sum((mu1 - mu2) ** 2))
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("d", [5, 64, 256])
def test_agrees_with_scipy_sqrtm(d):
    rng = np.random.default_rng(d)
    s1, s2 = random_spd(rng, d, cond=20.0), 2.0 * random_spd(rng, d, cond=50.0)
    mu1, mu2 = rng.standard_normal(d), 0.3 * rng.standard_normal(d)
    ours = frechet_distance(mu1, s1, mu2, s2)
    ref = sqrtm_reference(mu1, s1, mu2, s2)
    assert ours == pytest.approx(ref, rel=1e-8)


def test_symmetric_in_its_arguments():
    rng = np.random.default_rng(4)
    d = 48
    s1, s2 = random_spd(rng, d, cond=1e3), random_spd(rng, d, cond=1e2)
    mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-8)


def test_reference_reuse_matches_pairwise_calls():
    rng = np.random.default_rng(5)
    d = 40
    mu_ref, s_ref = rng.standard_normal(d), random_spd(rng, d)
    ref = FrechetReference(mu_ref, s_ref)
    for _ in range(4):
        mu, s = rng.standard_normal(d), random_spd(rng, d, cond=30.0)
        assert ref.distance(mu, s) == pytest.approx(frechet_distance(mu_ref, s_ref, mu, s), rel=1e-14)


def test_fewer_observations_than_dimensions_is_finite_and_warns():
    rng = np.random.default_rng(6)
    n, d = 20, 64
    x1 = rng.standard_normal((n, d))
    x2 = 0.5 * rng.standard_normal((n, d)) + 0.2
    s1, s2 = np.cov(x1, rowvar=False), np.cov(x2, rowvar=False)
    with pytest.warns(CSIWarning, match="upstream-x.*20 observations for 64"):
        check_observations(n, d, "upstream-x")
    value = frechet_distance(x1.mean(0), s1, x2.mean(0), s2)
    assert np.isfinite(value) and value >= 0.0
    # shrinkage makes both covariances positive definite and still gives a finite, non-negative value
    s1s, s2s = shrink_covariance(s1, n), shrink_covariance(s2, n)
    assert np.linalg.eigvalsh(s1s).min() > 0 and np.linalg.eigvalsh(s2s).min() > 0
    shrunk = frechet_distance(x1.mean(0), s1s, x2.mean(0), s2s)
    assert np.isfinite(shrunk) and shrunk >= 0.0


def test_enough_observations_do_not_warn():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_observations(100, 64, "downstream")


def test_near_singular_covariances_are_finite_and_match_commuting_closed_form():
    rng = np.random.default_rng(7)
    d = 64
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    a = np.geomspace(1.0, 1e-12, d)
    b = rng.permutation(np.geomspace(2.0, 1e-12, d))
    s1, s2 = (q * a) @ q.T, (q * b) @ q.T  # same eigenbasis: Tr((S1 S2)^1/2) = sum sqrt(a b)
    mu = np.zeros(d)
    value = frechet_distance(mu, s1, mu, s2)
    expected = float(np.sum((np.sqrt(a) - np.sqrt(b)) ** 2))
    assert np.isfinite(value) and value >= 0.0
    assert abs(value - expected) <= 1e-7 * (a.sum() + b.sum())
    # in a random (non-commuting) basis: finite, non-negative, symmetric
    q2, _ = np.linalg.qr(rng.standard_normal((d, d)))
    s3 = (q2 * b) @ q2.T
    v13, v31 = frechet_distance(mu, s1, mu, s3), frechet_distance(mu, s3, mu, s1)
    assert np.isfinite(v13) and v13 >= 0.0
    assert v13 == pytest.approx(v31, rel=1e-6)


def test_result_is_clamped_at_zero():
    # rounding of an identical, badly scaled pair can come out slightly negative; it never leaks out
    rng = np.random.default_rng(9)
    q, _ = np.linalg.qr(rng.standard_normal((30, 30)))
    mu = np.zeros(30)
    for scale in (1e-8, 1.0, 1e8):
        s = (q * np.geomspace(scale, 1e-16 * scale, 30)) @ q.T
        value = frechet_distance(mu, s, mu, s)
        assert 0.0 <= value <= 1e-9 * np.trace(s)


def test_shrink_covariance_formula_and_oas_limits():
    rng = np.random.default_rng(8)
    d = 16
    s = random_spd(rng, d)
    target = np.trace(s) / d * np.eye(d)
    assert np.allclose(shrink_covariance(s, 100, alpha=0.25), 0.75 * s + 0.25 * target)
    assert np.allclose(shrink_covariance(s, 100, alpha=0.0), s)
    # OAS: a multiple of the identity gets alpha = 1 (nothing to estimate); more data, less shrinkage
    assert np.allclose(shrink_covariance(3.0 * np.eye(d), 10), 3.0 * np.eye(d))

    def alpha_of(n: int) -> float:
        return 1.0 - float(shrink_covariance(s, n)[0, 1] / s[0, 1])  # off-diagonals scale by (1 - alpha)

    assert 0.0 < alpha_of(10_000) < alpha_of(10) <= 1.0
    with pytest.raises(ConfigError, match="alpha"):
        shrink_covariance(s, 10, alpha=1.5)


@pytest.mark.parametrize(
    ("mu1", "s1", "mu2", "s2", "match"),
    [
        (np.zeros(3), np.eye(3), np.zeros(4), np.eye(4), "width"),
        (np.zeros(3), np.eye(4), np.zeros(3), np.eye(3), "shape"),
        (np.zeros((3, 1)), np.eye(3), np.zeros(3), np.eye(3), "vector"),
        (np.array([0.0, np.nan, 0.0]), np.eye(3), np.zeros(3), np.eye(3), "NaN"),
        (np.zeros(3), np.diag([1.0, np.inf, 1.0]), np.zeros(3), np.eye(3), "NaN or inf"),
        (np.zeros(3), np.eye(3), np.zeros(3), np.triu(np.ones((3, 3))), "not symmetric"),
    ],
)
def test_bad_inputs_raise_clear_errors(mu1, s1, mu2, s2, match):
    with pytest.raises(ConfigError, match=match):
        frechet_distance(mu1, s1, mu2, s2)


def test_float64_overflow_is_reported_not_returned_as_nan():
    s = np.diag([1e-300, 1.0, 1e300])
    with pytest.raises(ConfigError, match="overflows float64"):
        frechet_distance(np.zeros(3), s, np.zeros(3), s)


def test_oas_weight_close_to_scikit_learn():
    """scikit-learn's OAS drops the 2/d terms of Chen et al.'s eq. 23; for d = 64 the weights agree closely."""
    covariance = pytest.importorskip("sklearn.covariance")
    rng = np.random.default_rng(10)
    for n, d in ((20, 64), (200, 64)):
        x = rng.standard_normal((n, d)) * np.geomspace(1.0, 0.1, d)
        _, alpha_sklearn = covariance.oas(x)
        s = np.cov(x, rowvar=False)
        alpha = 1.0 - float(shrink_covariance(s, n)[0, 1] / s[0, 1])
        assert alpha == pytest.approx(alpha_sklearn, rel=0.02)


def test_negative_variances_are_refused():
    import numpy as np
    import pytest

    from atomsift.csi import frechet_distance
    from atomsift.errors import ConfigError

    m = np.zeros(3)
    with pytest.raises(ConfigError, match="negative variances"):
        frechet_distance(m, -np.eye(3), m, np.eye(3))


def test_cholesky_and_eigh_factors_give_the_same_distance():
    from atomsift.csi.frechet import FrechetReference

    rng = np.random.default_rng(7)
    d = 40
    x, y = rng.standard_normal((200, d)), rng.standard_normal((300, d)) * 1.5 + 0.3
    s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    ref = FrechetReference(x.mean(0), s1)
    assert ref.factor_kind == "cholesky"
    fast = ref.distance(y.mean(0), s2)
    from atomsift.csi.frechet import _psd_sqrt

    ref.factor, ref.factor_kind = _psd_sqrt(s1), "eigh"
    assert abs(ref.distance(y.mean(0), s2) - fast) <= 1e-10 * fast


def test_singular_reference_falls_back_to_the_clipped_square_root():
    from atomsift.csi.frechet import FrechetReference

    rng = np.random.default_rng(8)
    x = rng.standard_normal((10, 30))  # n < d: rank 9
    ref = FrechetReference(x.mean(0), np.cov(x, rowvar=False))
    assert ref.factor_kind == "eigh"
    value = ref.distance(np.zeros(30), np.eye(30))
    assert np.isfinite(value) and value >= 0
