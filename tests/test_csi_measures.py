"""Alignment measures: A-Res reservoir against its sampling theory, distances against scipy, k-NN measures
against brute-force loops and hand-built cases, MMD against loops and 1-D Gaussian closed forms, Vendi score
limits, element coverage and per-element Frechet by hand."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import scipy.spatial.distance
import scipy.stats

from atomsift.csi.frechet import frechet_distance
from atomsift.csi.measures import (
    MEASURE_INFO,
    WeightedReservoir,
    coverage,
    element_coverage,
    kernel_mean,
    knn_radii,
    manifold_measures,
    median_bandwidth,
    mixture_mmd2,
    mmd2,
    pairwise_distances,
    per_element_frechet,
    precision,
    recall,
    vendi_score,
)
from atomsift.errors import ConfigError, DataError

# ---------------------------------------------------------------- reservoir


def kept_labels(res: WeightedReservoir) -> list[int]:
    return sorted(res.elements.tolist())


def test_reservoir_size_one_keeps_row_with_probability_proportional_to_weight():
    weights = [1.0, 2.0, 3.0, 4.0]
    reps = 4000
    counts = np.zeros(4)
    for seed in range(reps):
        res = WeightedReservoir(1, seed=seed)
        for i, w in enumerate(weights):
            res.update(np.full((1, 2), float(i)), np.array([i]), weight=w)
        counts[res.elements[0]] += 1
    expected = reps * np.array(weights) / sum(weights)
    assert scipy.stats.chisquare(counts, expected).pvalue > 1e-3


def successive_sampling_inclusion(weights: list[float], size: int) -> np.ndarray:
    """P(i in sample) for drawing `size` items one by one without replacement, P ~ weight of the remaining."""
    p = np.zeros(len(weights))
    for order in itertools.permutations(range(len(weights)), size):
        prob, left = 1.0, sum(weights)
        for i in order:
            prob *= weights[i] / left
            left -= weights[i]
        p[list(order)] += prob
    return p


def test_reservoir_size_two_is_weighted_sampling_without_replacement():
    reps = 4000
    hits = np.zeros(4)
    for seed in range(reps):
        res = WeightedReservoir(2, seed=seed)
        res.update(np.zeros((2, 1)), np.array([0, 1]), weight=1.0)  # rows 0 and 1 in one update, weight 1 each
        res.update(np.zeros((1, 1)), np.array([2]), weight=3.0)
        res.update(np.zeros((1, 1)), np.array([3]), weight=4.0)
        res_rows = res.elements
        assert res_rows.size == 2 and len(set(res_rows.tolist())) == 2  # no duplicates
        hits[res_rows] += 1
    p = successive_sampling_inclusion([1.0, 1.0, 3.0, 4.0], 2)
    se = np.sqrt(p * (1 - p) / reps)
    assert np.all(np.abs(hits / reps - p) < 4.5 * se), (hits / reps, p)
    # inclusion with replacement would differ clearly: P(row 3 chosen at least once in 2 draws) = 1 - (5/9)^2
    assert abs(hits[3] / reps - (1 - (5 / 9) ** 2)) > 0.05


def test_reservoir_unweighted_is_uniform():
    reps, n, size = 3000, 10, 3
    hits = np.zeros(n)
    for seed in range(reps):
        res = WeightedReservoir(size, seed=seed)
        for chunk in (range(0, 3), range(3, 6), range(6, 10)):
            idx = np.array(list(chunk))
            res.update(idx[:, None].astype(float), idx)
        hits[res.elements] += 1
    p = size / n
    assert np.all(np.abs(hits / reps - p) < 4.5 * np.sqrt(p * (1 - p) / reps)), hits / reps


class CyclicUniforms:
    """Stand-in for the reservoir's generator: uniforms from a short cycle, so that many keys tie."""

    def __init__(self, values: list[float]) -> None:
        self.values, self.i = values, 0

    def random(self, m: int) -> np.ndarray:
        out = [self.values[(self.i + j) % len(self.values)] for j in range(m)]
        self.i += m
        return np.array(out)


