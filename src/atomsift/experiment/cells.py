"""Running one job of the grid (a pretraining and its finetunings) and reading cell folders back.

A job never stops the grid: an error in a cell is written to CELL/failed.json (message and traceback) and
the job goes on with what does not depend on it. Ctrl-C is not an error: it stops the job, and the cells'
own checkpoints let `--resume` continue them.
"""

from __future__ import annotations

import contextlib
import json
import os
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from atomsift.csi.report import MEASURE_COLUMNS
from atomsift.errors import ConfigError
from atomsift.experiment.grid import FinetuneCell, Job
from atomsift.train.inputs import read_run_yaml
from atomsift.train.run_folder import config_diff, write_json

FAILED = "failed.json"
SOURCE = "cell.json"
"""In a finetuning cell: which pretraining (settings digest) its starting weights came from."""


def cell_state(
    folder: Path,
    settings: dict[str, Any],
    done_file: str,
    source: dict[str, Any] | None = None,
    inputs: Callable[[], dict[str, str]] | None = None,
) -> str:
    """'new', 'done', 'unfinished', 'failed', 'damaged' (finished, but its result file cannot be read: it runs
    again), 'conflict' (the folder holds a run with other settings, or a finetuning that started from another
    pretraining) or 'changed' (a finished or started run whose input files, as `inputs` fingerprints them now,
    differ from its inputs.json)."""
    saved = folder / "config.yaml"
    if saved.exists():
        try:
            old = read_run_yaml(saved)
        except ConfigError:
            return "conflict"  # its settings are unknown: replaced only with --overwrite
        recorded = _read_json(folder / SOURCE) if source else None
        if recorded not in (None, source):
            return "conflict"
        if recorded is not None:
            # the pretraining it starts from is identified by cell.json; its path moves with the folder
            old.pop("checkpoint", None)
            settings = {k: v for k, v in settings.items() if k != "checkpoint"}
        if config_diff(old, settings):
            return "conflict"
        if inputs is not None and _inputs_changed(folder, inputs):
            return "changed"
        if (folder / done_file).exists():
            return "done" if _read_json(folder / done_file) is not None else "damaged"
    if (folder / FAILED).exists():
        return "failed"
    if saved.exists() and (folder / "checkpoints" / "last.ckpt").exists():
        return "unfinished"
    return "new"


def _inputs_changed(folder: Path, inputs: Callable[[], dict[str, str]]) -> bool:
    """Whether a run folder's inputs.json (written by runs since 2026-12-06) differs from the files now."""
    path = folder / "inputs.json"
    if not path.exists():
        return False
    saved = _read_json(path)
    now = inputs()
    return not isinstance(saved, dict) or any(saved.get(k) != now.get(k) for k in set(saved) | set(now))


def pretrain_inputs(settings: dict[str, Any]) -> Callable[[], dict[str, str]]:
    """The fingerprints a pretraining cell's run records, computed when asked."""

    def fingerprints() -> dict[str, str]:
        from atomsift.train.config import PretrainConfig
        from atomsift.train.pretrain import run_inputs

        return run_inputs(PretrainConfig.model_validate(settings))

    return fingerprints


def finetune_inputs(settings: dict[str, Any]) -> Callable[[], dict[str, str]]:
    """The fingerprints a finetuning cell's run records (its data and starting weights), computed when asked."""

    def fingerprints() -> dict[str, str]:
        from atomsift.train.config import FinetuneConfig
        from atomsift.train.finetune import run_inputs

        return run_inputs(FinetuneConfig.model_validate(settings))

    return fingerprints


def pretrain_state(folder: Path, settings: dict[str, Any]) -> str:
    """cell_state of a pretraining cell, its input files included."""
    return cell_state(folder, settings, "summary.json", inputs=pretrain_inputs(settings))


def finetune_state(cell: FinetuneCell) -> str:
    """cell_state of a finetuning cell: its pretraining (cell.json) and input files included."""
    return cell_state(cell.folder, cell.settings, "test_metrics.json", cell.upstream, finetune_inputs(cell.settings))


def job_states(job: Job) -> list[tuple[Path, str]]:
    """(folder, state) of every cell of a job."""
    out = []
    if job.pretrain_folder is not None and job.pretrain_settings is not None:
        out.append((job.pretrain_folder, pretrain_state(job.pretrain_folder, job.pretrain_settings)))
    out += [(c.folder, finetune_state(c)) for c in job.finetunes]
    return out


def _record_failure(folder: Path, exc: BaseException, what: str) -> str:
    from atomsift.errors import AtomsiftError

    folder.mkdir(parents=True, exist_ok=True)
    message = exc.message() if isinstance(exc, AtomsiftError) else (str(exc) or type(exc).__name__)
    text = f"{what}: {message}"
    write_json(folder / FAILED, {"error": text, "type": type(exc).__name__, "traceback": traceback.format_exc()})
    return text


