"""Parts every command shares: option help texts, the one-dataset argument, old spellings, the Ctrl-C line.

The vocabulary itself is written down in docs/cli.md; its parsing lives in atomsift.settings and
atomsift.data.spec.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from atomsift.errors import ConfigError

DATASET_HELP = "Dataset: PATH (file, folder, glob or bundled:NAME) or NAME=PATH[,key=value...] with reader options."
FORMAT_HELP = "Format name (see `atomsift data formats`); detected from the path when left out."
SPLIT_HELP = "Split to read (train, val, test) where the format has splits."
CLASSES_HELP = "Class mapping file (OC20 oc20_data_mapping.pkl, OC22 oc22_metadata.pkl)."
OPTION_HELP = "Reader option KEY=VALUE (repeatable; values are YAML scalars), e.g. -o level=wb97x_tz."
OVERWRITE_HELP = "Replace the --out file if it exists."
CONFIG_HELP = "YAML file with any of this command's settings (flags and KEY=VALUE overrides go on top)."


def overrides_help(example: str) -> str:
    """The help of a command's KEY=VALUE arguments, with an example of its own keys."""
    return f"Settings overrides KEY=VALUE, nested keys joined by dots (e.g. {example}); applied last."


TRUST_HELP = (
    "Allow pickled Python objects in the checkpoint (some fairchem / Lightning files need it); only for files "
    "from a source you trust: unpickling can run code."
)
SEED_HELP = "Random seed."

GENERIC_INTERRUPT = (
    "outputs are written whole at the end, so nothing partial was kept; rerun the command to start again"
)
_interrupt_hint: str | Callable[[], str] = GENERIC_INTERRUPT


# where no terminal sets the width (logs, pipes, CI), tables get this many columns instead of rich's 80
LOG_WIDTH = 160


def make_console(soft_wrap: bool = False) -> Console:
    """The commands' rich console: the terminal's width, or LOG_WIDTH columns where output goes to a file."""
    return Console(soft_wrap=soft_wrap) if Console().is_terminal else Console(width=LOG_WIDTH, soft_wrap=soft_wrap)


def on_interrupt(hint: str | Callable[[], str]) -> None:
    """Set what the Ctrl-C line says (what was kept, how to resume); each command states its own. A callable is
    asked when the Ctrl-C comes (what was kept may depend on how far the command got)."""
    global _interrupt_hint
    _interrupt_hint = hint


def interrupt_hint() -> str:
    return _interrupt_hint() if callable(_interrupt_hint) else _interrupt_hint


def deprecated(old: str, new: str) -> None:
    """Warn that an old spelling still works for this release."""
    warnings.warn(f"{old} is an old spelling, kept for one release; use {new}", FutureWarning, stacklevel=2)


def pick(new_value: Any, new: str, old_value: Any, old: str) -> Any:
    """The value of an option that has an old hidden spelling; both given is an error."""
    if old_value is None:
        return new_value
    if new_value is not None:
        raise ConfigError(f"{old} and {new} are the same option, given twice", fix=f"keep {new} only")
    deprecated(old, new)
    return old_value


def legacy_out(ctx: typer.Context, out: Path | None, command: str) -> Path:
    """--out, or (old spelling, one release) a positional output after the inputs; refuses other extras."""
    extra = list(ctx.args)
    if len(extra) > 1 or (extra and out is not None) or (extra and extra[0].startswith("-")):
        raise ConfigError(
            f"unexpected argument(s): {' '.join(extra)}", fix=f"see `atomsift {command} --help`; outputs go in --out"
        )
    if extra:
        deprecated(f"a positional output ('{extra[0]}')", f"--out {extra[0]}")
        return Path(extra[0])
    if out is None:
        raise ConfigError(f"atomsift {command} needs --out", fix=f"add --out FILE, e.g. atomsift {command} ... --out x")
    return out


def at_least_one(value: int | None, flag: str) -> None:
    """ConfigError unless `value` is None or >= 1."""
    if value is not None and value < 1:
        raise ConfigError(f"{flag} must be at least 1, got {value}", fix=f"give a positive number, or leave {flag} out")


def dataset_spec(
    text: str,
    *,
    fmt: str | None = None,
    split: str | None = None,
    classes: str | None = None,
    options: list[str] | None = None,
    default_name: str = "data",
):
    """(name, DatasetSpec) from a PATH or NAME=PATH[,key=value...] argument plus --format/--split/--classes/-o.

    A reader option given both inline and as a flag is an error, not a silent choice.
    """
    from atomsift.data.spec import parse_dataset_arg
    from atomsift.settings import parse_key_values

    name, spec = parse_dataset_arg(text, default_name=default_name)
    extra = parse_key_values(options, "reader option")
    if split is not None:
        extra["split"] = split
    if classes is not None:
        extra["classes"] = classes
    clash = sorted(set(extra) & set(spec.options))
    if fmt is not None and spec.format is not None:
        clash.insert(0, "format")
    if clash:
        raise ConfigError(
            f"dataset '{text}': {', '.join(clash)} given both inline and as an option",
            fix="give each reader option once, inline (PATH,key=value) or as a flag",
        )
    update: dict[str, Any] = {"options": {**spec.options, **extra}}
    if fmt is not None:
        update["format"] = fmt
    return name, spec.model_copy(update=update)


SUBSET_FIX = "draw a subset with atomsift data sample and read it as PATH,indices=SUBSET.json"

NO_SAMPLING_FIX = {
    "evaluate": f"drop it: evaluate scores every structure (of --split, when given); or {SUBSET_FIX}",
    "model init --fit-scales": "drop it: the fit draws --fit-batches random batches of 8 itself",
}


def no_sampling(spec, name: str, command: str) -> None:
    """Refuse the sampling keys of a dataset spec in a command that reads records in order."""
    given = [k for k in ("sampling", "n_samples") if getattr(spec, k) is not None]
    if given:
        raise ConfigError(
            f"dataset '{name}': {', '.join(given)} mean(s) nothing to atomsift {command}, which reads records in order",
            fix=NO_SAMPLING_FIX.get(command, f"use --limit N for the first N records, or {SUBSET_FIX}"),
        )


def split_overrides(
    first: str | None,
    overrides: list[str] | None,
    settings,
    *,
    dataset_key: str | None = None,
    provided: bool = False,
) -> tuple[str | None, list[str]]:
    """Tell a leading positional (dataset, backbone) from a KEY=VALUE override that took its place.

    `atomsift data sample --config s.yaml seed=3` puts 'seed=3' in the first positional. A first item of the form
    KEY=VALUE is an override when `provided` (the config file already gives what the positional would), or when
    its key is a setting of `settings` (a pydantic model) or a dotted key into one; with `dataset_key`,
    'data=x.xyz' (NAME=PATH with that name) stays the dataset.
    """
    overrides = list(overrides or [])
    if first is not None and "=" in first:
        key = first.split("=", 1)[0].strip()
        if provided or (key != dataset_key and key.split(".", 1)[0] in settings.model_fields and "/" not in key):
            return None, [first, *overrides]
    return first, overrides
