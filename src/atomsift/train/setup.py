"""Pieces pretraining and finetuning share: graph defaults, normalisers, scale factors, layer-wise learning
rates, saving the best model, and the closing table."""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.console import Console
from rich.table import Table

from atomsift.data.base import Dataset, label_hints
from atomsift.errors import ConfigError, naming_file
from atomsift.graph.settings import GraphSettings, graph_settings_for
from atomsift.train.config import GraphSpec, LayerwiseLR
from atomsift.train.data import BatchCollator, Task, TrainSet
from atomsift.train.normalize import MissingTarget, Normalizer, fit_normalizer

log = logging.getLogger(__name__)

_GENERIC_FORMATS = {"extxyz", "ase-db", "aselmdb", "adsorbates-json"}
MOLECULE_GRAPH = GraphSettings(8.0, 30, False)  # ANI-1x / Transition-1x (the paper)
PERIODIC_GRAPH = GraphSettings(12.0, 30, True)  # OC20 / OC22 (the paper)


def default_graph(ds: Dataset, spec: GraphSpec | None, backbone_name: str) -> GraphSettings | None:
    """A dataset's graph: the spec's; else, for GemNet-OC, the paper's for its format, or by its first structure
    (periodic: 12 A / 30 with pbc like OC20; molecule: 8 A / 30 like ANI-1x); other backbones keep their own."""
    if spec is not None:
        return spec.settings()
    if backbone_name != "gemnet_oc":
        return None
    if ds.format_name not in _GENERIC_FORMATS:
        try:
            return graph_settings_for(ds.format_name)
        except ConfigError:
            pass
    first = ds[0]
    graph = PERIODIC_GRAPH if _periodic(first) else MOLECULE_GRAPH
    _warn_mixed_periodicity(ds, graph)
    return graph


def _periodic(record: Any) -> bool:
    return bool(np.any(record.pbc)) and record.cell is not None


def _warn_mixed_periodicity(ds: Dataset, graph: GraphSettings, checked: int = 200) -> None:
    """Warn when structures of `ds` (up to `checked`, evenly spaced) disagree with the graph its first
    structure chose: periodic cells read as molecules lose their images (or molecules get a periodic graph)."""
    picks = np.unique(np.linspace(0, len(ds) - 1, min(len(ds), checked)).astype(int))
    other = [int(i) for i in picks if _periodic(ds[int(i)]) != graph.pbc]
    if other:
        kind, first_kind = ("periodic", "a molecule") if not graph.pbc else ("not periodic", "periodic")
        shown = graph.describe() + ("" if graph.pbc else " (no periodic boundaries)")
        warnings.warn(
            f"{ds.path}: its first structure is {first_kind}, so GemNet-OC reads the whole set with {shown}, "
            f"but {len(other)} of {len(picks)} structures checked are {kind} (first: index {other[0]}); give the "
            "dataset's graph explicitly (graph: {cutoff: 12, max_neighbors: 30, pbc: true} for periodic cells) or "
            "split the file by periodicity",
            stacklevel=3,
        )


def task_records(task: Task, limit: int) -> list:
    """Up to `limit` records of the training subset (its first distinct structures, in subset order)."""
    seen: dict[int, None] = {}  # insertion-ordered set: first occurrences in subset order
    for i in task.train.tolist():
        seen.setdefault(i)
        if len(seen) >= limit:
            break
    return [task.dataset[i] for i in seen]


def fit_task_normalizer(task: Task, limit: int, num_elements: int, *, linear_reference: bool = True) -> Normalizer:
    """The normaliser of a task's head, fitted on its training subset (errors name the dataset's file and the
    reader's hints, e.g. labels under another key)."""
    try:
        with naming_file(getattr(task.dataset, "path", None)):
            return fit_normalizer(
                task_records(task, limit),
                target=task.target,
                linear_reference=linear_reference,
                num_elements=num_elements,
                forces=task.has_forces,
                source=task.name,
            )
    except MissingTarget as exc:
        hints = label_hints(task.dataset)
        if hints:  # labels under other keys: the reader says which option reads them
            exc.amend(fix="; ".join(hints))
        raise


