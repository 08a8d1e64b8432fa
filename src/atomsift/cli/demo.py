"""`atomsift demo`: the main job on the bundled data: the data overview, then the paper's experiment on the
bundled mini-benchmark (atomsift/configs/experiment_demo.yaml; docs/experiment.md, docs/benchmark.md)."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from atomsift.cli.common import make_console


def demo(
    out: Path = typer.Option(Path("runs/demo"), "--out", help="Folder for the demo's outputs."),
    experiment: bool = typer.Option(
        True, "--experiment/--no-experiment", help="Run the experiment after the overview (CSI, training, report)."
    ),
    csi: bool | None = typer.Option(None, "--csi/--no-csi", hidden=True, help="Old name of --experiment."),
    seed: list[int] | None = typer.Option(None, "--seed", help="Seeds of the grid (repeat the flag; default 0 1)."),
    jobs: int | None = typer.Option(None, "--jobs", help="Run K jobs at once in local processes (default 1)."),
) -> None:
    """The main job: a data overview, then CSI of five upstream sets to two tasks, pretraining on each,
    finetuning (and from scratch), and whether the CSI ranking predicted the finetuned errors."""
    import warnings

    if csi is not None:
        warnings.warn("--csi/--no-csi is now --experiment/--no-experiment", stacklevel=1)
        experiment = csi
    from atomsift.cli.common import on_interrupt
    from atomsift.data import open_dataset
    from atomsift.data.bundled import DEMO_DATASETS
    from atomsift.data.stats import summarize
    from atomsift.settings import check_output_dir, write_text_atomic

    check_output_dir(out)  # a run folder: the demo reuses what matches inside it
    on_interrupt("rerun the same command to continue: finished experiment cells are kept and reused")

    console = make_console()
    table = Table(title="atomsift: bundled datasets", title_justify="left")
    for column in (
        "dataset",
        "format",
        "structures",
        "atoms",
        "elements",
        "periodic",
        "E mean (eV)",
        "F rms (eV/A)",
        "classes",
    ):
        table.add_column(column, justify="left" if column in ("dataset", "format", "elements") else "right")
    rows = []
    for name in DEMO_DATASETS:
        summary = summarize(open_dataset(f"bundled:{name}"), progress=True)
        summary["name"] = name
        rows.append(summary)
        table.add_row(
            f"bundled:{name}",
            summary["format"],
            str(summary["n_structures"]),
            str(summary["n_atoms_total"]),
            " ".join(summary["elements"]),
            f"{summary['n_periodic']}/{summary['n_structures']}",
            "-" if summary["energy_mean_eV"] is None else f"{summary['energy_mean_eV']:.3f}",
            "-" if summary["forces_rms_eV_per_A"] is None else f"{summary['forces_rms_eV_per_A']:.3f}",
            "-" if summary["n_classes"] is None else str(summary["n_classes"]),
        )
    console.print(table)
    write_text_atomic(out / "data_overview.json", json.dumps(rows, indent=2))
    console.print(f"saved {out / 'data_overview.json'}")
    if experiment:
        _demo_experiment(out / "experiment", console, seed, jobs)
        console.print(
            "next, on your own data: `atomsift csi -d mine=FILE.extxyz -u acac=bundled:acac ... --out runs/csi` "
            "ranks candidate datasets, `atomsift experiment --config configs/experiment_demo.yaml ...` runs the "
            "whole grid (docs/cli.md, docs/experiment.md)",
            markup=False,
            highlight=False,
        )


def _demo_experiment(out: Path, console: Console, seeds: list[int] | None, jobs: int | None) -> None:
    """`atomsift experiment` with the packaged demo grid; the demo owns its folder, so cells from other
    settings are replaced and interrupted ones resumed (finished matching cells are reused)."""
    from atomsift.cli.common import at_least_one
    from atomsift.cli.experiment import exit_if_runs_failed
    from atomsift.experiment.config import ExperimentConfig
    from atomsift.experiment.run import run_experiment
    from atomsift.settings import resolve_settings

    at_least_one(jobs, "--jobs")
    config = demo_config("experiment_demo.yaml")
    flags = {"launcher.jobs": jobs, "seeds": list(seeds) if seeds else None, "csi.recompute": True}
    cfg = resolve_settings(ExperimentConfig, config, flags=flags)
    console.print(f"\nthe experiment (settings: {config}; the same as configs/experiment_demo.yaml)")
    exit_if_runs_failed(run_experiment(cfg, out, resume=True, overwrite=True, console=console))


def demo_config(name: str) -> Path:
    """A packaged demo config (configs/NAME links to the same file)."""
    from importlib import resources

    return Path(str(resources.files("atomsift.configs") / name))


def demo_csi_config() -> Path:
    """The packaged CSI example on the bundled data (configs/csi_demo.yaml links to the same file)."""
    return demo_config("csi_demo.yaml")