@pytest.mark.parametrize("ties", [False, True])
def test_reservoir_keeps_the_largest_keys_of_its_random_stream(ties):
    """Brute force: regenerate the documented key stream log(1 - U)/w and keep the `size` largest keys
    (ties: the earlier offer)."""
    rng = np.random.default_rng(5)
    size, seed = 25, 11
    res = WeightedReservoir(size, seed=seed)
    stream = np.random.default_rng(seed)
    if ties:
        res._rng = CyclicUniforms([0.25, 0.5, 0.75, 0.5, 0.9])
        stream = CyclicUniforms([0.25, 0.5, 0.75, 0.5, 0.9])
    all_keys, start = [], 0
    for i in range(300):
        m = int(rng.integers(0, 12))
        w = float(rng.choice([1.0, 2.0, 7.5])) if i > 250 or not ties else 1.0  # ties: late heavy rows evict
        idx = np.arange(start, start + m)
        res.update(np.column_stack([idx, idx * 0.5]).astype(float), idx, weight=w)
        all_keys.append(np.log1p(-stream.random(m)) / w)
        start += m
    keys = np.concatenate(all_keys)
    best = np.argsort(-keys, kind="stable")[:size]
    assert res.n_seen == start and res.rows.shape == (size, 2)
    assert len(np.unique(keys[best])) < size if ties else len(np.unique(keys)) == start
    np.testing.assert_array_equal(res.elements, best)
    np.testing.assert_array_equal(res.rows[:, 0], best.astype(float))
    np.testing.assert_array_equal(res.keys, keys[best])


def test_reservoir_deterministic_and_independent_of_update_split():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 4))
    z = rng.integers(1, 10, size=500)

    def fill(splits: list[int], seed: int = 3) -> WeightedReservoir:
        res = WeightedReservoir(40, seed=seed)
        for a, b in itertools.pairwise([0, *splits, 500]):
            res.update(x[a:b], z[a:b], weight=2.0)
        return res

    one = fill([])
    for other in (fill([1, 2, 3, 100, 101, 499]), fill(list(range(7, 500, 7))), fill([])):
        np.testing.assert_array_equal(one.rows, other.rows)
        np.testing.assert_array_equal(one.elements, other.elements)
    assert not np.array_equal(one.rows, fill([], seed=4).rows)
    assert one.rows.dtype == np.float64 and one.elements.dtype == np.int64 and one.dim == 4
    assert np.all(np.diff(one.keys) <= 0)
    assert WeightedReservoir.memory_bytes(2000, 256) >= 2000 * 256 * 8


def test_reservoir_bounded_and_small_streams():
    res = WeightedReservoir(10, seed=0)
    assert res.dim is None and res.rows.shape == (0, 0) and res.elements.shape == (0,)
    res.update(np.ones((4, 3)), np.array([1, 1, 6, 8]))
    assert res.rows.shape == (4, 3) and res.n_seen == 4
    for _ in range(50):
        res.update(np.zeros((7, 3)), np.full(7, 6), weight=3.0)
    res.update(np.zeros((0, 3)), [])
    assert res.rows.shape == (10, 3) and res.n_seen == 354


def test_reservoir_round_trip_and_resume(tmp_path):
    rng = np.random.default_rng(1)
    res = WeightedReservoir(30, seed=9)
    for _ in range(20):
        res.update(rng.standard_normal((5, 6)), rng.integers(1, 20, 5), weight=float(rng.integers(1, 4)))
    path = tmp_path / "res.npz"
    np.savez(path, **res.to_arrays("down/"), other=np.zeros(2))
    with np.load(path, allow_pickle=False) as f:
        back = WeightedReservoir.from_arrays(dict(f), "down/", file=path)
    np.testing.assert_array_equal(back.rows, res.rows)
    np.testing.assert_array_equal(back.elements, res.elements)
    assert (back.n_seen, back.size, back.dim) == (res.n_seen, res.size, res.dim)
    more = rng.standard_normal((40, 6))
    for r in (res, back):  # the random state travels with it: continuing gives the same reservoir
        r.update(more, np.arange(40), weight=2.0)
    np.testing.assert_array_equal(back.rows, res.rows)
    empty = WeightedReservoir.from_arrays(WeightedReservoir(5).to_arrays())
    assert empty.dim is None and empty.n_seen == 0


