"""`atomsift csi`: rank upstream datasets by their Chemical Similarity Index to downstream sets."""

from __future__ import annotations

from pathlib import Path

import typer
import yaml
from rich.console import Console

from atomsift.cli.common import OVERRIDES_HELP, TRUST_HELP

DATASET_HELP = (
    "NAME=PATH[,key=value...]; keys format, sampling (balanced|random), n_samples, and reader options "
    "(split, classes, level, ...). Repeatable."
)


def csi(
    overrides: list[str] | None = typer.Argument(None, metavar="[KEY=VALUE]...", help=OVERRIDES_HELP),
    upstream: list[str] | None = typer.Option(None, "--upstream", "-u", help="Upstream candidate: " + DATASET_HELP),
    downstream: list[str] | None = typer.Option(None, "--downstream", "-d", help="Downstream set: " + DATASET_HELP),
    out: Path = typer.Option(..., "--out", help="Run folder (csi.json, csi.csv, csi_bars.png, subsets/, cache/)."),
    config: Path | None = typer.Option(None, "--config", help="YAML file with any of these settings (see configs/)."),
    extractor: str | None = typer.Option(
        None, "--extractor", help="sevenn (default), chgnet, soap, soap-full, checkpoint:PATH (a model file)."
    ),
    extractor_option: list[str] | None = typer.Option(
        None, "--extractor-option", "-x", help="Extractor option KEY=VALUE (repeatable), e.g. -x batch_size=8."
    ),
    trust_checkpoint: bool = typer.Option(
        False, "--trust-checkpoint", help="With --extractor checkpoint:PATH: " + TRUST_HELP
    ),
    aggregation: str | None = typer.Option(None, "--aggregation", help="flat (default: every atom), mean, sum, max."),
    n_samples: int | None = typer.Option(None, "--n-samples", help="Structures per dataset (default 10000)."),
    batch_size: int | None = typer.Option(None, "--batch-size", help="Structures per extractor call (default 16)."),
    bootstrap: int | None = typer.Option(
        None, "--bootstrap", help="Bootstrap resamples for intervals (0: off; default 100)."
    ),
    seed: int | None = typer.Option(None, "--seed", help="Seed of sampling and bootstrap (default 0)."),
    shrinkage: str | None = typer.Option(
        None, "--shrinkage", help="Covariance shrinkage: a weight in [0,1] or 'auto'."
    ),
    cache_dir: Path | None = typer.Option(None, "--cache-dir", help="Statistics cache (default OUT/cache)."),
    recompute: bool = typer.Option(False, "--recompute", help="Replace cached statistics whose settings differ."),
    device: str | None = typer.Option(None, "--device", help="Torch device of the extractor (default cpu)."),
) -> None:
    """Rank upstream datasets by CSI to each downstream set (lowest first), with bootstrap intervals."""
    from atomsift.csi.config import load_config
    from atomsift.settings import parse_key_values

    options = parse_key_values(extractor_option, "extractor option")
    if trust_checkpoint:
        options["trusted"] = True
    flags = {
        "upstream": _named(upstream, "--upstream"),
        "downstream": _named(downstream, "--downstream"),
        "extractor": extractor,
        "extractor_options": options or None,
        "aggregation": aggregation,
        "n_samples": n_samples,
        "batch_size": batch_size,
        "bootstrap": bootstrap,
        "seed": seed,
        "shrinkage": _shrinkage(shrinkage),
        "cache_dir": None if cache_dir is None else str(cache_dir),
        "recompute": recompute or None,
        "device": device,
    }
    cfg = load_config(config, flags, overrides)
    if trust_checkpoint and not cfg.extractor.startswith("checkpoint:"):
        from atomsift.errors import ConfigError

        raise ConfigError(
            f"--trust-checkpoint is for --extractor checkpoint:PATH, but the extractor is '{cfg.extractor}'",
            fix="leave --trust-checkpoint out, or pass --extractor checkpoint:PATH",
        )
    run_and_report(cfg, out)


def _shrinkage(text: str | None) -> float | str | None:
    """--shrinkage: 'auto' or a weight in [0, 1]."""
    if text is None or text == "auto":
        return text
    try:
        return float(text)
    except ValueError:
        from atomsift.errors import ConfigError

        raise ConfigError(
            f"--shrinkage '{text}' is neither 'auto' nor a number", fix="use --shrinkage auto or e.g. 0.1"
        ) from None


def _named(args: list[str] | None, flag: str) -> dict:
    """{name: DatasetSpec} from NAME=PATH arguments; a name given twice is an error, not a silent overwrite."""
    from atomsift.csi.config import parse_dataset_arg
    from atomsift.errors import ConfigError

    out: dict = {}
    for arg in args or []:
        name, spec = parse_dataset_arg(arg)
        if name in out:
            raise ConfigError(f"{flag} name '{name}' is given twice", fix="give every dataset its own NAME")
        out[name] = spec
    return out


def run_and_report(cfg, out: Path, console: Console | None = None) -> list[dict]:
    """Save the resolved config, run CSI, print the ranked tables, write json/csv/png into `out`."""
    from atomsift.cli.common import on_interrupt
    from atomsift.csi.pipeline import run_csi
    from atomsift.csi.report import print_tables, write_outputs
    from atomsift.settings import check_output_dir

    console = console or (Console() if Console().is_terminal else Console(width=140))
    check_output_dir(out)
    cache = Path(cfg.cache_dir) if cfg.cache_dir else out / "cache"
    on_interrupt(
        f"statistics of the datasets that finished are kept in {cache}; rerun the same command to resume from them"
    )
    rows = run_csi(cfg, out)  # refuses mismatched caches before it writes anything into `out`
    (out / "csi_config.yaml").write_text(yaml.safe_dump(cfg.model_dump(), sort_keys=False))
    print_tables(rows, console)
    paths = write_outputs(rows, out)
    console.print(f"wrote {paths['json']}, {paths['csv']}, {paths['png']}")
    return rows
