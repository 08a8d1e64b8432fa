"""`atomsift model ...`: create, inspect, convert and run model checkpoints (atomsift, JMP, fairchem 1.10)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Literal

import typer
from pydantic import BaseModel, ConfigDict, Field
from rich.table import Table

from atomsift.cli.common import (
    CLASSES_HELP,
    CONFIG_HELP,
    DATASET_HELP,
    FORMAT_HELP,
    OPTION_HELP,
    OVERWRITE_HELP,
    SPLIT_HELP,
    TRUST_HELP,
    at_least_one,
    deprecated,
    legacy_out,
    make_console,
    overrides_help,
    pick,
    split_overrides,
)
from atomsift.cli.data import open_from_cli
from atomsift.data.base import label_hints
from atomsift.data.spec import DatasetSpec
from atomsift.errors import ConfigError, naming_file
from atomsift.settings import Seed, write_text_atomic

app = typer.Typer(help="Create, inspect, convert and run model checkpoints.", no_args_is_help=True)
console = make_console(soft_wrap=True)  # messages stay one line (tables still fit the width)


class InitSettings(BaseModel):
    """Settings of `atomsift model init` (YAML keys; docs/cli.md)."""

    model_config = ConfigDict(extra="forbid")

    backbone: str | None = Field(None, description="painn or gemnet_oc (on the command line: BACKBONE)")
    preset: str | None = Field(None, description="named size, e.g. S, L, small, tiny for gemnet_oc")
    hparams: dict[str, Any] = Field(default_factory=dict, description="backbone hyperparameters over the preset")
    forces: Literal["gradient", "direct", "none"] = "gradient"
    seed: Seed = 0
    fit_scales: str | DatasetSpec | None = Field(
        None, description="GemNet-OC: fit the scale factors on this dataset (PATH or NAME=PATH,key=value)"
    )
    fit_batches: int = Field(16, ge=1, description="batches of 8 structures used to fit the scale factors")


@app.command("init")
def init(
    backbone: str | None = typer.Argument(
        None, metavar="[BACKBONE]", help="Backbone name: painn or gemnet_oc (or backbone: in --config)."
    ),
    overrides: list[str] | None = typer.Argument(
        None, metavar="[KEY=VALUE]...", help=overrides_help("hparams.hidden=64")
    ),
    out: Path | None = typer.Option(None, "--out", help="Checkpoint to write (.pt; required)."),
    preset: str | None = typer.Option(None, "--preset", help="Named size, e.g. S, L, small, tiny for gemnet_oc."),
    forces: str | None = typer.Option(None, "--forces", help="Force head: gradient (default), direct or none."),
    hparam: list[str] | None = typer.Option(None, "--hparam", "-p", help="Backbone hyperparameter KEY=VALUE."),
    seed: int | None = typer.Option(None, "--seed", help="Seed of the random initialisation (default 0)."),
    fit_scales: str | None = typer.Option(
        None, "--fit-scales", help="GemNet-OC: fit the scale factors on batches of this dataset. " + DATASET_HELP
    ),
    fit_batches: int | None = typer.Option(None, "--fit-batches", help="Batches of 8 structures (default 16)."),
    config: Path | None = typer.Option(None, "--config", help=CONFIG_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Write a randomly initialised model (backbone + one energy head) as an atomsift checkpoint."""
    import torch

    from atomsift.models import AtomsModel, build_backbone, save_checkpoint
    from atomsift.settings import check_output_file, parse_key_values, resolve_settings

    backbone, overrides = split_overrides(
        backbone, overrides, InitSettings, provided=True
    )  # no backbone has "=" in its name
    out = _legacy_init_out(out, overrides)
    flags: dict[str, Any] = {
        "backbone": backbone,
        "preset": preset,
        "forces": forces,
        "seed": seed,
        "fit_scales": fit_scales,
        "fit_batches": fit_batches,
    }
    for key, value in parse_key_values(hparam, "--hparam").items():
        flags[f"hparams.{key}"] = value
    cfg = resolve_settings(InitSettings, config, flags=flags, overrides=overrides, example="docs/cli.md")
    if cfg.backbone is None:
        raise ConfigError("atomsift model init needs a backbone", fix="give it first: atomsift model init painn ...")
    check_output_file(out, overwrite, what="checkpoint .pt file")
    torch.manual_seed(cfg.seed)
    model = AtomsModel(
        build_backbone(cfg.backbone, preset=cfg.preset, **cfg.hparams),
        {"energy": {"kind": "energy", "forces": None if cfg.forces == "none" else cfg.forces}},
        metadata={
            "created_by": "atomsift model init",
            "trained": False,
            "seed": cfg.seed,
            "preset": cfg.preset,
            "init_settings": cfg.model_dump(mode="json"),
        },
    )
    fitted: list[str] = []
    if cfg.fit_scales is not None:
        fitted = _fit_scale_factors(model.backbone, cfg.fit_scales, cfg.fit_batches, cfg.seed)
        model.metadata["scale_factors_fitted_on"] = _spec_text(cfg.fit_scales)
    save_checkpoint(model, out)
    n = sum(p.numel() for p in model.parameters())
    console.print(
        f"wrote {out}: {model.backbone.name} with {n:,} parameters (random weights, not trained)"
        + (f", {len(fitted)} scale factors fitted on {_spec_text(cfg.fit_scales)}" if fitted else "")
    )
    unfitted = _unfitted(model.backbone)
    if unfitted:
        console.print(
            f"[yellow]note:[/yellow] {len(unfitted)} GemNet-OC scale factors are unfitted (they pass values through "
            "unchanged); fit them now with --fit-scales DATA (e.g. --fit-scales bundled:ethanol), as training "
            "needs them fitted"
        )