@pytest.mark.parametrize(
    "corrupt",
    [
        lambda a: a.pop("rows"),
        lambda a: a.__setitem__("rows", a["rows"][:-1]),
        lambda a: a.__setitem__("elements", a["elements"].astype(float)),
        lambda a: a.__setitem__("keys", -a["keys"] + 1.0),
        lambda a: a.__setitem__("meta", np.array([3, 40, 2])),
        lambda a: a.__setitem__("seq", np.zeros_like(a["seq"])),
        lambda a: a.__setitem__("rows", np.full_like(a["rows"], np.nan)),
    ],
)
def test_reservoir_from_inconsistent_arrays_is_a_data_error(corrupt):
    res = WeightedReservoir(8, seed=0)
    res.update(np.random.default_rng(0).standard_normal((20, 2)), np.ones(20, dtype=int))
    arrays = res.to_arrays()
    corrupt(arrays)
    with pytest.raises(DataError, match="delete the cache file") as err:
        WeightedReservoir.from_arrays(arrays, file="cache.npz")
    assert "cache.npz" in str(err.value)


def test_reservoir_rejects_bad_updates():
    res = WeightedReservoir(5)
    res.update(np.zeros((2, 3)), np.array([1, 2]))
    with pytest.raises(ConfigError, match="width"):
        res.update(np.zeros((2, 4)), np.array([1, 2]))
    with pytest.raises(ConfigError, match="weight"):
        res.update(np.zeros((2, 3)), np.array([1, 2]), weight=0.0)
    with pytest.raises(ConfigError, match="elements"):
        res.update(np.zeros((2, 3)), np.array([1, 2, 3]))
    with pytest.raises(ConfigError, match="NaN"):
        res.update(np.full((1, 3), np.nan), np.array([1]))
    with pytest.raises(ConfigError, match="size"):
        WeightedReservoir(0)


# ---------------------------------------------------------------- distances and k-NN measures


@pytest.mark.parametrize(("n", "m", "d", "offset"), [(5, 7, 8, 0.0), (1100, 20, 3, 0.0), (40, 30, 64, 100.0)])
def test_pairwise_distances_match_cdist(n, m, d, offset):
    rng = np.random.default_rng(n)
    a = rng.standard_normal((n, d)) + offset
    b = rng.standard_normal((m, d)) + offset
    np.testing.assert_allclose(pairwise_distances(a, b), scipy.spatial.distance.cdist(a, b), rtol=1e-8)


def test_identical_rows_are_exactly_zero_apart_and_bad_inputs_refused():
    a = np.random.default_rng(0).standard_normal((6, 33)) * 10 + 3
    assert np.all(np.diag(pairwise_distances(a, a)) == 0.0)
    with pytest.raises(ConfigError, match="width"):
        pairwise_distances(a, a[:, :5])
    with pytest.raises(ConfigError, match=r"\(n, d\)"):
        pairwise_distances(a[0], a)
    with pytest.raises(ConfigError, match="NaN"):
        pairwise_distances(a, np.full((2, 33), np.inf))


def brute_radii(x: np.ndarray, k: int) -> np.ndarray:
    out = []
    for i in range(len(x)):
        dist = sorted(float(np.linalg.norm(x[i] - x[j])) for j in range(len(x)) if j != i)
        out.append(dist[k - 1])
    return np.array(out)


def brute_measures(down: np.ndarray, up: np.ndarray, k: int) -> dict[str, float]:
    rd, ru = brute_radii(down, k), brute_radii(up, k)

    def inside(p, centres, radii):
        return any(np.linalg.norm(p - c) <= r for c, r in zip(centres, radii))

    prec = np.mean([inside(u, down, rd) for u in up])
    rec = np.mean([inside(x, up, ru) for x in down])
    cov = np.mean([any(np.linalg.norm(u - down[i]) <= rd[i] for u in up) for i in range(len(down))])
    return {"precision": prec, "recall": rec, "coverage": cov}


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_knn_measures_match_brute_force(seed):
    rng = np.random.default_rng(seed)
    down = rng.standard_normal((40, 3))
    up = rng.standard_normal((30, 3)) * 0.8 + 0.8
    up[:3] = down[:3]  # shared rows
    k = 3
    np.testing.assert_allclose(knn_radii(down, k), brute_radii(down, k), rtol=1e-10)
    expected = brute_measures(down, up, k)
    assert all(0.0 < v < 1.0 for v in expected.values()), expected
    assert manifold_measures(down, up, k) == pytest.approx(expected, abs=0)
    assert precision(down, up, k) == expected["precision"]
    assert recall(down, up, k) == expected["recall"]
    assert coverage(down, up, k) == expected["coverage"]


