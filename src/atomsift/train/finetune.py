"""`atomsift finetune`: a downstream task from a pretrained checkpoint (or from scratch), the paper's protocol.

Every backbone tensor of the checkpoint is loaded (EMA weights when the file has them); a backbone key that
is missing or unexpected stops the run unless `allow_partial`. The task gets a new head. The split is drawn
once (seed 42 by default) and saved as RUN/split.json; the best EMA weights by the task's validation metric
are kept and tested (RUN/test_metrics.json). Presets (atomsift/train/presets/*.yaml) hold each task's
protocol; docs/training.md lists them.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from rich.console import Console

from atomsift.data.spec import open_spec
from atomsift.errors import ConfigError, DataError, did_you_mean, naming_file
from atomsift.models import AtomsModel, build_backbone, load_checkpoint
from atomsift.models.backbones.gemnet_oc.utils import forget_data_warnings
from atomsift.models.checkpoint import LoadReport, check_checkpoint_path
from atomsift.train.config import FinetuneConfig, SplitSpec
from atomsift.train.data import BatchCollator, Task, TrainSet, indices_hash
from atomsift.train.inputs import input_fingerprints, read_run_json
from atomsift.train.losses import TaskInfo
from atomsift.train.metrics import FORCES_MAE, target_metric_names
from atomsift.train.module import TrainModule
from atomsift.train.run_folder import (
    folder_outlook,
    outlook_refused,
    prepare_run,
    quiet_if_secondary,
    releases_run_locks,
    write_json,
)
from atomsift.train.runner import resume_point, run_fit
from atomsift.train.schedule import warmup_problem
from atomsift.train.setup import (
    best_model_writer,
    closing_table,
    default_graph,
    fit_scale_factors_if_needed,
    fit_task_normalizer,
    fmt,
    param_groups,
)

PLACEHOLDER_TARGET = "REPLACE_WITH_TARGET_NAME"
"""The property preset's task.target until the user names one."""
PLACEHOLDER_UNIT = "units"
"""The property preset's task.unit until the user names one."""

PRESETS = ("rmd17", "md22", "spice", "qm9", "qmof", "matbench", "energy-forces", "property")


def preset_path(name: str) -> Path:
    """The YAML file of a finetuning preset; ConfigError naming the presets for an unknown name."""
    key = name.strip().lower().replace("_", "-")
    if key not in PRESETS:
        raise ConfigError(
            f"unknown finetuning preset '{name}'",
            fix=f"{did_you_mean([name], PRESETS)}use one of: {', '.join(PRESETS)}",
        )
    return Path(str(resources.files("atomsift.train.presets") / f"{key}.yaml"))


def load_preset(name: str | None) -> dict[str, Any]:
    """A preset's settings as a dict ({} for None), with `preset` recorded."""
    if name is None:
        return {}
    data = yaml.safe_load(preset_path(name).read_text()) or {}
    return {**data, "preset": preset_path(name).stem}


# ------------------------------------------------------------------ splits


def _count(value: Any, n: int, name: str) -> int | None:
    if value is None:
        return 0
    if value == "rest":
        return None
    if isinstance(value, float) and not isinstance(value, bool):
        if not 0 < value < 1:
            raise ConfigError(f"split.{name} = {value}: a fraction must lie in (0, 1)", fix="or give a count")
        return int(round(value * n))
    if value < 0:  # it was taken as a count, leaving a split of the wrong size without a word
        raise ConfigError(
            f"split.{name} = {value}: a count cannot be negative", fix="give 0 or more, a fraction, or 'rest'"
        )
    return int(value)


