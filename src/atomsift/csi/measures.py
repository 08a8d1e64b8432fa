"""Alignment measures between a downstream (task) and an upstream (pretraining) set of per-atom features.

Computed in float64 from bounded, seeded samples of feature rows (``WeightedReservoir``) or from per-element
Gaussian statistics. Distances are Euclidean, in feature units. The downstream set is the reference ("real")
set, the upstream one the candidate. Direction for alignment in brackets:

- precision (higher is better): fraction of upstream rows inside at least one downstream k-NN ball
  (Kynkaanniemi et al. 2019): how much of the upstream lies on the downstream feature manifold.
- recall (higher is better): fraction of downstream rows inside at least one upstream k-NN ball.
- coverage (higher is better): fraction of downstream rows whose own k-NN ball holds an upstream row
  (Naeem et al. 2020); less inflated by upstream outliers than recall.
- mmd2 (lower is better): biased (V-statistic) squared maximum mean discrepancy with a Gaussian RBF kernel;
  0 for identical samples, dimensionless. ``mixture_mmd2`` gives it for a weighted mixture of upstream sets.
- vendi_score (higher = more diverse; describes one set, not an alignment): exp of the entropy of the
  eigenvalues of K/n (Friedman & Dieng 2022); from 1 (all rows identical) to n (all far apart).
- element_coverage (lower uncovered share is better): share of downstream atoms whose element never
  occurs upstream.
- per_element_frechet (lower is better): mean over downstream elements, weighted by their atom shares, of
  the Frechet distance (CSI) between the element's downstream and upstream feature Gaussians.

Pairwise squared distances use |a|^2 + |b|^2 - 2 a.b after subtracting a common mean (blocked, so memory
stays bounded); values below that formula's round-off floor (16 d eps (|a|^2 + |b|^2)) are set to exactly 0,
so identical rows are 0 apart. k-NN balls are closed up to twice that bound, so a copy of a ball's k-th
neighbour (a structure present in both sets) is inside it whatever the rounding.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.linalg

from atomsift.csi.frechet import FrechetReference
from atomsift.errors import ConfigError, DataError

__all__ = [
    "MEASURE_INFO",
    "MeasureInfo",
    "WeightedReservoir",
    "coverage",
    "element_coverage",
    "kernel_mean",
    "knn_radii",
    "manifold_measures",
    "median_bandwidth",
    "mixture_mmd2",
    "mmd2",
    "pairwise_distances",
    "per_element_frechet",
    "precision",
    "recall",
    "vendi_score",
]


@dataclass(frozen=True)
class MeasureInfo:
    """How to read one measure: its key, which direction is better, a column heading and a definition."""

    name: str
    better: Literal["lower", "higher"]
    label: str
    definition: str


_INFO = [
    ("csi", "lower", "CSI", "Frechet distance between Gaussians fitted to the two sets' features."),
    ("csi_element", "lower", "CSI/elem", "Downstream-share-weighted mean of the per-element Frechet distances."),
    ("uncovered", "lower", "uncovered", "Share of downstream atoms whose element is absent upstream."),
    ("precision", "higher", "precision", "Fraction of upstream rows inside a downstream k-NN ball."),
    ("recall", "higher", "recall", "Fraction of downstream rows inside an upstream k-NN ball."),
    ("coverage", "higher", "coverage", "Fraction of downstream rows whose own k-NN ball holds an upstream row."),
    ("mmd", "lower", "MMD^2", "Squared maximum mean discrepancy under a Gaussian RBF kernel."),
    ("diversity", "higher", "Vendi", "Effective number of distinct feature rows (Vendi score) of one set."),
]
MEASURE_INFO: dict[str, MeasureInfo] = {name: MeasureInfo(name, *rest) for name, *rest in _INFO}

_FIX_CACHE = "delete the cache file; it will be recomputed"
_FIX_ROWS = "pass one feature vector per row (a larger reservoir if too few rows)"
_FIX_WIDTH = "compare features from the same extractor and layer"
_BLOCK_ROWS = 1024
_BLOCK_ELEMENTS = 1 << 22  # at most ~32 MiB per float64 block temporary
_MASK64 = (1 << 64) - 1


def _rows(x: object, name: str, min_rows: int = 1) -> np.ndarray:
    """Validate and convert a feature matrix to float64 (n, d) with n >= min_rows, d >= 1, all finite."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 2 or a.shape[1] < 1 or a.shape[0] < min_rows:
        raise ConfigError(f"{name}: need >= {min_rows} feature rows (n, d), got shape {a.shape}", fix=_FIX_ROWS)
    if not np.isfinite(a).all():
        raise ConfigError(f"{name}: the feature rows contain NaN or inf", fix="check the feature extractor output")
    return a


