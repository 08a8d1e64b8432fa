"""Run CSI: sample each dataset, extract per-atom features, accumulate statistics, compare.

For every dataset: draw the sample (class-balanced upstream, random downstream; indices saved in
OUT/subsets), reuse cached statistics when their provenance matches, else run the extractor over the
sample and accumulate `GroupedStats` (each structure falls in one of K random groups, so the bootstrap
resamples whole structures). Then for every downstream set, its covariance square root is computed once
(`FrechetReference`) and every upstream candidate is scored against it, with a percentile bootstrap
interval from paired resamples of both sides: the percentile interval of the resampled distances,
shifted by their mean excess over the estimate (the upward bias that repeated structures cause).

Every row also says what the numbers can be compared with: the extractor (CSI values compare only within
one extractor; `comparable_within`, `csi_units`), how many distinct structures each side used out of how
many (class-balanced samples repeat structures of small classes), whether upstream and downstream are the
same dataset, and the extractor's own provenance (`extractor_load_report` for checkpoints).
"""

from __future__ import annotations

import hashlib
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from atomsift.csi.cache import dataset_fingerprint, lookup, save_stats
from atomsift.csi.config import CSIConfig, DatasetSpec
from atomsift.csi.extract import FeatureExtractor, aggregate, get_extractor
from atomsift.csi.extras import DatasetExtras, ExtrasAccumulator
from atomsift.csi.frechet import FrechetReference, check_observations, shrink_covariance
from atomsift.csi.statistics import GaussianStats, GroupedStats
from atomsift.data.base import Dataset
from atomsift.data.sampling import class_balanced_indices, indices_hash, random_indices, save_subset
from atomsift.data.spec import open_spec
from atomsift.device import check_device
from atomsift.errors import ConfigError, naming_file
from atomsift.progress import progress_bar


@dataclass
class DatasetStats:
    """Statistics of one sampled dataset."""

    name: str
    role: str
    grouped: GroupedStats
    n_structures: int
    n_unique: int
    sampling: str
    cached: bool
    n_total: int = 0
    identity: tuple[str, ...] = ()
    indices: np.ndarray | None = None
    extras: DatasetExtras | None = None

    @property
    def n_obs(self) -> int:
        return int(self.grouped.total().n)


