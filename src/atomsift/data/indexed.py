"""A dataset restricted to the indices of a subset file (the reader option ``indices=FILE`` of every format).

    open_dataset("bundled:oxides", indices="runs/select/subsets/oxides@rutile.json")

The file is one that `save_subset` writes (JSON with an ``indices`` list; `atomsift select --over classes`
writes one per selected class). Record i of the subset is record ``indices[i]`` of the dataset; class labels,
targets and metadata follow. The subset's hash is part of `metadata()`, so caches keyed on a dataset
fingerprint tell subsets apart.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from atomsift.data.base import Dataset
from atomsift.data.record import Record
from atomsift.data.sampling import indices_hash, load_subset
from atomsift.errors import DataError

__all__ = ["IndexedDataset"]


class IndexedDataset(Dataset):
    """The records of `base` at the indices listed in `indices_file`, in that order.

    Args:
        base: the opened dataset.
        indices_file: a subset file (JSON with an ``indices`` list of ints in [0, len(base))).
    """

    def __init__(self, base: Dataset, indices_file: str | Path) -> None:
        self.base = base
        self.format_name = base.format_name  # type: ignore[misc]  (an instance value: the base's format)
        self.indices_file = Path(indices_file).expanduser()
        if not self.indices_file.is_file():
            raise DataError(
                "no such subset file for the reader option 'indices'",
                file=self.indices_file,
                fix="give a file written by `atomsift data sample` or `atomsift select` (JSON with 'indices')",
            )
        indices, _ = load_subset(self.indices_file)
        bad = indices[(indices < 0) | (indices >= len(base))]
        if indices.ndim != 1 or indices.size == 0 or bad.size:
            raise DataError(
                f"the subset file lists {'no indices' if indices.size == 0 else f'index {int(bad[0])}'} for a "
                f"dataset of {len(base)} structures",
                file=self.indices_file,
                fix="use the subset file made for this dataset (same file, split and reader options)",
            )
        self.indices = indices
        super().__init__(base.path, must_exist=False)

    def _length(self) -> int:
        return int(self.indices.size)

    def _read(self, index: int) -> Record:
        return self.base._read(int(self.indices[index]))

    def close(self) -> None:
        self.base.close()

    def class_labels(self) -> np.ndarray | None:
        labels = self.base.class_labels()
        return None if labels is None else labels[self.indices]

    def source_files(self) -> list[Path]:
        return [*self.base.source_files(), self.indices_file]

    def resolve_target(self, name: str) -> str | None:
        return self.base.resolve_target(name)

    def metadata(self) -> dict[str, Any]:
        return {
            **self.base.metadata(),
            "n_structures": len(self),
            "indices_file": str(self.indices_file),
            "indices_sha256": indices_hash(self.indices),
        }
