"""`atomsift data ...`: inspect, convert, sample, list formats and bundled datasets."""

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
    at_least_one,
    dataset_spec,
    legacy_out,
    make_console,
    no_sampling,
    overrides_help,
    pick,
    split_overrides,
)
from atomsift.data.spec import DatasetSpec
from atomsift.errors import ConfigError
from atomsift.settings import Seed

app = typer.Typer(help="Read, inspect, convert and sample datasets.", no_args_is_help=True)
console = make_console(soft_wrap=True)  # messages stay one line (tables still fit the width)


def parse_options(pairs: list[str] | None) -> dict[str, Any]:
    """['a=1', 'b=x'] -> {'a': 1, 'b': 'x'}; values are YAML scalars (atomsift.settings.parse_value)."""
    from atomsift.settings import parse_key_values

    return parse_key_values(pairs, "reader option")


def open_from_cli(
    path: str,
    fmt: str | None = None,
    split: str | None = None,
    classes: str | None = None,
    options: list[str] | None = None,
    *,
    command: str | None = None,
):
    """Open the one dataset of a command: PATH or NAME=PATH[,key=value...] plus the reader flags."""
    from atomsift.data.spec import open_spec

    name, spec = dataset_spec(path, fmt=fmt, split=split, classes=classes, options=options, default_name="")
    name = name or spec.path  # errors name the dataset as the user wrote it, not by an internal "data"
    if command is not None:
        no_sampling(spec, name, command)
        return open_spec(spec, name, own=("path", "format"))
    return open_spec(spec, name)


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
    path: str = typer.Argument(..., metavar="DATASET", help=DATASET_HELP),
    format: str | None = typer.Option(None, "--format", "-f", help=FORMAT_HELP),
    split: str | None = typer.Option(None, "--split", help=SPLIT_HELP),
    classes: str | None = typer.Option(None, "--classes", help=CLASSES_HELP),
    target: str | None = typer.Option(None, "--target", help="Report the mean of this target (e.g. U0, gap, bandgap)."),
    option: list[str] | None = typer.Option(None, "--option", "-o", help=OPTION_HELP),
    limit: int | None = typer.Option(None, "--limit", help="Only read the first N records."),
    max_records: int | None = typer.Option(None, "--max-records", hidden=True),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON object instead of a table."),
) -> None:
    """Summarise a dataset: structures, atoms, elements, energy mean, force RMS, classes."""
    from atomsift.data.stats import summarize

    if max_records is not None:
        at_least_one(max_records, "--max-records")
    limit = pick(limit, "--limit", max_records, "--max-records")
    at_least_one(limit, "--limit")
    ds = open_from_cli(path, format, split, classes, option, command="data inspect")
    summary = summarize(ds, target=target, max_records=limit, progress=not as_json)
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
    if summary["n_structures"] < summary["n_structures_total"]:
        console.print(
            f"note: the counts are of the first {summary['n_structures']} structures (--limit); the meta.* rows "
            "describe the whole dataset"
        )
    for hint in summary["metadata"].get("hints", []):
        console.print(f"[yellow]hint:[/yellow] {hint}")


@app.command(context_settings={"allow_extra_args": True})
def convert(
    ctx: typer.Context,
    src: str = typer.Argument(..., metavar="DATASET", help=DATASET_HELP),
    out: Path | None = typer.Option(None, "--out", help="Output .aselmdb file (required)."),
    format: str | None = typer.Option(None, "--format", "-f", help=FORMAT_HELP),
    split: str | None = typer.Option(None, "--split", help=SPLIT_HELP),
    classes: str | None = typer.Option(None, "--classes", help=CLASSES_HELP),
    option: list[str] | None = typer.Option(None, "--option", "-o", help=OPTION_HELP),
    limit: int | None = typer.Option(None, "--limit", help="Only write the first N records."),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
) -> None:
    """Write a dataset to ASE-LMDB (.aselmdb) with its metadata (natoms, class labels)."""
    from atomsift.data.readers.asedb import write_aselmdb
    from atomsift.settings import check_output_file

    dest = legacy_out(ctx, out, "data convert")
    at_least_one(limit, "--limit")
    if dest.suffix != ".aselmdb" and not dest.is_dir():
        raise ConfigError(
            f"--out must end in .aselmdb, got '{dest.name}'", file=dest, fix="name it like --out out.aselmdb"
        )
    check_output_file(dest, overwrite, what="output .aselmdb file", reads=(src,))
    ds = open_from_cli(src, format, split, classes, option, command="data convert")
    count = len(ds) if limit is None else min(limit, len(ds))
    metadata = {"source": str(src), "source_format": ds.format_name, "source_metadata": ds.metadata()}
    write_aselmdb(dest, (ds[i] for i in range(count)), metadata=metadata, total=count, progress=True)
    console.print(f"wrote {count} structures to {dest}")


