"""Features from a model checkpoint: the backbone's per-atom embeddings, without heads.

Works for every file `atomsift.models.load_checkpoint` reads: atomsift checkpoints (PaiNN, GemNet-OC), JMP
checkpoints (jmp-s.pt, jmp-l.pt; EMA weights by default) and fairchem-core 1.10 GemNet-OC checkpoints.
Layer "node" is the backbone's node output (GemNet-OC: the per-atom embedding after its global output MLP,
the input of the energy head; PaiNN: the scalar features after the last update block).

Loading is strict by default: a backbone weight that is missing from the file (it would keep its random
initial value) or a file weight the backbone has no place for refuses the extractor; `strict=False`
(`-x strict=false`) loads what fits and warns. Mismatched *head* weights never matter (heads are dropped).
The load report goes into the statistics' provenance and into csi.json (`provenance_extra`).
"""

from __future__ import annotations

import dataclasses
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from atomsift.csi.extract import FileWeightsExtractor, check_geometry
from atomsift.data.record import Record
from atomsift.errors import ConfigError, DataError, shortlist

# Load-report keys of output heads (atomsift / JMP heads; fairchem's output blocks): dropped, so never checked.
HEAD_PREFIXES = ("heads.", "out_energy.", "out_forces.")


class CheckpointExtractor(FileWeightsExtractor):
    """Per-atom backbone embeddings of a checkpoint.

    Args:
        path: checkpoint file.
        device: torch device.
        batch_size: structures per forward pass.
        ema: use EMA weights when the file has them.
        trusted: allow pickled Python objects in the file (fairchem / Lightning checkpoints may need it).
        dtype: "float32" (default) or "float64" for the forward pass; features are returned as float64.
        strict: refuse a file whose backbone weights do not match the backbone (missing or unexpected keys);
            False loads what fits, warns, and records the mismatch in the load report.

    Attributes:
        load_report: atomsift.models.checkpoint.LoadReport of the load (missing / unexpected keys, EMA, notes,
            unfitted GemNet-OC scale factors).
    """

    csi_units = "squared activations (dimensionless)"

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        device: str = "cpu",
        batch_size: int = 32,
        ema: bool = True,
        trusted: bool = False,
        dtype: str = "float32",
        strict: bool = True,
    ) -> None:
        from atomsift.models.checkpoint import load_checkpoint

        if dtype not in ("float32", "float64"):
            raise ConfigError(f"unknown dtype '{dtype}' for the checkpoint extractor", fix="use float32 or float64")
        ema, trusted, self.strict = _flag("ema", ema), _flag("trusted", trusted), _flag("strict", strict)
        self.weights_path = Path(path)
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        model = load_checkpoint(path, ema=ema, device=self.device, trusted=trusted, strict=False)
        self.load_report = model.load_report
        self._check_backbone_keys()
        self.backbone = model.backbone.to(getattr(torch, dtype)).eval()
        self.dim = int(self.backbone.node_dim)
        self.name = f"{self.backbone.name}:{self.weights_path.name}"
        self.layer = "node"
        self.supported_numbers = frozenset(range(1, int(self.backbone.num_elements)))
        self._dtype = getattr(torch, dtype)

    def backbone_mismatch(self) -> tuple[list[str], list[str]]:
        """(missing, unexpected) keys of the load report outside the heads: the ones that change the features."""
        report = self.load_report
        return (
            [k for k in report.missing_keys if not k.startswith(HEAD_PREFIXES)],
            [k for k in report.unexpected_keys if not k.startswith(HEAD_PREFIXES)],
        )

    def _check_backbone_keys(self) -> None:
        missing, unexpected = self.backbone_mismatch()
        if not missing and not unexpected:
            return
        what = (
            f"{len(missing)} backbone weight(s) missing from the file ({_head(missing)}) and {len(unexpected)} "
            f"unexpected ({_head(unexpected)})"
        )
        if self.strict:
            raise DataError(
                f"the checkpoint does not fit its backbone: {what}; features would come from a partly random backbone",
                file=self.weights_path,
                fix="use a checkpoint whose weights match its architecture, or pass -x strict=false "
                "(extractor option strict=False) to load what fits; the load report is written to csi.json",
            )
        warnings.warn(
            f"{self.weights_path}: loaded non-strictly, {what}; missing weights keep their random initial values "
            "(the load report is in csi.json and the cache provenance)",
            stacklevel=3,
        )

    def provenance_extra(self) -> dict[str, Any]:
        """The load report (its source shown by file name: moving the file keeps a cache valid)."""
        report = dataclasses.replace(self.load_report, source=self.weights_path.name)
        return {
            "load_report": {
                "used_ema": bool(report.used_ema),
                "missing_keys": list(report.missing_keys),
                "unexpected_keys": list(report.unexpected_keys),
                "unfitted_scale_factors": list(getattr(report, "unfitted_scale_factors", [])),
                "notes": list(report.notes),
                "summary": report.summary(),
            }
        }

    def features(self, records: Sequence[Record]) -> list[np.ndarray]:
        from atomsift.graph import collate

        self.check_elements(records)
        for rec in records:
            check_geometry(rec, self.name)
        rows: list[np.ndarray] = []
        for start in range(0, len(records), self.batch_size):
            chunk = records[start : start + self.batch_size]
            batch = collate(chunk, dtype=self._dtype).to(self.device)
            with torch.no_grad():
                node = self.backbone(batch).node.double().cpu().numpy()
            rows.extend(np.split(node, np.cumsum(batch.natoms.tolist())[:-1]))
        return rows


def _head(keys: list[str], n: int = 5) -> str:
    return shortlist(keys, n) if keys else "none"


def _flag(name: str, value: Any) -> bool:
    """A boolean extractor option; 'true'/'false' text (any case) is accepted, anything else refused."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "yes", "1"):
        return True
    if text in ("false", "no", "0"):
        return False
    raise ConfigError(
        f"checkpoint extractor option {name}={value!r} is not true or false", fix=f"write -x {name}=true or false"
    )