def _sub_seed(seed: int, name: str) -> int:
    """A seed for `name` derived from the run's seed (independent bootstrap streams per dataset)."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:4], "little")


def _n_groups(cfg: CSIConfig, n_structures: int, dim: int) -> int:
    """Bootstrap groups: at most one per distinct structure (no empty group), and few enough that every
    dataset's groups x d x d float64 fit the run's memory budget together."""
    n_sets = len(cfg.upstream) + len(cfg.downstream)
    per_matrix = dim * dim * 8
    affordable = int(cfg.stats_memory_gb * 2**30 // (n_sets * per_matrix))
    if affordable < 2:
        raise ConfigError(
            f"features of width d={dim} need {per_matrix / 2**30:.2f} GiB per covariance matrix; {n_sets} datasets "
            f"with at least 2 bootstrap groups each exceed stats_memory_gb={cfg.stats_memory_gb}",
            fix="use a narrower extractor (e.g. soap instead of soap-full, or fewer species), compare fewer "
            "datasets per run, or raise stats_memory_gb in the config",
        )
    if affordable < min(cfg.groups, n_structures):
        warnings.warn(
            f"only {affordable} bootstrap groups fit stats_memory_gb={cfg.stats_memory_gb} at d={dim}: the "
            "intervals are coarser (raise stats_memory_gb for more)",
            stacklevel=2,
        )
    return max(2, min(cfg.groups, n_structures, affordable))


def sample_indices(ds: Dataset, spec: DatasetSpec, role: str, cfg: CSIConfig) -> tuple[np.ndarray, str]:
    """Indices of the sample and the sampling actually used ('balanced' falls back to 'random' without classes)."""
    n = spec.n_samples or cfg.n_samples
    method = spec.sampling or (cfg.upstream_sampling if role == "upstream" else "random")
    if method == "balanced":
        labels = ds.class_labels()
        if labels is not None:
            return class_balanced_indices(labels, n, cfg.seed), "balanced"
        warnings.warn(
            f"{ds.path}: no class labels, so the {role} sample is random instead of class-balanced "
            "(give a class mapping, e.g. classes=oc20_data_mapping.pkl, for OC20/OC22)",
            stacklevel=2,
        )
    return random_indices(len(ds), n, cfg.seed), "random"


def _accumulate(
    ds: Dataset,
    indices: np.ndarray,
    extractor: FeatureExtractor,
    cfg: CSIConfig,
    n_groups: int,
    label: str,
    extras: ExtrasAccumulator | None = None,
) -> GroupedStats:
    """Run the extractor over the sampled structures and accumulate grouped statistics (and `extras`).

    The k-th distinct structure of the sample (in its random order) goes to group k % K, and every copy of a
    structure drawn more than once (balanced sampling of small classes) goes with it, so the bootstrap never
    splits copies of one structure across groups (which would make the intervals too narrow)."""
    positions: dict[int, list[int]] = {}
    for j, idx in enumerate(indices.tolist()):
        positions.setdefault(idx, []).append(j)
    group_of = {idx: k % n_groups for k, idx in enumerate(positions)}
    grouped = GroupedStats(extractor.dim, n_groups=n_groups)
    unique = sorted(positions)  # read in index order (fast for every reader); each structure extracted once
    with progress_bar(total=len(indices), desc=f"features {label}", unit="struct") as bar:
        for start in range(0, len(unique), cfg.batch_size):
            batch = unique[start : start + cfg.batch_size]
            records = [ds[i] for i in batch]
            with naming_file(ds.path):
                features = extractor.features(records)
            records_by = dict(zip(batch, records, strict=True))
            for idx, feats in zip(batch, features, strict=True):
                rows = aggregate([feats], cfg.aggregation)
                for _ in positions[idx]:
                    grouped.update(group_of[idx], rows)
                if extras is not None:
                    extras.update(np.asarray(records_by[idx].numbers), rows, len(positions[idx]))
                bar.update(len(positions[idx]))
    return grouped


@dataclass
class _Sample:
    """One opened dataset and its sample (independent of the extractor)."""

    name: str
    spec: DatasetSpec
    role: str
    ds: Dataset
    indices: np.ndarray
    method: str


def open_and_sample(name: str, spec: DatasetSpec, role: str, cfg: CSIConfig) -> _Sample:
    """Open a dataset and draw its sample, once per run."""
    ds = open_spec(spec, name, role=role)
    indices, method = sample_indices(ds, spec, role, cfg)
    return _Sample(name, spec, role, ds, indices, method)


@dataclass
class _Plan:
    """What one dataset needs, settled before any file is written (a mismatched cache refuses the run)."""

    name: str
    role: str
    ds: Dataset
    indices: np.ndarray
    method: str
    n_groups: int
    provenance: dict[str, Any]
    cache_file: Path
    cached: dict[str, np.ndarray] | None
    extras_provenance: dict[str, Any] | None = None
    extras_file: Path | None = None
    extras_cached: dict[str, np.ndarray] | None = None


def plan_dataset(sample: _Sample, extractor: FeatureExtractor, cfg: CSIConfig, out: Path) -> _Plan:
    """Build a sampled dataset's provenance and look its statistics up in the cache."""
    name, spec, role, ds, indices, method = (
        sample.name,
        sample.spec,
        sample.role,
        sample.ds,
        sample.indices,
        sample.method,
    )
    n_groups = _n_groups(cfg, len(np.unique(indices)), extractor.dim)  # may refuse the run: too wide for memory
    provenance = {
        "dataset": name,
        "role": role,
        "path": str(Path(spec.path).resolve()) if not spec.path.startswith("bundled:") else spec.path,
        "format": ds.format_name,
        "reader_options": spec.options,
        "dataset_fingerprint": dataset_fingerprint(ds),
        "extractor": extractor.name,
        "extractor_weights_sha256": extractor.weights_hash(),
        "layer": extractor.layer,
        "dim": extractor.dim,
        "aggregation": cfg.aggregation,
        "sampling": method,
        "n_samples": len(indices),
        **{f"extractor_{k}": v for k, v in extractor.provenance_extra().items()},
        "seed": cfg.seed,
        "groups": n_groups,
        "indices_sha256": indices_hash(indices),
    }
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else out / "cache"
    # the sampling method is in the name so that balanced and random samples of one dataset are kept side by side
    cache_file = cache_dir / f"{role}-{name}.{extractor.name}.{cfg.aggregation}.{method}.npz"
    cached = lookup(cache_file, provenance, recompute=cfg.recompute)
    plan = _Plan(name, role, ds, indices, method, n_groups, provenance, cache_file, cached)
    if needs_extras(cfg):
        plan.extras_provenance = {
            **provenance,
            "kind": "measures",
            "reservoir": cfg.reservoir,
            "reservoir_seed": _sub_seed(cfg.seed, f"reservoir:{role}:{name}"),
            "element_memory_gb": cfg.element_memory_gb,
        }
        plan.extras_file = cache_file.with_suffix(".measures.npz")
        plan.extras_cached = lookup(plan.extras_file, plan.extras_provenance, recompute=cfg.recompute)
    return plan


