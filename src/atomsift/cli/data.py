"""`atomsift data ...`: inspect, convert, sample, list formats and bundled datasets."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

from atomsift.errors import ConfigError

app = typer.Typer(help="Read, inspect, convert and sample datasets.", no_args_is_help=True)
console = Console()

FORMAT_HELP = "Format name (see `atomsift data formats`); detected from the path when left out."
OPTION_HELP = "Reader option KEY=VALUE (repeatable), e.g. -o level=wb97x_tz -o energy_key=REF_energy."


def parse_options(pairs: list[str] | None) -> dict[str, Any]:
    """['a=1', 'b=x'] -> {'a': 1, 'b': 'x'}; values parsed as JSON where they can be."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ConfigError(f"reader option '{pair}' is not KEY=VALUE", fix="write it like -o level=wb97x_dz")
        try:
            out[key.strip()] = json.loads(value)
        except ValueError:
            out[key.strip()] = value
    return out


def open_from_cli(path: str, fmt: str | None, split: str | None, classes: str | None, options: list[str] | None):
    from atomsift.data import open_dataset

    opts = parse_options(options)
    if split is not None:
        opts["split"] = split
    if classes is not None:
        opts["classes"] = classes
    return open_dataset(path, format=fmt, **opts)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.10g}"
    if isinstance(value, list):
        return " ".join(map(str, value))
    return str(value)


@app.command()
def inspect(
    path: str = typer.Argument(..., help="Dataset file or directory, or bundled:NAME."),
    format: str | None = typer.Option(None, "--format", "-f", help=FORMAT_HELP),
    split: str | None = typer.Option(
        None, "--split", help="Split to read (train, val, test) where the format has splits."
    ),
    classes: str | None = typer.Option(
        None, "--classes", help="Class mapping file (OC20 oc20_data_mapping.pkl, OC22 oc22_metadata.pkl)."
    ),
    target: str | None = typer.Option(None, "--target", help="Report the mean of this target (e.g. U0, gap, bandgap)."),
    option: list[str] | None = typer.Option(None, "--option", "-o", help=OPTION_HELP),
    max_records: int | None = typer.Option(None, "--max-records", help="Only read the first N records."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """Summarise a dataset: structures, atoms, elements, energy mean, force RMS, classes."""
    from atomsift.data.stats import summarize

    ds = open_from_cli(path, format, split, classes, option)
    summary = summarize(ds, target=target, max_records=max_records, progress=not as_json)
    if as_json:
        typer.echo(json.dumps(summary, indent=2))
        return
    table = Table(title=f"{path} ({summary['format']})", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value")
    for key, value in summary.items():
        if key in ("metadata", "element_counts", "path", "format"):
            continue
        table.add_row(key, _fmt(value))
    for key, value in summary["metadata"].items():
        if key not in ("path", "format", "n_structures", "hints"):
            table.add_row(f"meta.{key}", _fmt(value))
    console.print(table)
    for hint in summary["metadata"].get("hints", []):
        console.print(f"[yellow]hint:[/yellow] {hint}")


@app.command()
def convert(
    src: str = typer.Argument(..., help="Any readable dataset (file, directory or bundled:NAME)."),
    dest: Path = typer.Argument(..., help="Output .aselmdb file."),
    format: str | None = typer.Option(None, "--format", "-f", help=FORMAT_HELP),
    split: str | None = typer.Option(None, "--split", help="Split to read where the format has splits."),
    classes: str | None = typer.Option(None, "--classes", help="Class mapping file (OC20/OC22)."),
    option: list[str] | None = typer.Option(None, "--option", "-o", help=OPTION_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace DEST if it exists."),
) -> None:
    """Write a dataset to ASE-LMDB (.aselmdb) with its metadata (natoms, class labels)."""
    from atomsift.data.readers.asedb import write_aselmdb

    if dest.suffix != ".aselmdb":
        raise ConfigError(
            f"destination must end in .aselmdb, got '{dest.name}'", file=dest, fix="name it like out.aselmdb"
        )
    if dest.exists() and not overwrite:
        raise ConfigError("destination exists", file=dest, fix="pass --overwrite or choose another name")
    ds = open_from_cli(src, format, split, classes, option)
    metadata = {"source": str(src), "source_format": ds.format_name, "source_metadata": ds.metadata()}
    write_aselmdb(dest, (ds[i] for i in range(len(ds))), metadata=metadata, total=len(ds), progress=True)
    console.print(f"wrote {len(ds)} structures to {dest}")


@app.command()
def sample(
    path: str = typer.Argument(..., help="Dataset file or directory, or bundled:NAME."),
    out: Path = typer.Option(..., "--out", help="Where to write the subset (JSON with indices and provenance)."),
    n: int = typer.Option(10000, "--n", help="Number of structures."),
    method: str = typer.Option("balanced", "--method", help="balanced (per class) or random."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
    format: str | None = typer.Option(None, "--format", "-f", help=FORMAT_HELP),
    split: str | None = typer.Option(None, "--split", help="Split to read where the format has splits."),
    classes: str | None = typer.Option(None, "--classes", help="Class mapping file (OC20/OC22)."),
    option: list[str] | None = typer.Option(None, "--option", "-o", help=OPTION_HELP),
) -> None:
    """Draw a random or class-balanced subset and save its indices beside the run."""
    from atomsift.data.sampling import class_balanced_indices, random_indices, save_subset

    ds = open_from_cli(path, format, split, classes, option)
    if method == "random":
        idx = random_indices(len(ds), n, seed)
        n_classes = None
    elif method == "balanced":
        labels = ds.class_labels()
        if labels is None:
            raise ConfigError(
                "this dataset has no class labels, so it cannot be sampled class-balanced",
                file=ds.path,
                fix="pass --classes with a mapping file, or use --method random",
            )
        idx = class_balanced_indices(labels, n, seed)
        n_classes = len(set(labels.tolist()))
    else:
        raise ConfigError(f"unknown sampling method '{method}'", fix="use --method balanced or --method random")
    save_subset(
        out,
        idx,
        dataset=str(path),
        format=ds.format_name,
        method=method,
        seed=seed,
        n_requested=n,
        n_total=len(ds),
        n_classes=n_classes,
    )
    console.print(f"{len(idx)} indices ({method}, seed {seed}) from {len(ds)} structures -> {out}")


@app.command()
def formats() -> None:
    """List the supported formats."""
    from atomsift.data.registry import FORMATS, reader_class

    table = Table("format", "reads")
    for name in FORMATS:
        table.add_row(name, reader_class(name).description)
    console.print(table)


@app.command()
def bundled() -> None:
    """List the datasets shipped with atomsift (read them as bundled:NAME)."""
    from atomsift.data.bundled import BUNDLED

    table = Table("name", "format", "content")
    for name, (_, fmt, _, text) in BUNDLED.items():
        table.add_row(f"bundled:{name}", fmt, text)
    console.print(table)
