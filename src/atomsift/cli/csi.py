"""`atomsift csi`: rank upstream datasets by their Chemical Similarity Index to downstream sets."""

from __future__ import annotations

from pathlib import Path

import typer
import yaml
from rich.console import Console

from atomsift.cli.common import TRUST_HELP, overrides_help

DATASET_HELP = (
    "NAME=PATH[,key=value...]; keys format, sampling (balanced|random), n_samples, and reader options "
    "(split, classes, level, ...). Repeatable."
)


OVERRIDES_OPT = typer.Argument(None, metavar="[KEY=VALUE]...", help=overrides_help("upstream.acac.n_samples=500"))
UPSTREAM_OPT = typer.Option(None, "--upstream", "-u", help="Upstream candidate: " + DATASET_HELP)
DOWNSTREAM_OPT = typer.Option(None, "--downstream", "-d", help="Downstream set: " + DATASET_HELP)
OUT_OPT = typer.Option(..., "--out", help="Run folder (csi.json, csi.csv, csi_bars.png, subsets/, cache/).")
CONFIG_OPT = typer.Option(None, "--config", help="YAML file with any of these settings (see configs/).")
EXTRACTOR_OPT = typer.Option(
    None, "--extractor", help="sevenn (default), chgnet, soap, soap-full, checkpoint:PATH (a model file)."
)
EXTRACTOR_OPTION_OPT = typer.Option(
    None, "--extractor-option", "-x", help="Extractor option KEY=VALUE (repeatable), e.g. -x batch_size=8."
)
TRUST_CHECKPOINT_OPT = typer.Option(False, "--trust-checkpoint", help="With --extractor checkpoint:PATH: " + TRUST_HELP)
AGGREGATION_OPT = typer.Option(None, "--aggregation", help="flat (default: every atom), mean, sum, max.")
N_SAMPLES_OPT = typer.Option(None, "--n-samples", help="Structures per dataset (default 10000).")
BATCH_SIZE_OPT = typer.Option(None, "--batch-size", help="Structures per extractor call (default 16).")
BOOTSTRAP_OPT = typer.Option(None, "--bootstrap", help="Bootstrap resamples for intervals (0: off; default 100).")
SEED_OPT = typer.Option(None, "--seed", help="Seed of sampling and bootstrap (default 0).")
SHRINKAGE_OPT = typer.Option(None, "--shrinkage", help="Covariance shrinkage: a weight in [0,1] or 'auto'.")
CACHE_DIR_OPT = typer.Option(None, "--cache-dir", help="Statistics cache (default OUT/cache).")
RECOMPUTE_OPT = typer.Option(False, "--recompute", help="Replace cached statistics whose settings differ.")
DEVICE_OPT = typer.Option(None, "--device", help="Torch device of the extractor (default cpu).")
OVERWRITE_RESULTS_OPT = typer.Option(
    False, "--overwrite", help="Replace the results in --out of a run with other settings (refused without it)."
)
MEASURE_OPT = typer.Option("csi", "--measure", help="The measure minimised: csi (default), csi_element or mmd.")