def split_indices(n: int, split: SplitSpec, source: str = "") -> dict[str, np.ndarray]:
    """Train / val / test indices of range(n): one permutation (split.seed), cut into the sizes asked for."""
    if split.file is not None:
        path = Path(split.file)
        try:
            saved = json.loads(path.read_text())
            out = {k: np.asarray(saved[k], dtype=np.int64) for k in ("train", "val", "test")}
        except (OSError, ValueError, KeyError) as exc:
            raise DataError(
                f"cannot read the split file ({exc})",
                file=path,
                fix="give a JSON file with train, val and test index lists (as RUN/split.json)",
            ) from None
        for k, idx in out.items():
            if idx.size and (idx.min() < 0 or idx.max() >= n):
                raise DataError(
                    f"split '{k}' holds indices outside the dataset's {n} structures",
                    file=path,
                    fix="use the split file of this dataset",
                )
        return out
    sizes = {k: _count(getattr(split, k), n, k) for k in ("train", "val", "test")}
    fixed = sum(v for v in sizes.values() if v is not None)
    if fixed > n:
        raise ConfigError(
            f"the split asks {fixed} structures ({', '.join(f'{k} {v}' for k, v in sizes.items() if v)}) but the "
            f"dataset{f' {source}' if source else ''} has {n}",
            fix="lower the split counts, or use 'rest' for one of them",
        )
    sizes = {k: (n - fixed if v is None else v) for k, v in sizes.items()}
    # JMP's and the readers' scheme (RandomState(seed) permutation; train, then val, then test), so the presets
    # give the paper's rMD17 / MD22 / QM9 splits
    order = np.random.RandomState(split.seed).permutation(n).astype(np.int64)
    a, b = sizes["train"], sizes["train"] + sizes["val"]
    return {"train": order[:a], "val": order[a:b], "test": order[b : b + sizes["test"]]}


# ------------------------------------------------------------------ model


def _backbone_keys(keys: list[str]) -> list[str]:
    """Backbone keys of a load report, named as in the backbone's own state dict (atomsift files prefix
    them with 'backbone.', fairchem and JMP files do not)."""
    return [k.removeprefix("backbone.") for k in keys if not k.startswith("heads.")]


def load_pretrained_backbone(path: str, *, trusted: bool = False, allow_partial: bool = False):
    """Every backbone tensor of a checkpoint (EMA weights when present): (backbone, load report dict).

    A missing, unexpected or reshaped backbone key is a ConfigError unless `allow_partial`; head keys are
    listed as dropped (the caller builds new heads).
    """
    source = load_checkpoint(path, ema=True, trusted=trusted, strict=False)
    lr: LoadReport = source.load_report
    missing, unexpected = _backbone_keys(lr.missing_keys), _backbone_keys(lr.unexpected_keys)
    reshaped = _backbone_keys(lr.mismatched_keys)
    state = source.backbone.state_dict()
    report = {
        "checkpoint": str(path),
        "used_ema": lr.used_ema,
        "loaded": sorted(k for k in state if k not in missing),
        "missing": missing,
        "unexpected": unexpected,
        "reshaped": reshaped,
        "heads_dropped": sorted(
            {k.split(".")[1] for k in lr.missing_keys + lr.unexpected_keys if k.startswith("heads.")}
            | set(source.head_specs)
        ),
        "unfitted_scale_factors": list(lr.unfitted_scale_factors),
        "notes": list(lr.notes),
    }
    if (missing or unexpected or reshaped) and not allow_partial:
        raise ConfigError(
            f"the checkpoint's backbone weights do not match its architecture: {len(missing)} missing "
            f"({', '.join(missing[:4])}), {len(unexpected)} unexpected ({', '.join(unexpected[:4])}), "
            f"{len(reshaped)} of another shape ({', '.join(reshaped[:2])})",
            file=path,
            fix="use a checkpoint of this architecture, or set allow_partial: true to train the missing "
            "weights from their random start (the load report lists them)",
        )
    return source.backbone.train(), report


def build_finetune_model(cfg: FinetuneConfig, head: dict[str, Any], head_name: str) -> tuple[AtomsModel, dict]:
    """The backbone (checkpoint weights, or fresh for from_scratch) with a new head; and the load report."""
    torch.manual_seed(cfg.seed)
    report: dict[str, Any] = {"from_scratch": cfg.from_scratch}
    if cfg.checkpoint is not None and cfg.from_scratch:
        source = load_checkpoint(cfg.checkpoint, trusted=cfg.trust_checkpoint, strict=False)
        backbone = build_backbone(source.backbone.name, **source.backbone.hparams())
        report["architecture_from"] = cfg.checkpoint
    elif cfg.checkpoint is not None:
        backbone, loaded = load_pretrained_backbone(
            cfg.checkpoint, trusted=cfg.trust_checkpoint, allow_partial=cfg.allow_partial
        )
        report.update(loaded)
    else:
        spec = cfg.backbone
        backbone = build_backbone(spec.name, preset=spec.preset, **spec.hparams)
        report["architecture_from"] = spec.model_dump()
    return AtomsModel(backbone, {head_name: head}), report


