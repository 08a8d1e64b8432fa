"""`atomsift evaluate`: MAE and RMSE of a trained model in the field's units, parity plots, learning curves.

    result = evaluate_model(model, records, task)      # {"metrics": {...}, "pairs": {...}}
    evaluate_checkpoint("run/model.pt", spec, split="test", out=Path("eval"))

The metric names are atomsift.train.metrics'. Predictions go through `AtomsModel.predict`, i.e. with the graph
settings the head was trained with, exactly what `as_calculator()` uses.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from atomsift.data.base import label_hints
from atomsift.data.record import Record
from atomsift.errors import ConfigError, naming_file
from atomsift.train.inputs import read_run_yaml
from atomsift.train.losses import ERROR_KEYS, TaskInfo
from atomsift.train.metrics import metrics_from_sums, target_key, unit_label


def evaluate_model(
    model: Any,
    records: Sequence[Record],
    task: TaskInfo,
    *,
    batch_size: int = 16,
    progress: bool = False,
    results: Sequence[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Predict `records` with the task's head (or take its `results`, one per record); metrics from the summed
    errors, and (reference, prediction) pairs per quantity for parity plots (target per structure; forces per
    component)."""
    if not records:
        raise ConfigError("no structures to evaluate", fix="check the split (it is empty) or the data path")
    if results is None:
        results = model.predict(list(records), head=task.head, batch_size=batch_size, progress=progress)
    sums = dict.fromkeys(ERROR_KEYS, 0.0)
    ref_t, pred_t, ref_f, pred_f = [], [], [], []
    with_forces = 0
    not_numbers: list[str] = []
    for rec, res in zip(records, results, strict=True):
        label = rec.energy if task.target == "energy" else rec.targets.get(task.target)
        value = res.get("energy") if task.kind == "energy" else res["property"][0]
        if label is not None and not np.isfinite(label).all():  # missing, as in training: not counted
            not_numbers.append(rec.id)
            label = None
        if label is not None and value is not None:
            err = float(value) - float(np.asarray(label).reshape(()))
            sums["n"] += 1
            sums["target_abs"] += abs(err)
            sums["target_sq"] += err * err
            sums["target_abs_per_atom"] += abs(err) / rec.natoms
            ref_t.append(float(np.asarray(label).reshape(())))
            pred_t.append(float(value))
        if task.forces and rec.forces is not None and "forces" in res:
            diff = res["forces"] - rec.forces
            sums["n_force"] += diff.size
            with_forces += 1
            sums["force_abs"] += float(np.abs(diff).sum())
            sums["force_sq"] += float(np.square(diff).sum())
            ref_f.append(np.asarray(rec.forces).ravel())
            pred_f.append(np.asarray(res["forces"]).ravel())
    metrics = metrics_from_sums(sums, task)
    # the target's MAE averages over the structures that have its label, the forces' over those with forces
    metrics.update(n_structures=len(records), n_with_target=int(sums["n"]))
    if not_numbers:
        metrics["warning"] = (
            f"{len(not_numbers)} structure(s) have the label '{task.target}' NaN or inf (first: {not_numbers[0]}): "
            "they count as without it, left out of its errors"
        )
    if task.forces:
        metrics["n_with_forces"] = with_forces
    pairs: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if ref_t:
        pairs[target_key(task)] = (np.asarray(ref_t), np.asarray(pred_t))
    if ref_f:
        pairs["forces"] = (np.concatenate(ref_f), np.concatenate(pred_f))
    return {"metrics": metrics, "pairs": pairs}


def parity_plot(ref: np.ndarray, pred: np.ndarray, label: str, unit: str, mae: float, path: Path) -> Path:
    """Reference vs predicted scatter with the identity line; the MAE in the legend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 4.0))
    ax.scatter(ref, pred, s=6, alpha=0.5, linewidths=0, label=f"MAE {mae:.4g} {unit} (n = {ref.size})")
    lo, hi = float(min(ref.min(), pred.min())), float(max(ref.max(), pred.max()))
    pad = 0.03 * (hi - lo or 1.0)
    ax.plot([lo - pad, hi + pad], [lo - pad, hi + pad], color="0.3", lw=0.8)
    ax.set_xlabel(f"reference {label} [{unit}]")
    ax.set_ylabel(f"predicted {label} [{unit}]")
    ax.legend(frameon=False, fontsize=8, loc="upper left")
    ax.set_aspect("equal", adjustable="datalim")
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path


def learning_curve(metrics_csv: Path, path: Path) -> Path | None:
    """Training and validation loss per epoch from a run's metrics.csv (None when it has neither)."""
    with open(metrics_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    train: dict[int, float] = {}
    val: dict[int, float] = {}
    for row in rows:
        if not row.get("epoch"):
            continue
        epoch = int(float(row["epoch"]))
        if row.get("train/loss_epoch"):
            train[epoch] = float(row["train/loss_epoch"])
        if row.get("val/loss"):
            val[epoch] = float(row["val/loss"])
    if not train and not val:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import LogFormatter, MaxNLocator

    fig, ax = plt.subplots(figsize=(5.0, 3.4))
    for series, name in ((train, "training"), (val, "validation (EMA weights)")):
        if series:
            epochs = sorted(series)
            ax.plot([e + 1 for e in epochs], [series[e] for e in epochs], marker="o", ms=3, label=name)
    ax.set_xlabel("epoch")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("loss (normalised units)")
    ax.set_yscale("log")
    # plain numbers (15, 15.2, ...) rather than 1.52x10^1 where the curve spans less than a decade
    ax.yaxis.set_major_formatter(LogFormatter())
    ax.yaxis.set_minor_formatter(LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.4)))
    ax.legend(frameon=False, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)
    return path