def _pair(a: object, b: object, na: str = "a", nb: str = "b") -> tuple[np.ndarray, np.ndarray]:
    """Validate two feature matrices of the same width."""
    a_, b_ = _rows(a, na), _rows(b, nb)
    if a_.shape[1] != b_.shape[1]:
        raise ConfigError(f"{na} has feature width {a_.shape[1]} but {nb} has {b_.shape[1]}", fix=_FIX_WIDTH)
    return a_, b_


def _check_k(k: int) -> int:
    if int(k) != k or int(k) < 1:
        raise ConfigError(f"k must be a positive integer, got {k!r}", fix="use k = 5 (the usual choice)")
    return int(k)


def _check_h(h: float) -> float:
    if not (np.isfinite(h) and h > 0):
        raise ConfigError(f"the kernel bandwidth h must be finite and > 0, got {h!r}", fix="use median_bandwidth")
    return float(h)


def _sq_blocks(a: np.ndarray, b: np.ndarray, shift: np.ndarray | None = None) -> Iterator[tuple]:
    """Squared distances from row blocks of a (n, d) to all of b (m, d), both minus ``shift`` (default: the
    mean of the two means): yields (start, stop, d2 (stop - start, m), err), err the round-off bound of d2."""
    shift = 0.5 * (a.mean(axis=0) + b.mean(axis=0)) if shift is None else shift
    a = a - shift
    b = b - shift
    na = np.einsum("ij,ij->i", a, a)
    nb = np.einsum("ij,ij->i", b, b)
    tol = 16.0 * a.shape[1] * np.finfo(np.float64).eps
    step = max(1, min(_BLOCK_ROWS, _BLOCK_ELEMENTS // max(b.shape[0], 1)))
    for start in range(0, a.shape[0], step):
        stop = min(start + step, a.shape[0])
        err = na[start:stop, None] + nb[None, :]
        err *= tol
        d2 = a[start:stop] @ b.T
        d2 *= -2.0
        d2 += na[start:stop, None]
        d2 += nb[None, :]
        np.copyto(d2, 0.0, where=d2 <= err)
        yield start, stop, d2, err


def pairwise_distances(a: object, b: object) -> np.ndarray:
    """Euclidean distances (n, m) in feature units between the rows of a (n, d) and b (m, d), float64."""
    a_, b_ = _pair(a, b)
    out = np.empty((a_.shape[0], b_.shape[0]))
    for start, stop, d2, _ in _sq_blocks(a_, b_):
        out[start:stop] = np.sqrt(d2)
    return out


def _knn_sq_radii(x: np.ndarray, k: int, name: str, shift: np.ndarray | None = None) -> np.ndarray:
    """Squared distance (n,) of each row of x to its k-th nearest other row."""
    if x.shape[0] <= k:
        raise ConfigError(f"{name}: k-NN radii with k = {k} need more than {k} rows, got {x.shape[0]}", fix=_FIX_ROWS)
    out = np.empty(x.shape[0])
    for start, stop, d2, _ in _sq_blocks(x, x, shift):
        rows = np.arange(stop - start)
        d2[rows, rows + start] = np.inf  # a row is not its own neighbour (a duplicate of it is)
        out[start:stop] = np.partition(d2, k - 1, axis=1)[:, k - 1]
    return out


def knn_radii(x: object, k: int = 5) -> np.ndarray:
    """Distance (n,) in feature units of each row of x (n, d) to its k-th nearest neighbour, itself excluded."""
    return np.sqrt(_knn_sq_radii(_rows(x, "x"), _check_k(k), "x"))


def manifold_measures(down: object, up: object, k: int = 5) -> dict[str, float]:
    """Precision, recall and coverage from one pass over the cross distances: fractions in [0, 1].

    down (n, d) is the reference set, up (m, d) the candidate; n > k and m > k.
    """
    return _manifold(down, up, k, ("precision", "recall", "coverage"))


def _manifold(down: object, up: object, k: int, want: tuple[str, ...]) -> dict[str, float]:
    k = _check_k(k)
    d_, u_ = _pair(down, up, "down", "up")
    shift = 0.5 * (d_.mean(axis=0) + u_.mean(axis=0))  # one shift: a pair's d2 and its round-off bound agree
    r_down = _knn_sq_radii(d_, k, "down", shift) if {"precision", "coverage"} & set(want) else None
    r_up = _knn_sq_radii(u_, k, "up", shift) if "recall" in want else None
    up_in = np.zeros(u_.shape[0], dtype=bool)  # upstream row inside some downstream ball
    down_in = np.zeros(d_.shape[0], dtype=bool)  # downstream row inside some upstream ball
    down_cov = np.zeros(d_.shape[0], dtype=bool)  # downstream row's own ball holds some upstream row
    for start, stop, d2, err in _sq_blocks(d_, u_, shift):
        d2 -= 2.0 * err  # closed balls, up to round-off: a copy of a ball's k-th neighbour is inside it
        if r_down is not None:
            inside = d2 <= r_down[start:stop, None]
            up_in |= inside.any(axis=0)
            down_cov[start:stop] = inside.any(axis=1)
        if r_up is not None:
            down_in[start:stop] = (d2 <= r_up[None, :]).any(axis=1)
    result = {"precision": float(up_in.mean()), "recall": float(down_in.mean()), "coverage": float(down_cov.mean())}
    return {name: result[name] for name in want}


def precision(down: object, up: object, k: int = 5) -> float:
    """Fraction of upstream rows (m, d) within at least one downstream ball B(x_j, r_k(x_j)) (closed)."""
    return _manifold(down, up, k, ("precision",))["precision"]


def recall(down: object, up: object, k: int = 5) -> float:
    """Fraction of downstream rows (n, d) within at least one upstream ball B(y_j, r_k(y_j)) (closed)."""
    return _manifold(down, up, k, ("recall",))["recall"]


def coverage(down: object, up: object, k: int = 5) -> float:
    """Fraction of downstream rows (n, d) whose own ball B(x_i, r_k(x_i)) contains at least one upstream row."""
    return _manifold(down, up, k, ("coverage",))["coverage"]


def median_bandwidth(x: object) -> float:
    """Median heuristic: the median distance (feature units) over the pairs of distinct rows of x (n >= 2, d)."""
    a = _rows(x, "x", min_rows=2)
    n = a.shape[0]
    parts = [np.sqrt(d2[np.arange(i, j)[:, None] < np.arange(n)[None, :]]) for i, j, d2, _ in _sq_blocks(a, a)]
    h = float(np.median(np.concatenate(parts)))
    if h <= 0.0:
        raise ConfigError("x: the median distance between rows is 0 (most row pairs are equal)", fix=_FIX_ROWS)
    return h


def kernel_mean(a: object, b: object, h: float) -> float:
    """Mean of exp(-|a_i - b_j|^2 / (2 h^2)) over all pairs: a (n, d), b (m, d), h in feature units; in (0, 1]."""
    a_, b_ = _pair(a, b)
    scale = -0.5 / _check_h(h) ** 2
    total = 0.0
    for _, _, d2, _ in _sq_blocks(a_, b_):
        d2 *= scale
        total += float(np.exp(d2, out=d2).sum())
    return total / (a_.shape[0] * b_.shape[0])


def mmd2(a: object, b: object, h: float) -> float:
    """Biased (V-statistic) MMD^2 = mean k(a,a) + mean k(b,b) - 2 mean k(a,b), RBF kernel of bandwidth h.

    a (n, d), b (m, d); dimensionless. The V-statistic is a squared RKHS norm, so >= 0: the clip at 0 only
    removes round-off. Its expectation exceeds the population MMD^2 by about (1 - E k(a,a'))/n + (...)/m.
    """
    a_, b_ = _pair(a, b)
    return max(kernel_mean(a_, a_, h) + kernel_mean(b_, b_, h) - 2.0 * kernel_mean(a_, b_, h), 0.0)


def mixture_mmd2(gram: object, cross: object, gdd: float, w: object) -> float:
    """MMD^2 between the mixture sum_i w_i P_i and Q: w^T G w - 2 w^T g + gdd, clipped at 0 (round-off only).

    gram: G (k, k), G[i, j] = kernel_mean(X_i, X_j); cross: g (k,), g[i] = kernel_mean(X_i, Y);
    gdd: kernel_mean(Y, Y); w: (k,) weights >= 0 summing to 1.
    """
    g_, c_, w_ = (np.asarray(v, dtype=np.float64) for v in (gram, cross, w))
    if w_.ndim != 1 or w_.size < 1 or g_.shape != (w_.size, w_.size) or c_.shape != w_.shape:
        msg = f"mixture_mmd2: need G (k, k), g (k,), w (k,); got {g_.shape}, {c_.shape}, {w_.shape}"
        raise ConfigError(msg, fix="pass one weight and one kernel mean per upstream set")
    if not all(np.isfinite(v).all() for v in (g_, c_, w_, gdd)):
        raise ConfigError("mixture_mmd2: G, g, gdd or w hold NaN or inf", fix="recompute the kernel means")
    if (w_ < 0).any() or abs(float(w_.sum()) - 1.0) > 1e-9:
        raise ConfigError(f"mixture_mmd2: weights must be >= 0 and sum to 1, got {w_.tolist()}", fix="use w / w.sum()")
    w_ = w_ / w_.sum()
    return max(float(w_ @ g_ @ w_) - 2.0 * float(w_ @ c_) + float(gdd), 0.0)


def vendi_score(x: object, h: float) -> float:
    """Vendi score of the rows of x (n, d): exp(-sum l log l) over the eigenvalues l of K/n, K the RBF kernel
    matrix of bandwidth h (diagonal 1). An effective number of distinct rows, from 1 to n."""
    a = _rows(x, "x")
    n = a.shape[0]
    scale = -0.5 / _check_h(h) ** 2
    kmat = np.empty((n, n))
    for start, stop, d2, _ in _sq_blocks(a, a):
        kmat[start:stop] = np.exp(d2 * scale)
    kmat[np.diag_indices(n)] = 1.0
    kmat /= n
    lam = scipy.linalg.eigh(kmat, eigvals_only=True, driver="evd", overwrite_a=True, check_finite=False)
    lam = lam[lam > 0.0]  # negative round-off clipped; 0 log 0 = 0
    return float(np.exp(-np.sum(lam * np.log(lam))))


def _counts(counts: Mapping[int, int], name: str) -> dict[int, int]:
    out = {int(z): int(c) for z, c in counts.items()}
    if any(c < 0 for c in out.values()):
        raise ConfigError(f"{name}: negative atom count in {out}", fix="pass atoms per atomic number Z")
    return out


def element_coverage(down_counts: Mapping[int, int], up_counts: Mapping[int, int]) -> tuple[float, list]:
    """Share of downstream atoms whose element never occurs upstream, and those elements.

    down_counts, up_counts: atoms per atomic number Z. Returns (share in [0, 1], [(Z, share of downstream
    atoms), ...] sorted by share descending, then Z).
    """
    down, up = _counts(down_counts, "down_counts"), _counts(up_counts, "up_counts")
    total = sum(down.values())
    if total <= 0:
        raise ConfigError("down_counts: the downstream set has no atoms", fix="pass the downstream atom counts")
    missing = sorted(
        ((z, c / total) for z, c in down.items() if c > 0 and up.get(z, 0) == 0), key=lambda t: (-t[1], t[0])
    )
    return float(sum(s for _, s in missing)), missing


def per_element_frechet(
    down: Mapping[int, tuple], up: Mapping[int, tuple], min_rows: int = 2
) -> tuple[float | None, list[dict]]:
    """Downstream-share-weighted mean of per-element Frechet distances (squared feature units).

    down, up: {Z: (mu (d,), sigma (d, d), n rows of element Z)}. An element is scored when both sides
    have >= min_rows rows; the value is sum s_Z F_Z / sum s_Z over the scored elements (s_Z: the share of
    downstream atoms), None when none is scored. The breakdown has one dict per downstream element, by
    share descending: element, symbol, share, n_down, n_up, frechet (or None), note ("", "absent
    upstream" or "too few rows").
    """
    from ase.data import chemical_symbols

    n_down = {int(z): int(v[2]) for z, v in down.items()}
    n_up = {int(z): int(v[2]) for z, v in up.items()}
    total = sum(n_down.values())
    if total <= 0 or min([*n_down.values(), *n_up.values()]) < 0:
        raise ConfigError("per_element_frechet: row counts n must be >= 0 with some downstream rows", fix=_FIX_ROWS)
    breakdown: list[dict] = []
    weighted = weight = 0.0
    for z in sorted((z for z in n_down if n_down[z] > 0), key=lambda z: (-n_down[z], z)):
        share, nd, nu = n_down[z] / total, n_down[z], n_up.get(z, 0)
        sym = chemical_symbols[z] if 0 < z < len(chemical_symbols) else f"Z={z}"
        value, note = None, "absent upstream" if nu == 0 else "too few rows" if min(nd, nu) < min_rows else ""
        if not note:
            ref = FrechetReference(down[z][0], down[z][1], name=f"downstream element {sym}")
            value = ref.distance(up[z][0], up[z][1], name=f"upstream element {sym}")
            weighted, weight = weighted + share * value, weight + share
        row = {"element": z, "symbol": sym, "share": share, "n_down": nd, "n_up": nu, "frechet": value, "note": note}
        breakdown.append(row)
    return (weighted / weight if weight > 0 else None), breakdown


class WeightedReservoir:
    """Efraimidis-Spirakis A-Res weighted sampling without replacement of at most ``size`` feature rows.

    Each offered row gets the key log(u) / w (u uniform in (0, 1], w its update's weight; the log of the
    A-Res key u^(1/w)) and the rows with the ``size`` largest keys are kept. Deterministic given the seed
    and the sequence of offered rows; with equal weights also independent of how they are split into
    updates. Rows come out by key descending (ties: earlier offer first). Memory: ``memory_bytes``.

    Args:
        size: the most rows kept (>= 1).
        seed: seed of ``numpy.random.default_rng``.
    """

    def __init__(self, size: int, seed: int = 0) -> None:
        if int(size) != size or int(size) < 1:
            raise ConfigError(f"reservoir size must be a positive integer, got {size!r}", fix="use e.g. 2000")
        self.size, self.n_seen, self._count = int(size), 0, 0
        self._rng = np.random.default_rng(seed)
        self._rows: np.ndarray | None = None  # (size, d), filled up to _count, in no particular order
        self._keys = np.empty(self.size)
        self._seq = np.empty(self.size, dtype=np.int64)  # offer index: breaks key ties, earlier first
        self._elements = np.empty(self.size, dtype=np.int64)
        self._threshold = -np.inf  # smallest kept key once full

    @property
    def dim(self) -> int | None:
        """Feature width d, None before the first update."""
        return None if self._rows is None else int(self._rows.shape[1])

    @staticmethod
    def memory_bytes(size: int, d: int) -> int:
        """Bytes held by a reservoir of ``size`` rows of width d (rows, keys, offer indices, elements)."""
        return int(size) * (int(d) * 8 + 24) + 1024

    def update(self, rows: object, elements: object, weight: float = 1.0) -> None:
        """Offer rows (m, d) with their atomic numbers (m,), all of weight ``weight`` > 0 (e.g. the number of
        times their structure was drawn)."""
        x = _rows(rows, "rows", min_rows=0)
        z = np.asarray(elements)
        if z.shape != (x.shape[0],) or (z.size and z.dtype.kind not in "iu"):
            raise ConfigError(f"elements: need ({x.shape[0]},) integers, got {z.shape} {z.dtype}", fix="one Z per row")
        if not (np.isfinite(weight) and weight > 0):
            raise ConfigError(f"reservoir weight must be finite and > 0, got {weight!r}", fix="pass the draw count")
        if self._rows is None:
            self._rows = np.empty((self.size, x.shape[1]))
        elif x.shape[1] != self._rows.shape[1]:
            raise ConfigError(f"rows have width {x.shape[1]}, the reservoir {self._rows.shape[1]}", fix=_FIX_WIDTH)
        m = x.shape[0]
        keys = np.log1p(-self._rng.random(m)) / float(weight)  # log(u), u = 1 - U[0, 1) in (0, 1]
        seq = np.arange(self.n_seen, self.n_seen + m, dtype=np.int64)
        self.n_seen += m
        take = min(self.size - self._count, m)  # not yet full: keep them
        if take > 0:
            self._put(np.arange(self._count, self._count + take), x[:take], z[:take], keys[:take], seq[:take])
            self._count += take
        acc = take + np.flatnonzero(keys[take:] > self._threshold)  # a tie with the threshold loses (later offer)
        if acc.size:  # buffer full: the acc.size lowest of kept + candidates go (ties: later offer first)
            all_keys, all_seq = np.concatenate([self._keys, keys[acc]]), np.concatenate([self._seq, seq[acc]])
            cut = np.partition(all_keys, acc.size - 1)[acc.size - 1]
            drop = all_keys < cut
            at = np.flatnonzero(all_keys == cut)
            drop[at[np.argsort(-all_seq[at], kind="stable")][: acc.size - int(drop.sum())]] = True
            win = acc[~drop[self.size :]]
            self._put(np.flatnonzero(drop[: self.size]), x[win], z[win], keys[win], seq[win])

    def _put(self, slots: np.ndarray, x: np.ndarray, z: np.ndarray, keys: np.ndarray, seq: np.ndarray) -> None:
        self._rows[slots], self._elements[slots], self._keys[slots], self._seq[slots] = x, z, keys, seq
        if self._count + slots.size >= self.size:
            self._threshold = float(self._keys.min())

    def _order(self) -> np.ndarray:
        """Canonical order of the kept rows: key descending, then offer order."""
        return np.lexsort((self._seq[: self._count], -self._keys[: self._count]))

    @property
    def rows(self) -> np.ndarray:
        """(k, d) float64 kept rows, k = min(size, n_seen), in canonical order (a copy)."""
        return np.empty((0, 0)) if self._rows is None else self._rows[: self._count][self._order()]

    @property
    def elements(self) -> np.ndarray:
        """(k,) int64 atomic numbers of the kept rows, in the order of ``rows``."""
        return self._elements[: self._count][self._order()]

    @property
    def keys(self) -> np.ndarray:
        """(k,) float64 keys log(u)/w of the kept rows, in the order of ``rows`` (descending)."""
        return self._keys[: self._count][self._order()]

    def to_arrays(self, prefix: str = "") -> dict[str, np.ndarray]:
        """Plain arrays for an .npz file (no pickles), with the random state, so updates can resume."""
        st = self._rng.bit_generator.state
        s, inc = int(st["state"]["state"]), int(st["state"]["inc"])
        rng = [s >> 64, s & _MASK64, inc >> 64, inc & _MASK64, int(st["has_uint32"]), int(st["uinteger"])]
        order, k = self._order(), self._count
        return {
            f"{prefix}meta": np.array([self.size, self.n_seen, self.dim or 0], dtype=np.int64),
            f"{prefix}rng": np.array(rng, dtype=np.uint64),
            f"{prefix}rows": self.rows,
            f"{prefix}elements": self._elements[:k][order],
            f"{prefix}keys": self._keys[:k][order],
            f"{prefix}seq": self._seq[:k][order],
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray], prefix: str = "", file: object = None) -> WeightedReservoir:
        """Rebuild a reservoir from ``to_arrays`` output; DataError naming ``file`` if anything is inconsistent."""
        names = ("meta", "rng", "rows", "elements", "keys", "seq")
        missing = [prefix + n for n in names if prefix + n not in arrays]
        if missing:
            raise DataError(f"reservoir arrays {missing} are missing", file=file, fix=_FIX_CACHE)
        meta, rng_a, rows, z, keys, seq = (np.asarray(arrays[prefix + n]) for n in names)
        ok = meta.shape == (3,) and meta.dtype.kind == "i" and rng_a.shape == (6,) and rng_a.dtype == np.uint64
        size, n_seen, dim = (int(v) for v in meta) if ok else (0, 0, 0)
        k = min(size, n_seen)
        ok = ok and size >= 1 and n_seen >= 0 and rows.shape == ((k, dim) if dim else (0, 0)) and rows.dtype.kind == "f"
        ok = ok and z.shape == keys.shape == seq.shape == (k,) and z.dtype.kind + seq.dtype.kind == "ii"
        ok = ok and keys.dtype.kind == "f" and bool(np.isfinite(rows).all() and (keys <= 0).all())
        ok = ok and (k == 0 or (seq.min() >= 0 and seq.max() < n_seen and np.unique(seq).size == k))
        if not ok:
            shapes = {n: np.shape(arrays[prefix + n]) for n in names}
            raise DataError(f"reservoir arrays '{prefix}*' are inconsistent: {shapes}", file=file, fix=_FIX_CACHE)
        res = cls(size)
        r = [int(v) for v in rng_a]
        state = {"state": (r[0] << 64) | r[1], "inc": (r[2] << 64) | r[3]}
        res._rng.bit_generator.state = {"bit_generator": "PCG64", "state": state, "has_uint32": r[4], "uinteger": r[5]}
        res.n_seen = n_seen
        if dim:
            res._rows = np.empty((size, dim))
            res._put(np.arange(k), rows, z, keys, seq)
            res._count = k
        return res