def test_knn_measures_analytic_cases():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((50, 5))
    assert manifold_measures(x, x.copy(), 5) == {"precision": 1.0, "recall": 1.0, "coverage": 1.0}
    assert manifold_measures(x, x + 100.0, 5) == {"precision": 0.0, "recall": 0.0, "coverage": 0.0}
    dup = np.repeat(x[:10], 6, axis=0)  # each row six times: all radii 0, duplicates still count as inside
    assert manifold_measures(dup, dup[::-1].copy(), 5) == {"precision": 1.0, "recall": 1.0, "coverage": 1.0}


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_balls_are_closed_for_copies_of_their_kth_neighbour(seed):
    """A structure in both sets: its upstream copy sits exactly on the ball boundaries it defines downstream."""
    rng = np.random.default_rng(seed)
    down = rng.standard_normal((200, 50)) * rng.uniform(0.1, 10, 50) + 7.0
    k = 5
    dist = scipy.spatial.distance.cdist(down, down)
    np.fill_diagonal(dist, np.inf)
    kth = np.argsort(dist, axis=1, kind="stable")[:, k - 1]  # each row's k-th neighbour
    up = down[np.unique(kth)]
    assert coverage(down, up, k) == 1.0
    assert recall(up, down, k) == 1.0  # the same balls, seen from the other side


def test_knn_measures_one_dimensional_by_hand():
    # k = 1. Downstream balls: 0:[-1,1] 1:[0,2] 3:[1,5] 10:[3,17] 40:[39,41] 41:[40,42]
    # upstream balls: -3:[-6.5,0.5] 0.5:[-3,4] 4:[0.5,7.5] 12:[11,13] 13:[12,14] 25:[13,37]
    down = np.array([0.0, 1.0, 3.0, 10.0, 40.0, 41.0])[:, None]
    up = np.array([-3.0, 0.5, 4.0, 12.0, 13.0, 25.0])[:, None]
    np.testing.assert_allclose(knn_radii(down, 1), [1, 1, 2, 7, 1, 1])
    got = manifold_measures(down, up, 1)
    assert got["precision"] == pytest.approx(4 / 6)  # 0.5, 4, 12, 13 inside; -3, 25 not
    assert got["recall"] == pytest.approx(3 / 6)  # 0, 1, 3 inside; 10, 40, 41 not
    assert got["coverage"] == pytest.approx(4 / 6)  # the balls at 40 and 41 are empty
    # the ball is closed: a point at exactly the radius is inside (dyadic values, exact arithmetic)
    assert precision(np.array([[0.0], [2.0]]), np.array([[4.0]]), 1) == 1.0
    assert precision(np.array([[0.0], [2.0]]), np.array([[4.0 + 2**-20]]), 1) == 0.0
    # ... and closed up to the round-off of the distance formula (documented): 2e-15 beyond still counts
    assert precision(np.array([[0.0], [2.0]]), np.array([[4.0 + 2**-49]]), 1) == 1.0


def test_knn_needs_more_rows_than_k():
    with pytest.raises(ConfigError, match="more than 5 rows"):
        knn_radii(np.zeros((5, 2)), 5)
    with pytest.raises(ConfigError, match="up"):
        recall(np.random.default_rng(0).standard_normal((20, 2)), np.zeros((3, 2)), 5)
    with pytest.raises(ConfigError, match="k must"):
        precision(np.zeros((20, 2)), np.zeros((20, 2)), 0)


# ---------------------------------------------------------------- kernels


def rbf(x, y, h):
    return float(np.exp(-np.sum((x - y) ** 2) / (2 * h * h)))