def run_inputs(cfg: FinetuneConfig) -> dict[str, str]:
    """The fingerprints a finetuning run with `cfg` records in inputs.json, from the files as they are now (the
    experiment compares its finished cells with them)."""
    ds = open_spec(cfg.data, cfg.data.path)
    test_ds = ds
    if cfg.test_options is not None:
        spec = cfg.data.model_copy(update={"options": {**cfg.data.options, **cfg.test_options}})
        test_ds = open_spec(spec, cfg.data.path, role="test set of")
    return _fingerprints(cfg, ds, test_ds)


def _fingerprints(cfg: FinetuneConfig, ds: Any, test_ds: Any) -> dict[str, str]:
    name = _task_name(cfg.data.path)
    datasets = {name: ds, **({f"{name} (test)": test_ds} if test_ds is not ds else {})}
    return input_fingerprints(datasets, _starting_files(cfg))


def _starting_files(cfg: FinetuneConfig) -> tuple[str | None, str | None]:
    """The weights a finetuning starts from: its --checkpoint and the backbone's own checkpoint, where given."""
    return (cfg.checkpoint, cfg.backbone.checkpoint if cfg.backbone is not None else None)


def _task_name(path: str) -> str:
    """A short name for the task: bundled:NAME -> NAME, /d/rmd17_aspirin.npz -> rmd17_aspirin, x.tar.bz2 -> x."""
    if path.startswith("bundled:"):
        return path.split(":", 1)[1]
    return Path(path.rstrip("/")).name.split(".")[0] or "data"


def task_info(cfg: FinetuneConfig, name: str, head_name: str) -> TaskInfo:
    t = cfg.task
    return TaskInfo(name, head_name, t.target, t.head, t.forces is not None, t.energy_weight, t.force_weight, t.unit)


def monitor_of(cfg: FinetuneConfig, info: TaskInfo) -> str:
    """The validation quantity that picks the best weights."""
    if cfg.task.metric == "forces_mae":
        return f"val/{info.name}/{FORCES_MAE}"
    if cfg.task.metric == "target_mae":
        return f"val/{info.name}/{target_metric_names(info)['mae']}"
    return "val/loss"


# ------------------------------------------------------------------ run