def needs_extras(cfg: CSIConfig) -> bool:
    """Whether any measure besides CSI was asked for (they need element counts and a feature reservoir)."""
    return any(m != "csi" for m in cfg.measures)


def dataset_stats(plan: _Plan, extractor: FeatureExtractor, cfg: CSIConfig, out: Path) -> DatasetStats:
    """Save the sample's indices, then load or compute (and cache) its grouped statistics."""
    save_subset(
        out / "subsets" / f"{plan.role}-{plan.name}.json",
        plan.indices,
        dataset=plan.provenance["path"],
        format=plan.ds.format_name,
        role=plan.role,
        method=plan.method,
        seed=cfg.seed,
        n_total=len(plan.ds),
    )
    extras = None
    if plan.cached is not None and (plan.extras_file is None or plan.extras_cached is not None):
        grouped = GroupedStats.from_arrays({k: plan.cached[k] for k in ("counts", "sums", "outers")})
        if plan.extras_cached is not None:
            extras = DatasetExtras.from_arrays(plan.extras_cached)
    else:
        label = f"{plan.role}:{plan.name}"
        acc = None
        if plan.extras_provenance is not None:
            acc = ExtrasAccumulator(
                extractor.dim,
                cfg.reservoir,
                plan.extras_provenance["reservoir_seed"],
                per_element=cfg.aggregation == "flat",
                element_memory=cfg.element_memory_gb * 2**30,
                label=plan.name,
            )
        grouped = _accumulate(plan.ds, plan.indices, extractor, cfg, plan.n_groups, label, acc)
        total = grouped.total()
        summary = {"mu": total.mean, "sigma": total.covariance(), "n": np.int64(total.n), "d": np.int64(total.dim)}
        save_stats(plan.cache_file, {**grouped.to_arrays(), **summary}, plan.provenance)
        if acc is not None and plan.extras_file is not None and plan.extras_provenance is not None:
            extras = acc.result()
            save_stats(plan.extras_file, extras.to_arrays(), plan.extras_provenance)
    return DatasetStats(
        plan.name,
        plan.role,
        grouped,
        len(plan.indices),
        len(np.unique(plan.indices)),
        plan.method,
        plan.cached is not None,
        n_total=len(plan.ds),
        identity=dataset_identity(plan.ds, plan.provenance["reader_options"]),
        indices=plan.indices,
        extras=extras,
    )


def dataset_identity(ds: Dataset, reader_options: dict[str, Any]) -> tuple[str, ...]:
    """What makes two specs the same data: resolved file, format, size and reader options (a class mapping,
    `classes`, only labels structures, so it is left out)."""
    options = {k: v for k, v in reader_options.items() if k != "classes"}
    return (str(Path(ds.path).resolve()), ds.format_name, str(len(ds)), repr(sorted(options.items())))


def same_sample(a: DatasetStats, b: DatasetStats) -> bool:
    """Both sides drew the same structures the same number of times (then their CSI is 0 by construction)."""
    if a.indices is None or b.indices is None or a.identity != b.identity:
        return False
    return bool(np.array_equal(np.sort(a.indices), np.sort(b.indices)))


