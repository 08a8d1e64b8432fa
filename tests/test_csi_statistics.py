"""Streaming Gaussian statistics: streaming == batch == merged, torch input, all-reduce, grouped bootstrap."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from atomsift.csi.statistics import GaussianStats, GroupedStats
from atomsift.errors import ConfigError, DataError

RTOL = 1e-12


def features(seed: int = 0, n: int = 500, d: int = 12) -> np.ndarray:
    """Correlated rows with a non-zero mean, float64 (n, d)."""
    rng = np.random.default_rng(seed)
    mix = rng.standard_normal((d, d))
    return rng.standard_normal((n, d)) @ mix + rng.uniform(-2.0, 2.0, d)


def assert_stats_close(a: GaussianStats, b: GaussianStats, rtol: float = RTOL) -> None:
    assert a.n == b.n
    np.testing.assert_allclose(a.total, b.total, rtol=rtol, atol=rtol * np.abs(b.total).max())
    np.testing.assert_allclose(a.outer, b.outer, rtol=rtol, atol=rtol * np.abs(b.outer).max())
    np.testing.assert_allclose(a.mean, b.mean, rtol=rtol, atol=rtol * np.abs(b.mean).max())
    cov_a, cov_b = a.covariance(), b.covariance()
    np.testing.assert_allclose(cov_a, cov_b, rtol=1e3 * rtol, atol=1e3 * rtol * np.abs(cov_b).max())


def test_batch_statistics_match_numpy():
    x = features()
    stats = GaussianStats(x.shape[1])
    stats.update(x)
    assert stats.n == len(x) and stats.dim == x.shape[1]
    np.testing.assert_allclose(stats.mean, x.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(stats.covariance(), np.cov(x, rowvar=False), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(stats.covariance(ddof=0), np.cov(x, rowvar=False, ddof=0), rtol=1e-10, atol=1e-12)
    cov = stats.covariance()
    assert cov.dtype == np.float64 and np.array_equal(cov, cov.T)


def test_streaming_equals_batch_equals_merged():
    x = features(n=601)
    batch = GaussianStats(x.shape[1])
    batch.update(x)

    streaming = GaussianStats(x.shape[1])
    for chunk in np.array_split(x, 37):  # uneven chunks, some of one row
        streaming.update(chunk)
    streaming.update(x[:0])  # an empty batch changes nothing
    assert_stats_close(streaming, batch)

    parts = []
    for chunk in np.array_split(x, 5):
        part = GaussianStats(x.shape[1])
        part.update(chunk)
        parts.append(part)
    merged = GaussianStats(x.shape[1])
    for part in parts[::-1]:
        assert merged.merge(part) is merged
    assert_stats_close(merged, batch)

    single_rows = GaussianStats(x.shape[1])
    for row in x[:50]:
        single_rows.update(row)  # one (d,) row at a time
    head = GaussianStats(x.shape[1])
    head.update(x[:50])
    assert_stats_close(single_rows, head)


def test_float32_and_torch_inputs_accumulate_in_float64():
    x32 = features(seed=1).astype(np.float32)
    ref = GaussianStats(x32.shape[1])
    ref.update(x32.astype(np.float64))
    from_numpy32 = GaussianStats(x32.shape[1])
    from_numpy32.update(x32)
    from_torch = GaussianStats(x32.shape[1])
    from_torch.update(torch.from_numpy(x32).requires_grad_(True))
    for stats in (from_numpy32, from_torch):
        assert stats.outer.dtype == np.float64
        assert_stats_close(stats, ref, rtol=1e-15)
    bf16 = GaussianStats(x32.shape[1])
    bf16.update(torch.from_numpy(x32).to(torch.bfloat16))
    assert bf16.n == len(x32)


def test_float64_accumulation_survives_many_rows():
    # float32 accumulation would lose ~1e-4 relative here; float64 keeps the covariance exact to ~1e-10
    rng = np.random.default_rng(2)
    d = 4
    x = (rng.standard_normal((200_000, d)) + 10.0).astype(np.float32)
    stats = GaussianStats(d)
    for chunk in np.array_split(x, 100):
        stats.update(chunk)
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(stats.covariance(), np.cov(x64, rowvar=False), rtol=1e-9, atol=1e-11)


def test_round_trip_through_arrays_and_npz(tmp_path: Path):
    x = features(seed=3)
    stats = GaussianStats(x.shape[1])
    stats.update(x)
    path = tmp_path / "stats.npz"
    np.savez(path, **stats.to_arrays())
    with np.load(path) as data:
        back = GaussianStats.from_arrays(dict(data))
    assert_stats_close(back, stats, rtol=0.0)
    with pytest.raises(DataError, match="outer"):
        GaussianStats.from_arrays({"n": np.array(3), "total": np.zeros(3)})
    with pytest.raises(DataError, match="inconsistent"):
        GaussianStats.from_arrays({"n": np.array(3), "total": np.zeros(3), "outer": np.zeros((2, 2))})


def test_bad_inputs_raise_clear_errors():
    stats = GaussianStats(4)
    with pytest.raises(ConfigError, match=r"expected \(rows, 4\)"):
        stats.update(np.zeros((3, 5)))
    with pytest.raises(DataError, match="NaN or inf"):
        stats.update(np.array([[0.0, np.nan, 0.0, 0.0]]))
    with pytest.raises(ConfigError, match="width 3 into width 4"):
        stats.merge(GaussianStats(3))
    with pytest.raises(DataError, match="empty"):
        _ = stats.mean
    stats.update(np.ones((1, 4)))
    with pytest.raises(DataError, match="at least 2 rows"):
        stats.covariance()
    with pytest.raises(ConfigError, match=r"\(d=3, K=8\) into \(d=4, K=8\)"):
        GroupedStats(4, 8).merge(GroupedStats(3, 8))
    with pytest.raises(ConfigError, match="K=4"):
        GroupedStats(4, 8).merge(GroupedStats(4, 4))
    with pytest.raises(ConfigError, match="out of range"):
        GroupedStats(4, 8).update(8, np.ones((2, 4)))


def test_all_reduce_is_a_no_op_without_torch_distributed():
    x = features(seed=4)
    stats = GaussianStats(x.shape[1])
    stats.update(x)
    before = stats.to_arrays()
    stats.all_reduce()
    assert_stats_close(stats, GaussianStats.from_arrays(before), rtol=0.0)


# -- two processes on the gloo backend --------------------------------------------------------------------
def _all_reduce_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    """Each rank holds half of the rows (and half of the structures' groups), all-reduces, saves."""
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        x = features(seed=5, n=400)
        rows = np.array_split(x, world)[rank]
        stats = GaussianStats(x.shape[1])
        stats.update(rows)
        stats.all_reduce()
        grouped = GroupedStats(x.shape[1], n_groups=6)
        for i in range(rank, 40, world):  # 40 "structures" of 10 rows, interleaved between the ranks
            grouped.update(i % 6, x[10 * i : 10 * i + 10])
        grouped.all_reduce()
        np.savez(Path(out_dir) / f"rank{rank}.npz", **stats.to_arrays(), **grouped.to_arrays())
    finally:
        dist.destroy_process_group()


def test_all_reduce_across_two_gloo_processes_equals_single_process(tmp_path: Path):
    torch.multiprocessing.spawn(
        _all_reduce_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True
    )
    x = features(seed=5, n=400)
    single = GaussianStats(x.shape[1])
    single.update(x)
    grouped_single = GroupedStats(x.shape[1], n_groups=6)
    for i in range(40):
        grouped_single.update(i % 6, x[10 * i : 10 * i + 10])
    for rank in range(2):
        with np.load(tmp_path / f"rank{rank}.npz") as data:
            arrays = dict(data)
        assert_stats_close(GaussianStats.from_arrays(arrays), single)
        reduced = GroupedStats.from_arrays(arrays)
        np.testing.assert_array_equal(reduced.counts, grouped_single.counts)
        np.testing.assert_allclose(reduced.outers, grouped_single.outers, rtol=RTOL, atol=1e-12)
        assert_stats_close(reduced.total(), single)


# -- grouped statistics and the bootstrap ---------------------------------------------------------------
def grouped_structures(seed: int, n_structures: int, atoms: int, d: int, k: int) -> tuple[GroupedStats, list]:
    """Structures whose atoms share a structure-level offset (strongly correlated atoms)."""
    rng = np.random.default_rng(seed)
    grouped = GroupedStats(d, n_groups=k)
    structures = []
    for _ in range(n_structures):
        rows = rng.standard_normal(d) * 2.0 + 0.3 * rng.standard_normal((atoms, d))
        grouped.update(int(rng.integers(k)), rows)
        structures.append(rows)
    return grouped, structures


def test_grouped_total_equals_ungrouped_statistics():
    grouped, structures = grouped_structures(seed=6, n_structures=60, atoms=7, d=5, k=8)
    flat = GaussianStats(5)
    for rows in structures:
        flat.update(rows)
    assert_stats_close(grouped.total(), flat)
    assert int(grouped.counts.sum()) == 60 * 7
    other, _ = grouped_structures(seed=7, n_structures=10, atoms=7, d=5, k=8)
    both = GroupedStats.from_arrays(grouped.to_arrays()).merge(other)
    assert_stats_close(both.total(), grouped.total().merge(other.total()))


def test_bootstrap_replicates_are_seeded_sums_of_resampled_groups():
    grouped, _ = grouped_structures(seed=8, n_structures=50, atoms=4, d=6, k=10)
    reps = list(grouped.bootstrap(5, seed=123))
    again = list(grouped.bootstrap(5, seed=123))
    assert len(reps) == 5
    rng = np.random.default_rng(123)
    for rep, rep2 in zip(reps, again):
        c = np.bincount(rng.integers(0, 10, size=10), minlength=10).astype(np.float64)
        assert rep.n == int(c @ grouped.counts)
        np.testing.assert_allclose(rep.total, c @ grouped.sums, rtol=RTOL)
        np.testing.assert_allclose(rep.outer, np.einsum("k,kij->ij", c, grouped.outers), rtol=RTOL, atol=1e-10)
        assert_stats_close(rep, rep2, rtol=0.0)
    assert not np.array_equal(reps[0].total, next(iter(grouped.bootstrap(1, seed=124))).total)


def test_bootstrap_spread_is_structure_level_not_atom_level():
    """Atoms of a structure are correlated: the group bootstrap must see the structure-level spread."""
    n_structures, atoms, d, k = 400, 20, 2, 32
    grouped, structures = grouped_structures(seed=9, n_structures=n_structures, atoms=atoms, d=d, k=k)
    per_structure_means = np.array([rows.mean(axis=0) for rows in structures])
    se_structures = per_structure_means.std(axis=0, ddof=1) / np.sqrt(n_structures)  # true SE of the mean
    all_rows = np.concatenate(structures)
    se_atoms_naive = all_rows.std(axis=0, ddof=1) / np.sqrt(len(all_rows))  # pretends atoms are independent
    boot_means = np.array([rep.mean for rep in grouped.bootstrap(300, seed=0)])
    se_boot = boot_means.std(axis=0, ddof=1)
    assert np.all(se_boot > 0.6 * se_structures) and np.all(se_boot < 1.6 * se_structures)
    assert np.all(se_boot > 2.5 * se_atoms_naive)


def test_near_constant_channel_gives_no_negative_variance():
    """(outer - n mu mu^T) / (n - 1) rounds the variance of a constant channel to +-1e-16: it must stay >= 0
    and the Frechet distance must accept the result. Identical rows (a structure sampled 5 times, mean
    aggregation) gave a negative variance in 41 of these 50 trials before the diagonal was clipped."""
    import numpy as np

    from atomsift.csi import GaussianStats, frechet_distance

    rng = np.random.default_rng(0)
    for trial in range(50):
        row = rng.lognormal(size=20) * 0.37
        s = GaussianStats(20)
        for _ in range(5):
            s.update(row[None])
        cov = s.covariance()
        assert (np.diag(cov) >= 0).all(), trial
        assert frechet_distance(s.mean, cov, s.mean, cov) >= 0