def run_flags(state: str, folder: Path, resume: bool, overwrite: bool) -> tuple[bool, bool]:
    """(resume, overwrite) for one cell's run: interrupted cells resume with --resume (or restart with
    --overwrite); a failed cell resumes from its checkpoint with --resume, else starts again; a cell holding
    other settings is replaced with --overwrite."""
    has_ckpt = (folder / "checkpoints" / "last.ckpt").exists()
    if state == "unfinished":
        return (resume, not resume and overwrite)
    if state == "failed":
        return (resume and has_ckpt, not (resume and has_ckpt))
    if state == "damaged":  # its checkpoint is a finished run's: only a new run rewrites the result files
        return (False, True)
    return (False, overwrite and state in ("conflict", "changed"))


def _adopt_moved_checkpoint(folder: Path, settings: dict[str, Any]) -> None:
    """A finished or started finetuning whose experiment folder moved: its config.yaml gets the new path of
    the (same, by cell.json) pretrained weights, so that the run folder's own check accepts it."""
    saved = folder / "config.yaml"
    if not saved.exists():
        return
    old = read_run_yaml(saved)
    if old.get("checkpoint") not in (None, settings.get("checkpoint")):
        old["checkpoint"] = settings.get("checkpoint")
        from atomsift.settings import write_text_atomic

        write_text_atomic(saved, yaml.safe_dump(old, sort_keys=False))


