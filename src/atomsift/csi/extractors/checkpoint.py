"""Features from a model checkpoint: the backbone's per-atom embeddings, without heads.

Works for every file `atomsift.models.load_checkpoint` reads: atomsift checkpoints (PaiNN, GemNet-OC), JMP
checkpoints (jmp-s.pt, jmp-l.pt; EMA weights by default) and fairchem-core 1.10 GemNet-OC checkpoints.
Layer "node" is the backbone's node output (GemNet-OC: the per-atom embedding after its global output MLP,
the input of the energy head; PaiNN: the scalar features after the last update block).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from atomsift.csi.extract import FileWeightsExtractor, check_geometry
from atomsift.data.record import Record
from atomsift.errors import ConfigError


class CheckpointExtractor(FileWeightsExtractor):
    """Per-atom backbone embeddings of a checkpoint.

    Args:
        path: checkpoint file.
        device: torch device.
        batch_size: structures per forward pass.
        ema: use EMA weights when the file has them.
        trusted: allow pickled Python objects in the file (fairchem / Lightning checkpoints may need it).
        dtype: "float32" (default) or "float64" for the forward pass; features are returned as float64.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        *,
        device: str = "cpu",
        batch_size: int = 32,
        ema: bool = True,
        trusted: bool = False,
        dtype: str = "float32",
    ) -> None:
        from atomsift.models.checkpoint import load_checkpoint

        if dtype not in ("float32", "float64"):
            raise ConfigError(f"unknown dtype '{dtype}' for the checkpoint extractor", fix="use float32 or float64")
        self.weights_path = Path(path)
        self.device = torch.device(device)
        self.batch_size = int(batch_size)
        model = load_checkpoint(path, ema=ema, device=self.device, trusted=trusted, strict=False)
        self.load_report = model.load_report
        self.backbone = model.backbone.to(getattr(torch, dtype)).eval()
        self.dim = int(self.backbone.node_dim)
        self.name = f"{self.backbone.name}:{self.weights_path.name}"
        self.layer = "node"
        self.supported_numbers = frozenset(range(1, int(self.backbone.num_elements)))
        self._dtype = getattr(torch, dtype)

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