class SampleSettings(BaseModel):
    """Settings of `atomsift data sample` (YAML keys; docs/cli.md)."""

    model_config = ConfigDict(extra="forbid")

    data: DatasetSpec | None = Field(None, description="the dataset (on the command line: the DATASET argument)")
    n_samples: int = Field(10_000, ge=1, description="structures to draw (data.n_samples wins when given)")
    sampling: Literal["balanced", "random"] = Field("balanced", description="balanced (per class) or random")
    seed: Seed = 0


def _normalize_data(data: dict[str, Any]) -> dict[str, Any]:
    """The config's `data:` entry with inline reader options under `options` (where flags put theirs)."""
    if isinstance(data.get("data"), dict):
        data["data"] = DatasetSpec.normalize(data["data"])
    return data


@app.command()
def sample(
    path: str | None = typer.Argument(
        None, metavar="[DATASET]", help=DATASET_HELP + " May come from --config (data: {path: ...})."
    ),
    overrides: list[str] | None = typer.Argument(
        None, metavar="[KEY=VALUE]...", help=overrides_help("data.split=train")
    ),
    out: Path = typer.Option(..., "--out", help="Where to write the subset (JSON with indices and provenance)."),
    n_samples: int | None = typer.Option(None, "--n-samples", help="Number of structures (default 10000)."),
    sampling: str | None = typer.Option(None, "--sampling", help="balanced (per class, default) or random."),
    seed: int | None = typer.Option(None, "--seed", help="Random seed (default 0)."),
    format: str | None = typer.Option(None, "--format", "-f", help=FORMAT_HELP),
    split: str | None = typer.Option(None, "--split", help=SPLIT_HELP),
    classes: str | None = typer.Option(None, "--classes", help=CLASSES_HELP),
    option: list[str] | None = typer.Option(None, "--option", "-o", help=OPTION_HELP),
    config: Path | None = typer.Option(None, "--config", help=CONFIG_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    n_old: int | None = typer.Option(None, "--n", hidden=True),
    method_old: str | None = typer.Option(None, "--method", hidden=True),
) -> None:
    """Draw a random or class-balanced subset and save its indices as JSON."""
    from atomsift.data.sampling import class_balanced_indices, random_indices, save_subset
    from atomsift.data.spec import open_spec
    from atomsift.settings import check_output_file, load_yaml, parse_key_values, resolve_settings

    n_samples = pick(n_samples, "--n-samples", n_old, "--n")
    sampling = pick(sampling, "--sampling", method_old, "--method")
    path, overrides = split_overrides(
        path, overrides, SampleSettings, dataset_key="data", provided=config is not None and "data" in load_yaml(config)
    )
    flags: dict[str, Any] = {"n_samples": n_samples, "sampling": sampling, "seed": seed}
    if path is not None:
        _, spec = dataset_spec(path)
        flags["data"] = spec.model_dump(exclude_defaults=True)
    if format is not None:
        flags["data.format"] = format
    reader = parse_key_values(option, "reader option")
    reader.update({k: v for k, v in (("split", split), ("classes", classes)) if v is not None})
    for key, value in reader.items():
        flags[f"data.options.{key}"] = value
    cfg = resolve_settings(
        SampleSettings, config, flags=flags, overrides=overrides, example="docs/cli.md", prepare=_normalize_data
    )
    if cfg.data is None:
        raise ConfigError(
            "atomsift data sample needs a dataset", fix="give it as the first argument, or as data.path in --config"
        )
    check_output_file(out, overwrite, what="subset .json file", reads=(cfg.data.path,))
    n = cfg.data.n_samples or cfg.n_samples
    method = cfg.data.sampling or cfg.sampling
    ds = open_spec(cfg.data)
    if method == "random":
        idx = random_indices(len(ds), n, cfg.seed)
        n_classes = None
    else:
        labels = ds.class_labels()
        if labels is None:
            raise ConfigError(
                "this dataset has no class labels, so it cannot be sampled class-balanced",
                file=ds.path,
                fix="pass --classes with a mapping file, or use --sampling random",
            )
        idx = class_balanced_indices(labels, n, cfg.seed)
        n_classes = len(set(labels.tolist()))
    distinct = len(set(idx.tolist()))
    if method != "random" and distinct < len(idx):  # the paper's rule: a class smaller than its quota repeats
        warnings.warn(
            f"the class-balanced subset repeats structures: {len(idx)} indices, {distinct} distinct (classes "
            "smaller than their share are drawn with replacement); --sampling random draws without",
            stacklevel=1,
        )
    if n is not None and len(idx) < n:
        warnings.warn(
            f"asked for {n} structures, but {len(ds)} are there to draw from: the subset holds {len(idx)} "
            "(draws are without repetition)",
            stacklevel=1,
        )
    save_subset(
        out,
        idx,
        dataset=cfg.data.path,
        format=ds.format_name,
        method=method,
        seed=cfg.seed,
        n_requested=n,
        n_total=len(ds),
        n_classes=n_classes,
        settings=cfg.model_dump(),
    )
    console.print(f"{len(idx)} indices ({method}, seed {cfg.seed}) from {len(ds)} structures -> {out}")


@app.command()
def formats() -> None:
    """List the supported formats and their reader options (-o KEY=VALUE, or KEY=VALUE in a dataset spec)."""
    import inspect

    from atomsift.data.registry import FORMATS, reader_class, reader_options

    table = Table("format", "reads", "options (default)")
    for name in FORMATS:
        known = reader_options(reader_class(name))
        shown = "any" if known is None else ", ".join(
            k if v is inspect.Parameter.empty else f"{k} ({v!r})" for k, v in known.items()
        )  # fmt: skip
        table.add_row(name, reader_class(name).description, shown or "-")
    console.print(table)


@app.command()
def bundled() -> None:
    """List the datasets shipped with atomsift (read them as bundled:NAME)."""
    from atomsift.data.bundled import BUNDLED

    table = Table("name", "format", "content")
    for name, (_, fmt, _, text) in BUNDLED.items():
        table.add_row(f"bundled:{name}", fmt, text)
    console.print(table)


@app.command("make-benchmark")
def make_benchmark(
    out: Path = typer.Option(..., "--out", help="Output folder (refused when it exists and is not empty)."),
    seed: int = typer.Option(
        0, "--seed", min=0, max=2**32 - 1, help="Random seed of the molecule choice, rattling, MD and subset."
    ),
    overwrite: bool = typer.Option(False, "--overwrite", help="Write into an existing folder, replacing its files."),
    qm9: Path | None = typer.Option(
        None, "--qm9", help="QM9 copy to take molecules from (any QM9 format atomsift reads) instead of qm9pack."
    ),
    n_organic: int = typer.Option(600, "--n-organic", help="Rattled QM9 molecules in bench-organic."),
    n_reactive_molecules: int = typer.Option(20, "--n-reactive-molecules", help="MD trajectories in bench-reactive."),
    frames_per_molecule: int = typer.Option(20, "--frames-per-molecule", help="Frames kept per MD trajectory."),
    n_catalysis: int = typer.Option(350, "--n-catalysis", help="Adsorbate+slab structures in bench-catalysis."),
    n_qm9: int = typer.Option(600, "--n-qm9", help="Downstream QM9 molecules in bench-qm9."),
) -> None:
    """Make the mini-benchmark (bench-organic, -reactive, -catalysis, -qm9) with GFN-xTB labels (docs/benchmark.md)."""
    import time

    from atomsift.data._benchmark_labels import require_modules
    from atomsift.data.benchmark import FILES, PROVENANCE_FILE, BenchmarkSizes
    from atomsift.data.benchmark import make_benchmark as make
    from atomsift.settings import check_output_dir

    sizes = BenchmarkSizes(n_organic, n_reactive_molecules, frames_per_molecule, n_catalysis, n_qm9)
    sizes.check()
    require_modules(["tblite"] + (["qm9pack"] if qm9 is None else []))
    dest = check_output_dir(out, overwrite)
    start = time.perf_counter()
    provenance = make(dest, seed=seed, sizes=sizes, qm9=qm9)
    for name, file in FILES.items():
        info = provenance["sets"][name]
        console.print(f"{name}: {info['n_structures']} structures, {info['n_atoms']} atoms -> {dest / file}")
    console.print(f"provenance: {dest / PROVENANCE_FILE}; wall time {time.perf_counter() - start:.0f} s")
