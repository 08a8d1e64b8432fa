"""Run folders: the settings check, reuse / resume / overwrite rules, and writing their files atomically.

Reuse rules (docs/cli.md): a folder with the same resolved settings and a summary is finished and reused; the
same settings without a summary need `--resume`; other settings are refused, naming the keys that differ,
unless `--overwrite` (which removes the run's own files first).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import yaml

from atomsift.errors import ConfigError
from atomsift.settings import check_output_dir, refuse_foreign_outputs, write_text_atomic
from atomsift.train.inputs import check_inputs, read_run_yaml

P = ParamSpec("P")
R = TypeVar("R")

MECHANICS = ("num_workers", "loggers", "checkpoint_every", "log_every")
"""Settings that change how a run is carried out, not what it computes: free to differ on resume or reuse."""

RUN_FILES = (
    "config.yaml",
    "inputs.json",
    "summary.json",
    "model.pt",
    "last.pt",
    "metrics.csv",
    "load_report.json",
    "split.json",
    "test_metrics.json",
    "subsets",
    "checkpoints",
    "logs",
    "plots",
)


def flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1} (lists kept whole)."""
    if not isinstance(d, dict):
        return {prefix: d}
    out: dict[str, Any] = {}
    for key, value in d.items():
        name = f"{prefix}.{key}" if prefix else str(key)
        out.update(flatten(value, name) if isinstance(value, dict) and value else {name: value})
    return out