def fit_scale_factors_if_needed(
    backbone: torch.nn.Module,
    tasks: list[Task],
    n_batches: int,
    batch_size: int,
    dtype: torch.dtype,
    progress: bool = False,
) -> list[str]:
    """Fit GemNet-OC scale factors that have no value on training batches (never use them as identity).

    Returns the names fitted ([] when there were none to fit or the backbone has none).
    """
    from atomsift.models.backbones.gemnet_oc.scaling import unfitted_scale_factors

    if not unfitted_scale_factors(backbone):
        return []
    from atomsift.models.backbones.gemnet_oc.model import ensure_scale_factors

    collator = BatchCollator(tasks, [], dtype)
    train = TrainSet(tasks)
    order = np.random.default_rng(12345).permutation(len(train))[: n_batches * batch_size]
    batches = [
        collator([train[train.item(int(i))] for i in order[k : k + batch_size]])
        for k in range(0, len(order), batch_size)
    ]
    was = backbone.training
    backbone.eval()
    model_log = logging.getLogger("atomsift.models.backbones.gemnet_oc.model")
    level = model_log.level
    model_log.setLevel(logging.ERROR)  # the caller reports the fit in one line, not every factor's name
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # the bar only on a terminal; in a log (an experiment's job, CI) one line on stdout says it instead
            bar = progress and sys.stderr.isatty()
            if progress and not bar:
                n = len(unfitted_scale_factors(backbone))
                print(f"fitting {n} GemNet-OC scale factors on {len(batches)} training batches", flush=True)
            names = ensure_scale_factors(backbone, batches, progress=bar)
    finally:
        model_log.setLevel(level)
    backbone.train(was)
    return names


def lr_layers(backbone: torch.nn.Module) -> tuple[list[str], list[list[str]]]:
    """Parameter-name prefixes of the embedding and of each block, for layer-wise learning rates.

    GemNet-OC: embedding = atom and edge embeddings, bases and their shared projections, the first output
    block; block i = interaction block i with output block i + 1; the global output MLPs go with the last
    block. PaiNN: embedding = element embedding and radial filters; block i = message i with update i.
    Other backbones: everything in one block (a documented fallback).
    """
    name = getattr(backbone, "name", "")
    if name == "gemnet_oc":
        blocks = [[f"int_blocks.{i}.", f"out_blocks.{i + 1}."] for i in range(backbone.num_blocks)]
        blocks[-1] += ["out_mlp_E.", "out_mlp_F."]
        embedding = ["atom_emb.", "edge_emb.", "out_blocks.0.", "radial_basis", "cbf_basis", "sbf_basis", "mlp_"]
        return embedding, blocks
    if name == "painn":
        return ["embedding.", "filter_net."], [
            [f"interactions.{i}.", f"mixing.{i}."] for i in range(backbone.num_layers)
        ]
    return [], [[""]]


def block_scales(scales: list[float], n: int) -> list[float]:
    """Scales for n blocks: the list itself when it has n entries, else interpolated along depth."""
    if n == len(scales):
        return list(scales)
    if len(scales) == 1 or n == 1:
        return [scales[-1]] * n
    x = np.linspace(0.0, 1.0, len(scales))
    return [float(v) for v in np.interp(np.linspace(0.0, 1.0, n), x, scales)]


def param_groups(model: torch.nn.Module, layerwise: LayerwiseLR | None) -> list[dict[str, Any]]:
    """Optimizer groups: one group at scale 1, or the embedding / blocks / heads at layer-wise scales."""
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if layerwise is None:
        return [{"params": [p for _, p in params], "lr_scale": 1.0, "name": "all"}]
    embedding, blocks = lr_layers(model.backbone)
    scales = block_scales(layerwise.blocks, len(blocks))
    groups: dict[str, dict[str, Any]] = {"embedding": {"params": [], "lr_scale": layerwise.embedding}}
    for i, scale in enumerate(scales):
        groups[f"block{i}"] = {"params": [], "lr_scale": scale}
    groups["heads"] = {"params": [], "lr_scale": layerwise.heads}
    for name, p in params:
        if not name.startswith("backbone."):
            groups["heads"]["params"].append(p)
            continue
        local = name[len("backbone.") :]
        if embedding and any(local.startswith(prefix) for prefix in embedding):
            groups["embedding"]["params"].append(p)
            continue
        for i, prefixes in enumerate(blocks):
            if any(local.startswith(prefix) for prefix in prefixes):
                groups[f"block{i}"]["params"].append(p)
                break
        else:
            groups[f"block{len(blocks) - 1}"]["params"].append(p)
    return [{**g, "name": k} for k, g in groups.items() if g["params"]]


def best_model_writer(path: Path, metadata: dict[str, Any]):
    """on_best callback: writes the module's EMA weights as an atomsift checkpoint (rank 0 only)."""
    from atomsift.models.checkpoint import save_checkpoint

    def write(module: Any, epoch: int, value: float) -> None:
        if module.trainer.is_global_zero:
            meta = {
                **metadata,
                "trained": True,
                "weights": "ema" if module.ema is not None else "raw",
                "best_epoch": epoch + 1,
                "best_value": value,
                "monitor": module.monitor,
            }
            save_checkpoint(module.weights_for_saving(), path, metadata=meta)

    return write


def closing_table(title: str, rows: list[tuple[str, str]], console: Console | None = None) -> None:
    """The short table printed at the end of a run."""
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column("", style="bold")
    table.add_column("")
    for key, value in rows:
        table.add_row(key, value)
    (console or Console()).print(table)


def fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}g}"
