"""`atomsift model ...`: create, inspect, convert and run model checkpoints (atomsift, JMP, fairchem 1.10)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from atomsift.cli.data import OPTION_HELP, open_from_cli, parse_options

app = typer.Typer(help="Create, inspect, convert and run model checkpoints.", no_args_is_help=True)
console = Console()

TRUST_HELP = (
    "Allow pickled Python objects in the file (some fairchem / Lightning files need it); only for trusted files."
)


@app.command("init")
def init(
    backbone: str = typer.Argument(..., help="Backbone name: painn or gemnet_oc."),
    out: Path = typer.Argument(..., help="Checkpoint to write (.pt)."),
    preset: str | None = typer.Option(None, help="Named size, e.g. S, L, small, tiny for gemnet_oc."),
    forces: str = typer.Option("gradient", help="Force head: gradient, direct or none."),
    hparam: list[str] | None = typer.Option(None, "--hparam", "-p", help="Backbone hyperparameter KEY=VALUE."),
    seed: int = typer.Option(0, help="Seed of the random initialisation."),
    fit_scales: str | None = typer.Option(
        None, "--fit-scales", help="GemNet-OC: fit the scale factors on batches of this dataset (path or bundled:NAME)."
    ),
    fit_batches: int = typer.Option(16, help="Batches of 8 structures used by --fit-scales."),
) -> None:
    """Write a randomly initialised model (backbone + one energy head) as an atomsift checkpoint."""
    import torch

    from atomsift.errors import ConfigError
    from atomsift.models import AtomsModel, build_backbone, save_checkpoint

    if forces not in ("gradient", "direct", "none"):
        raise ConfigError(f"unknown force mode '{forces}'", fix="use gradient, direct or none")
    torch.manual_seed(seed)
    model = AtomsModel(
        build_backbone(backbone, preset=preset, **parse_options(hparam)),
        {"energy": {"kind": "energy", "forces": None if forces == "none" else forces}},
        metadata={"created_by": "atomsift model init", "seed": seed, "preset": preset},
    )
    fitted: list[str] = []
    if fit_scales is not None:
        fitted = _fit_scale_factors(model.backbone, fit_scales, fit_batches, seed)
        model.metadata["scale_factors_fitted_on"] = fit_scales
    save_checkpoint(model, out)
    n = sum(p.numel() for p in model.parameters())
    console.print(
        f"wrote {out}: {model.backbone.name} with {n:,} parameters"
        + (f", {len(fitted)} scale factors fitted on {fit_scales}" if fit_scales else "")
    )


def _fit_scale_factors(backbone, data: str, num_batches: int, seed: int) -> list[str]:
    """Fit a GemNet-OC's scale factors on `num_batches` random batches of 8 structures of `data`."""
    import numpy as np

    from atomsift.errors import ConfigError
    from atomsift.graph import collate
    from atomsift.models.backbones.gemnet_oc.model import ensure_scale_factors
    from atomsift.models.backbones.gemnet_oc.scaling import ScaleFactor

    if not any(isinstance(m, ScaleFactor) for m in backbone.modules()):
        raise ConfigError(f"--fit-scales is for GemNet-OC; '{backbone.name}' has no scale factors")

    ds = open_from_cli(data, None, None, None, None)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(ds))[: 8 * num_batches]
    batches = [collate([ds[int(i)] for i in order[k : k + 8]]) for k in range(0, len(order), 8)]
    return ensure_scale_factors(backbone, batches, refit=True)


@app.command("info")
def info(
    checkpoint: Path = typer.Argument(..., help="atomsift, JMP or fairchem-core 1.10 checkpoint."),
    trust_checkpoint: bool = typer.Option(False, "--trust-checkpoint", help=TRUST_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object."),
) -> None:
    """Backbone, hyperparameters, heads, parameter count and what loading the weights reported."""
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
        "used_ema": report.used_ema,
        "missing_keys": report.missing_keys,
        "unexpected_keys": report.unexpected_keys,
        "notes": report.notes,
    }
    if as_json:
        print(json.dumps(summary, indent=2, default=str))
        return
    table = Table(title=str(checkpoint), show_header=False)
    for key in ("backbone", "parameters", "node_dim", "edge_dim", "used_ema"):
        value = summary[key]
        table.add_row(key, f"{value:,}" if isinstance(value, int) and not isinstance(value, bool) else str(value))
    table.add_row("heads", ", ".join(f"{n} ({s['kind']}, forces={s['forces']})" for n, s in summary["heads"].items()))
    table.add_row("hparams", json.dumps(summary["hparams"], default=str))
    table.add_row("load report", report.summary())
    console.print(table)