def config_diff(old: dict[str, Any], new: dict[str, Any], mechanics: tuple[str, ...] = MECHANICS) -> list[str]:
    """Dotted keys whose values differ, with both values (run `mechanics` such as num_workers left out)."""
    a, b = flatten(old), flatten(new)
    for key in mechanics:
        a.pop(key, None)
        b.pop(key, None)
    return [f"{k}: {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def diff_text(diff: list[str], shown: int = 6) -> str:
    """The first `shown` differences of `config_diff`, '; '-joined, with how many more there are."""
    return "; ".join(diff[:shown]) + (f"; and {len(diff) - shown} more" if len(diff) > shown else "")


def secondary_rank() -> bool:
    """True in every process but the first of a DDP run (Lightning's extra processes, srun tasks, torchrun
    ranks): they write nothing."""
    return any(os.environ.get(k, "0") != "0" for k in ("RANK", "SLURM_PROCID", "LOCAL_RANK", "NODE_RANK"))


def quiet_if_secondary(console: Any) -> Any:
    """The console, silenced in DDP's extra processes (the first process prints the plan and the table)."""
    if secondary_rank():
        console.quiet = True
    return console


LOCK_FILE = ".atomsift.lock"
_held: dict[Path, Any] = {}


def lock_run_folder(out: Path) -> None:
    """Hold an exclusive lock on the run folder until the run that took it ends (`releases_run_locks`): a second
    atomsift process started into the same folder is refused instead of both writing there (fcntl: Linux and
    macOS; elsewhere no lock)."""
    try:
        import fcntl
    except ImportError:
        return
    key = Path(out).resolve()
    if key in _held:
        return
    handle = open(key / LOCK_FILE, "a+b")  # noqa: SIM115  (held open past this function: the lock lives on it)
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        raise ConfigError(
            "another atomsift process is running in this run folder (it holds its lock)",
            file=out,
            fix="wait for that run to end (or stop it), or choose another --out",
        ) from None
    _held[key] = handle


def releases_run_locks(fn: Callable[P, R]) -> Callable[P, R]:
    """Decorator of a run function: the run-folder locks taken while it runs are released when it returns or
    raises (a grid runs many cells in one process)."""

    @functools.wraps(fn)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        before = set(_held)
        try:
            return fn(*args, **kwargs)
        finally:
            for key in set(_held) - before:
                handle = _held.pop(key)
                with contextlib.suppress(OSError):
                    (key / LOCK_FILE).unlink()
                handle.close()

    return wrapper


def prepare_run(
    out: Path,
    settings: dict[str, Any],
    *,
    resume: bool,
    overwrite: bool,
    command: str,
    inputs: tuple[str | Path | None, ...] = (),
    fingerprints: dict[str, str] | None = None,
) -> str:
    """Check the run folder against the settings; returns 'new', 'resume' or 'done'.

    Writes config.yaml for a new run. Raises ConfigError, before anything is deleted, for a folder holding
    another run, an unfinished run without --resume, files a run writes but no run, --resume with --overwrite,
    and an --overwrite that would delete one of the run's `inputs` (e.g. finetuning's --checkpoint).
    `fingerprints` (name -> fingerprint of a file the run reads) go to inputs.json; a finished or unfinished
    run whose inputs.json differs (a data file or checkpoint changed since) is refused rather than reused.
    """
    if secondary_rank():  # rank 0 checked the folder and wrote config.yaml before starting this process
        return "resume" if resume else "new"
    if resume and overwrite:
        raise ConfigError(
            "--resume and --overwrite contradict each other: --resume continues the run in --out, --overwrite "
            "deletes it first",
            file=out,
            fix="pass --resume to continue the run, or --overwrite alone to start it again",
        )
    if resume and not Path(out).exists():
        raise ConfigError("--resume, but the run folder does not exist", file=out, fix="drop --resume to start one")
    out = check_output_dir(out)
    lock_run_folder(out)  # before anything is read or deleted: another process may be writing here
    saved_path = out / "config.yaml"
    if overwrite:
        for item in filter(None, inputs):
            if _removed_by_overwrite(out, Path(item)):
                raise ConfigError(
                    f"--overwrite would delete {item}, which this run reads",
                    file=out,
                    fix="copy it out of the run folder first, or choose another --out",
                )
    else:
        refuse_foreign_outputs(out, "config.yaml", RUN_FILES, what="atomsift run")
    if overwrite:  # also where files a run writes lie without config.yaml (refused above without --overwrite)
        _remove_run_files(out)
    started = (out / "checkpoints" / "last.ckpt").exists() or (out / "summary.json").exists()
    if saved_path.exists() and not started and not resume:
        saved_path.unlink()  # an earlier attempt stopped before training (bad data, a typo): nothing to keep
    if saved_path.exists():
        saved = read_run_yaml(saved_path)
        diff = config_diff(saved, settings)
        if diff:
            raise ConfigError(
                f"the run folder holds a run with other settings ({diff_text(diff)})",
                file=out,
                fix="use the original settings to resume or reuse it, another --out for a new run, or --overwrite "
                "to replace it",
            )
        if started:  # a run stopped before its first checkpoint starts again: nothing of it to protect
            check_inputs(out, fingerprints)
        if (out / "summary.json").exists():
            return "done"
        if not (out / "checkpoints" / "last.ckpt").exists():
            if resume:  # nothing to resume: the earlier attempt stopped before its first checkpoint
                warnings.warn(
                    f"--resume: {out}/checkpoints/ holds no checkpoint, so the run starts from its beginning",
                    stacklevel=2,
                )
                return "new"
        elif not resume:
            raise ConfigError(
                "the run folder holds an unfinished run with these settings",
                file=out,
                fix=f"continue it with `atomsift {command} ... --resume`, or pass --overwrite to start again",
            )
        else:
            return "resume"
    elif resume:
        raise ConfigError("--resume, but the run folder holds no run", file=out, fix="drop --resume to start one")
    write_atomic(saved_path, yaml.safe_dump(settings, sort_keys=False))
    if fingerprints:
        write_atomic(out / "inputs.json", json.dumps(fingerprints, indent=2, sort_keys=True) + "\n")
    return "new"


def folder_outlook(out: Path, settings: dict[str, Any], *, resume: bool, overwrite: bool) -> str:
    """What a run with `settings` would do with `out` (for --dry-run; reads, writes nothing): the line
    prepare_run's decision would lead to, refusals included."""
    out = Path(out)
    if overwrite:
        return f"run folder {out}: --overwrite removes the run there and starts again"
    saved_path = out / "config.yaml"
    if not saved_path.exists():
        return f"run folder {out}: " + ("--resume is refused, no run there" if resume else "a new run")
    try:
        diff = config_diff(read_run_yaml(saved_path), settings)
    except ConfigError as exc:
        return f"run folder {out}: refused, {exc}"
    started = (out / "checkpoints" / "last.ckpt").exists() or (out / "summary.json").exists()
    if not started:
        return f"run folder {out}: an earlier attempt stopped before its first checkpoint; the run starts again"
    if diff:
        return (
            f"run folder {out}: refused, it holds a run with other settings ({diff_text(diff)}); --overwrite "
            "replaces it"
        )
    if (out / "summary.json").exists():
        return f"run folder {out}: holds this run, finished: it is reused and nothing trains"
    if not resume:
        return f"run folder {out}: refused, it holds this run unfinished; --resume continues it"
    from atomsift.train.runner import resume_point  # torch and Lightning: only when there is a checkpoint

    return f"run folder {out}: " + resume_point(out)


OWN_INSIDE = {
    "checkpoints": ("last.ckpt", ".last.ckpt.tmp*"),
    "logs": ("attempt_*", "tensorboard", "wandb"),
    "subsets": ("*.train.json", "*.val.json"),
    "plots": ("*.png",),
}
"""What a run writes inside its folders: --overwrite removes these and leaves anything else there."""


def _removed_by_overwrite(out: Path, path: Path) -> bool:
    """Whether --overwrite's `_remove_run_files` would delete `path`."""
    path, out = path.resolve(), out.resolve()
    for name in RUN_FILES:
        top = out / name
        if path == top:
            return True
        if top in path.parents:
            inner = path.relative_to(top).parts[0]
            return any(Path(inner).match(p) for p in OWN_INSIDE.get(name, ("*",)))
    return False


def _remove_run_files(out: Path) -> None:
    """The run's own files (RUN_FILES; in its folders only what OWN_INSIDE names), for --overwrite."""
    for name in RUN_FILES:
        target = out / name
        if target.is_dir():
            for pattern in OWN_INSIDE.get(name, ("*",)):
                for item in target.glob(pattern):
                    shutil.rmtree(item) if item.is_dir() else item.unlink()
            if not any(target.iterdir()):
                target.rmdir()
        elif target.exists():
            target.unlink()


def write_atomic(path: Path, text: str) -> None:
    """Write text to a temporary file beside `path`, then rename it over `path` (rank 0 only)."""
    if not secondary_rank():
        write_text_atomic(path, text)


def write_json(path: Path, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def _json_default(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)