def _legacy_init_out(out: Path | None, overrides: list[str]) -> Path:
    """--out, or (old spelling, one release) the output given as the item after BACKBONE."""
    if overrides and "=" not in overrides[0] and out is None:
        legacy = overrides.pop(0)
        deprecated(f"a positional output ('{legacy}')", f"--out {legacy}")
        out = Path(legacy)
    if out is None:
        raise ConfigError("atomsift model init needs --out", fix="add --out FILE.pt, e.g. --out runs/model.pt")
    return out


def _spec_text(spec: str | DatasetSpec) -> str:
    return spec if isinstance(spec, str) else spec.path


def _unfitted(backbone) -> list[str]:
    from atomsift.models.backbones.gemnet_oc.scaling import unfitted_scale_factors

    return unfitted_scale_factors(backbone)


def _fit_scale_factors(backbone, data: str | DatasetSpec, num_batches: int, seed: int) -> list[str]:
    """Fit a GemNet-OC's scale factors on `num_batches` random batches of 8 structures of `data`."""
    import numpy as np

    from atomsift.data.spec import open_spec
    from atomsift.graph import collate
    from atomsift.models.backbones.gemnet_oc.model import ensure_scale_factors
    from atomsift.models.backbones.gemnet_oc.scaling import ScaleFactor

    if not any(isinstance(m, ScaleFactor) for m in backbone.modules()):
        raise ConfigError(f"--fit-scales is for GemNet-OC; '{backbone.name}' has no scale factors")
    ds = open_from_cli(data, command="model init --fit-scales") if isinstance(data, str) else open_spec(data)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(ds))[: 8 * num_batches]
    batches = [collate([ds[int(i)] for i in order[k : k + 8]]) for k in range(0, len(order), 8)]
    return ensure_scale_factors(backbone, batches, refit=True, progress=True)


