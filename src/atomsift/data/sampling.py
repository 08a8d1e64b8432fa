"""Random and class-balanced subsets (docs/method.md section 2), as index arrays saved beside a run."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from atomsift.errors import ConfigError, DataError
from atomsift.settings import atomic_path


def random_indices(n_total: int, n: int, seed: int = 0) -> np.ndarray:
    """Up to `n` distinct indices drawn uniformly from range(n_total), in random order.

    Returns:
        (min(n, n_total),) int64.
    """
    if n < 0:
        raise ConfigError(f"number of samples must be >= 0, got {n}")
    rng = np.random.default_rng(seed)
    # Generator.choice without replacement needs O(n) memory only when n is a large share of n_total
    return rng.choice(n_total, size=min(n, n_total), replace=False).astype(np.int64)


def class_balanced_indices(labels: Sequence[str] | np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Class-balanced sample of `n` indices, as in the paper.

    Each class gives quota = n // n_classes items (drawn with replacement only when the class has
    fewer members than it must give); the remainder n - quota * n_classes is one extra item from each
    of that many randomly chosen classes; the result is shuffled. With more classes than samples, one
    item from each of n randomly chosen classes.

    Args:
        labels: (n_total,) class label of every record.
        n: number of indices to return.
        seed: seed of numpy's default_rng.

    Returns:
        (n,) int64 indices into `labels`; may repeat indices of small classes.
    """
    if n < 0:
        raise ConfigError(f"number of samples must be >= 0, got {n}")
    labels = np.asarray(labels, dtype=object)
    if labels.size == 0:
        raise DataError("cannot sample from an empty dataset", fix="check the path, split and filters")
    rng = np.random.default_rng(seed)
    classes, inverse = np.unique(labels.astype(str), return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    bounds = np.searchsorted(inverse[order], np.arange(len(classes) + 1))
    members = [order[bounds[c] : bounds[c + 1]] for c in range(len(classes))]
    n_classes = len(classes)
    counts = np.zeros(n_classes, dtype=np.int64)
    if n_classes > n:
        counts[rng.choice(n_classes, size=n, replace=False)] = 1
    else:
        quota, remainder = divmod(n, n_classes)
        counts[:] = quota
        counts[rng.choice(n_classes, size=remainder, replace=False)] += 1
    picked = []
    for c in range(n_classes):
        k = int(counts[c])
        if k:
            pool = members[c]
            picked.append(rng.choice(pool, size=k, replace=len(pool) < k))
    out = np.concatenate(picked) if picked else np.zeros(0, dtype=np.int64)
    return rng.permutation(out).astype(np.int64)


def indices_hash(indices: np.ndarray) -> str:
    """sha256 (16 hex) of an index array as int64 bytes: names a subset in provenance and resume checks."""
    return hashlib.sha256(np.asarray(indices, dtype=np.int64).tobytes()).hexdigest()[:16]


def save_subset(path: str | Path, indices: np.ndarray, **provenance: Any) -> Path:
    """Write `indices` and their provenance (dataset, method, n, seed, ...) as JSON, atomically.

    The file is readable by eye and by `load_subset`; it is the record of which structures a run used.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {**provenance, "n": len(indices), "indices": [int(i) for i in indices]}
    with atomic_path(path) as tmp, open(tmp, "w") as f:
        json.dump(payload, f, indent=1)
    return path


def load_subset(path: str | Path) -> tuple[np.ndarray, dict[str, Any]]:
    """Read a file written by `save_subset` (or a plain JSON list of indices): (indices (n,) int64, provenance
    dict, empty for a plain list)."""
    path = Path(path)
    try:
        payload = json.loads(path.read_text())
        if isinstance(payload, list):
            payload = {"indices": payload}
        if not isinstance(payload, dict) or "indices" not in payload:
            raise ValueError("expected a JSON object with an 'indices' list, or a list of indices")
        indices = np.asarray(payload.pop("indices"), dtype=np.int64)
    except (OSError, ValueError, TypeError) as exc:
        raise DataError(
            f"cannot read subset file: {exc}",
            file=path,
            fix="re-create it with `atomsift data sample`, or write a JSON list of structure indices",
        ) from None
    return indices, payload
