"""`atomsift pretrain`: N structures x E epochs from one upstream dataset or a mixture (docs/training.md).

plan = plan_pretraining(cfg)           # datasets, sizes, shares, steps, budget C = N x E, graphs
result = run_pretraining(cfg, out)     # subsets saved, model trained, summary.json and model.pt written
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.table import Table

from atomsift.data.base import label_hints
from atomsift.data.spec import open_spec
from atomsift.errors import ConfigError, DataError
from atomsift.models import AtomsModel, build_backbone
from atomsift.models.backbones.gemnet_oc.utils import forget_data_warnings
from atomsift.train.config import PretrainConfig
from atomsift.train.data import (
    BatchCollator,
    Task,
    TrainSet,
    draw_subset,
    hold_out,
    mixture_counts,
    save_or_check_subset,
    temperature_shares,
)
from atomsift.train.inputs import input_fingerprints, read_run_json
from atomsift.train.losses import TaskInfo
from atomsift.train.module import TrainModule
from atomsift.train.run_folder import folder_outlook, prepare_run, quiet_if_secondary, releases_run_locks, write_json
from atomsift.train.runner import resume_point, run_fit
from atomsift.train.setup import (
    best_model_writer,
    closing_table,
    default_graph,
    fit_scale_factors_if_needed,
    fit_task_normalizer,
    fmt,
    param_groups,
)

DEFAULT_FORCE_WEIGHT = 10.0  # the paper's force weight for every upstream dataset


@dataclass
class DatasetPlan:
    name: str
    dataset: Any
    size: int
    val: int
    count: int
    share: float
    graph: Any
    has_forces: bool
    energy_weight: float
    force_weight: float


@dataclass
class PretrainPlan:
    datasets: list[DatasetPlan]
    n_samples: int
    epochs: int
    steps_per_epoch: int
    notes: list[str] = field(default_factory=list)
    world_size: int = 1

    @property
    def budget(self) -> int:
        return self.n_samples * self.epochs

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.epochs


def _backbone_name(cfg: PretrainConfig) -> str:
    if cfg.backbone.name is not None:
        from atomsift.models.registry import canonical_name

        return canonical_name(cfg.backbone.name)
    return "checkpoint"


def world_size_of(cfg: Any) -> int:
    """Processes of the run as the settings say (devices x num_nodes; 1 where devices is not a count)."""
    devices = cfg.devices
    if isinstance(devices, str) and devices.isdigit():
        devices = int(devices)
    return (devices if isinstance(devices, int) and devices > 0 else 1) * cfg.num_nodes


def _val_size(spec: Any, size: int) -> int:
    """Structures held out for validation: val_size, else 5 % (at least 1, at most 2000)."""
    return spec.val_size if spec.val_size is not None else min(2000, max(1, round(0.05 * size)))


def _largest_fitting_n(cfg: PretrainConfig, sizes: dict[str, int], counts: dict[str, int]) -> int | None:
    """The largest N below n_samples whose mixture counts fit every dataset's training structures (None if none
    is found): the N an error suggests, with the epochs that keep the budget."""
    available = {k: sizes[k] - _val_size(cfg.upstream[k], sizes[k]) for k in sizes}
    start = min(available[k] * cfg.n_samples // counts[k] for k in counts if counts[k] > 0)
    for n in range(min(start + 1, cfg.n_samples - 1), max(start - 10_000, 0), -1):  # largest-remainder counts
        trial = _counts(cfg, sizes, n)
        if all(trial[k] <= available[k] for k in trial):  # are not monotone in N: scan down from the estimate
            return n
    return None


def _counts(cfg: PretrainConfig, sizes: dict[str, int], n: int) -> dict[str, int]:
    """N_i of each dataset for a total of n (the mixture's rule)."""
    return mixture_counts(sizes, n, cfg.mixture, cfg.temperature, cfg.nominal_sizes, cfg.weights)


def plan_pretraining(cfg: PretrainConfig, world_size: int | None = None) -> PretrainPlan:
    """Open the upstream datasets and work out sizes, shares, counts, graphs and steps (no training)."""
    backbone = _backbone_name(cfg)
    opened = {name: open_spec(spec, name, role="upstream") for name, spec in cfg.upstream.items()}
    sizes = {name: len(ds) for name, ds in opened.items()}
    counts = _counts(cfg, sizes, cfg.n_samples)
    if cfg.mixture == "temperature":
        shares = temperature_shares(cfg.nominal_sizes or sizes, cfg.temperature)
    else:
        shares = {k: v / cfg.n_samples for k, v in counts.items()}
    plans, notes = [], []
    for name, spec in cfg.upstream.items():
        ds = opened[name]
        probe = [ds[i] for i in range(min(8, len(ds)))]
        if not any(r.energy is not None for r in probe):  # the run would stop at its normalisers: say it here
            hints = label_hints(ds)
            raise DataError(
                f"upstream '{name}' has no energies (none in its first {len(probe)} structures): pretraining needs "
                "them",
                file=ds.path,
                fix="; ".join(hints)
                if hints
                else "give a dataset with energy labels (or the reader option that names them, e.g. energy_key=...)",
            )
        forces = any(r.forces is not None for r in probe)
        force_weight = spec.force_weight if spec.force_weight is not None else (DEFAULT_FORCE_WEIGHT if forces else 0.0)
        if force_weight > 0 and not forces:
            raise ConfigError(
                f"upstream '{name}' has force_weight {force_weight}, but its structures have no forces",
                file=ds.path,
                fix=f"remove force_weight from '{name}' (it then trains its energy head only)",
            )
        if not forces:
            notes.append(f"'{name}' has no forces: it trains its energy head only")
        if counts[name] == 0:  # its subset would be empty: a head trained on nothing (it crashed the draw)
            least = next(
                (n for n in range(cfg.n_samples + 1, cfg.n_samples + 100_000) if min(_counts(cfg, sizes, n).values())),
                None,
            )
            raise ConfigError(
                f"n_samples={cfg.n_samples} gives '{name}' no training structures (its share of N rounds to 0)",
                fix=(f"raise n_samples to at least {least}, or " if least else "") + f"drop '{name}' from upstream",
            )
        val = _val_size(spec, sizes[name])
        if val >= sizes[name]:
            raise ConfigError(
                f"val_size {val} of '{name}' leaves no structure for training ({sizes[name]} in all)",
                fix="lower val_size",
            )
        available = sizes[name] - val
        if counts[name] > available and not cfg.allow_repeats:
            fits = _largest_fitting_n(cfg, sizes, counts)
            example = (
                f" (e.g. n_samples={fits} with epochs={math.ceil(cfg.n_samples * cfg.epochs / fits)}, about the "
                "same budget)"
                if fits
                else ""
            )
            raise ConfigError(
                f"n_samples asks {counts[name]} structures of '{name}', which has {available} available for "
                f"training ({sizes[name]} in all, {val} held out)",
                fix=f"lower n_samples, train more epochs on fewer structures{example}, or set allow_repeats: true",
            )
        plans.append(
            DatasetPlan(
                name,
                ds,
                sizes[name],
                val,
                counts[name],
                shares[name],
                default_graph(ds, spec.graph, backbone),
                forces,
                spec.energy_weight,
                force_weight,
            )
        )
    world = world_size_of(cfg) if world_size is None else world_size
    steps = math.ceil(cfg.n_samples / (cfg.batch_size * world))
    return PretrainPlan(plans, cfg.n_samples, cfg.epochs, steps, notes, world)


def print_plan(plan: PretrainPlan, cfg: PretrainConfig, console: Console) -> None:
    """The --dry-run table: datasets, sizes, shares, counts, graphs and the budget."""
    table = Table(title=f"pretraining plan ({cfg.mixture} mixture)", title_justify="left")
    for col in ("dataset", "size", "val", "share", "N_i", "graph", "energy w", "force w"):
        table.add_column(col, justify="left" if col in ("dataset", "graph") else "right")
    for d in plan.datasets:
        graph = "backbone's own" if d.graph is None else d.graph.describe()
        table.add_row(
            d.name,
            str(d.size),
            str(d.val),
            f"{d.share:.3f}",
            str(d.count),
            graph,
            f"{d.energy_weight:g}",
            f"{d.force_weight:g}",
        )
    console.print(table)
    if cfg.mixture == "weights" and cfg.weights:
        total = sum(cfg.weights.values())
        asked = ", ".join(f"{k} {v / total:.3f}" for k, v in cfg.weights.items())
        console.print(f"share = N_i / N, N_i rounded to whole structures; the weights asked: {asked}")
    console.print(
        f"N = {plan.n_samples} structures x E = {plan.epochs} epochs = C = {plan.budget} structure passes; "
        f"{plan.steps_per_epoch} steps per epoch of {cfg.batch_size} per device x {plan.world_size} process(es), "
        f"{plan.total_steps} optimizer steps"
    )
    for note in plan.notes:
        console.print(f"note: {note}")


def build_tasks(plan: PretrainPlan, cfg: PretrainConfig, out: Path, resume: bool) -> list[Task]:
    """Draw (or re-read) each dataset's validation hold-out and training subset, saved in RUN/subsets/."""
    tasks = []
    for k, d in enumerate(plan.datasets):
        spec = cfg.upstream[d.name]
        seed = cfg.seed + 1000 * k
        val = hold_out(d.size, d.val, seed)
        labels = d.dataset.class_labels() if spec.sampling == "balanced" else None
        train = draw_subset(
            d.size,
            val,
            d.count,
            seed + 1,
            labels=labels,
            allow_repeats=cfg.allow_repeats,
            name=d.name,
            epochs=cfg.epochs,
        )
        common = {"dataset": d.name, "source": spec.path, "format": d.dataset.format_name, "seed": seed}
        val = save_or_check_subset(out / "subsets" / f"{d.name}.val.json", val, resume, role="validation", **common)
        train = save_or_check_subset(
            out / "subsets" / f"{d.name}.train.json",
            train,
            resume,
            role="training",
            sampling=spec.sampling or "random",
            **common,
        )
        tasks.append(
            Task(d.name, d.dataset, train, val, d.graph, "energy", d.energy_weight, d.force_weight, d.has_forces)
        )
    return tasks


def build_model(cfg: PretrainConfig, tasks: list[Task]) -> tuple[AtomsModel, dict[str, Any]]:
    """A new backbone (seeded) or one from a checkpoint, with one energy head (and forces) per dataset."""
    info: dict[str, Any] = {}
    torch.manual_seed(cfg.seed)
    if cfg.backbone.checkpoint is not None:
        from atomsift.train.finetune import load_pretrained_backbone

        backbone, info["backbone_load_report"] = load_pretrained_backbone(
            cfg.backbone.checkpoint, trusted=cfg.backbone.trust_checkpoint, allow_partial=cfg.backbone.allow_partial
        )
    else:
        backbone = build_backbone(cfg.backbone.name, preset=cfg.backbone.preset, **cfg.backbone.hparams)
    heads = {
        t.name: {
            "kind": "energy",
            "forces": cfg.forces if t.has_forces else None,
            "num_layers": cfg.heads.num_layers,
            "hidden": cfg.heads.hidden,
        }
        for t in tasks
    }
    return AtomsModel(backbone, heads), info


def _folder_args(cfg: PretrainConfig, plan: PretrainPlan, check_inputs: bool = True) -> dict[str, Any]:
    """prepare_run's command, inputs and fingerprints for this run."""

    def fingerprints() -> dict[str, str]:  # only where the folder needs them (a checkpoint is hashed whole)
        return _fingerprints(cfg, {d.name: d.dataset for d in plan.datasets})

    inputs = (cfg.backbone.checkpoint,)
    return {"command": "pretrain", "inputs": inputs, "fingerprints": fingerprints if check_inputs else None}


def _fingerprints(cfg: PretrainConfig, datasets: dict[str, Any]) -> dict[str, str]:
    """inputs.json of a pretraining: its datasets and its starting checkpoint."""
    return input_fingerprints(datasets, (cfg.backbone.checkpoint,))


def check_start(cfg: PretrainConfig, out: Path, overwrite: bool) -> None:
    """A mistyped checkpoint path or hyperparameter, said before the folder is touched; not for a finished run
    (reused without its start)."""
    if overwrite or not (Path(out) / "summary.json").exists():
        cfg.backbone.check_source()


def run_inputs(cfg: PretrainConfig) -> dict[str, str]:
    """The fingerprints a pretraining run with `cfg` records in inputs.json, from the files as they are now (the
    experiment compares its finished cells with them)."""
    return _fingerprints(cfg, {name: open_spec(spec, name, role="upstream") for name, spec in cfg.upstream.items()})


def dry_run_outlook(cfg: PretrainConfig, plan: PretrainPlan, out: Path, *, resume: bool, overwrite: bool) -> str:
    """The --dry-run line on what the run would do with `out` (run_folder.folder_outlook)."""
    settings = cfg.model_dump(mode="json")
    return folder_outlook(out, settings, resume=resume, overwrite=overwrite, **_folder_args(cfg, plan))


@releases_run_locks
def run_pretraining(
    cfg: PretrainConfig,
    out: Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    console: Console | None = None,
    progress: bool = True,
    check_inputs: bool = True,
) -> dict[str, Any]:
    """Pretrain as `cfg` says into the run folder `out`; returns the summary (also RUN/summary.json).

    `check_inputs`: record the data's fingerprints in RUN/inputs.json and refuse to reuse or resume a run
    whose files changed since (the experiment keeps its own provenance per cell and passes False)."""
    console = quiet_if_secondary(console or Console())
    settings = cfg.model_dump(mode="json")
    check_start(cfg, out, overwrite)
    plan = plan_pretraining(cfg)  # opens the data and checks N against it before the run folder is touched
    folder = _folder_args(cfg, plan, check_inputs)
    state = prepare_run(out, settings, resume=resume, overwrite=overwrite, **folder)
    if state == "done":
        summary = read_run_json(Path(out) / "summary.json")
        console.print(f"{out} already holds this finished run (same settings): reusing it")
        return summary
    forget_data_warnings()  # each run says its data warnings (an experiment runs many in one process)
    if state == "resume":
        console.print(resume_point(out))
    print_plan(plan, cfg, console)
    tasks = build_tasks(plan, cfg, out, resume=state == "resume")
    model, info = build_model(cfg, tasks)
    normalizers = {}
    if state != "resume":  # on resume the checkpoint brings every buffer
        for task in tasks:
            normalizers[task.name] = fit_task_normalizer(task, cfg.normalizer_samples, model.backbone.num_elements)
            normalizers[task.name].apply_to(model.heads[task.name])
        fitted = fit_scale_factors_if_needed(
            model.backbone, tasks, cfg.scale_factor_batches, cfg.batch_size, torch.float32, progress
        )
        if fitted:
            console.print(f"fitted {len(fitted)} GemNet-OC scale factors on the training structures")
    infos = [TaskInfo(t.name, t.name, "energy", "energy", t.has_forces, t.energy_weight, t.force_weight) for t in tasks]
    metadata = {
        "created_by": "atomsift pretrain",
        "config": settings,
        "tasks": [vars(i) for i in infos],
        "head_graphs": {t.name: None if t.graph is None else vars(t.graph) for t in tasks},
        "normalizers": {k: v.to_dict() for k, v in normalizers.items()},
        **info,
    }
    model.metadata.update(metadata)
    module = TrainModule(
        model,
        infos,
        cfg,
        train_set=TrainSet(tasks),
        val_set=TrainSet(tasks, "val"),
        collator=BatchCollator(tasks, [], torch.float32),
        param_groups=param_groups(model, None),
        monitor="val/loss",
        on_best=best_model_writer(out / "model.pt", metadata),
        edge_dropout=cfg.edge_dropout,
    )
    started = time.perf_counter()
    fit = run_fit(module, cfg, out, state=state, progress=progress)
    summary = finish(module, plan, cfg, out, metadata, fit, time.perf_counter() - started)
    report(summary, out, console)
    return summary


def finish(
    module: TrainModule,
    plan: PretrainPlan,
    cfg: PretrainConfig,
    out: Path,
    metadata: dict[str, Any],
    fit: dict[str, Any],
    wall: float,
) -> dict[str, Any]:
    """Write last.pt and summary.json; returns the summary."""
    from atomsift.models.checkpoint import save_checkpoint

    trainer = fit["trainer"]
    if trainer.is_global_zero:
        save_checkpoint(module.weights_for_saving(), out / "last.pt", metadata={**metadata, "trained": True})
    best = next((h for h in module.history if h["epoch"] == module.best_epoch), {})
    c = module.counters
    if int(c["structures"]) != plan.budget:  # the sampler gives exactly N per epoch: anything else is a bug
        warnings.warn(
            f"the run trained {int(c['structures'])} structure passes, not its budget of {plan.budget}: this is a "
            "bug in atomsift, please report it with the run folder's config.yaml and logs",
            stacklevel=1,
        )
    summary = {
        "n_samples": plan.n_samples,
        "epochs": plan.epochs,
        "budget": plan.budget,
        "structures_seen": int(c["structures"]),
        "structures_seen_per_dataset": {t.name: int(c[f"structures/{t.name}"]) for t in module.tasks},
        "atoms_seen": int(c["atoms"]),
        "optimizer_steps": int(trainer.global_step),
        "wall_time_s": round(module.wall_before + wall, 3),
        "best_epoch": module.best_epoch_number,
        "best_val_loss": {t.name: best.get(f"val/{t.name}/loss") for t in module.tasks},
        "best_val_metrics": {k: v for k, v in best.items() if k.startswith("val/")},
        "datasets": {
            d.name: {
                "size": d.size,
                "val": d.val,
                "count": d.count,
                "share": d.share,
                "has_forces": d.has_forces,
                "energy_weight": d.energy_weight,
                "force_weight": d.force_weight,
                "graph": None if d.graph is None else vars(d.graph),
            }
            for d in plan.datasets
        },
        "notes": plan.notes,
        "model": str(out / "model.pt"),
    }
    if trainer.is_global_zero:
        write_json(out / "summary.json", summary)
    return summary


def report(summary: dict[str, Any], out: Path, console: Console) -> None:
    rows = [
        (
            "budget",
            f"{summary['n_samples']} x {summary['epochs']} = {summary['budget']} structure passes "
            f"({summary['structures_seen']} seen)",
        ),
        ("steps", str(summary["optimizer_steps"])),
        ("time", f"{summary['wall_time_s']:.1f} s"),
    ]
    metrics = summary["best_val_metrics"]
    for name in summary["structures_seen_per_dataset"]:
        e = metrics.get(f"val/{name}/energy_mae_meV")
        f = metrics.get(f"val/{name}/forces_mae_meV_per_A")
        rows.append((f"best val {name}", f"energy MAE {fmt(e)} meV, forces MAE {fmt(f)} meV/A"))
    rows.append(
        (
            "files",
            f"{out}/model.pt (best weights, EMA unless ema_decay is null), summary.json, metrics.csv, checkpoints/",
        )
    )
    closing_table("pretraining finished", rows, console)