def test_kernel_mean_and_mmd_match_loops():
    rng = np.random.default_rng(4)
    a, b, h = rng.standard_normal((7, 3)), rng.standard_normal((5, 3)) + 0.5, 1.3
    kab = np.mean([[rbf(x, y, h) for y in b] for x in a])
    kaa = np.mean([[rbf(x, y, h) for y in a] for x in a])
    kbb = np.mean([[rbf(x, y, h) for y in b] for x in b])
    assert kernel_mean(a, b, h) == pytest.approx(kab, rel=1e-12)
    assert mmd2(a, b, h) == pytest.approx(kaa + kbb - 2 * kab, rel=1e-10)
    assert mmd2(a, a.copy(), h) == 0.0
    with pytest.raises(ConfigError, match="bandwidth"):
        kernel_mean(a, b, 0.0)


def test_mmd_of_one_dimensional_gaussians_matches_closed_form():
    """E k(X, Y) = h / sqrt(h^2 + s1^2 + s2^2) exp(-(m1 - m2)^2 / (2 (h^2 + s1^2 + s2^2)))."""

    def ek(m1, s1, m2, s2, h):
        v = h * h + s1 * s1 + s2 * s2
        return h / np.sqrt(v) * np.exp(-((m1 - m2) ** 2) / (2 * v))

    n, h, (m1, s1), (m2, s2) = 4000, 1.0, (0.0, 1.0), (1.0, 1.5)
    rng = np.random.default_rng(7)
    x = rng.normal(m1, s1, (n, 1))
    y = rng.normal(m2, s2, (n, 1))
    # the V-statistic includes the diagonal (k = 1): E = 1/n + (1 - 1/n) E k(X, X') per within-set term
    kxx, kyy, kxy = ek(m1, s1, m1, s1, h), ek(m2, s2, m2, s2, h), ek(m1, s1, m2, s2, h)
    expected = (1 / n + (1 - 1 / n) * kxx) + (1 / n + (1 - 1 / n) * kyy) - 2 * kxy  # about 0.142
    # tolerances: about 5 standard deviations, measured over 50 other seeds (sd 0.0063 for mmd2, 0.0040 for k(x,y))
    assert mmd2(x, y, h) == pytest.approx(expected, abs=0.03)
    assert kernel_mean(x, y, h) == pytest.approx(kxy, abs=0.02)
    assert mmd2(x, rng.normal(m1, s1, (n, 1)), h) < 0.01


def test_mixture_mmd_equals_mmd_of_pooled_sample():
    rng = np.random.default_rng(8)
    x1, x2 = rng.standard_normal((10, 4)), rng.standard_normal((20, 4)) + 1.0
    y, h = rng.standard_normal((15, 4)) * 0.8 + 0.3, 1.7
    sets = [x1, x2]
    gram = np.array([[kernel_mean(p, q, h) for q in sets] for p in sets])
    cross = np.array([kernel_mean(p, y, h) for p in sets])
    gdd = kernel_mean(y, y, h)
    # weights (1/3, 2/3): x1 once with x2 once (10 : 20 rows), or x1 twice with x2 twice; (1/2, 1/2): x1 twice
    assert mixture_mmd2(gram, cross, gdd, [1 / 3, 2 / 3]) == pytest.approx(mmd2(np.vstack([x1, x2]), y, h), rel=1e-10)
    assert mixture_mmd2(gram, cross, gdd, [0.5, 0.5]) == pytest.approx(mmd2(np.vstack([x1, x1, x2]), y, h), rel=1e-10)
    assert mixture_mmd2(gram, cross, gdd, [1.0, 0.0]) == pytest.approx(mmd2(x1, y, h), rel=1e-10)
    for bad in ([0.5, 0.6], [1.5, -0.5], [1.0]):
        with pytest.raises(ConfigError, match="mixture_mmd2"):
            mixture_mmd2(gram, cross, gdd, bad)


def test_median_bandwidth():
    x = np.random.default_rng(9).standard_normal((31, 4))
    assert median_bandwidth(x) == pytest.approx(float(np.median(scipy.spatial.distance.pdist(x))), rel=1e-10)
    assert median_bandwidth(np.array([[0.0], [3.0]])) == pytest.approx(3.0)
    with pytest.raises(ConfigError, match="median distance"):
        median_bandwidth(np.vstack([np.zeros((5, 2)), np.ones((1, 2))]))
    with pytest.raises(ConfigError, match="x"):
        median_bandwidth(np.zeros((1, 2)))


