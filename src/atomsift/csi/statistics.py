"""Streaming Gaussian sufficient statistics of feature rows, in float64.

A feature set enters CSI only through its mean and covariance, and both follow from three sums:

    n = number of rows,   total = sum_i x_i  (d,),   outer = sum_i x_i x_i^T  (d, d)

Sums stream (one batch at a time), merge (add the sums of two workers) and all-reduce across
``torch.distributed`` ranks, so memory is O(d^2) whatever the number of atoms, and a cache file of
(n, total, outer) is all a later run needs. Rows are cast to float64 before ``x.T @ x``.

``GroupedStats`` keeps K such sums side by side, one per group of whole structures, for the
structure-level bootstrap of ``GroupedStats.bootstrap``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from atomsift.errors import ConfigError, DataError

__all__ = ["GaussianStats", "GroupedStats"]


def _as_rows(x: Any, dim: int, what: str) -> np.ndarray:
    """x (m, d) or (d,), numpy or torch, any real float dtype -> C-contiguous float64 (m, d)."""
    if hasattr(x, "detach") and hasattr(x, "cpu"):  # a torch tensor; torch is imported only if used
        import torch

        x = x.detach().to(device="cpu", dtype=torch.float64).numpy()
    arr = np.asarray(x)
    if arr.dtype.kind not in "fiu":
        raise ConfigError(
            f"{what}: feature rows must be real numbers, got dtype {arr.dtype}",
            fix="pass a float array of shape (rows, d)",
        )
    arr = np.ascontiguousarray(arr, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[1] != dim:
        raise ConfigError(
            f"{what}: feature rows have shape {tuple(np.shape(x))}, expected (rows, {dim})",
            fix=f"give rows of width d = {dim}, the width these statistics were created with",
        )
    if not np.isfinite(arr).all():
        bad = int(np.count_nonzero(~np.isfinite(arr).all(axis=1)))
        raise DataError(
            f"{what}: {bad} of {arr.shape[0]} feature rows contain NaN or inf",
            fix="check the extractor's output for these structures (unknown species, overflow)",
        )
    return arr


def _all_reduce_inplace(*arrays: np.ndarray) -> None:
    """Sum float64 arrays over all torch.distributed ranks, in place; no-op when not initialised."""
    try:
        import torch
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch is a hard dependency
        return
    if not (dist.is_available() and dist.is_initialized()):
        return
    on_gpu = dist.get_backend() == "nccl"
    for arr in arrays:
        if arr.dtype != np.float64 or not arr.flags.c_contiguous or not arr.flags.writeable:
            raise RuntimeError("internal: all-reduce needs writable C-contiguous float64 arrays")
        host = torch.from_numpy(arr)  # shares memory with arr
        if on_gpu:
            dev = torch.device("cuda", torch.cuda.current_device())
            buf = host.to(dev)
            dist.all_reduce(buf, op=dist.ReduceOp.SUM)
            host.copy_(buf.cpu())
        else:
            dist.all_reduce(host, op=dist.ReduceOp.SUM)


class GaussianStats:
    """Float64 sufficient statistics (n, sum x, sum x x^T) of rows x of width d.

    Args:
        dim: feature width d.

    Attributes:
        n: number of rows seen.
        total: (d,) float64, sum of rows.
        outer: (d, d) float64, sum of outer products x x^T.
    """

    def __init__(self, dim: int) -> None:
        dim = int(dim)
        if dim < 1:
            raise ConfigError(f"feature width must be >= 1, got {dim}")
        self.n: int = 0
        self.total: np.ndarray = np.zeros(dim, dtype=np.float64)
        self.outer: np.ndarray = np.zeros((dim, dim), dtype=np.float64)

    @property
    def dim(self) -> int:
        """Feature width d."""
        return int(self.total.shape[0])

    def update(self, x: Any) -> None:
        """Accumulate rows x: (m, d) (or one row (d,)), numpy or torch, any float dtype."""
        rows = _as_rows(x, self.dim, "GaussianStats.update")
        if rows.shape[0] == 0:
            return
        self.n += int(rows.shape[0])
        self.total += rows.sum(axis=0)
        self.outer += rows.T @ rows

    def merge(self, other: GaussianStats) -> GaussianStats:
        """Add other's sums to these (in place); returns self."""
        if not isinstance(other, GaussianStats):
            raise ConfigError(f"can only merge GaussianStats, got {type(other).__name__}")
        if other.dim != self.dim:
            raise ConfigError(
                f"cannot merge statistics of width {other.dim} into width {self.dim}",
                fix="merge statistics from the same extractor, layer and aggregation",
            )
        self.n += other.n
        self.total += other.total
        self.outer += other.outer
        return self

    @property
    def mean(self) -> np.ndarray:
        """(d,) float64 mean of the rows."""
        if self.n < 1:
            raise DataError("the mean of an empty feature set is undefined (no rows accumulated)")
        return self.total / self.n

    def covariance(self, ddof: int = 1) -> np.ndarray:
        """(d, d) symmetric float64 covariance, sum (x - mu)(x - mu)^T / (n - ddof).

        Computed as (outer - n mu mu^T) / (n - ddof); in float64 this is exact to ~1e-16 * |mu|^2 /
        variance, ample for backbone features (means of the order of the spread).
        """
        if self.n - ddof < 1:
            raise DataError(
                f"a covariance with ddof={ddof} needs at least {ddof + 1} rows, got {self.n}",
                fix="sample more structures (or use aggregation 'flat': every atom one observation)",
            )
        mu = self.total / self.n
        cov = (self.outer - self.n * np.outer(mu, mu)) / (self.n - ddof)
        cov = 0.5 * (cov + cov.T)
        # a (near-)constant channel can come out as -1e-14 from the subtraction: a variance is >= 0
        np.fill_diagonal(cov, np.maximum(np.diag(cov), 0.0))
        return cov

    def all_reduce(self) -> None:
        """Sum n, total and outer across torch.distributed ranks (SUM on float64); no-op otherwise."""
        n = np.array([float(self.n)], dtype=np.float64)
        _all_reduce_inplace(n, self.total, self.outer)
        self.n = int(round(float(n[0])))

    def to_arrays(self) -> dict[str, np.ndarray]:
        """{"n": int64 scalar, "total": (d,), "outer": (d, d)} for an .npz cache file."""
        return {"n": np.array(self.n, dtype=np.int64), "total": self.total.copy(), "outer": self.outer.copy()}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> GaussianStats:
        """Inverse of to_arrays (e.g. from np.load of a cache file); shapes are checked."""
        missing = [k for k in ("n", "total", "outer") if k not in arrays]
        if missing:
            raise DataError(f"statistics arrays lack {missing} (need n, total, outer)")
        total = np.asarray(arrays["total"], dtype=np.float64)
        outer = np.asarray(arrays["outer"], dtype=np.float64)
        n = np.asarray(arrays["n"])
        d = total.shape[0] if total.ndim == 1 else -1
        if total.ndim != 1 or outer.shape != (d, d) or n.size != 1 or int(n) < 0:
            raise DataError(
                f"inconsistent statistics arrays: n {n.shape}, total {total.shape}, outer {outer.shape}",
                fix="delete the cache file; it will be recomputed",
            )
        out = cls(d)
        out.n = int(n)
        out.total[:] = total
        out.outer[:] = outer
        return out

    def __repr__(self) -> str:
        return f"GaussianStats(dim={self.dim}, n={self.n})"