def moments(stats: GaussianStats, cfg: CSIConfig) -> tuple[np.ndarray, np.ndarray]:
    """(mean (d,), covariance (d, d)) of statistics, shrunk as the run asks."""
    sigma = stats.covariance()
    if cfg.shrinkage is not None:
        sigma = shrink_covariance(sigma, stats.n, None if cfg.shrinkage == "auto" else float(cfg.shrinkage))
    return stats.mean, sigma


def score(up: list[DatasetStats], down: list[DatasetStats], cfg: CSIConfig) -> list[dict[str, Any]]:
    """CSI and bootstrap interval of every (upstream, downstream) pair, ranked per downstream."""
    rows: list[dict[str, Any]] = []
    lo_q, hi_q = 50 * (1 - cfg.confidence), 50 * (1 + cfg.confidence)
    for d in [*up, *down]:
        total = d.grouped.total()
        check_observations(total.n, total.dim, f"{d.role} '{d.name}'", cfg.aggregation)
    for dn in down:
        ref = FrechetReference(*moments(dn.grouped.total(), cfg))
        values = {u.name: ref.distance(*moments(u.grouped.total(), cfg)) for u in up}
        reps: dict[str, list[float]] = {u.name: [] for u in up}
        # a set with fewer than 2 distinct structures cannot be resampled: no interval for its pairs only
        able = [u for u in up if u.n_unique >= 2] if dn.n_unique >= 2 else []
        unable = [d.name for d in [dn, *up] if d.n_unique < 2]
        if cfg.bootstrap > 0 and unable:
            warnings.warn(
                f"no bootstrap interval involving {', '.join(unable)}: fewer than 2 distinct structures", stacklevel=2
            )
        if cfg.bootstrap > 0 and able:
            down_reps = dn.grouped.bootstrap(cfg.bootstrap, _sub_seed(cfg.seed, f"down:{dn.name}"))
            up_reps = {u.name: u.grouped.bootstrap(cfg.bootstrap, _sub_seed(cfg.seed, f"up:{u.name}")) for u in able}
            for down_b in progress_bar(
                down_reps, total=cfg.bootstrap, desc=f"bootstrap {dn.name}", unit="rep", leave=False
            ):
                up_b = {u.name: next(up_reps[u.name]) for u in able}
                if down_b.n < 2:
                    continue  # a replicate drew too few observations for a covariance (tiny samples only)
                ref_b = FrechetReference(*moments(down_b, cfg))
                for u in able:
                    if up_b[u.name].n >= 2:
                        reps[u.name].append(ref_b.distance(*moments(up_b[u.name], cfg)))
        ranked = sorted(up, key=lambda u: values[u.name])
        for rank, u in enumerate(ranked, start=1):
            r = np.asarray(reps[u.name])
            # Resamples repeat structures, which inflates a Frechet distance (most visibly near 0): the
            # percentile interval is shifted by the bootstrap estimate of that bias, then clamped at 0.
            bias = float(r.mean() - values[u.name]) if r.size else None
            rows.append(
                {
                    "downstream": dn.name,
                    "upstream": u.name,
                    "rank": rank,
                    "csi": float(values[u.name]),
                    "ci_low": max(float(np.percentile(r, lo_q)) - bias, 0.0) if r.size else None,
                    "ci_high": max(float(np.percentile(r, hi_q)) - bias, 0.0) if r.size else None,
                    "bootstrap_bias": bias,
                    "n_obs_upstream": u.n_obs,
                    "n_obs_downstream": dn.n_obs,
                    "n_structures_upstream": u.n_structures,
                    "n_structures_downstream": dn.n_structures,
                    "n_unique_upstream": u.n_unique,
                    "n_unique_downstream": dn.n_unique,
                    "sampling_upstream": u.sampling,
                    "sampling_downstream": dn.sampling,
                    "n_total_upstream": u.n_total,
                    "n_total_downstream": dn.n_total,
                    "same_dataset": bool(u.identity) and u.identity == dn.identity,
                    "same_sample": same_sample(u, dn),
                    "confidence": cfg.confidence,
                    "bootstrap": cfg.bootstrap,
                }
            )
    return rows


