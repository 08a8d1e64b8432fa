"""CSI: the Chemical Similarity Index, a Frechet distance between per-atom feature distributions.

    CSI(u, d) = ||mu_u - mu_d||^2 + Tr(S_u + S_d - 2 (S_u S_d)^(1/2))

computed in float64 from streaming sufficient statistics of backbone features (docs/method.md section 2).
"""

from atomsift.csi.frechet import FrechetReference, frechet_distance, shrink_covariance
from atomsift.csi.statistics import GaussianStats, GroupedStats

__all__ = ["FrechetReference", "GaussianStats", "GroupedStats", "frechet_distance", "shrink_covariance"]