def task_of_model(model: Any, head: str | None) -> TaskInfo:
    """The TaskInfo a trained model recorded for its head; a bare model gets an energy (and forces) task."""
    name = model.head_name(head)
    for entry in model.metadata.get("tasks") or []:
        if entry.get("head") == name:
            return TaskInfo(**entry)
    spec = model.head_specs[name]
    return TaskInfo(name, name, "energy", spec.kind, spec.forces is not None)


def _run_settings(checkpoint: Path) -> dict[str, Any] | None:
    """The settings (config.yaml) of the finetuning run whose split.json sits beside the checkpoint (None if
    there is none); a damaged config.yaml is a ConfigError."""
    run = checkpoint.parent
    if not (run / "split.json").exists() or not (run / "config.yaml").exists():
        return None
    return read_run_yaml(run / "config.yaml")


def _run_data_path(settings: dict[str, Any] | None) -> str | None:
    """The dataset path in a finetuning run's settings (None without them)."""
    data = (settings or {}).get("data") or {}
    return data.get("path") if isinstance(data, dict) else None


def _run_test_options(settings: dict[str, Any] | None) -> dict[str, Any] | None:
    """The `test_options` a finetuning run read its test set with (None: none)."""
    options = (settings or {}).get("test_options")
    return options if isinstance(options, dict) else None


def _check_same_data(split: dict[str, Any], ds: Any, data_arg: str | None, saved: Path) -> None:
    """Refuse a split of one dataset applied to another (it scored whatever structures sat at those indices).
    The same data is recognised by the path as given, or as the file the run resolved it to (split.json's
    `data_file`: the same file named from another folder)."""
    recorded = split.get("data")
    if recorded is None or data_arg is None or recorded == data_arg:
        return
    opened = getattr(ds, "path", None)
    for known in (split.get("data_file"), recorded):
        with contextlib.suppress(OSError, TypeError):
            if known and opened is not None and os.path.samefile(known, opened):
                return
    raise ConfigError(
        f"the run's split indexes {recorded}, not {data_arg}",
        file=saved,
        fix=f"pass --data {split.get('data_file') or recorded} (with the reader options the run used), or leave --split out to score every "
        "structure of this dataset",
    )


def split_records(
    ds: Any, checkpoint: Path, split: str | None, data_arg: str | None = None
) -> tuple[list[Record], str]:
    """The structures to evaluate: the split of the run that made the checkpoint (RUN/split.json beside it),
    else the whole (already split by the reader, where `split` was passed to it) dataset."""
    if split is None:
        return [ds[i] for i in range(len(ds))], "all"
    saved = checkpoint.parent / "split.json"
    if not saved.exists():
        return [ds[i] for i in range(len(ds))], f"{split} (the reader's)"
    recorded = json.loads(saved.read_text())
    _check_same_data(recorded, ds, data_arg, saved)
    indices = recorded.get(split)
    if indices is None:
        raise ConfigError(f"split.json has no split '{split}'", file=saved, fix="use train, val or test")
    if indices and max(indices) >= len(ds):
        raise ConfigError(
            f"split '{split}' does not fit this dataset ({len(ds)} structures)",
            file=saved,
            fix="evaluate on the dataset the run was finetuned on",
        )
    return [ds[int(i)] for i in indices], split


def _with_reader_split(spec: Any, split: str, checkpoint: Path) -> Any:
    """The dataset spec with the reader's own split option, for checkpoints without a run's split.json."""
    from atomsift.data.registry import normalize_format, reader_class

    fmt = spec.format
    if fmt is None:
        from atomsift.data import open_dataset

        fmt = open_dataset(spec.path, **spec.reader_kwargs()).format_name
    import inspect

    if "split" not in inspect.signature(reader_class(normalize_format(fmt)).__init__).parameters:
        raise ConfigError(
            f"--split {split}: no split.json of a finetuning run beside the checkpoint, and the '{fmt}' reader "
            "has no splits of its own",
            file=checkpoint,
            fix="evaluate a finetuning run's model.pt (its split.json is used), or leave --split out to use the "
            "whole dataset",
        )
    return spec.model_copy(update={"options": {**spec.options, "split": split}})


def head_choice(model: Any, head: str | None) -> str:
    """A note when `head` was not given and the model has several heads (a pretrained mixture: one per dataset),
    naming the one used, else "": another dataset's head can be off by its whole energy reference."""
    names = list(model.head_specs)
    if head is not None or len(names) < 2:
        return ""
    return (
        f"the model has {len(names)} heads ({', '.join(names)}); this used '{model.default_head}', its default: "
        "choose the one trained on data like these with --head"
    )


