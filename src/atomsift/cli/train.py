"""`atomsift pretrain`, `atomsift finetune`, `atomsift evaluate` (docs/training.md, docs/cli.md)."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import typer

from atomsift.cli.common import (
    CONFIG_HELP,
    DATASET_HELP,
    TRUST_HELP,
    at_least_one,
    make_console,
    on_interrupt,
    overrides_help,
)

RESUME_HELP = "Continue the unfinished run in --out from its last checkpoint (same settings)."
OVERWRITE_HELP = "Replace the run in --out (its config, checkpoints and outputs) instead of refusing."
DRY_RUN_HELP = (
    "Print the plan (datasets, sizes, shares, steps, budget, graph settings) and what the run would do with --out, "
    "and stop."
)


def _quiet_lightning() -> None:
    """Lightning's start-up chatter and known-harmless warnings stay off the terminal (metrics.csv has it all)."""
    for name in ("lightning.pytorch", "lightning.fabric", "lightning", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.WARNING)
    for pattern in (
        ".*weights_only.*",
        ".*dataloader is not resumable.*",
        ".*smaller than the logging interval.*",
        ".*LeafSpec.*",
        ".*does not have many workers.*",
        ".*litlogger.*",
        ".*Converting a tensor with requires_grad.*",
        ".*exists and is not empty.*",
        # epoch-level values are reduced over processes by the module itself before they are logged
        ".*when logging on epoch level in distributed setting.*",
    ):
        warnings.filterwarnings("ignore", message=pattern)


def _resume_hint(out: Path) -> None:
    """The Ctrl-C line of a training command, set first thing (a Ctrl-C while it starts up, a resume included)."""

    def hint() -> str:
        if (out / "checkpoints" / "last.ckpt").exists():
            return (
                f"the last checkpoint in {out}/checkpoints/ is kept (written where the run stopped, or at the last "
                "checkpoint_every step); rerun the same command with --resume to continue exactly where it stopped"
            )
        return "the run had written no checkpoint yet; rerun the same command to start it"

    on_interrupt(hint)