def test_vendi_score_limits_and_eigenvalue_route():
    rng = np.random.default_rng(10)
    assert vendi_score(np.ones((12, 3)), 1.0) == pytest.approx(1.0, abs=1e-9)
    far = np.arange(9)[:, None] * 100.0 * np.ones((1, 2))
    assert vendi_score(far, 1.0) == pytest.approx(9.0, rel=1e-9)
    clusters = np.vstack([rng.normal(0, 1e-4, (10, 3)), rng.normal(50, 1e-4, (10, 3))])
    assert vendi_score(clusters, 1.0) == pytest.approx(2.0, abs=1e-3)
    x, h = rng.standard_normal((25, 3)), 0.9
    kmat = np.array([[rbf(p, q, h) for q in x] for p in x]) / len(x)
    lam = np.clip(np.linalg.eigvalsh(kmat), 0, None)
    lam = lam[lam > 0]
    assert vendi_score(x, h) == pytest.approx(np.exp(-np.sum(lam * np.log(lam))), rel=1e-9)


# ---------------------------------------------------------------- elements


def test_element_coverage_by_hand():
    share, missing = element_coverage({1: 60, 6: 30, 8: 8, 9: 2}, {1: 500, 6: 10, 9: 0, 7: 4})
    assert share == pytest.approx(0.10)
    assert missing == [(8, pytest.approx(0.08)), (9, pytest.approx(0.02))]
    assert element_coverage({1: 3}, {1: 1}) == (0.0, [])
    with pytest.raises(ConfigError, match="no atoms"):
        element_coverage({}, {1: 1})


def gaussian(rng, d, shift=0.0):
    a = rng.standard_normal((d, d))
    return rng.standard_normal(d) + shift, a @ a.T / d + 0.1 * np.eye(d)


def test_per_element_frechet_weights_and_breakdown():
    rng = np.random.default_rng(11)
    h_d, h_u, c_d, c_u, o_d = (gaussian(rng, 4, s) for s in (0.0, 0.3, 1.0, 2.0, 0.0))
    f_h = frechet_distance(*h_d, *h_u)
    f_c = frechet_distance(*c_d, *c_u)
    value, rows = per_element_frechet({1: (*h_d, 50)}, {1: (*h_u, 9)})
    assert value == pytest.approx(f_h, rel=1e-12) and rows[0]["frechet"] == pytest.approx(f_h, rel=1e-12)
    down = {1: (*h_d, 30), 6: (*c_d, 10), 8: (*o_d, 10)}
    value, rows = per_element_frechet(down, {1: (*h_u, 100), 6: (*c_u, 5)})
    assert value == pytest.approx((0.6 * f_h + 0.2 * f_c) / 0.8, rel=1e-12)  # renormalised over H and C
    assert [r["element"] for r in rows] == [1, 6, 8]
    assert rows[2] == {
        "element": 8, "symbol": "O", "share": 0.2, "n_down": 10, "n_up": 0, "frechet": None, "note": "absent upstream"
    }  # fmt: skip
    assert rows[1]["symbol"] == "C" and rows[1]["note"] == "" and rows[1]["n_up"] == 5
    value, rows = per_element_frechet({1: (*h_d, 30)}, {1: (*h_u, 1)})
    assert value is None and rows[0]["note"] == "too few rows" and rows[0]["frechet"] is None
    assert per_element_frechet({1: (*h_d, 30)}, {6: (*c_u, 30)})[0] is None


def test_measure_info():
    assert set(MEASURE_INFO) == {
        "csi",
        "csi_element",
        "uncovered",
        "precision",
        "recall",
        "coverage",
        "mmd",
        "diversity",
    }
    higher = {k for k, v in MEASURE_INFO.items() if v.better == "higher"}
    assert higher == {"precision", "recall", "coverage", "diversity"}
    assert all(v.name == k and v.label and v.definition.endswith(".") for k, v in MEASURE_INFO.items())