def unseen_elements(model: Any, head: str, records: list[Any]) -> str:
    """A warning naming the elements of `records` that the head's per-element energy reference was not fitted on
    (its value for them is 0, so their energies extrapolate), or "" (also when the model does not record it)."""
    from ase.data import chemical_symbols

    metadata = getattr(model, "metadata", None) or {}
    normalizers = metadata.get("normalizers") or {}
    # keyed by task (dataset) name: pretraining names heads after their datasets, finetuning after the target
    tasks = [t.get("name") for t in metadata.get("tasks") or [] if isinstance(t, dict) and t.get("head") == head]
    fitted = next((normalizers[t] for t in [*tasks, head] if t in normalizers), None) or {}
    known = set(fitted.get("elements") or [])
    if not known:  # no linear reference (property heads), or a checkpoint that does not say
        return ""
    present = {int(z) for rec in records for z in np.unique(rec.numbers)}
    unseen = sorted(present - known)
    if not unseen:
        return ""
    names = ", ".join(chemical_symbols[z] for z in unseen)
    return (
        f"element(s) {names} never appeared in the structures head '{head}' was trained on (its per-element "
        "energy reference for them is 0): their predictions extrapolate"
    )


def evaluate_checkpoint(
    checkpoint: Path,
    spec: Any,
    *,
    split: str | None,
    out: Path,
    head: str | None = None,
    batch_size: int = 16,
    trusted: bool = False,
    device: str = "cpu",
) -> dict[str, Any]:
    """Evaluate a checkpoint on a dataset; writes OUT/metrics.json, parity PNGs and (for runs) a learning curve."""
    from atomsift.data.spec import open_spec
    from atomsift.models import load_checkpoint

    model = load_checkpoint(checkpoint, trusted=trusted, device=device)
    task = task_of_model(model, head)
    if split is not None and not (Path(checkpoint).parent / "split.json").exists():
        spec = _with_reader_split(spec, split, Path(checkpoint))
    try:
        run_settings = _run_settings(Path(checkpoint))
    except ConfigError:
        if split == "test":
            raise  # the test set may be read with options of its own: not guessed
        run_settings = None  # only a hint of which split to take: the whole dataset is evaluated instead
    test_options = _run_test_options(run_settings) if split == "test" else None
    if test_options:  # the run's test set is read with these (matbench's test fold): its indices refer to it
        spec = spec.model_copy(update={"options": {**spec.options, **test_options}})
    ds = open_spec(spec, spec.path)
    records, used = split_records(ds, Path(checkpoint), split, spec.path)
    with naming_file(getattr(ds, "path", None)):
        result = evaluate_model(model, records, task, batch_size=batch_size, progress=len(records) > 4 * batch_size)
    metrics = {
        **result["metrics"],
        "checkpoint": str(checkpoint),
        "data": spec.path,
        "split": used,
        "head": task.head,
        "target": task.target,
    }
    if test_options:
        metrics["test_options"] = test_options
    if model.load_report.trained is False:
        said = "the checkpoint's weights were never trained (random initialisation)"
        metrics["warning"] = "; ".join(filter(None, [metrics.get("warning"), said]))
    run = Path(checkpoint).parent
    unfinished = (run / "config.yaml").exists() and not (run / "summary.json").exists()
    for said in (
        head_choice(model, head),
        unseen_elements(model, task.head, records),
        "the run that wrote this checkpoint has not finished (no summary.json next to it)" if unfinished else "",
    ):
        if said:
            metrics["warning"] = "; ".join(filter(None, [metrics.get("warning"), said]))
    if not result["pairs"]:  # an empty metrics.json would pass for a result (the command prints the warning)
        labels = f"'{task.target}'" + (" or forces" if task.forces else "")
        said = "; ".join([f"none of the {len(records)} structures has the label {labels} the head predicts, so "
                          "there is no error to report", *label_hints(ds)])  # fmt: skip
        metrics["warning"] = "; ".join(filter(None, [metrics.get("warning"), said]))
    if split is None and _run_data_path(run_settings) == spec.path:
        metrics["note"] = (
            f"no --split: all {len(records)} structures were scored, the run's training and validation structures "
            "included; --split test scores its held-out test set"
        )
    out.mkdir(parents=True, exist_ok=True)
    label, factor = unit_label(task.unit, task.kind)
    plots = []
    for key, (ref, pred) in result["pairs"].items():
        if key == "forces":
            mae = metrics["forces_mae_meV_per_A"]
            plots.append(
                parity_plot(ref * 1000, pred * 1000, "force component", "meV/A", mae, out / "parity_forces.png")
            )
        else:
            mae = metrics[f"{key}_mae_{label}"]
            plots.append(parity_plot(ref * factor, pred * factor, key, label, mae, out / f"parity_{key}.png"))
    curve = Path(checkpoint).parent / "metrics.csv"
    if curve.exists():
        made = learning_curve(curve, out / "learning_curve.png")
        if made is not None:
            plots.append(made)
    metrics["plots"] = [str(p) for p in plots]
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    return metrics
