"""Frechet distance between Gaussians (the CSI / FID formula), in float64, in the symmetric form.

    CSI = ||mu1 - mu2||^2 + Tr(S1) + Tr(S2) - 2 Tr((S1 S2)^1/2)

S1 S2 is not symmetric, and the usual route (``scipy.linalg.sqrtm(S1 @ S2)``, then the real part) is
slow, can return large imaginary parts and NaN for singular covariances. Here S1 = L L^T is factored once
(Cholesky, lower L), and S1 S2 = L (L^T S2 L) L^-1 is similar to the symmetric positive semi-definite
M = L^T S2 L, so

    Tr((S1 S2)^1/2) = sum_i sqrt(max(lambda_i(M), 0))

with the eigenvalues only of M (LAPACK's divide-and-conquer driver): real by construction, never NaN. One
cheap factorisation per reference and one eigenvalue solve per pair. When S1 is singular or too close to it
for a Cholesky factor (fewer observations than dimensions, repeated structures), L is replaced by the
symmetric square root R = S1^1/2 from ``eigh`` with negative eigenvalues clipped (then M = R S2 R); both
factors give the same eigenvalues, as R R^T = L L^T = S1. The factor depends only on one side, so
``FrechetReference`` computes it once for a downstream set and reuses it for every upstream one (and for
every bootstrap replicate of the upstream side).
"""

from __future__ import annotations

import warnings

import numpy as np
import scipy.linalg

from atomsift.errors import ConfigError

__all__ = [
    "CSIWarning",
    "FrechetReference",
    "check_observations",
    "frechet_distance",
    "shrink_covariance",
]


class CSIWarning(UserWarning):
    """A CSI value was computed but may be unreliable (e.g. fewer observations than dimensions)."""


