"""Training data: tasks (one per dataset), subsets drawn once and saved, mixtures, and the budget sampler.

A task is one dataset that trains its own heads. Its structures are split once: `val` held out, then the
training subset drawn from the rest; both are saved in RUN/subsets/ with a hash and re-read on resume. The
`BudgetBatchSampler` makes exactly len(subset) x epochs structure passes: every epoch is one permutation of
the subset (seeded by seed and epoch), cut into global batches of batch_size x world_size; each rank takes
its share of every global batch, and a rank whose share is empty gets one zero-weight structure, so every
rank runs the same number of steps (DDP never waits for a missing batch).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from atomsift.data.base import Dataset
from atomsift.data.record import Record
from atomsift.data.sampling import class_balanced_indices, indices_hash, load_subset, save_subset
from atomsift.errors import ConfigError, DataError
from atomsift.graph.batch import AtomsBatch, collate
from atomsift.graph.settings import GraphSettings


@dataclass
class Task:
    """One dataset in training: its data, subsets, graph, loss weights and the head it trains.

    Attributes:
        name: dataset (and head) name.
        dataset: the opened dataset.
        train: (n,) indices of the training subset; val: (m,) validation indices; test: test indices or None.
        graph: its graph settings (None: the backbone's own).
        target: "energy" or a target name; energy_weight / force_weight: loss weights (0 = not trained).
        has_forces: the data has forces (checked on the training subset).
    """

    name: str
    dataset: Dataset
    train: np.ndarray
    val: np.ndarray
    graph: GraphSettings | None
    target: str = "energy"
    energy_weight: float = 1.0
    force_weight: float = 0.0
    has_forces: bool = True
    test: np.ndarray | None = None
    info: dict[str, Any] = field(default_factory=dict)


def mixture_counts(
    sizes: dict[str, int],
    n: int,
    mixture: str,
    temperature: float = 2.0,
    nominal: dict[str, float] | None = None,
    weights: dict[str, float] | None = None,
) -> dict[str, int]:
    """Structures per dataset: single (all N), balanced (N / k each), temperature (p_i ~ n_i^(1/T)), weights
    (p_i ~ weights[i]).

    Counts sum to n exactly: floor of each share, the rest to the largest remainders (ties: listed order).
    """
    names = list(sizes)
    if mixture == "single":
        return {names[0]: n}
    if mixture == "balanced":
        shares = np.full(len(names), 1.0 / len(names))
    elif mixture == "weights" and weights is not None:
        base = np.array([float(weights[k]) for k in names])
        shares = base / base.sum()
    elif mixture == "temperature":
        base = np.array([float((nominal or sizes)[k]) for k in names])
        weights = base ** (1.0 / temperature)
        shares = weights / weights.sum()
    else:
        raise ConfigError(f"unknown mixture '{mixture}'", fix="use single, balanced, temperature or weights")
    exact = shares * n
    counts = np.floor(exact).astype(np.int64)
    order = sorted(range(len(names)), key=lambda i: (-(exact[i] - counts[i]), i))
    for i in order[: n - int(counts.sum())]:
        counts[i] += 1
    return {k: int(c) for k, c in zip(names, counts)}


def temperature_shares(sizes: dict[str, float], temperature: float) -> dict[str, float]:
    """p_i = n_i^(1/T) / sum_j n_j^(1/T)."""
    w = {k: float(v) ** (1.0 / temperature) for k, v in sizes.items()}
    total = sum(w.values())
    return {k: v / total for k, v in w.items()}


def draw_subset(
    n_total: int,
    exclude: np.ndarray,
    n: int,
    seed: int,
    *,
    labels: np.ndarray | None = None,
    allow_repeats: bool = False,
    name: str = "",
    epochs: int = 1,
) -> np.ndarray:
    """n indices from range(n_total) minus `exclude`: random without replacement, or class-balanced (labels).

    N above what is available is an error naming the size (suggesting more epochs) unless allow_repeats, which
    then repeats whole random permutations of the available structures.
    """
    pool = np.setdiff1d(np.arange(n_total, dtype=np.int64), exclude, assume_unique=False)
    if pool.size == 0:
        raise DataError(
            f"dataset '{name}' has no structures left for training after the validation hold-out", fix="lower val_size"
        )
    rng = np.random.default_rng(seed)
    if labels is not None:
        picked = class_balanced_indices(labels[pool], n, seed)
        return pool[picked]
    if n > pool.size and not allow_repeats:
        raise ConfigError(
            f"n_samples asks {n} structures of '{name}', which has {pool.size} available for training "
            f"({n_total} in all, {n_total - pool.size} held out)",
            fix=f"lower n_samples, train more epochs on fewer structures (e.g. n_samples={pool.size} with "
            f"epochs={math.ceil(n * epochs / pool.size)}), or set allow_repeats: true",
        )
    reps = [rng.permutation(pool) for _ in range(math.ceil(n / pool.size))]
    return np.concatenate(reps)[:n].astype(np.int64)


def hold_out(n_total: int, size: int, seed: int) -> np.ndarray:
    """`size` random indices of range(n_total) held out for validation (sorted)."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_total, size=min(size, n_total), replace=False).astype(np.int64))


def save_or_check_subset(path: Path, indices: np.ndarray, resume: bool, **provenance: Any) -> np.ndarray:
    """Save a subset (first run), or on resume read the saved one and check it equals what the config gives.
    DDP's extra processes draw the same subset and write nothing."""
    from atomsift.train.run_folder import secondary_rank

    if secondary_rank():
        return indices
    if resume and path.exists():
        saved, meta = load_subset(path)
        if meta.get("sha256_16") != indices_hash(saved) or not np.array_equal(saved, indices):
            raise DataError(
                "the saved subset differs from the one the settings draw (dataset or settings changed)",
                file=path,
                fix="resume with the settings and data of the original run, or start a new --out",
            )
        return saved
    save_subset(path, indices, sha256_16=indices_hash(indices), **provenance)
    return indices


@dataclass(frozen=True)
class Item:
    """What the sampler yields per structure: task, position in its subset, weight (0 = padding), and the
    number of real structures in the whole step over all ranks."""

    task: int
    position: int
    weight: float = 1.0
    step_size: int = 1


class TrainSet(torch.utils.data.Dataset):
    """Items -> (Record, task, weight); the subsets of all tasks concatenated in task order."""

    def __init__(self, tasks: Sequence[Task], split: str = "train") -> None:
        self.tasks = list(tasks)
        self.split = split
        self.offsets = np.cumsum([0] + [len(self._indices(t)) for t in self.tasks])

    def _indices(self, task: Task) -> np.ndarray:
        return {"train": task.train, "val": task.val, "test": task.test}[self.split]

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def item(self, flat: int, weight: float = 1.0, step_size: int = 1) -> Item:
        task = int(np.searchsorted(self.offsets, flat, side="right") - 1)
        return Item(task, int(flat - self.offsets[task]), weight, step_size)

    def __getitem__(self, item: Item | int) -> tuple[Record, Item]:
        if not isinstance(item, Item):
            item = self.item(int(item))
        task = self.tasks[item.task]
        return task.dataset[int(self._indices(task)[item.position])], item


class BatchCollator:
    """(Record, Item) pairs -> AtomsBatch with dataset indices, graph settings, `weights` (B,) and `step_size`,
    the step's structure count over all ranks (the loss divides by it, so 1 and k processes agree)."""

    def __init__(self, tasks: Sequence[Task], targets: Sequence[str], dtype: torch.dtype = torch.float32) -> None:
        self.names = [t.name for t in tasks]
        self.graphs = [t.graph for t in tasks]
        self.targets = list(targets)
        self.dtype = dtype

    def __call__(self, items: list[tuple[Record, Item]]) -> AtomsBatch:
        records = [r for r, _ in items]
        present = [t for t in self.targets if any(t in r.targets for r in records)]
        batch = collate(
            records,
            dtype=self.dtype,
            targets=present,
            dataset=[it.task for _, it in items],
            dataset_names=self.names,
            dataset_graphs=self.graphs if any(g is not None for g in self.graphs) else (),
        )
        batch.weights = torch.tensor([it.weight for _, it in items], dtype=self.dtype)
        batch.step_size = items[0][1].step_size
        return batch


class BudgetBatchSampler(torch.utils.data.Sampler):
    """Batches of Items for one rank: exactly len(train set) structures per epoch, resumable mid-epoch.

    Args:
        dataset: the TrainSet. batch_size: structures per step and rank. seed: base seed.
        rank, world_size: this process's share of every global batch.
        shuffle: permute every epoch (False for validation and test: fixed order).
    """

    def __init__(
        self, dataset: TrainSet, batch_size: int, seed: int, rank: int = 0, world_size: int = 1, shuffle: bool = True
    ) -> None:
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.epoch = 0
        self.skip = 0  # batches already trained in epoch `skip_epoch` (set on resume)
        self.skip_epoch = -1
        # Lightning sets the epoch on `batch_sampler.sampler` (DistributedSampler's place): that is this object
        self.sampler = self

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def global_batches(self, epoch: int | None = None) -> list[np.ndarray]:
        """The epoch's batches of all ranks (indices into the dataset); `epoch` defaults to the current one."""
        n = len(self.dataset)
        if self.shuffle:
            order = np.random.default_rng([self.seed, self.epoch if epoch is None else epoch]).permutation(n)
        else:
            order = np.arange(n)
        size = self.batch_size * self.world_size
        return [order[i : i + size] for i in range(0, n, size)]

    def __len__(self) -> int:
        return math.ceil(len(self.dataset) / (self.batch_size * self.world_size))

    def __iter__(self) -> Iterator[list[Item]]:
        epoch, skip = self.epoch, (self.skip if self.epoch == self.skip_epoch else 0)
        if skip >= len(self):
            # resumed from the end of an epoch (every batch trained, the epoch not yet closed): Lightning closes
            # it without a batch and takes the next epoch's batches from this same iterator, which data-loader
            # workers have already started (an empty one lost that epoch): this iterator is the next epoch's
            epoch, skip = epoch + 1, 0
        batches = self.global_batches(epoch)
        self.skip = 0
        for flat in batches[skip:]:
            share = np.array_split(flat, self.world_size)[self.rank]
            if share.size == 0:  # fewer structures than ranks in the last batch: a zero-weight stand-in
                yield [self.dataset.item(int(flat[0]), weight=0.0, step_size=flat.size)]
            else:
                yield [self.dataset.item(int(i), step_size=flat.size) for i in share]