@app.command("convert")
def convert(
    checkpoint: Path = typer.Argument(..., help="JMP or fairchem-core 1.10 checkpoint (or an atomsift one)."),
    out: Path = typer.Argument(..., help="atomsift checkpoint to write."),
    trust_checkpoint: bool = typer.Option(False, "--trust-checkpoint", help=TRUST_HELP),
    ema: bool = typer.Option(True, help="Keep the EMA weights (when the file has them) as the model weights."),
    strict: bool = typer.Option(True, help="Stop when keys are missing or unexpected."),
) -> None:
    """Convert a checkpoint to the atomsift format (weights and scale factors; loads without pickles)."""
    from atomsift.models import load_checkpoint, save_checkpoint

    model = load_checkpoint(checkpoint, ema=ema, trusted=trust_checkpoint, strict=strict)
    save_checkpoint(
        model, out, metadata={"converted_from": str(checkpoint), "load_report": model.load_report.summary()}
    )
    console.print(f"{model.load_report.summary()}\nwrote {out}")


@app.command("predict")
def predict(
    checkpoint: Path = typer.Argument(..., help="Model checkpoint."),
    data: str = typer.Argument(..., help="Dataset path or bundled:NAME (any format `atomsift data formats` lists)."),
    fmt: str | None = typer.Option(None, "--format", "-f", help="Dataset format (detected when left out)."),
    option: list[str] | None = typer.Option(None, "--option", "-o", help=OPTION_HELP),
    head: str | None = typer.Option(None, help="Head to use (default: the first)."),
    n: int | None = typer.Option(None, help="Only the first N structures."),
    batch_size: int = typer.Option(16, help="Structures per forward pass."),
    device: str = typer.Option("cpu", help="torch device."),
    out: Path | None = typer.Option(None, help="Write per-structure predictions as JSON."),
    trust_checkpoint: bool = typer.Option(False, "--trust-checkpoint", help=TRUST_HELP),
) -> None:
    """Predict energies (eV) and forces (eV/A); with labelled data, print the MAE in meV and meV/A."""
    import numpy as np

    from atomsift.models import load_checkpoint

    model = load_checkpoint(checkpoint, trusted=trust_checkpoint, device=device)
    ds = open_from_cli(data, fmt, None, None, option)
    count = len(ds) if n is None else min(n, len(ds))
    records = [ds[i] for i in range(count)]
    results = model.predict(records, head=head, batch_size=batch_size, progress=count > 4 * batch_size)
    rows: list[dict[str, Any]] = []
    e_err: list[float] = []
    e_err_atom: list[float] = []
    f_err: list[np.ndarray] = []
    for rec, res in zip(records, results):
        row: dict[str, Any] = {"id": rec.id, "natoms": rec.natoms}
        if "energy" in res:
            row["energy_eV"] = res["energy"]
            if rec.energy is not None:
                e_err.append(abs(res["energy"] - rec.energy))
                e_err_atom.append(e_err[-1] / rec.natoms)
        if "forces" in res:
            row["forces_eV_per_A"] = res["forces"].tolist()
            if rec.forces is not None:
                f_err.append(np.abs(res["forces"] - rec.forces).ravel())
        if "property" in res:
            row["property"] = res["property"].tolist()
        rows.append(row)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps({"checkpoint": str(checkpoint), "data": data, "predictions": rows}))
        console.print(f"wrote {out} ({len(rows)} structures)")
    table = Table(title=f"{checkpoint.name} on {data} ({count} structures)")
    table.add_column("quantity")
    table.add_column("MAE", justify="right")
    if e_err:
        table.add_row("energy (meV)", f"{1000 * float(np.mean(e_err)):.2f}")
        table.add_row("energy per atom (meV/atom)", f"{1000 * float(np.mean(e_err_atom)):.2f}")
    if f_err:
        table.add_row("forces (meV/A)", f"{1000 * float(np.mean(np.concatenate(f_err))):.2f}")
    if e_err or f_err:
        console.print(table)
    elif out is None:
        for row in rows[:10]:
            console.print({k: v for k, v in row.items() if k != "forces_eV_per_A"})