def csi(
    overrides: list[str] | None = OVERRIDES_OPT,
    upstream: list[str] | None = UPSTREAM_OPT,
    downstream: list[str] | None = DOWNSTREAM_OPT,
    out: Path = OUT_OPT,
    config: Path | None = CONFIG_OPT,
    extractor: str | None = EXTRACTOR_OPT,
    extractor_option: list[str] | None = EXTRACTOR_OPTION_OPT,
    trust_checkpoint: bool = TRUST_CHECKPOINT_OPT,
    aggregation: str | None = AGGREGATION_OPT,
    n_samples: int | None = N_SAMPLES_OPT,
    batch_size: int | None = BATCH_SIZE_OPT,
    bootstrap: int | None = BOOTSTRAP_OPT,
    seed: int | None = SEED_OPT,
    shrinkage: str | None = SHRINKAGE_OPT,
    cache_dir: Path | None = CACHE_DIR_OPT,
    recompute: bool = RECOMPUTE_OPT,
    device: str | None = DEVICE_OPT,
    measures: str | None = typer.Option(
        None, "--measures", help="Measures besides CSI, comma-separated, or all (default); see docs/measures.md."
    ),
    overwrite: bool = OVERWRITE_RESULTS_OPT,
) -> None:
    """Rank upstream datasets by CSI to each downstream set (lowest first), with bootstrap intervals and the
    measures beyond CSI (docs/measures.md)."""
    cfg = _load(
        config,
        overrides,
        upstream,
        downstream,
        extractor_option,
        trust_checkpoint,
        extractor=extractor,
        aggregation=aggregation,
        n_samples=n_samples,
        batch_size=batch_size,
        bootstrap=bootstrap,
        seed=seed,
        shrinkage=_shrinkage(shrinkage),
        cache_dir=None if cache_dir is None else str(cache_dir),
        recompute=recompute or None,
        device=device,
        measures=measures,
    )
    run_and_report(cfg, out, overwrite=overwrite)


def _load(
    config: Path | None,
    overrides: list[str] | None,
    upstream: list[str] | None,
    downstream: list[str] | None,
    extractor_option: list[str] | None,
    trust_checkpoint: bool,
    **flags: object,
):
    """The CSI settings from --config, the flags and KEY=VALUE overrides (shared by csi and select)."""
    from atomsift.csi.config import load_config
    from atomsift.settings import parse_key_values

    options = parse_key_values(extractor_option, "extractor option")
    if trust_checkpoint:
        options["trusted"] = True
    flags.update(
        upstream=_named(upstream, "--upstream"),
        downstream=_named(downstream, "--downstream"),
        extractor_options=options or None,
    )
    cfg = load_config(config, flags, overrides)
    if trust_checkpoint and not cfg.extractor.startswith("checkpoint:"):
        from atomsift.errors import ConfigError

        raise ConfigError(
            f"--trust-checkpoint is for --extractor checkpoint:PATH, but the extractor is '{cfg.extractor}'",
            fix="leave --trust-checkpoint out, or pass --extractor checkpoint:PATH",
        )
    return cfg


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


def check_results_folder(out: Path, name: str, settings: dict, overwrite: bool) -> None:
    """Refuse (before any work) an --out whose results came from other settings, unless --overwrite: its
    csi.json / csv / chart would be replaced by another run's."""
    path = Path(out) / name
    if overwrite:
        return
    if not path.is_file():
        from atomsift.settings import refuse_foreign_outputs

        refuse_foreign_outputs(out, name, ("csi.json", "csi.csv", "csi_bars.png"), what="atomsift csi results")
        return
    from atomsift.train.inputs import read_run_yaml
    from atomsift.train.run_folder import config_diff, diff_text

    old = read_run_yaml(path, fix="choose another --out, or pass --overwrite to replace the results there")

    from atomsift.csi.config import MECHANICS

    diff = config_diff(old, yaml.safe_load(yaml.safe_dump(settings, sort_keys=False)), MECHANICS)
    if diff:
        from atomsift.errors import ConfigError

        raise ConfigError(
            f"--out holds the results of a run with other settings ({diff_text(diff, 4)}; see {name}), which "
            "this run would replace",
            file=out,
            fix="choose another --out, or pass --overwrite to replace them (cached statistics that still match "
            "are reused either way)",
        )


