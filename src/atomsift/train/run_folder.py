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
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

import yaml

from atomsift.errors import AtomsiftError, ConfigError, DataError
from atomsift.settings import check_output_dir, check_output_path, refuse_foreign_outputs, write_text_atomic
from atomsift.train.inputs import check_inputs, read_run_json, read_run_yaml

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
    said: list[str] = []
    for k in sorted(set(a) | set(b)):
        if a.get(k) == b.get(k):
            continue
        gone, new_part = _absent_prefix(new, k), _absent_prefix(old, k)  # a whole entry (an upstream set) gone
        line = (
            f"{gone}: removed" if gone else f"{new_part}: added" if new_part else f"{k}: {a.get(k)!r} -> {b.get(k)!r}"
        )
        if line not in said:
            said.append(line)
    return said


def _absent_prefix(d: dict[str, Any], dotted: str) -> str | None:
    """The shortest proper prefix of `dotted` missing from the nested mapping `d` ('upstream.mols' for
    'upstream.mols.path' when d['upstream'] has no 'mols'), or None."""
    parts = dotted.split(".")
    if len(parts) > 1 and parts[0] not in d:
        return parts[0]
    for i in range(1, len(parts)):
        if not isinstance(d, dict) or parts[i - 1] not in d:
            return None
        d = d[parts[i - 1]]
        if not isinstance(d, dict) or parts[i] not in d:
            return ".".join(parts[: i + 1]) if isinstance(d, dict) and i < len(parts) - 1 else None
    return None


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


Fingerprints = dict[str, str] | Callable[[], dict[str, str] | None] | None
"""What a run reads (inputs.json), or a function computing it only where it is needed (hashing a checkpoint)."""


def _resolved(fingerprints: Fingerprints) -> dict[str, str] | None:
    return fingerprints() if callable(fingerprints) else fingerprints


def _flag_conflicts(out: Path, resume: bool, overwrite: bool) -> None:
    if resume and overwrite:
        raise ConfigError(
            "--resume and --overwrite contradict each other: --resume continues the run in --out, --overwrite "
            "deletes it first",
            file=out,
            fix="pass --resume to continue the run, or --overwrite alone to start it again",
        )
    if resume and not Path(out).exists():
        raise ConfigError("--resume, but the run folder does not exist", file=out, fix="drop --resume to start one")


def run_folder_decision(
    out: Path,
    settings: dict[str, Any],
    *,
    resume: bool,
    overwrite: bool,
    command: str,
    inputs: tuple[str | Path | None, ...] = (),
    fingerprints: Fingerprints = None,
) -> str:
    """What a run with `settings` does with `out`, read only (prepare_run acts on it, --dry-run prints it).

    Returns 'new', 'overwrite' (remove the run's files, then new), 'restart' (an attempt that stopped before its
    first checkpoint: its config.yaml goes, then new), 'fresh' (--resume without a checkpoint: new, with a
    warning), 'done' or 'resume'; raises ConfigError for every refusal.
    """
    out = Path(out)
    _flag_conflicts(out, resume, overwrite)
    check_output_path(out)  # an existing file, or a folder that cannot be made, is refused
    if overwrite:
        for item in filter(None, inputs):
            if _removed_by_overwrite(out, Path(item)):
                raise ConfigError(
                    f"--overwrite would delete {item}, which this run reads",
                    file=out,
                    fix="copy it out of the run folder first, or choose another --out",
                )
        return "overwrite"
    refuse_foreign_outputs(out, "config.yaml", RUN_FILES, what="atomsift run")
    saved_path = out / "config.yaml"
    has_checkpoint = (out / "checkpoints" / "last.ckpt").exists()
    finished = (out / "summary.json").exists()
    if not saved_path.exists():
        if resume:
            raise ConfigError("--resume, but the run folder holds no run", file=out, fix="drop --resume to start one")
        return "new"
    if not (has_checkpoint or finished) and not resume:
        return "restart"  # an earlier attempt stopped before training (bad data, a typo): nothing to keep
    diff = config_diff(read_run_yaml(saved_path), settings)
    if diff:
        raise ConfigError(
            f"the run folder holds a run with other settings ({diff_text(diff)})",
            file=out,
            fix="use the original settings to resume or reuse it, another --out for a new run, or --overwrite "
            "to replace it",
        )
    if not (has_checkpoint or finished):
        return "fresh"  # --resume, but the earlier attempt stopped before its first checkpoint
    check_inputs(out, _resolved(fingerprints))
    if finished:
        return "done"
    if not resume:
        raise ConfigError(
            "the run folder holds an unfinished run with these settings",
            file=out,
            fix=f"continue it with `atomsift {command} ... --resume`, or pass --overwrite to start again",
        )
    return "resume"