def _clear_failure(folder: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        (folder / FAILED).unlink()


def _run_finetune(cell: FinetuneCell, resume: bool, overwrite: bool, console: Any) -> str:
    """Run (or reuse) one finetuning cell; returns 'ok' or 'reused'."""
    from atomsift.train.config import FinetuneConfig
    from atomsift.train.finetune import run_finetuning

    state = finetune_state(cell)
    run_resume, run_overwrite = run_flags(state, cell.folder, resume, overwrite)
    if state in ("conflict", "changed") and not run_overwrite:
        # the folder's own check sees only the settings, not a changed pretraining: refuse here
        raise ConfigError(
            "the cell folder holds a run with other settings, from another pretraining or on input files that "
            "changed since",
            file=cell.folder,
            fix="rerun the experiment with --overwrite to replace it",
        )
    _clear_failure(cell.folder)
    cfg = FinetuneConfig.model_validate(cell.settings)
    if cell.upstream:
        if state in ("done", "unfinished", "failed", "damaged"):
            _adopt_moved_checkpoint(cell.folder, cell.settings)
        cell.folder.mkdir(parents=True, exist_ok=True)
        write_json(cell.folder / SOURCE, cell.upstream)
    run_finetuning(
        cfg,
        cell.folder,
        resume=run_resume,
        overwrite=run_overwrite,
        console=console,
        progress=True,  # per-epoch lines into the job's log (no bars: it is not a terminal)
        check_inputs=True,  # inputs.json: the data and starting weights it read (cell_state compares them)
    )
    return "reused" if state == "done" else "ok"


def run_job(job: Job, *, resume: bool = False, overwrite: bool = False, log: Path | None = None) -> dict[str, str]:
    """Run a job's cells (finished ones are reused by their run folders); returns {cell folder: ok | reused | failed}.

    Output (tables, warnings) goes to `log` when given. Threads: ATOMSIFT_THREADS, when set, caps torch's.
    """
    from rich.console import Console

    threads = os.environ.get("ATOMSIFT_THREADS")
    if threads:
        import torch

        torch.set_num_threads(max(1, int(threads)))
    if log is None:
        return _run_job(job, resume, overwrite, Console(width=120))
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as fh, contextlib.redirect_stdout(fh), contextlib.redirect_stderr(fh):
        return _run_job(job, resume, overwrite, Console(file=fh, width=120, force_terminal=False))


def _run_job(job: Job, resume: bool, overwrite: bool, console: Any) -> dict[str, str]:
    from atomsift.cli.train import _quiet_lightning

    _quiet_lightning()
    status: dict[str, str] = {}
    upstream_error = None
    if job.pretrain_folder is not None and job.pretrain_settings is not None:
        from atomsift.train.config import PretrainConfig
        from atomsift.train.pretrain import run_pretraining

        folder = job.pretrain_folder
        state = pretrain_state(folder, job.pretrain_settings)
        run_resume, run_overwrite = run_flags(state, folder, resume, overwrite)
        _clear_failure(folder)
        try:
            console.rule(f"pretrain {job.name}")
            run_pretraining(
                PretrainConfig.model_validate(job.pretrain_settings),
                folder,
                resume=run_resume,
                overwrite=run_overwrite,
                console=console,
                progress=True,  # per-epoch lines into the job's log
                check_inputs=True,  # inputs.json: the data it read (cell_state compares them)
            )
            status[str(folder)] = "reused" if state == "done" else "ok"
        except Exception as exc:  # noqa: BLE001  (a failed cell is recorded; the grid goes on)
            upstream_error = _record_failure(folder, exc, f"pretraining {job.name} failed")
            console.print(upstream_error)
            status[str(folder)] = "failed"
    for cell in job.finetunes:
        if upstream_error is not None:
            _record_failure(cell.folder, RuntimeError(upstream_error), "not run")
            status[str(cell.folder)] = "failed"
            continue
        try:
            console.rule(f"finetune {cell.downstream} from {job.name}")
            status[str(cell.folder)] = _run_finetune(cell, resume, overwrite, console)
        except Exception as exc:  # noqa: BLE001  (a failed cell is recorded; the grid goes on)
            console.print(_record_failure(cell.folder, exc, f"finetuning {cell.downstream} from {job.name} failed"))
            status[str(cell.folder)] = "failed"
    return status


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _reported_state(state: Callable[[], str]) -> str:
    """A cell's state for the report; 'changed' where its input files cannot be read now (moved or deleted
    data): its result cannot be checked against them, so it is shown as stale rather than failing the report."""
    from atomsift.errors import AtomsiftError

    try:
        return state()
    except (AtomsiftError, OSError):
        return "changed"


def result_rows(jobs: list[Job], csi_rows: list[dict[str, Any]], out: Path) -> list[dict[str, Any]]:
    """One row per finetuning cell, read from the cell folders (what has finished, failed, or not run yet)."""
    csi = {(r["upstream"], r["downstream"]): r for r in csi_rows}
    rows = []
    for job in jobs:
        pre = _read_json(job.pretrain_folder / "summary.json") if job.pretrain_folder else None
        folder, settings = job.pretrain_folder, job.pretrain_settings
        pre_changed = (
            folder is not None
            and settings is not None
            and _reported_state(lambda f=folder, s=settings: pretrain_state(f, s)) == "changed"
        )
        for cell in job.finetunes:
            c = csi.get((job.candidate, cell.downstream), {})
            state = _reported_state(lambda cell=cell: finetune_state(cell))
            if pre_changed and state == "done":  # its weights came from data that changed since
                state = "changed"
            status = STATUS_OF_STATE[state]
            metrics = _read_json(cell.folder / "test_metrics.json") if status == "ok" else None
            failed = _read_json(cell.folder / FAILED)
            ft = _read_json(cell.folder / "summary.json") if status == "ok" else None
            if status == "ok" and metrics is None:
                status = "pending"
            row: dict[str, Any] = {
                "upstream": job.candidate,
                "kind": job.kind,
                "members": "+".join(job.members),
                "downstream": cell.downstream,
                "n_samples": job.budget.n_samples if job.budget else None,
                "epochs": job.budget.epochs if job.budget else None,
                "budget": job.budget.n_samples * job.budget.epochs if job.budget else None,
                "seed": job.seed,
                "csi": c.get("csi"),
                "ci_low": c.get("ci_low"),
                "ci_high": c.get("ci_high"),
                "csi_units": c.get("csi_units"),
                **{m: c.get(m) for m in MEASURE_COLUMNS},
                "out_of_distribution": c.get("out_of_distribution"),
                "uncovered_by_all": c.get("uncovered_by_all"),
                "metric": cell.metric,
                "value": None if metrics is None else metrics.get(cell.metric),
                "status": status,
                "error": _row_error(status, failed, state),
                "pretrain_dir": _rel(job.pretrain_folder, out),
                "finetune_dir": _rel(cell.folder, out),
                "pretrain_wall_s": None if pre is None else pre.get("wall_time_s"),
                "finetune_wall_s": None if ft is None else ft.get("wall_time_s"),
            }
            if metrics is not None:
                row.update({k: v for k, v in metrics.items() if "_mae_" in k or "_rmse_" in k})
            rows.append(row)
    return rows


STATUS_OF_STATE = {
    "done": "ok",
    "failed": "failed",
    "damaged": "failed",
    "conflict": "stale",
    "changed": "stale",
    "new": "pending",
    "unfinished": "pending",
}
"""A row's status from its cell folder: 'stale' is a finished run whose settings (or pretraining) are not the
grid's any more; it is reported, never averaged."""


def _row_error(status: str, failed: dict[str, Any] | None, state: str = "") -> str | None:
    if state == "damaged":
        return "the cell finished, but its test_metrics.json cannot be read (damaged or edited): the next run of the grid runs it again"
    if status == "failed" and failed is not None:
        return failed.get("error")
    if state == "changed":
        return "the files the cell's run read (data or starting weights) changed since it ran: rerun the grid"
    if status == "stale":
        return "the cell folder holds a run with other settings (or from another pretraining): rerun the grid"
    return None


def _rel(path: Path | None, out: Path) -> str | None:
    if path is None:
        return None
    try:
        return str(Path(path).resolve().relative_to(Path(out).resolve()))
    except ValueError:
        return str(path)