def pretrain(
    overrides: list[str] | None = typer.Argument(
        None, metavar="[KEY=VALUE]...", help=overrides_help("upstream.acac.n_samples=200")
    ),
    config: Path | None = typer.Option(None, "--config", help=CONFIG_HELP + " See configs/pretrain_*.yaml."),
    out: Path = typer.Option(..., "--out", help="Run folder (config.yaml, subsets/, checkpoints/, model.pt, ...)."),
    resume: bool = typer.Option(False, "--resume", help=RESUME_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    dry_run: bool = typer.Option(False, "--dry-run", help=DRY_RUN_HELP),
    seed: int | None = typer.Option(None, "--seed", help="Seed of subsets, initialisation and order (default 0)."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Structures per step and device (default 20)."),
    n_samples: int | None = typer.Option(None, "--n-samples", help="N: structures drawn once (over all datasets)."),
    epochs: int | None = typer.Option(None, "--epochs", help="E: passes over the N structures (default 5)."),
    trust_checkpoint: bool = typer.Option(
        False, "--trust-checkpoint", help=TRUST_HELP + " For backbone.checkpoint (continued pretraining)."
    ),
) -> None:
    """Pretrain a backbone on N structures x E epochs of one upstream dataset or a mixture."""
    _resume_hint(out)  # first: a Ctrl-C while the imports and the checks run says the same
    from atomsift.settings import resolve_settings
    from atomsift.train.config import PretrainConfig
    from atomsift.train.pretrain import check_start, dry_run_outlook, plan_pretraining, print_plan, run_pretraining
    from atomsift.train.run_folder import outlook_refused
    from atomsift.train.schedule import warmup_problem

    for value, flag in ((batch_size, "--batch-size"), (n_samples, "--n-samples"), (epochs, "--epochs")):
        at_least_one(value, flag)
    flags = {"seed": seed, "batch_size": batch_size, "n_samples": n_samples, "epochs": epochs}
    if trust_checkpoint:
        flags["backbone.trust_checkpoint"] = True
    cfg = resolve_settings(
        PretrainConfig,
        config,
        flags=flags,
        overrides=overrides,
        example='docs/training.md, "Settings of atomsift pretrain"',
    )
    console = make_console()
    if dry_run:
        check_start(cfg, out, overwrite)
        plan = plan_pretraining(cfg)
        print_plan(plan, cfg, console)
        line = dry_run_outlook(cfg, plan, out, resume=resume, overwrite=overwrite)
        console.print(line, markup=False, highlight=False)
        problem = warmup_problem(cfg.warmup_steps, plan.total_steps, cfg.warmup_start_factor)
        if problem:
            warnings.warn(problem, stacklevel=1)  # the run says it when it starts
        if outlook_refused(line):
            raise typer.Exit(2)  # as the run would
        return
    _quiet_lightning()
    run_pretraining(cfg, out, resume=resume, overwrite=overwrite, console=console)


def finetune(
    overrides: list[str] | None = typer.Argument(
        None, metavar="[KEY=VALUE]...", help=overrides_help("split.train=1000")
    ),
    preset: str | None = typer.Option(
        None, "--preset", help="rmd17, md22, spice, qm9, qmof, matbench, energy-forces or property."
    ),
    config: Path | None = typer.Option(None, "--config", help=CONFIG_HELP + " Applied over --preset."),
    data: str | None = typer.Option(None, "--data", help="The downstream dataset. " + DATASET_HELP),
    checkpoint: str | None = typer.Option(
        None, "--checkpoint", help="Start from these weights (atomsift, fairchem 1.10, JMP)."
    ),
    from_scratch: bool = typer.Option(
        False, "--from-scratch", help="Random weights of the same architecture (the baseline)."
    ),
    trust_checkpoint: bool = typer.Option(False, "--trust-checkpoint", help=TRUST_HELP),
    out: Path = typer.Option(
        ..., "--out", help="Run folder (config.yaml, split.json, model.pt, test_metrics.json, ...)."
    ),
    resume: bool = typer.Option(False, "--resume", help=RESUME_HELP),
    overwrite: bool = typer.Option(False, "--overwrite", help=OVERWRITE_HELP),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="Print the split sizes and steps and what the run would do with --out, and stop."
    ),
    seed: int | None = typer.Option(
        None, "--seed", help="Seed of initialisation and order (the split has split.seed)."
    ),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Structures per step and device."),
    epochs: int | None = typer.Option(None, "--epochs", help="Epochs (the preset's by default)."),
) -> None:
    """Finetune on a downstream task with the paper's protocol; tests the best EMA weights."""
    _resume_hint(out)  # first: a Ctrl-C while the imports and the checks run says the same
    from atomsift.cli.common import dataset_spec
    from atomsift.settings import resolve_settings
    from atomsift.train.config import FinetuneConfig
    from atomsift.train.finetune import load_preset, run_finetuning

    for value, flag in ((batch_size, "--batch-size"), (epochs, "--epochs")):
        at_least_one(value, flag)
    if preset is None and config is None:
        from atomsift.errors import ConfigError

        raise ConfigError(
            "finetune needs --preset NAME or --config FILE.yaml",
            fix="e.g. atomsift finetune --preset rmd17 --data rmd17_aspirin.npz --checkpoint run/model.pt --out ft",
        )
    base = load_preset(preset)
    flags: dict = {
        "seed": seed,
        "batch_size": batch_size,
        "epochs": epochs,
        "checkpoint": checkpoint,
        "from_scratch": True if from_scratch else None,
        "trust_checkpoint": True if trust_checkpoint else None,
    }
    if data is not None:
        _, spec = dataset_spec(data)
        base_data = dict(base.get("data") or {})
        flags["data"] = {
            **spec.model_dump(exclude_none=True),
            "options": {**(base_data.get("options") or {}), **spec.options},
        }
        base.pop("data", None)
    cfg = resolve_settings(
        FinetuneConfig,
        config,
        flags=flags,
        overrides=overrides,
        base=base,
        example='docs/training.md, "Settings of atomsift finetune"',
    )
    _quiet_lightning()
    result = run_finetuning(
        cfg, out, resume=resume, overwrite=overwrite, console=make_console(), dry_run=dry_run, outlook=True
    )
    if result.get("refused"):
        raise typer.Exit(2)  # a dry run whose run would be refused, as the run would


def evaluate(
    checkpoint: Path = typer.Argument(
        ..., metavar="CHECKPOINT", help="A trained model (RUN/model.pt, or any atomsift checkpoint)."
    ),
    data: str = typer.Option(..., "--data", help="The dataset. " + DATASET_HELP),
    split: str | None = typer.Option(
        None, "--split", help="train, val or test of the run's split.json (default: all)."
    ),
    out: Path = typer.Option(..., "--out", help="Folder for metrics.json and the plots."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace metrics.json in --out if it exists."),
    head: str | None = typer.Option(
        None, "--head", help="Head to evaluate (default: the model's first; a warning names it when there are several)."
    ),
    batch_size: int = typer.Option(16, "--batch-size", help="Structures per forward pass."),
    device: str = typer.Option("cpu", "--device", help="torch device."),
    trust_checkpoint: bool = typer.Option(False, "--trust-checkpoint", help=TRUST_HELP),
) -> None:
    """MAE and RMSE in meV, meV/A or the target's unit; parity plots; the run's learning curve."""
    from atomsift.cli.common import dataset_spec, no_sampling
    from atomsift.errors import ConfigError
    from atomsift.settings import check_output_dir, refuse_foreign_outputs
    from atomsift.train.evaluate import evaluate_checkpoint

    at_least_one(batch_size, "--batch-size")
    check_output_dir(out)
    if (out / "metrics.json").exists() and not overwrite:
        raise ConfigError(
            "the output folder already holds metrics.json",
            file=out,
            fix="pass --overwrite to replace it, or choose another --out",
        )
    if not overwrite:
        refuse_foreign_outputs(out, "metrics.json", ("parity_*.png", "learning_curve.png"), what="evaluation")
    _, spec = dataset_spec(data)
    no_sampling(spec, data, "evaluate")
    metrics = evaluate_checkpoint(
        checkpoint,
        spec,
        split=split,
        out=out,
        head=head,
        batch_size=batch_size,
        trusted=trust_checkpoint,
        device=device,
    )
    console = make_console()
    for key, value in metrics.items():
        if isinstance(value, float):
            console.print(f"{key:<32} {value:.6g}")
    if "warning" in metrics:
        console.print(f"[yellow]warning:[/yellow] {metrics['warning']}")
    if "note" in metrics:
        console.print(f"note: {metrics['note']}")
    console.print(
        f"wrote {out / 'metrics.json'}" + (f" and {len(metrics['plots'])} plot(s)" if metrics["plots"] else "")
    )