@releases_run_locks
def run_finetuning(
    cfg: FinetuneConfig,
    out: Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    console: Console | None = None,
    progress: bool = True,
    dry_run: bool = False,
    check_inputs: bool = True,
    outlook: bool = False,
) -> dict[str, Any]:
    """Finetune as `cfg` says into the run folder `out`; returns the test metrics (also RUN/test_metrics.json).

    `check_inputs`: as in `run_pretraining` (the data's and the starting checkpoint's fingerprints). `outlook`:
    a dry run also says what the run would do with `out` (the command's --dry-run; not the experiment's)."""
    from atomsift.train.evaluate import evaluate_model

    console = quiet_if_secondary(console or Console())
    if cfg.task.target == PLACEHOLDER_TARGET:
        raise ConfigError(
            "the property preset needs the name of the target to train",
            fix="add task.target=NAME and task.unit=UNIT, e.g. task.target=bandgap task.unit=eV (`atomsift data "
            "inspect DATASET --target NAME` checks that the data has it)",
        )
    if cfg.task.unit == PLACEHOLDER_UNIT:
        warnings.warn(
            f"task.unit is not set: the metrics are named {cfg.task.target}_mae_{PLACEHOLDER_UNIT}; give the "
            f"target's unit in the data, e.g. task.unit=eV",
            stacklevel=2,
        )
    settings = cfg.model_dump(mode="json")
    # a mistyped path or hyperparameter is said before anything is read or written; not in a dry run (the
    # experiment's pre-flight plans finetuning from pretraining weights that do not exist yet) and not for a
    # finished run (reused without its starting weights)
    finished = (Path(out) / "summary.json").exists() and not overwrite
    if cfg.checkpoint is not None and (outlook or not dry_run) and not finished:
        check_checkpoint_path(cfg.checkpoint)
    if cfg.backbone is not None and not finished:
        cfg.backbone.check_source()
    ds = open_spec(cfg.data, cfg.data.path)
    name = _task_name(cfg.data.path)
    splits = split_indices(len(ds), cfg.split, cfg.data.path)
    test_ds = ds
    if cfg.test_options is not None:
        spec = cfg.data.model_copy(update={"options": {**cfg.data.options, **cfg.test_options}})
        test_ds = open_spec(spec, cfg.data.path, role="test set of")
        splits["test"] = np.arange(len(test_ds), dtype=np.int64)
    if len(splits["test"]) == 0:
        raise ConfigError(
            f"the split leaves no test structures ({len(splits['train'])} train, {len(splits['val'])} val of "
            f"{len(ds)})",
            fix="lower split.train or split.val, or give split.test a count",
        )
    if len(splits["train"]) == 0 or len(splits["val"]) == 0:
        raise ConfigError(
            f"the split leaves {len(splits['train'])} training and {len(splits['val'])} validation structures",
            fix="give split.train and split.val at least 1 each",
        )
    head_name = cfg.task.target
    from atomsift.train.pretrain import world_size_of

    world = world_size_of(cfg)
    steps = math.ceil(len(splits["train"]) / (cfg.batch_size * world))  # as the run's sampler cuts the epoch
    graph_text = "the backbone's (GemNet-OC: the paper's for these data; others: their own; printed once loaded)"
    if cfg.graph is not None:
        graph_text = cfg.graph.settings().describe()
    console.print(
        f"finetuning on {cfg.data.path}: {len(splits['train'])} train / {len(splits['val'])} val / "
        f"{len(splits['test'])} test structures, {cfg.epochs} epochs x {steps} steps of {cfg.batch_size}"
        + (f" per device x {world} processes" if world > 1 else "")
        + f"; target "
        f"{cfg.task.target} ({cfg.task.head} head, forces {cfg.task.forces or 'none'}); graph {graph_text}"
    )
    inputs = _starting_files(cfg)

    def fingerprints() -> dict[str, str]:  # only where the folder needs them (a checkpoint is hashed whole)
        return _fingerprints(cfg, ds, test_ds)

    folder = {"command": "finetune", "inputs": inputs, "fingerprints": fingerprints if check_inputs else None}
    if dry_run:
        if outlook:
            results = ("summary.json", "test_metrics.json")
            line = folder_outlook(out, settings, resume=resume, overwrite=overwrite, results=results, **folder)
            console.print(line, markup=False, highlight=False)
            problem = warmup_problem(cfg.warmup_steps, cfg.epochs * steps, cfg.warmup_start_factor)
            if problem:
                warnings.warn(problem, stacklevel=2)
            if outlook_refused(line):
                return {"refused": True}
        return {"splits": {k: len(v) for k, v in splits.items()}, "steps_per_epoch": steps}
    state = prepare_run(out, settings, resume=resume, overwrite=overwrite, **folder)
    if state == "done":
        read_run_json(Path(out) / "summary.json")  # a damaged one is named, not reused
        metrics = read_run_json(Path(out) / "test_metrics.json")
        console.print(f"{out} already holds this finished run (same settings): reusing it")
        return metrics
    forget_data_warnings()  # each run says its data warnings (an experiment runs many in one process)
    if state == "resume":
        console.print(resume_point(out))
    split_file = out / "split.json"
    digest = indices_hash(np.concatenate(list(splits.values())))
    if state == "resume" and split_file.exists() and read_run_json(split_file).get("sha256_16") != digest:
        raise DataError(
            "the saved split differs from the one the settings give",
            file=split_file,
            fix="resume with the original data and settings",
        )
    write_json(
        split_file,
        {
            **{k: v.tolist() for k, v in splits.items()},
            "seed": cfg.split.seed,
            "data": cfg.data.path,
            "data_file": str(Path(ds.path).resolve()),  # the same data, however a later command names it
            "test_options": cfg.test_options,  # the test indices refer to the data read with these
            "sha256_16": digest,
        },
    )
    has_forces = ds[int(splits["train"][0])].forces is not None
    if cfg.task.force_weight > 0 and not has_forces:
        raise ConfigError(
            f"the task trains forces (force_weight {cfg.task.force_weight}) but {cfg.data.path} has none",
            fix="use a preset for energies or properties, or set task.force_weight=0",
        )
    head = {
        "kind": cfg.task.head,
        "forces": cfg.task.forces,
        "reduce": cfg.task.readout,
        "num_layers": cfg.heads.num_layers,
        "hidden": cfg.heads.hidden,
    }
    model, load_report = build_finetune_model(cfg, head, head_name)
    graph = default_graph(ds, cfg.graph, model.backbone.name)
    if cfg.graph is None:
        console.print("graph: " + (graph.describe() if graph is not None else f"{model.backbone.name}'s own"))
    write_json(out / "load_report.json", load_report)
    task = Task(
        name,
        ds,
        splits["train"],
        splits["val"],
        graph,
        cfg.task.target,
        cfg.task.energy_weight,
        cfg.task.force_weight,
        has_forces and cfg.task.forces is not None,
        test=splits["test"],
    )
    info = task_info(cfg, name, head_name)
    normalizer = None
    if state != "resume":
        normalizer = fit_task_normalizer(
            task, cfg.normalizer_samples, model.backbone.num_elements, linear_reference=cfg.task.linear_reference
        )
        normalizer.apply_to(model.heads[head_name])
        fitted = fit_scale_factors_if_needed(
            model.backbone, [task], cfg.scale_factor_batches, cfg.batch_size, torch.float32, progress
        )
        if fitted:
            console.print(f"fitted {len(fitted)} GemNet-OC scale factors on the training structures")
    metadata = {
        "created_by": "atomsift finetune",
        "config": settings,
        "task": vars(info),
        "tasks": [vars(info)],
        "head_graphs": {head_name: None if graph is None else vars(graph)},
        "normalizers": {} if normalizer is None else {name: normalizer.to_dict()},
    }
    model.metadata.update(metadata)
    module = TrainModule(
        model,
        [info],
        cfg,
        train_set=TrainSet([task]),
        val_set=TrainSet([task], "val"),
        collator=BatchCollator([task], [] if info.target == "energy" else [info.target], torch.float32),
        param_groups=param_groups(model, cfg.layerwise_lr),
        monitor=monitor_of(cfg, info),
        on_best=best_model_writer(out / "model.pt", metadata),
    )
    started = time.perf_counter()
    fit = run_fit(module, cfg, out, state=state, progress=progress)
    wall = module.wall_before + time.perf_counter() - started
    trainer = fit["trainer"]
    if not trainer.is_global_zero:
        return {}
    from atomsift.models.checkpoint import save_checkpoint

    save_checkpoint(module.weights_for_saving(), out / "last.pt", metadata={**metadata, "trained": True})
    best = load_checkpoint(out / "model.pt")
    records = [test_ds[int(i)] for i in splits["test"]]
    with naming_file(getattr(test_ds, "path", None)):
        metrics = evaluate_model(best, records, info, batch_size=cfg.batch_size)["metrics"]
    if metrics.get("warning"):
        warnings.warn(metrics["warning"], stacklevel=2)
    metrics.update(
        split="test",
        checkpoint=str(out / "model.pt"),
        best_epoch=module.best_epoch_number,
        monitor=module.monitor,
        best_val=module.best,
    )
    write_json(out / "test_metrics.json", metrics)
    best_val = next((h for h in module.history if h["epoch"] == module.best_epoch), {})
    summary = {
        "epochs": cfg.epochs,
        "structures_seen": int(module.counters["structures"]),
        "atoms_seen": int(module.counters["atoms"]),
        "optimizer_steps": int(trainer.global_step),
        "wall_time_s": round(wall, 3),
        "best_epoch": module.best_epoch_number,
        "monitor": module.monitor,
        "best_val_metrics": {k: v for k, v in best_val.items() if k.startswith("val/")},
        "splits": {k: len(v) for k, v in splits.items()},
        "test_metrics": metrics,
    }
    write_json(out / "summary.json", summary)
    rows = [
        ("steps", f"{trainer.global_step} ({cfg.epochs} epochs)"),
        ("time", f"{wall:.1f} s"),
        ("best epoch", f"{module.best_epoch_number} of {cfg.epochs} by {module.monitor} = {fmt(module.best)}"),
    ]
    rows += [(f"test {k}", fmt(v)) for k, v in metrics.items() if "_mae_" in k or "_rmse_" in k]
    rows.append(
        (
            "files",
            f"{out}/model.pt (best weights, EMA unless ema_decay is null), test_metrics.json, split.json, load_report.json",
        )
    )
    closing_table("finetuning finished", rows, console)
    return metrics
