"""Measure data gathered beside the statistics (element counts, per-element statistics, reservoir), their
mixtures, and the selection of mixture weights, against pooled samples and known mixtures."""

from __future__ import annotations

import numpy as np
import pytest

from atomsift.csi.config import CSIConfig, DatasetSpec
from atomsift.csi.extras import DatasetExtras, ExtrasAccumulator, mix_extras
from atomsift.csi.frechet import frechet_distance
from atomsift.csi.mixture import MixtureStats, observation_weights
from atomsift.csi.pipeline import DatasetStats
from atomsift.csi.selection import select_weights, structure_shares
from atomsift.csi.statistics import GroupedStats
from atomsift.errors import ConfigError


def _dataset(name: str, structures: list[tuple[np.ndarray, np.ndarray]], reservoir: int = 10_000) -> DatasetStats:
    """DatasetStats with extras from [(numbers (n,), rows (n, d))], every structure drawn once."""
    d = structures[0][1].shape[1]
    g = GroupedStats(d, 4)
    acc = ExtrasAccumulator(d, reservoir, seed=0, per_element=True, element_memory=1e9, label=name)
    for i, (z, x) in enumerate(structures):
        g.update(i % 4, x)
        acc.update(z, x, 1)
    n = len(structures)
    return DatasetStats(name, "upstream", g, n, n, "random", False, n_total=n, extras=acc.result())


def _structures(rng, n: int, atoms: int, shift: float, scale: float, d: int = 3):
    out = []
    for _ in range(n):
        z = rng.choice([1, 6, 8], size=atoms)
        x = rng.normal(shift, scale, (atoms, d)) + z[:, None] * 0.1  # elements differ in their features
        out.append((z, x))
    return out


def test_per_element_statistics_and_counts_equal_brute_force():
    rng = np.random.default_rng(0)
    structs = _structures(rng, 20, 5, 0.0, 1.0)
    ds = _dataset("a", structs)
    zs = np.concatenate([z for z, _ in structs])
    xs = np.concatenate([x for _, x in structs])
    assert ds.extras.counts == {z: float((zs == z).sum()) for z in (1, 6, 8)}
    for z in (1, 6, 8):
        s = ds.extras.element_stats[z]
        np.testing.assert_allclose(s.mean, xs[zs == z].mean(axis=0), rtol=1e-12)
        np.testing.assert_allclose(s.covariance(), np.cov(xs[zs == z], rowvar=False), rtol=1e-10, atol=1e-12)
    again = DatasetExtras.from_arrays(ds.extras.to_arrays())
    assert again.counts == ds.extras.counts
    np.testing.assert_array_equal(again.parts[0][0], ds.extras.parts[0][0])
    np.testing.assert_array_equal(again.element_stats[6].outer, ds.extras.element_stats[6].outer)


def test_copies_count_and_memory_budget_drops_element_statistics():
    acc = ExtrasAccumulator(2, 50, seed=0, per_element=True, element_memory=2 * 2 * 2 * 8, label="x")
    acc.update(np.array([1, 1, 8]), np.ones((3, 2)), copies=3)
    assert acc.counts == {1: 6.0, 8: 3.0} and acc.element_stats[1].n == 6
    with pytest.warns(UserWarning, match="element_memory_gb"):
        acc.update(np.array([6]), np.ones((1, 2)), copies=1)  # a third element exceeds the budget of two
    res = acc.result()
    assert res.element_stats is None and "element_memory_gb" in res.note
    assert res.parts[0][0].shape == (4, 2)  # a structure drawn 3 times enters the reservoir once