def _check_gaussian(mu: object, sigma: object, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Validate and convert (mu (d,), sigma (d, d)) to float64; sigma is symmetrised."""
    mu_a = np.asarray(mu, dtype=np.float64)
    s_a = np.asarray(sigma, dtype=np.float64)
    if mu_a.ndim != 1 or mu_a.shape[0] < 1:
        raise ConfigError(f"{name}: the mean must be a non-empty vector (d,), got shape {mu_a.shape}")
    d = mu_a.shape[0]
    if s_a.shape != (d, d):
        raise ConfigError(f"{name}: the covariance must have shape ({d}, {d}) to match the mean, got {s_a.shape}")
    if not np.isfinite(mu_a).all():
        raise ConfigError(f"{name}: the mean contains NaN or inf")
    if not np.isfinite(s_a).all():
        raise ConfigError(f"{name}: the covariance contains NaN or inf")
    scale = float(np.abs(s_a).max())
    asym = float(np.abs(s_a - s_a.T).max())
    if asym > 1e-8 * scale:
        raise ConfigError(
            f"{name}: the covariance is not symmetric (max |S - S^T| = {asym:.3g}, max |S| = {scale:.3g})",
            fix="pass a covariance matrix (e.g. GaussianStats.covariance())",
        )
    if (np.diag(s_a) < -1e-12 * max(scale, 1e-300)).any():
        raise ConfigError(
            f"{name}: the covariance has negative variances on its diagonal (min {float(np.diag(s_a).min()):.3g})",
            fix="pass a covariance matrix (positive semi-definite)",
        )
    return mu_a, 0.5 * (s_a + s_a.T)


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric matrix, negative eigenvalues clipped to 0: (d, d)."""
    w, v = np.linalg.eigh(sigma)
    vs = v * np.sqrt(np.clip(w, 0.0, None))
    return vs @ v.T


def psd_factor(sigma: np.ndarray) -> tuple[np.ndarray, str]:
    """A factor F with F F^T = sigma: (the lower Cholesky factor, 'cholesky') when sigma is positive definite
    to working precision, else (the clipped symmetric square root, 'eigh')."""
    try:
        lower = scipy.linalg.cholesky(sigma, lower=True, check_finite=False)
    except np.linalg.LinAlgError:
        return _psd_sqrt(sigma), "eigh"
    # a factor with a tiny pivot (relative to the largest) loses the small eigenvalues to rounding: use eigh
    pivots = np.abs(np.diag(lower))
    if not np.isfinite(lower).all() or pivots.min() <= 1e-7 * pivots.max():
        return _psd_sqrt(sigma), "eigh"
    return lower, "cholesky"


def eigvalsh_only(m: np.ndarray) -> np.ndarray:
    """Eigenvalues of a symmetric matrix (d,), ascending; divide and conquer, no eigenvectors; m is overwritten."""
    return scipy.linalg.eigh(m, eigvals_only=True, driver="evd", overwrite_a=True, check_finite=False)


class FrechetReference:
    """One side of the Frechet distance (the downstream set) with its covariance square root precomputed.

    Args:
        mu: (d,) mean.
        sigma: (d, d) symmetric covariance.
        name: label used in error messages.
    """

    def __init__(self, mu: object, sigma: object, name: str = "reference") -> None:
        self.mu, self.sigma = _check_gaussian(mu, sigma, name)
        self.name = name
        self.trace = float(np.trace(self.sigma))
        self.factor, self.factor_kind = psd_factor(self.sigma)  # F F^T = S_ref, computed once

    @property
    def dim(self) -> int:
        """Feature width d."""
        return int(self.mu.shape[0])

    def trace_sqrt_product(self, sigma: np.ndarray) -> float:
        """Tr((S_ref S)^1/2) = sum sqrt(clip(eigvalsh(F^T S F), 0)) for a validated symmetric S."""
        with np.errstate(over="ignore", invalid="ignore"):
            m = self._congruence(sigma)
            m = 0.5 * (m + m.T)
        if not np.isfinite(m).all():  # only float64 overflow gets here (covariance entries beyond ~1e150)
            raise ConfigError(
                f"the product of the covariances of {self.name} and the compared set overflows float64",
                fix="rescale the features (their covariance entries are too large)",
            )
        ev = eigvalsh_only(m)
        return float(np.sqrt(np.clip(ev, 0.0, None)).sum())

    def _congruence(self, sigma: np.ndarray) -> np.ndarray:
        """F^T S F: two triangular products (BLAS trmm, half the work of full ones) for a Cholesky factor."""
        f = self.factor
        if self.factor_kind != "cholesky":
            return f.T @ (sigma @ f)
        trmm = scipy.linalg.blas.get_blas_funcs("trmm", (f, sigma))
        sl = trmm(1.0, f, sigma, side=1, lower=1)  # S L
        return trmm(1.0, f, sl, side=0, lower=1, trans_a=1, overwrite_b=1)  # L^T (S L)

    def distance(self, mu: object, sigma: object, name: str = "candidate") -> float:
        """Frechet distance between this reference and N(mu, sigma); float >= 0."""
        mu_a, s_a = _check_gaussian(mu, sigma, name)
        if mu_a.shape[0] != self.dim:
            raise ConfigError(
                f"{name} has feature width {mu_a.shape[0]} but {self.name} has {self.dim}",
                fix="compare statistics from the same extractor and layer",
            )
        diff = self.mu - mu_a
        value = float(diff @ diff) + self.trace + float(np.trace(s_a)) - 2.0 * self.trace_sqrt_product(s_a)
        if not np.isfinite(value):
            raise ConfigError(
                f"the Frechet distance between {self.name} and {name} overflowed float64",
                fix="rescale the features (their covariance entries are too large)",
            )
        return max(value, 0.0)


def frechet_distance(mu1: object, sigma1: object, mu2: object, sigma2: object) -> float:
    """Frechet distance ||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2) between two Gaussians.

    Float64, symmetric form (see the module docstring); never complex, never NaN; clamped at 0.

    Args:
        mu1, mu2: (d,) means.
        sigma1, sigma2: (d, d) symmetric covariances.

    Returns:
        The distance, a float >= 0 (in squared feature units).
    """
    return FrechetReference(mu1, sigma1, name="first set").distance(mu2, sigma2, name="second set")


def shrink_covariance(sigma: object, n: int, alpha: float | None = None) -> np.ndarray:
    """Shrink a covariance towards a scaled identity: S' = (1 - alpha) S + alpha (Tr(S) / d) I.

    With ``alpha=None`` the weight is the Oracle Approximating Shrinkage (OAS) estimate of
    Chen, Wiesel, Eldar and Hero (IEEE Trans. Signal Process. 58, 5016, 2010, eq. 23), which needs only
    S, d and the number of observations n:

        alpha = min(1, ((1 - 2/d) Tr(S^2) + Tr(S)^2) / ((n + 1 - 2/d) (Tr(S^2) - Tr(S)^2 / d)))

    (a Ledoit-Wolf-style, data-driven weight; it is scale-invariant, so an unbiased or a maximum-
    likelihood S give the same alpha). alpha grows as n falls below d, which makes a singular S
    positive definite. Shrinkage changes the CSI value: compare only values shrunk the same way.

    Args:
        sigma: (d, d) symmetric covariance.
        n: number of observations behind sigma (>= 1).
        alpha: shrinkage weight in [0, 1], or None for the OAS estimate.

    Returns:
        (d, d) float64 shrunk covariance.
    """
    s = np.asarray(sigma, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] != s.shape[1] or s.shape[0] < 1:
        raise ConfigError(f"shrink_covariance: the covariance must be square (d, d), got shape {s.shape}")
    if not np.isfinite(s).all():
        raise ConfigError("shrink_covariance: the covariance contains NaN or inf")
    if int(n) < 1:
        raise ConfigError(f"shrink_covariance: the number of observations must be >= 1, got {n}")
    d = s.shape[0]
    s = 0.5 * (s + s.T)
    tr = float(np.trace(s))
    if alpha is None:
        tr_s2 = float(np.sum(s * s))  # Tr(S^2) = sum of squared entries for symmetric S
        den = (int(n) + 1.0 - 2.0 / d) * (tr_s2 - tr * tr / d)
        num = (1.0 - 2.0 / d) * tr_s2 + tr * tr
        alpha = 1.0 if den <= 0.0 else min(num / den, 1.0)
    alpha = float(alpha)
    if not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"shrink_covariance: alpha must be in [0, 1], got {alpha}")
    out = (1.0 - alpha) * s
    out[np.diag_indices(d)] += alpha * tr / d
    return out


def check_observations(n: int, d: int, name: str, aggregation: str | None = None) -> None:
    """Warn (CSIWarning) when a dataset has fewer observations n than feature dimensions d.

    Its covariance then has rank at most n - 1 < d: the distance stays finite, but it is biased and
    noisy. The warning names the dataset and the remedies (flat aggregation only where it is not in use).
    """
    if int(n) < int(d):
        flat = "" if aggregation == "flat" else "use aggregation 'flat' (every atom one observation), "
        warnings.warn(
            f"{name}: {n} observations for {d} feature dimensions; its covariance is singular "
            f"(rank <= {max(int(n) - 1, 0)}) and its CSI values are biased. Sample more structures, {flat}or "
            "shrink the covariance (`atomsift csi --shrinkage auto`; shrink_covariance in Python).",
            CSIWarning,
            stacklevel=2,
        )
