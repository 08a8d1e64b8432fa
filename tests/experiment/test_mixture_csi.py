"""A mixture's CSI statistics equal those of the pooled features (the exact mixture distribution)."""

from __future__ import annotations

import numpy as np

from atomsift.csi.pipeline import DatasetStats
from atomsift.csi.statistics import GroupedStats
from atomsift.experiment.csi import MixtureStats, observation_weights


def _stats(name: str, structures: list[np.ndarray], groups: int = 4) -> DatasetStats:
    g = GroupedStats(structures[0].shape[1], groups)
    for i, x in enumerate(structures):
        g.update(i % groups, x)
    n = len(structures)
    return DatasetStats(name, "upstream", g, n, n, "random", False, n_total=n)


def _moments(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    return rows.mean(axis=0), np.cov(rows, rowvar=False)


def test_balanced_mixture_of_equal_counts_is_the_pooled_sample():
    rng = np.random.default_rng(0)
    # 6 structures each; A has 3 atoms per structure, B 5: flat aggregation weighs B's atoms more
    a = [rng.normal(0.0, 1.0, (3, 4)) for _ in range(6)]
    b = [rng.normal(2.0, 0.5, (5, 4)) for _ in range(6)]
    sa, sb = _stats("a", a), _stats("b", b)
    mix = MixtureStats([sa, sb], observation_weights([sa, sb], [0.5, 0.5], "flat"))
    pooled = np.concatenate(a + b)
    mean, cov = _moments(pooled)
    total = mix.total()
    assert total.n == pooled.shape[0]
    np.testing.assert_allclose(total.mean, mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(total.covariance(), cov, rtol=1e-10, atol=1e-12)


def test_unequal_shares_equal_a_pool_with_repeated_structures():
    rng = np.random.default_rng(1)
    a = [rng.normal(0.0, 1.0, (2, 3)) for _ in range(4)]
    b = [rng.normal(-1.0, 2.0, (2, 3)) for _ in range(4)]
    sa, sb = _stats("a", a), _stats("b", b)
    # shares 3:1 -> the pool holds each structure of A three times
    mix = MixtureStats([sa, sb], observation_weights([sa, sb], [0.75, 0.25], "flat"))
    pooled = np.concatenate(a * 3 + b)
    mean, _ = _moments(pooled)
    second = pooled.T @ pooled / pooled.shape[0]
    total = mix.total()
    np.testing.assert_allclose(total.mean, mean, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(total.outer / total.n, second, rtol=1e-12, atol=1e-12)


def test_per_structure_aggregation_weighs_structures_not_atoms():
    sa = _stats("a", [np.ones((1, 2))] * 4)
    sb = _stats("b", [np.zeros((1, 2))] * 8)
    assert observation_weights([sa, sb], [0.5, 0.5], "mean") == [0.5, 0.5]
    mix = MixtureStats([sa, sb], [0.5, 0.5])
    np.testing.assert_allclose(mix.total().mean, [0.5, 0.5])


def test_mixture_bootstrap_is_seeded_and_mixes_replicates():
    rng = np.random.default_rng(2)
    sa = _stats("a", [rng.normal(size=(2, 3)) for _ in range(8)])
    sb = _stats("b", [rng.normal(size=(2, 3)) + 5 for _ in range(8)])
    mix = MixtureStats([sa, sb], [0.5, 0.5])
    first = [r.mean for r in mix.bootstrap(5, seed=3)]
    again = [r.mean for r in mix.bootstrap(5, seed=3)]
    assert len(first) == 5
    for x, y in zip(first, again):
        np.testing.assert_array_equal(x, y)
    # every replicate lies between the two members' means (a mixture of their resamples)
    assert all(0.5 < float(m.mean()) < 4.5 for m in first)