def test_mixture_extras_equal_the_pooled_sample_per_element():
    rng = np.random.default_rng(1)
    sa, sb = _structures(rng, 6, 3, 0.0, 1.0), _structures(rng, 6, 5, 2.0, 0.5)
    a, b = _dataset("a", sa), _dataset("b", sb)
    mix = MixtureStats([a, b], observation_weights([a, b], [0.75, 0.25], "flat"))
    ex = mix_extras([a.extras, b.extras], mix.factors, np.array([0.5, 0.5]))
    # shares 3 : 1 of equally many structures: the pool holds every structure of a three times
    pool = sa * 3 + sb
    zs = np.concatenate([z for z, _ in pool])
    xs = np.concatenate([x for _, x in pool])
    for z in (1, 6, 8):
        s = ex.element_stats[z]
        np.testing.assert_allclose(s.mean, xs[zs == z].mean(axis=0), rtol=1e-12)
        second = xs[zs == z].T @ xs[zs == z] / (zs == z).sum()
        np.testing.assert_allclose(s.outer / s.n, second, rtol=1e-12)
    ratio = [ex.counts[z] / (zs == z).sum() for z in (1, 6, 8)]
    assert max(ratio) == pytest.approx(min(ratio), rel=1e-12)  # element counts proportional to the pool's


def _gaussian(name: str, rng, n: int, mean: np.ndarray, scale: float, atoms: int = 4) -> DatasetStats:
    structs = [(np.full(atoms, 6), rng.normal(mean, scale, (atoms, mean.size))) for _ in range(n)]
    return _dataset(name, structs, reservoir=400)


def _cfg(**kw) -> CSIConfig:
    return CSIConfig(
        upstream={"x": DatasetSpec(path="x")}, downstream={"y": DatasetSpec(path="y")}, reservoir=400, **kw
    )


@pytest.mark.parametrize("measure", ["csi", "csi_element", "mmd"])
def test_selection_recovers_a_known_mixture(measure):
    rng = np.random.default_rng(2)
    d = 3
    a = _gaussian("a", rng, 300, np.zeros(d), 1.0)
    b = _gaussian("b", rng, 300, np.full(d, 4.0), 1.0, atoms=2)
    c = _gaussian("c", rng, 300, np.array([-4.0, 4.0, 0.0]), 1.0)
    # the downstream is 30 % a and 70 % b by structures, drawn afresh from the same distributions
    structs = [(np.full(4, 6), rng.normal(0.0, 1.0, (4, d))) for _ in range(270)]
    structs += [(np.full(2, 6), rng.normal(4.0, 1.0, (2, d))) for _ in range(630)]
    down = _dataset("down", structs, reservoir=400)
    sel = select_weights([a, b, c], down, _cfg(), measure)
    assert sel.value <= min(sel.singles.values()) + 1e-12 and sel.value <= sel.uniform + 1e-12
    np.testing.assert_allclose(sel.shares, [0.3, 0.7, 0.0], atol=0.08)
    assert sel.shares.sum() == pytest.approx(1.0)


def test_csi_selection_value_is_the_mixture_csi():
    rng = np.random.default_rng(3)
    a = _gaussian("a", rng, 100, np.zeros(2), 1.0)
    b = _gaussian("b", rng, 100, np.ones(2), 2.0)
    down = _gaussian("down", rng, 100, np.full(2, 0.4), 1.2)
    sel = select_weights([a, b], down, _cfg(), "csi")
    total = MixtureStats([a, b], list(sel.atom_weights)).total()
    t = down.grouped.total()
    expected = frechet_distance(total.mean, total.covariance(), t.mean, t.covariance())
    assert sel.value == pytest.approx(expected, rel=1e-10)
    own = a.grouped.total()
    assert sel.singles["a"] == pytest.approx(frechet_distance(own.mean, own.covariance(), t.mean, t.covariance()))


def test_structure_shares_undo_atoms_per_structure():
    # 4 and 2 atoms per structure: equal atom weights need twice as many structures of the second set
    np.testing.assert_allclose(structure_shares(np.array([0.5, 0.5]), np.array([4.0, 2.0])), [1 / 3, 2 / 3])


def test_selection_refuses_knn_measures_and_one_upstream():
    rng = np.random.default_rng(4)
    a = _gaussian("a", rng, 20, np.zeros(2), 1.0)
    b = _gaussian("b", rng, 20, np.ones(2), 1.0)
    with pytest.raises(ConfigError, match="coverage"):
        select_weights([a, b], a, _cfg(), "coverage")
    with pytest.raises(ConfigError, match="at least two"):
        select_weights([a], b, _cfg(), "csi")