def prepare_run(
    out: Path,
    settings: dict[str, Any],
    *,
    resume: bool,
    overwrite: bool,
    command: str,
    inputs: tuple[str | Path | None, ...] = (),
    fingerprints: Fingerprints = None,
) -> str:
    """Check the run folder against the settings (`run_folder_decision`) and act; returns 'new', 'resume' or
    'done'.

    Writes config.yaml for a new run. Raises ConfigError, before anything is deleted, for a folder holding
    another run, an unfinished run without --resume, files a run writes but no run, --resume with --overwrite,
    and an --overwrite that would delete one of the run's `inputs` (e.g. finetuning's --checkpoint).
    `fingerprints` (name -> fingerprint of a file the run reads) go to inputs.json; a finished or unfinished
    run whose inputs.json differs (a data file or checkpoint changed since) is refused rather than reused.
    """
    if secondary_rank():  # rank 0 checked the folder and wrote config.yaml before starting this process
        return "resume" if resume else "new"
    _flag_conflicts(out, resume, overwrite)  # before the folder is made
    out = check_output_dir(out)
    lock_run_folder(out)  # before anything is read or deleted: another process may be writing here
    decision = run_folder_decision(
        out, settings, resume=resume, overwrite=overwrite, command=command, inputs=inputs, fingerprints=fingerprints
    )
    if decision in ("done", "resume"):
        return decision
    if decision == "overwrite":  # also where files a run writes lie without config.yaml
        _remove_run_files(out)
    elif decision == "restart":
        (out / "config.yaml").unlink()
    elif decision == "fresh":
        warnings.warn(
            f"--resume: {out}/checkpoints/ holds no checkpoint, so the run starts from its beginning", stacklevel=2
        )
    write_atomic(out / "config.yaml", yaml.safe_dump(settings, sort_keys=False))
    fingerprints = _resolved(fingerprints)
    if fingerprints:  # what this start reads (a fresh start after --resume too: the earlier one's may be stale)
        write_atomic(out / "inputs.json", json.dumps(fingerprints, indent=2, sort_keys=True) + "\n")
    return "new"


_OUTLOOK = {
    "new": "a new run",
    "overwrite": "--overwrite removes the run there and starts again",
    "restart": "an earlier attempt stopped before its first checkpoint; the run starts again",
    "fresh": "--resume, but the earlier attempt stopped before its first checkpoint: the run starts from its beginning",
    "done": "holds this run, finished: it is reused and nothing trains",
}


def check_resumable(out: Path) -> None:
    """Refuse to resume from a last.ckpt that is not a complete checkpoint (torch writes zip archives)."""
    ckpt = Path(out) / "checkpoints" / "last.ckpt"
    if not zipfile.is_zipfile(ckpt):
        raise DataError(
            "the run's checkpoint is damaged (not a complete checkpoint file), so the run cannot resume",
            file=ckpt,
            fix="pass --overwrite (without --resume) to start the run again",
        )


REFUSED = ": refused: "
"""What marks an outlook line whose run would be refused (`outlook_refused`)."""


def outlook_refused(line: str) -> bool:
    """Whether a `folder_outlook` line says the run would be refused (a dry run then exits 2, as the run would)."""
    return line.startswith("run folder ") and REFUSED in line


def folder_outlook(
    out: Path,
    settings: dict[str, Any],
    *,
    resume: bool,
    overwrite: bool,
    command: str,
    inputs: tuple[str | Path | None, ...] = (),
    fingerprints: Fingerprints = None,
    results: tuple[str, ...] = ("summary.json",),
) -> str:
    """One line for --dry-run: what the run would do with `out` (`run_folder_decision`), refusals included, and
    the files the run then reads checked as it checks them (`results` of a finished run, the checkpoint)."""
    try:
        decision = run_folder_decision(
            out, settings, resume=resume, overwrite=overwrite, command=command, inputs=inputs, fingerprints=fingerprints
        )
        if decision == "done":
            for name in results:
                read_run_json(Path(out) / name)
        elif decision == "resume":
            check_resumable(out)
    except AtomsiftError as exc:
        return f"run folder {out}{REFUSED}{exc.message()}"
    except OSError as exc:  # an input or the folder cannot be read
        return f"run folder {out}{REFUSED}{exc}"
    if decision == "overwrite" and not any((Path(out) / name).exists() for name in RUN_FILES):
        decision = "new"  # nothing of a run there to remove
    if decision == "resume":
        from atomsift.train.runner import resume_point  # torch and Lightning: only when there is a checkpoint

        return resume_point(out)
    return f"run folder {out}: {_OUTLOOK[decision]}"


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
