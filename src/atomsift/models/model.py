"""A backbone with named heads, and prediction in physical units (eV, eV/A), also as an ASE calculator.

    model = AtomsModel(build_backbone("painn"), {"energy": {"kind": "energy", "forces": "gradient"}})
    out = model(batch)                          # {"energy": (B,), "forces": (N, 3)}
    results = model.predict(list_of_atoms)      # [{"energy": float eV, "forces": (n, 3) eV/A}, ...]
    atoms.calc = model.as_calculator()          # run MD or a relaxation in ASE

Several heads (e.g. one per pretraining dataset) share one backbone; `head=` picks one, the default is the
first. State-dict keys are "backbone.*" and "heads.<name>.*".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from atomsift.errors import ConfigError
from atomsift.models.base import Backbone
from atomsift.models.heads import HeadSpec, build_head, parse_head_spec


class AtomsModel(nn.Module):
    """Backbone + named heads.

    Args:
        backbone: any atomsift Backbone.
        heads: name -> HeadSpec (or its dict form); the first one is the default head.
        metadata: free-form information kept in checkpoints (training data, normalisers, provenance).
    """

    def __init__(
        self, backbone: Backbone, heads: dict[str, HeadSpec | dict], metadata: dict[str, Any] | None = None
    ) -> None:
        super().__init__()
        if not heads:
            raise ConfigError("a model needs at least one head", fix="pass heads={'energy': {'kind': 'energy'}}")
        self.backbone = backbone
        self.head_specs: dict[str, HeadSpec] = {
            name: spec if isinstance(spec, HeadSpec) else parse_head_spec(spec, name) for name, spec in heads.items()
        }
        self.heads = nn.ModuleDict(
            {
                name: build_head(spec, backbone.node_dim, backbone.edge_dim, backbone.num_elements)
                for name, spec in self.head_specs.items()
            }
        )
        self.metadata: dict[str, Any] = dict(metadata or {})

    @property
    def default_head(self) -> str:
        return next(iter(self.head_specs))

    def head_name(self, head: str | None) -> str:
        """Resolve `head` (None -> the default); ConfigError naming the heads for an unknown one."""
        if head is None:
            return self.default_head
        if head not in self.head_specs:
            raise ConfigError(f"the model has no head '{head}'", fix=f"use one of: {', '.join(self.head_specs)}")
        return head

    def forward(self, batch, head: str | None = None, create_graph: bool | None = None) -> dict[str, Tensor]:
        """Run the backbone and one head.

        Args:
            batch: an atomsift.graph.AtomsBatch.
            head: head name (None: the default head).
            create_graph: keep the graph of gradient forces for a loss on them (default: self.training).

        Returns:
            {"energy": (B,) eV, "forces": (N, 3) eV/A} for energy heads, {"property": (B, k)} for property heads.
        """
        self._check_batch(batch)
        name = self.head_name(head)
        spec = self.head_specs[name]
        positions = None
        if spec.forces == "gradient":
            if not batch.positions.requires_grad:
                batch = dataclasses.replace(batch, positions=batch.positions.detach().requires_grad_(True))
            positions = batch.positions
        with torch.set_grad_enabled(torch.is_grad_enabled() or spec.forces == "gradient"):
            out = self.backbone(batch)
            return self.heads[name](
                out, batch, positions=positions, create_graph=self.training if create_graph is None else create_graph
            )

    def forward_heads(
        self, batch, heads: dict[str, Tensor | None], create_graph: bool | None = None
    ) -> dict[str, dict[str, Tensor]]:
        """Run the backbone once and several heads (training on mixed-dataset batches).

        Args:
            batch: an atomsift.graph.AtomsBatch.
            heads: head name -> (B,) bool mask of the structures it serves (None: all). Outputs cover the whole
                batch; gradient forces are taken from the masked structures' energies only, so other
                structures get zero forces from that head.
            create_graph: keep the graph of gradient forces (default: self.training).

        Returns:
            head name -> that head's outputs (as `forward`).
        """
        self._check_batch(batch)
        specs = {name: self.head_specs[self.head_name(name)] for name in heads}
        gradient = any(spec.forces == "gradient" for spec in specs.values())
        positions = None
        if gradient:
            if not batch.positions.requires_grad:
                batch = dataclasses.replace(batch, positions=batch.positions.detach().requires_grad_(True))
            positions = batch.positions
        create = self.training if create_graph is None else create_graph
        with torch.set_grad_enabled(torch.is_grad_enabled() or gradient):
            out = self.backbone(batch)
            results = {}
            for name, mask in heads.items():
                # several gradient heads differentiate the same graph: keep it until the last one
                keep = create or (gradient and name != list(heads)[-1])
                results[name] = self.heads[name](out, batch, positions=positions, create_graph=keep, mask=mask)
            return results

    def _check_batch(self, batch) -> None:
        """The batch's positions have the weights' dtype and device (else torch fails deep inside a layer)."""
        weight = next(self.parameters())
        pos = batch.positions
        if pos.dtype != weight.dtype or pos.device != weight.device:
            raise ConfigError(
                f"the batch is {str(pos.dtype).removeprefix('torch.')} on {pos.device}, the model's weights are "
                f"{str(weight.dtype).removeprefix('torch.')} on {weight.device}",
                fix="collate with the model's dtype and move the batch to its device: "
                "collate(structures, dtype=model.dtype).to(model.device) (model.predict does this for you)",
            )

    def graph_for(self, head: str | None = None):  # -> GraphSettings | None
        """The graph settings the head was trained with (metadata 'head_graphs'); None: the backbone's own."""
        from atomsift.graph.settings import GraphSettings

        spec = (self.metadata.get("head_graphs") or {}).get(self.head_name(head))
        return None if spec is None else GraphSettings(spec["cutoff"], spec["max_neighbors"], spec["pbc"])

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def predict(
        self,
        structures: Sequence[Any],
        head: str | None = None,
        batch_size: int = 16,
        progress: bool = False,
    ) -> list[dict[str, Any]]:
        """Predict every structure (ase.Atoms or atomsift Records), in eval mode.

        Returns:
            one dict per structure: "energy" (float, eV) and "forces" ((n, 3) float64, eV/A) for energy heads,
            "property" ((k,) float64) for property heads.
        """
        from atomsift.graph import collate

        if hasattr(structures, "get_positions") or hasattr(structures, "numbers"):  # one ase.Atoms / Record
            raise ConfigError(
                f"predict takes a list of structures, got one {type(structures).__name__}",
                fix="pass a list, e.g. model.predict([atoms])",
            )
        name = self.head_name(head)
        graph = self.graph_for(name)
        was_training = self.training
        self.eval()
        results: list[dict[str, Any]] = []
        starts = range(0, len(structures), batch_size)
        if progress:
            from atomsift.progress import progress_bar

            starts = progress_bar(starts, desc="predict", unit="batch")
        try:
            for start in starts:
                chunk = structures[start : start + batch_size]
                if graph is None:
                    batch = collate(chunk, dtype=self.dtype)
                else:  # the head's training graph (cutoff, neighbour limit, periodicity)
                    batch = collate(
                        chunk, dtype=self.dtype, dataset=[0] * len(chunk), dataset_names=[name], dataset_graphs=[graph]
                    )
                batch = batch.to(self.device)
                with torch.no_grad():  # forward turns gradients back on for gradient forces
                    out = self(batch, head=name, create_graph=False)
                results.extend(_split(out, batch))
        finally:
            self.train(was_training)
        return results

    def as_calculator(self, head: str | None = None, **kwargs: Any):
        """An ASE calculator (energy, free_energy, forces) that runs this model; see AtomsiftCalculator."""
        from atomsift.models.calculator import AtomsiftCalculator

        return AtomsiftCalculator(self, head=self.head_name(head), **kwargs)


def _split(out: dict[str, Tensor], batch) -> list[dict[str, Any]]:
    """Per-structure float64 numpy results from batched outputs."""
    counts = batch.natoms.tolist()
    rows: list[dict[str, Any]] = [{} for _ in counts]
    if "energy" in out:
        for row, e in zip(rows, out["energy"].detach().double().cpu().tolist()):
            row["energy"] = float(e)
    if "forces" in out:
        forces = out["forces"].detach().double().cpu().numpy()
        for row, f in zip(rows, np.split(forces, np.cumsum(counts)[:-1])):
            row["forces"] = f
    if "property" in out:
        for row, p in zip(rows, out["property"].detach().double().cpu().numpy()):
            row["property"] = p
    return rows