@app.command("info")
def info(
    checkpoint: Path = typer.Argument(
        ..., metavar="CHECKPOINT", help="atomsift, JMP or fairchem-core 1.10 checkpoint file."
    ),
    trust_checkpoint: bool = typer.Option(False, "--trust-checkpoint", help=TRUST_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Backbone, hyperparameters, heads, parameter count, training state and what loading the weights reported."""
    from atomsift.models import load_checkpoint

    model = load_checkpoint(checkpoint, trusted=trust_checkpoint, strict=False)
    report = model.load_report
    summary: dict[str, Any] = {
        "checkpoint": str(checkpoint),
        "backbone": model.backbone.name,
        "hparams": model.backbone.hparams(),
        "parameters": sum(p.numel() for p in model.parameters()),
        "node_dim": model.backbone.node_dim,
        "edge_dim": model.backbone.edge_dim,
        "heads": {name: spec.model_dump() for name, spec in model.head_specs.items()},
        "trained": report.trained,
        "used_ema": report.used_ema,
        "missing_keys": report.missing_keys,
        "unexpected_keys": report.unexpected_keys,
        "unfitted_scale_factors": report.unfitted_scale_factors,
        "notes": report.notes,
        "metadata": model.metadata,
    }
    if as_json:
        print(json.dumps(summary, indent=2, default=str))
        return
    table = Table(title=str(checkpoint), show_header=False)
    for key in ("backbone", "parameters", "node_dim", "edge_dim", "used_ema"):
        value = summary[key]
        if value is None:  # PaiNN has no edge features
            value = "none"
        table.add_row(key, f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value))
    heads = summary["heads"].items()
    table.add_row("heads", ", ".join(f"{n} ({s['kind']}, forces {s['forces'] or 'none'})" for n, s in heads))
    table.add_row("trained", {True: "yes", False: "no (random weights)", None: "not recorded"}[report.trained])
    unfitted = report.unfitted_scale_factors
    shown = ", ".join(unfitted[:3]) + (", ... (--json lists all)" if len(unfitted) > 3 else "")
    table.add_row("unfitted scale factors", f"{len(unfitted)} (act as identity): {shown}" if unfitted else "none")
    table.add_row("hparams", json.dumps(summary["hparams"], default=str))
    table.add_row("load report", report.summary())
    console.print(table)


@app.command("convert", context_settings={"allow_extra_args": True})
def convert(
    ctx: typer.Context,
    checkpoint: Path = typer.Argument(
        ..., metavar="CHECKPOINT", help="JMP or fairchem-core 1.10 checkpoint (or an atomsift one)."
    ),
    out: Path | None = typer.Option(None, "--out", help="atomsift checkpoint to write (.pt; required)."),
    trust_checkpoint: bool = typer.Option(False, "--trust-checkpoint", help=TRUST_HELP),
    ema: bool = typer.Option(True, help="Keep the EMA weights (when the file has them) as the model weights."),
    strict: bool = typer.Option(True, help="Stop when keys are missing or unexpected."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Convert a checkpoint to the atomsift format (weights and scale factors; loads without pickles)."""
    from atomsift.models import load_checkpoint, save_checkpoint
    from atomsift.settings import check_output_file

    out = legacy_out(ctx, out, "model convert")
    check_output_file(out, overwrite, what="checkpoint .pt file", reads=(checkpoint,))
    model = load_checkpoint(checkpoint, ema=ema, trusted=trust_checkpoint, strict=strict)
    save_checkpoint(
        model, out, metadata={"converted_from": str(checkpoint), "load_report": model.load_report.summary()}
    )
    console.print(f"{model.load_report.summary()}\nwrote {out}")


@app.command("predict")
def predict(
    checkpoint: Path = typer.Argument(..., metavar="CHECKPOINT", help="Model checkpoint file."),
    data: str = typer.Argument(..., metavar="DATASET", help=DATASET_HELP),
    fmt: str | None = typer.Option(None, "--format", "-f", help=FORMAT_HELP),
    split: str | None = typer.Option(None, "--split", help=SPLIT_HELP),
    classes: str | None = typer.Option(None, "--classes", help=CLASSES_HELP),
    option: list[str] | None = typer.Option(None, "--option", "-o", help=OPTION_HELP),
    head: str | None = typer.Option(None, "--head", help="Head to use (default: the first)."),
    limit: int | None = typer.Option(None, "--limit", help="Only the first N structures."),
    batch_size: int = typer.Option(16, "--batch-size", help="Structures per forward pass."),
    device: str = typer.Option("cpu", "--device", help="torch device."),
    out: Path | None = typer.Option(None, "--out", help="Write per-structure predictions as JSON."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    trust_checkpoint: bool = typer.Option(False, "--trust-checkpoint", help=TRUST_HELP),
    n_old: int | None = typer.Option(None, "--n", hidden=True),
) -> None:
    """Predict the head's target and forces (eV/A); with labelled data, print the MAE as `evaluate` reports it."""
    from atomsift.models import load_checkpoint
    from atomsift.settings import check_output_file
    from atomsift.train.evaluate import evaluate_model, head_choice, task_of_model, unseen_elements

    if n_old is not None:
        at_least_one(n_old, "--n")
    limit = pick(limit, "--limit", n_old, "--n")
    at_least_one(limit, "--limit")
    at_least_one(batch_size, "--batch-size")
    if out is not None:
        check_output_file(out, overwrite, what="predictions .json file", reads=(checkpoint, data))
    model = load_checkpoint(checkpoint, trusted=trust_checkpoint, device=device)
    _warn_untrained(model.load_report, checkpoint)
    ds = open_from_cli(data, fmt, split, classes, option, command="model predict")
    count = len(ds) if limit is None else min(limit, len(ds))
    records = [ds[i] for i in range(count)]
    with naming_file(getattr(ds, "path", None)):
        results = model.predict(records, head=head, batch_size=batch_size, progress=count > 4 * batch_size)
    task = task_of_model(model, head)
    for said in (head_choice(model, head), unseen_elements(model, task.head, records)):
        if said:
            warnings.warn(said, stacklevel=1)
    rows = _rows(records, results, task)
    if out is not None:
        write_text_atomic(out, json.dumps({"checkpoint": str(checkpoint), "data": data, "predictions": rows}))
        console.print(f"wrote {out} ({len(rows)} structures)")
    metrics = evaluate_model(model, records, task, results=results)["metrics"]
    if metrics.get("warning"):
        warnings.warn(metrics["warning"], stacklevel=1)
    _print_mae(metrics, f"{checkpoint.name} on {data} ({count} structures)")
    labelled = metrics["n_with_target"] or metrics.get("n_with_forces")
    if not labelled:
        for hint in label_hints(ds):  # labels under other keys: say how to read them
            console.print(f"[yellow]hint:[/yellow] {hint}")
    if not labelled and out is None:  # no labels to score: the first predictions, as a table
        columns = [k for k in rows[0] if k != "forces_eV_per_A"]
        table = Table(
            title=f"{checkpoint.name} on {data}: the first {min(10, len(rows))} of {len(rows)} (--out for all)"
        )
        for name in columns:
            table.add_column(name, justify="left" if name == "id" else "right")
        for row in rows[:10]:
            table.add_row(*(f"{row[k]:.6f}" if isinstance(row[k], float) else str(row[k]) for k in columns))
        console.print(table)


def _warn_untrained(report, checkpoint: Path) -> None:
    """Warn when the checkpoint says its weights were never trained, or GemNet-OC scale factors are unfitted."""
    if report.trained is False:
        warnings.warn(
            f"{checkpoint} holds weights that were never trained (written by atomsift model init): its "
            "predictions and errors say nothing about a trained model",
            UserWarning,
            stacklevel=2,
        )
    if report.unfitted_scale_factors:
        warnings.warn(
            f"{checkpoint} has {len(report.unfitted_scale_factors)} unfitted GemNet-OC scale factors (they pass "
            "values through unchanged)",
            UserWarning,
            stacklevel=2,
        )


def _rows(records, results, task) -> list[dict[str, Any]]:
    """Per-structure rows (JSON-ready): the head's target under its name and unit (`energy_eV`, `U0_eV`,
    `bandgap_eV`), forces in eV/A."""
    rows: list[dict[str, Any]] = []
    for rec, res in zip(records, results):
        row: dict[str, Any] = {"id": rec.id, "natoms": rec.natoms}
        value = res.get("energy", res.get("property"))
        if value is not None:
            row[f"{task.target}_{task.unit}".replace("/", "_")] = value.tolist() if hasattr(value, "tolist") else value
        if "forces" in res:
            row["forces_eV_per_A"] = res["forces"].tolist()
        rows.append(row)
    return rows


def _print_mae(metrics: dict[str, Any], title: str) -> None:
    """The MAE rows of `evaluate_model`'s metrics (the target's in its reported unit, forces in meV/A)."""
    maes = {k: v for k, v in metrics.items() if "_mae_" in k}
    if not maes:
        return
    table = Table(title=title)
    table.add_column("quantity")
    table.add_column("MAE", justify="right")
    table.add_column("structures", justify="right")
    for key, value in maes.items():
        name, unit = key.split("_mae_", 1)
        counted = metrics["n_with_forces"] if name == "forces" else metrics["n_with_target"]
        per_atom = "/atom" if name.endswith("_per_atom") else ""  # energy_per_atom_mae_meV: meV per atom
        label = (
            name.removesuffix("_per_atom")
            + (" per atom" if per_atom else "")
            + f" ({unit.replace('_per_', '/')}{per_atom})"
        )
        table.add_row(label, f"{value:.2f}", str(counted))
    console.print(table)
