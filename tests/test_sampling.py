from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from atomsift.data.sampling import class_balanced_indices, load_subset, random_indices, save_subset
from atomsift.errors import DataError

LABELS = np.array(["a"] * 10 + ["b"] * 2 + ["c"] * 50, dtype=object)


def per_class(indices: np.ndarray) -> Counter:
    return Counter(LABELS[indices].tolist())


def test_quota_per_class_with_replacement_for_small_class():
    idx = class_balanced_indices(LABELS, 9, seed=0)
    assert len(idx) == 9
    assert per_class(idx) == {"a": 3, "b": 3, "c": 3}
    b = idx[LABELS[idx] == "b"]
    assert set(b.tolist()) <= {10, 11}  # only 2 members: drawn with replacement
    for cls in ("a", "c"):  # big enough: no repeats
        members = idx[LABELS[idx] == cls]
        assert len(set(members.tolist())) == len(members)


def test_remainder_goes_to_distinct_random_classes():
    counts = per_class(class_balanced_indices(LABELS, 11, seed=3))
    assert sum(counts.values()) == 11
    assert sorted(counts.values()) == [3, 4, 4]
    seen = set()
    for seed in range(30):  # the classes receiving the extra item vary with the seed
        c = per_class(class_balanced_indices(LABELS, 10, seed=seed))
        seen.add(max(c, key=c.get))
    assert seen == {"a", "b", "c"}


def test_more_classes_than_samples_takes_one_from_each_of_n_classes():
    labels = np.array([f"k{i}" for i in range(20) for _ in range(3)], dtype=object)
    idx = class_balanced_indices(labels, 5, seed=1)
    assert len(idx) == 5
    assert len(set(labels[idx].tolist())) == 5


def test_balanced_is_seeded_and_shuffled():
    a = class_balanced_indices(LABELS, 30, seed=7)
    b = class_balanced_indices(LABELS, 30, seed=7)
    c = class_balanced_indices(LABELS, 30, seed=8)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert not np.all(np.diff(LABELS[a].astype(str) == "a") == 0)  # classes interleaved, not blocked


def test_random_indices_distinct_and_capped():
    idx = random_indices(100, 30, seed=0)
    assert len(set(idx.tolist())) == 30 and idx.max() < 100
    assert len(random_indices(10, 10_000, seed=0)) == 10
    np.testing.assert_array_equal(random_indices(100, 30, seed=0), idx)


def test_empty_labels_is_a_clear_error():
    with pytest.raises(DataError, match="empty"):
        class_balanced_indices(np.array([], dtype=object), 5)


def test_subset_file_roundtrip(tmp_path):
    idx = class_balanced_indices(LABELS, 12, seed=0)
    path = save_subset(tmp_path / "run" / "subset.json", idx, dataset="x.h5", method="balanced", seed=0)
    loaded, meta = load_subset(path)
    np.testing.assert_array_equal(loaded, idx)
    assert meta["method"] == "balanced" and meta["n"] == 12
    assert not list(path.parent.glob("*.tmp"))
