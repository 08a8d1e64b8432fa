"""`atomsift experiment` (docs/experiment.md, docs/cli.md)."""

from __future__ import annotations

from pathlib import Path

import typer

from atomsift.cli.common import CONFIG_HELP, at_least_one, on_interrupt, overrides_help

RUNS_FAILED = 3
"""Exit code of an experiment that finished with failed runs (docs/cli.md)."""


def check_flags(out: Path, *, resume: bool, overwrite: bool, report_only: bool, dry_run: bool) -> None:
    """Refuse flag combinations that contradict each other, before any work (--resume with --overwrite is
    coherent here: interrupted cells resume, cells of other settings are replaced)."""
    from atomsift.errors import ConfigError

    if report_only and dry_run:
        raise ConfigError(
            "--dry-run plans the grid and --report-only reports what has run: pass one of them",
            fix="--dry-run to see the plan, --report-only to gather finished cells",
        )
    if report_only and not (out / "experiment.yaml").is_file():
        raise ConfigError(
            "--report-only: the folder holds no experiment to report (no experiment.yaml)",
            file=out,
            fix="give the --out of an experiment that has run, or leave --report-only out to run this one",
        )


def exit_if_runs_failed(summary: dict, pending_were_lost: bool = True) -> None:
    """Exit code 3, after the report, when rows of the grid failed (scripts and CI see it; it was 0). After
    a grid that ran to its end (`pending_were_lost`), rows still pending were lost with their worker or SLURM
    job (killed for memory or time) and count too; after --report-only they may still be running."""
    counts = (summary or {}).get("status_counts", {})
    failed = counts.get("failed", 0) + (counts.get("pending", 0) if pending_were_lost else 0)
    if failed:
        typer.secho(
            f"error: {failed} of {sum(counts.values())} result rows failed or were lost with their job; the "
            "errors are in summary.json ('excluded') and in the cells' failed.json (a killed job leaves its "
            "log in logs/). Fix: correct the cause and rerun the same command with --resume (finished cells are "
            "reused; add --overwrite where correcting it changed a failed cell's settings).",
            err=True,
            fg=typer.colors.RED,
        )
        raise typer.Exit(RUNS_FAILED)


def experiment(
    overrides: list[str] | None = typer.Argument(
        None, metavar="[KEY=VALUE]...", help=overrides_help("pretrain.lr=0.0005")
    ),
    config: Path | None = typer.Option(None, "--config", help=CONFIG_HELP + " See configs/experiment_*.yaml."),
    out: Path = typer.Option(
        ..., "--out", help="Experiment folder (csi/, cells/, logs/, results.csv, summary.json, report.md)."
    ),
    resume: bool = typer.Option(False, "--resume", help="Continue interrupted cells from their checkpoints."),
    overwrite: bool = typer.Option(
        False, "--overwrite", help="Replace cells that hold runs with other settings (finished matching cells stay)."
    ),
    jobs: int | None = typer.Option(None, "--jobs", help="Run K jobs at once in local processes (default 1)."),
    dry_run: bool = typer.Option(False, "--dry-run", help="Print the grid and each run's plan, and stop."),
    report_only: bool = typer.Option(
        False, "--report-only", help="Gather what has finished into results, summary and report; train nothing."
    ),
    seed: list[int] | None = typer.Option(
        None, "--seed", help="Seeds of the grid (repeat the flag), instead of the config's seeds (default [0])."
    ),
) -> None:
    """The paper's experiment: CSI, then pretraining x finetuning over a grid, and whether CSI was right."""
    from atomsift.cli.common import make_console
    from atomsift.cli.train import _quiet_lightning
    from atomsift.experiment.config import ExperimentConfig
    from atomsift.experiment.grid import EXAMPLE
    from atomsift.experiment.run import run_experiment
    from atomsift.settings import given_keys, resolve_settings

    at_least_one(jobs, "--jobs")
    check_flags(out, resume=resume, overwrite=overwrite, report_only=report_only, dry_run=dry_run)
    flags = {"launcher.jobs": jobs, "seeds": list(seed) if seed else None}
    cfg = resolve_settings(ExperimentConfig, config, flags=flags, overrides=overrides, example=EXAMPLE)
    cfg.with_given(given_keys(flags, overrides))
    _quiet_lightning()
    on_interrupt(  # run_submitit says otherwise once SLURM jobs are submitted
        f"finished cells in {out}/cells/ are kept and reused; interrupted ones keep their last checkpoint: rerun "
        "the same command with --resume to continue"
    )
    summary = run_experiment(
        cfg, out, resume=resume, overwrite=overwrite, report_only=report_only, dry=dry_run, console=make_console()
    )
    if summary.get("refused"):
        raise typer.Exit(2)  # a dry run whose run would be refused, as the run would
    exit_if_runs_failed(summary, pending_were_lost=not report_only)