class GroupedStats:
    """Sufficient statistics kept per group of whole structures: counts (K,), sums (K, d), outers (K, d, d).

    The caller assigns each structure to one of K groups at random (e.g. ``rng.integers(K)`` per
    structure, seeded) and feeds all rows of that structure into that group. Memory is O(K d^2).

    Args:
        dim: feature width d.
        n_groups: K, the number of groups (resampling units of the bootstrap).
    """

    def __init__(self, dim: int, n_groups: int = 32) -> None:
        dim, n_groups = int(dim), int(n_groups)
        if dim < 1 or n_groups < 1:
            raise ConfigError(f"need dim >= 1 and n_groups >= 1, got dim={dim}, n_groups={n_groups}")
        self.counts: np.ndarray = np.zeros(n_groups, dtype=np.int64)
        self.sums: np.ndarray = np.zeros((n_groups, dim), dtype=np.float64)
        self.outers: np.ndarray = np.zeros((n_groups, dim, dim), dtype=np.float64)

    @property
    def dim(self) -> int:
        """Feature width d."""
        return int(self.sums.shape[1])

    @property
    def n_groups(self) -> int:
        """Number of groups K."""
        return int(self.counts.shape[0])

    def update(self, group: int, x: Any) -> None:
        """Accumulate the rows x (m, d) of one structure (or one aggregated row (d,)) into group."""
        g = int(group)
        if not 0 <= g < self.n_groups:
            raise ConfigError(f"group {group} out of range [0, {self.n_groups})")
        rows = _as_rows(x, self.dim, "GroupedStats.update")
        if rows.shape[0] == 0:
            return
        self.counts[g] += rows.shape[0]
        self.sums[g] += rows.sum(axis=0)
        self.outers[g] += rows.T @ rows

    def merge(self, other: GroupedStats) -> GroupedStats:
        """Add other's per-group sums to these (in place); returns self."""
        if not isinstance(other, GroupedStats):
            raise ConfigError(f"can only merge GroupedStats, got {type(other).__name__}")
        if other.dim != self.dim or other.n_groups != self.n_groups:
            raise ConfigError(
                f"cannot merge grouped statistics (d={other.dim}, K={other.n_groups}) into "
                f"(d={self.dim}, K={self.n_groups})",
                fix="use the same extractor, aggregation and number of bootstrap groups",
            )
        self.counts += other.counts
        self.sums += other.sums
        self.outers += other.outers
        return self

    def all_reduce(self) -> None:
        """Sum counts, sums and outers across torch.distributed ranks; no-op when not initialised."""
        counts = self.counts.astype(np.float64)
        _all_reduce_inplace(counts, self.sums, self.outers)
        self.counts[:] = np.rint(counts).astype(np.int64)

    def total(self) -> GaussianStats:
        """All groups summed: the statistics of every row."""
        out = GaussianStats(self.dim)
        out.n = int(self.counts.sum())
        out.total[:] = self.sums.sum(axis=0)
        out.outer[:] = self.outers.sum(axis=0)
        return out

    def bootstrap(self, n_resamples: int, seed: int) -> Iterator[GaussianStats]:
        """Bootstrap replicates: each resamples the K groups with replacement and sums their statistics.

        Replicate b draws K group indices uniformly with replacement (``numpy.random.default_rng(seed)``),
        counts how often each group was drawn, c (K,), and yields GaussianStats with n = c . counts,
        total = c . sums and outer = einsum("k,kij->ij", c, outers). Memory: the O(K d^2) groups plus one
        O(d^2) replicate at a time (replicates are yielded lazily).

        Why this is a structure-level bootstrap: the caller puts each structure, with all its atoms, into
        a group chosen at random, so the groups are exchangeable random blocks of whole structures.
        Resampling groups therefore resamples structures (in blocks), never individual atoms: the atoms
        of one structure, which are strongly correlated (same molecule, same environment), stay together
        in every replicate, and the spread of the replicates reflects the structure-to-structure
        variability that a new sample of structures would show. Resampling single atoms would treat
        correlated atoms as independent and make the interval far too narrow. Keeping one group per
        structure would be the textbook bootstrap but cost O(N d^2) memory; K random blocks (K ~ 30) keep
        it O(K d^2) at the price of a coarser estimate of the spread (the interval's own relative error
        is roughly 1/sqrt(2K)).

        Caveats: with fewer structures than groups some groups are empty, and a replicate can have too
        few rows for a covariance; the Frechet distance of a replicate is also biased by the duplicated
        blocks, so use the replicates for the spread (percentile interval), not as a correction.

        Args:
            n_resamples: number of replicates B.
            seed: seed of the resampling generator (same seed, same replicates).

        Yields:
            B GaussianStats replicates.
        """
        n_resamples = int(n_resamples)
        if n_resamples < 0:
            raise ConfigError(f"n_resamples must be >= 0, got {n_resamples}")
        rng = np.random.default_rng(seed)
        k = self.n_groups
        for _ in range(n_resamples):
            picks = rng.integers(0, k, size=k)
            c = np.bincount(picks, minlength=k)
            rep = GaussianStats(self.dim)
            rep.n = int(c @ self.counts)
            cf = c.astype(np.float64)
            rep.total[:] = cf @ self.sums
            # einsum("k,kij->ij", c, outers), done as one BLAS matrix-vector product
            np.dot(cf, self.outers.reshape(k, -1), out=rep.outer.reshape(-1))
            yield rep

    def to_arrays(self) -> dict[str, np.ndarray]:
        """{"counts": (K,) int64, "sums": (K, d), "outers": (K, d, d)} for an .npz cache file."""
        return {"counts": self.counts.copy(), "sums": self.sums.copy(), "outers": self.outers.copy()}

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> GroupedStats:
        """Inverse of to_arrays; shapes are checked."""
        missing = [k for k in ("counts", "sums", "outers") if k not in arrays]
        if missing:
            raise DataError(f"grouped statistics arrays lack {missing} (need counts, sums, outers)")
        counts = np.asarray(arrays["counts"])
        sums = np.asarray(arrays["sums"], dtype=np.float64)
        outers = np.asarray(arrays["outers"], dtype=np.float64)
        if (
            counts.ndim != 1
            or sums.ndim != 2
            or sums.shape[0] != counts.shape[0]
            or outers.shape != (sums.shape[0], sums.shape[1], sums.shape[1])
            or (counts < 0).any()
        ):
            raise DataError(
                f"inconsistent grouped statistics arrays: counts {counts.shape}, sums {sums.shape}, "
                f"outers {outers.shape}",
                fix="delete the cache file; it will be recomputed",
            )
        out = cls(sums.shape[1], counts.shape[0])
        out.counts[:] = counts.astype(np.int64)
        out.sums[:] = sums
        out.outers[:] = outers
        return out

    def __repr__(self) -> str:
        return f"GroupedStats(dim={self.dim}, n_groups={self.n_groups}, n={int(self.counts.sum())})"