def run_and_report(
    cfg,
    out: Path,
    console: Console | None = None,
    settings: tuple[str, dict] = ("csi_config.yaml", {}),
    overwrite: bool = False,
) -> tuple[list[dict], list, list, object, Console]:
    """Run CSI, save the resolved settings (`settings`: file name and extra keys), print the ranked tables and
    write json/csv/png into `out` (refused, before any work, over the results of other settings unless
    `overwrite`). Returns (rows, upstream stats, downstream stats, extractor, console)."""
    from atomsift.cli.common import make_console, on_interrupt
    from atomsift.csi.pipeline import run_csi_with_stats
    from atomsift.csi.report import print_tables, write_outputs
    from atomsift.settings import check_output_dir, removed_if_left_empty, write_text_atomic

    console = console or make_console()
    cache = Path(cfg.cache_dir) if cfg.cache_dir else out / "cache"
    on_interrupt(  # said at the interrupt: the cache folder is made when a first dataset's statistics are saved
        lambda: (
            f"statistics of any dataset that finished are kept in {cache}; rerun the same command to resume from them"
            if cache.is_dir()  # (a shared cache_dir may hold other runs' files: "any", not "the")
            else "no dataset had finished, so nothing was kept; rerun the same command to start again"
        )
    )
    name, extra = settings
    check_results_folder(out, name, {**cfg.model_dump(), **extra}, overwrite)
    with removed_if_left_empty(out):  # bad input (found while opening data / the extractor) leaves no folder
        check_output_dir(out)
        rows, up, down, extractor = run_csi_with_stats(cfg, out)  # refuses mismatched caches before writing
    write_text_atomic(out / name, yaml.safe_dump({**cfg.model_dump(), **extra}, sort_keys=False))
    print_tables(rows, console)
    paths = write_outputs(rows, out)
    console.print(f"wrote {paths['json']}, {paths['csv']}, {paths['png']}")
    return rows, up, down, extractor, console


def select(
    overrides: list[str] | None = OVERRIDES_OPT,
    upstream: list[str] | None = UPSTREAM_OPT,
    downstream: list[str] | None = DOWNSTREAM_OPT,
    out: Path = typer.Option(..., "--out", help="Run folder (selection.json, mixture-*.yaml, csi.json, cache/)."),
    config: Path | None = CONFIG_OPT,
    measure: str = MEASURE_OPT,
    over: str = typer.Option(
        "datasets", "--over", help="Mix whole datasets (default) or the classes of each dataset (csi only)."
    ),
    extractor: str | None = EXTRACTOR_OPT,
    extractor_option: list[str] | None = EXTRACTOR_OPTION_OPT,
    trust_checkpoint: bool = TRUST_CHECKPOINT_OPT,
    aggregation: str | None = AGGREGATION_OPT,
    n_samples: int | None = N_SAMPLES_OPT,
    batch_size: int | None = BATCH_SIZE_OPT,
    bootstrap: int | None = BOOTSTRAP_OPT,
    seed: int | None = SEED_OPT,
    cache_dir: Path | None = CACHE_DIR_OPT,
    recompute: bool = RECOMPUTE_OPT,
    device: str | None = DEVICE_OPT,
    overwrite: bool = OVERWRITE_RESULTS_OPT,
) -> None:
    """Choose mixture weights over the upstream sets that minimise a measure to each downstream set, and write
    the mixture for `atomsift pretrain` (docs/measures.md)."""
    from atomsift.cli.select import run_select
    from atomsift.csi.selection import SELECTABLE
    from atomsift.errors import ConfigError

    if over not in ("datasets", "classes"):
        raise ConfigError(f"--over {over} is not known", fix="use --over datasets or --over classes")
    if over == "classes" and measure != "csi":
        raise ConfigError(
            f"--over classes selects by csi only, not {measure}", fix="use --measure csi with --over classes"
        )
    if measure not in SELECTABLE:
        raise ConfigError(
            f"--measure {measure} cannot be optimised over mixture weights",
            fix=f"use --measure {', '.join(SELECTABLE)} (kNN measures are step functions of the weights)",
        )
    cfg = _load(
        config,
        overrides,
        upstream,
        downstream,
        extractor_option,
        trust_checkpoint,
        extractor=extractor,
        aggregation=aggregation,
        n_samples=n_samples,
        batch_size=batch_size,
        bootstrap=bootstrap,
        seed=seed,
        cache_dir=None if cache_dir is None else str(cache_dir),
        recompute=recompute or None,
        device=device,
        measures=",".join(dict.fromkeys(["csi", "uncovered", measure])),
    )
    run_select(cfg, out, measure, over, overwrite=overwrite)