def gather_stats(cfg: CSIConfig, out: Path) -> tuple[list[DatasetStats], list[DatasetStats], FeatureExtractor]:
    """Sample every dataset and load or compute its grouped statistics: (upstream, downstream, extractor)."""
    if not cfg.upstream or not cfg.downstream:
        raise ConfigError(
            "CSI needs at least one upstream and one downstream dataset",
            fix="pass --upstream NAME=PATH and --downstream NAME=PATH (or list them in --config)",
        )
    if cfg.cache_dir and Path(cfg.cache_dir).exists() and not Path(cfg.cache_dir).is_dir():
        raise ConfigError(  # said before any feature is extracted (it failed when the first result was saved)
            "the statistics cache is a folder, but --cache-dir names an existing file",
            file=cfg.cache_dir,
            fix="choose a folder for --cache-dir (cache_dir=), or leave it out to use OUT/cache",
        )
    check_device(cfg.device)
    samples = [open_and_sample(n, s, "upstream", cfg) for n, s in cfg.upstream.items()]
    samples += [open_and_sample(n, s, "downstream", cfg) for n, s in cfg.downstream.items()]
    options = dict(cfg.extractor_options)
    if cfg.extractor == "soap-full" and "species" not in options:  # plain soap does not depend on species
        options["species"] = _species_of(samples)
    if cfg.device != "cpu":
        options.setdefault("device", cfg.device)
    extractor = get_extractor(cfg.extractor, **options)
    plans = [plan_dataset(sample, extractor, cfg, out) for sample in samples]
    stats = [dataset_stats(p, extractor, cfg, out) for p in plans]
    return stats[: len(cfg.upstream)], stats[len(cfg.upstream) :], extractor


def annotate(rows: list[dict[str, Any]], extractor: FeatureExtractor, cfg: CSIConfig) -> list[dict[str, Any]]:
    """Add the extractor, aggregation, units and comparability note to score rows (in place)."""
    extra = {f"extractor_{k}": v for k, v in extractor.provenance_extra().items()}
    for row in rows:
        row.update(
            extractor=extractor.name,
            aggregation=cfg.aggregation,
            csi_units=extractor.csi_units,
            comparable_within=comparable_within(extractor, cfg),
            **extra,
        )
    return rows


def run_csi(cfg: CSIConfig, out: Path) -> list[dict[str, Any]]:
    """The whole computation; returns one row per (upstream, downstream) pair."""
    return run_csi_with_stats(cfg, out)[0]


def run_csi_with_stats(
    cfg: CSIConfig, out: Path
) -> tuple[list[dict[str, Any]], list[DatasetStats], list[DatasetStats], FeatureExtractor]:
    """`run_csi`, also returning what later steps (mixture selection) read: (rows, upstream, downstream, extractor)."""
    up, down, extractor = gather_stats(cfg, out)
    return annotate(score_all(up, down, cfg), extractor, cfg), up, down, extractor


def score_all(up: list[DatasetStats], down: list[DatasetStats], cfg: CSIConfig) -> list[dict[str, Any]]:
    """`score`, then the measures beyond CSI, ties and out-of-distribution flags (csi/alignment.py)."""
    from atomsift.csi.alignment import score_measures

    rows = score(up, down, cfg)
    score_measures(rows, up, down, cfg)
    return rows


def comparable_within(extractor: FeatureExtractor, cfg: CSIConfig) -> str:
    """The settings a CSI value can be compared under: the same extractor (and weights), aggregation and
    shrinkage. Values from different extractors have different units and scales (e.g. 10 vs 0.1 vs 141)."""
    shrink = "none" if cfg.shrinkage is None else str(cfg.shrinkage)
    return (
        f"extractor={extractor.name}; weights_sha256={extractor.weights_hash()[:12]}; "
        f"aggregation={cfg.aggregation}; shrinkage={shrink}"
    )


def _species_of(samples: list[_Sample]) -> list[int]:
    """Union of the elements of every sampled structure (SOAP-full needs one fixed species list for all sets)."""
    species: set[int] = set()
    for sample in samples:
        for i in np.unique(sample.indices).tolist():
            species.update(int(z) for z in np.unique(sample.ds[i].numbers))
    return sorted(species)
