"""`atomsift experiment`: plan the grid, check its folders, compute CSI, run the jobs, gather and report.

Jobs run one after another here (default), in K local processes (`--jobs K`, concurrent.futures with the
spawn start method), or as SLURM jobs through submitit (`launcher: {name: slurm, ...}`); every job is an
ordinary pretraining plus its finetunings in their own run folders, so a rerun reuses what has finished.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time
import warnings
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import yaml
from rich.console import Console
from rich.table import Table

from atomsift.errors import ConfigError
from atomsift.experiment.cells import job_states, result_rows, run_job
from atomsift.experiment.config import ExperimentConfig
from atomsift.experiment.grid import Job, build_jobs
from atomsift.settings import check_output_dir, refuse_foreign_outputs, removed_if_left_empty, write_text_atomic
from atomsift.train.inputs import read_run_yaml
from atomsift.train.run_folder import config_diff, diff_text


def _log_path(out: Path, job: Job) -> Path:
    return out / "logs" / (job.name.replace("/", "__") + ".log")


def cell_states(jobs: list[Job]) -> list[tuple[Path, str]]:
    """(folder, state) of every cell of the grid."""
    return [(f, s) for job in jobs for f, s in job_states(job)]


def _other_settings(jobs: list[Job], states: list[tuple[Path, str]]) -> str:
    """'N cell folder(s) hold runs with other settings, e.g. FOLDER (keys: old -> new)' (and those whose input
    files changed since they ran), or '' if none does."""
    conflict = [f for f, s in states if s == "conflict"]
    changed = [f for f, s in states if s == "changed"]
    said = []
    if conflict:
        said.append(
            f"{len(conflict)} cell folder(s) hold runs with other settings, e.g. {conflict[0]}"
            + _differences(jobs, conflict[0])
        )
    if changed:
        said.append(
            f"{len(changed)} cell folder(s) hold runs whose input files (data or starting weights) changed since "
            f"they ran, e.g. {changed[0]}"
        )
    return "; ".join(said)


def check_folders(jobs: list[Job], *, resume: bool, overwrite: bool) -> Counter:
    """Count cell states; refuse (one message, before any work) interrupted cells without --resume and cells
    holding runs with other settings without --overwrite."""
    states = cell_states(jobs)
    counts = Counter(s for _, s in states)
    conflict = _other_settings(jobs, states)
    if conflict and not overwrite:
        raise ConfigError(
            conflict,
            fix="use another --out for the new grid, or --overwrite to replace those cells (finished cells with "
            "the same settings are kept either way)",
        )
    unfinished = [str(f) for f, s in states if s == "unfinished"]
    if unfinished and not resume and not overwrite:
        raise ConfigError(
            f"{len(unfinished)} cell(s) were interrupted, e.g. {unfinished[0]}",
            fix="rerun with --resume to continue them from their checkpoints (or --overwrite to start them again)",
        )
    return counts


EXPERIMENT_FILES = ("report.md", "results.csv", "results.json", "summary.json", "csi", "cells", "figures")
"""What an experiment writes into --out besides experiment.yaml (refused in a folder without one)."""


def _die_with_parent(parent: int) -> None:
    """Worker initializer (Linux): a worker gets SIGTERM when the experiment process dies, even by SIGKILL, instead
    of training on unseen (a rerun with --resume would then have two writers on a cell). Elsewhere: nothing."""
    if not sys.platform.startswith("linux"):
        return
    import ctypes
    import signal

    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG = 1
    if os.getppid() != parent:  # the parent died before the call: its death signal will never come
        os.kill(os.getpid(), signal.SIGTERM)


def check_csi_settings(out: Path, exp: ExperimentConfig, overwrite: bool) -> bool:
    """Whether OUT/csi holds CSI results computed with other `csi` settings than `exp`'s (its experiment.yaml):
    refused without --overwrite (they would be replaced); with it, True (recompute them, caches included)."""
    from atomsift.csi.config import MECHANICS
    from atomsift.experiment.csi import csi_config

    recorded = out / "experiment.yaml"
    if not (out / "csi" / "csi.json").exists() or not recorded.exists():
        return False
    try:
        saved = read_run_yaml(recorded)
        old = csi_config(exp.model_copy(update={"csi": dict(saved.get("csi") or {})})).model_dump(mode="json")
    except (ConfigError, AttributeError):
        diff = ["experiment.yaml cannot be read (damaged or edited)"]
    else:
        new = csi_config(exp).model_dump(mode="json")
        datasets = ("upstream", "downstream")  # the cells' settings cover them; here the csi section alone
        diff = config_diff(
            {k: v for k, v in old.items() if k not in datasets},
            {k: v for k, v in new.items() if k not in datasets},
            MECHANICS,
        )
    if diff and not overwrite:
        raise ConfigError(
            f"the CSI results in {out / 'csi'} were computed with other csi settings ({diff_text(diff, 4)}), "
            "which this run would replace",
            file=recorded,
            fix="use another --out, or pass --overwrite to compute CSI again (finished cells with the same settings "
            "are kept either way)",
        )
    return bool(diff)


def check_reported_grid(out: Path, jobs: list[Job], states: list[tuple[Path, str]]) -> None:
    """--report-only: refuse (unless --overwrite) a grid whose cell folders hold runs with other settings: the
    report would show those finished results as stale and experiment.yaml would record a grid that did not run
    (a grid that only grew, e.g. more seeds, is reported with its new cells pending)."""
    conflict = _other_settings(jobs, [(f, st) for f, st in states if st != "changed"])  # same settings: no new
    if not conflict:  # grid recorded (cells on changed files are reported stale, their CSI computed again)
        return
    raise ConfigError(
        f"--report-only: {conflict}; this report would show them as stale and replace experiment.yaml",
        fix=f"report the grid that ran (--config {out / 'experiment.yaml'}), or pass --overwrite to report this one",
    )


def _differences(jobs: list[Job], folder: Path) -> str:
    """' (keys: old -> new)' for a cell folder whose config.yaml differs from the grid's settings, else ''."""
    wanted = {job.pretrain_folder: job.pretrain_settings for job in jobs}
    wanted.update({c.folder: c.settings for job in jobs for c in job.finetunes})
    try:
        saved = read_run_yaml(folder / "config.yaml")
    except ConfigError:
        return " (its config.yaml cannot be read: damaged or edited)"
    new = {k: v for k, v in (wanted.get(folder) or {}).items() if k != "checkpoint"}
    diff = config_diff({k: v for k, v in saved.items() if k != "checkpoint"}, new)
    if not diff:
        return " (it started from another pretraining)"
    return f" ({diff_text(diff, 4)})"


def print_grid(exp: ExperimentConfig, jobs: list[Job], counts: Counter, console: Console) -> None:
    """The plan: candidates, tasks, budgets, seeds and how many cells are new, finished or to resume."""
    table = Table(title="experiment grid", title_justify="left")
    table.add_column("part")
    table.add_column("what")
    cands = [
        f"{c} ({'+'.join(exp.mixtures[c].of)}, {exp.mixtures[c].mixture})" if c in exp.mixtures else c
        for c in exp.candidates()
    ]
    table.add_row("candidates", ", ".join(cands) + (" and scratch" if exp.scratch else ""))
    table.add_row("downstream", ", ".join(f"{n} ({d.preset or 'settings'})" for n, d in exp.downstream.items()))
    table.add_row("budgets", ", ".join(f"{b.n_samples} x {b.epochs}" for b in exp.budgets) or "-")
    table.add_row("seeds", ", ".join(map(str, exp.seeds)))
    n_pre = sum(j.pretrain_folder is not None for j in jobs)
    n_ft = sum(len(j.finetunes) for j in jobs)
    what = "one pretraining, or none for scratch, then the finetunings of its weights"
    table.add_row("cells", f"{n_pre} pretrainings and {n_ft} finetunings in {len(jobs)} jobs (a job: {what})")
    table.add_row("folders", ", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    k = exp.launcher.jobs
    launcher = exp.launcher.name + (f", {k} process{'es' if k > 1 else ''}" if exp.launcher.name == "local" else "")
    table.add_row("launcher", launcher)
    console.print(table)


def check_downstream_labels(exp: ExperimentConfig, jobs: list[Job]) -> None:
    """Each downstream task's data has the labels its finetuning trains and is ranked on (first structure)."""
    from atomsift.data.spec import open_spec
    from atomsift.train.config import FinetuneConfig
    from atomsift.train.finetune import task_info
    from atomsift.train.metrics import metric_names

    for task in exp.downstream:
        cell = next(c for j in jobs for c in j.finetunes if c.downstream == task)
        cfg = FinetuneConfig.model_validate(cell.settings)
        ds = open_spec(cfg.data, task, role="downstream")
        if len(ds) == 0:
            raise ConfigError(f"downstream task '{task}' has no structures", file=ds.path, fix="check its path")
        rec = ds[0]
        missing = []
        if cfg.task.target == "energy" and rec.energy is None:
            missing.append("energies")
        if cfg.task.target != "energy" and cfg.task.target not in rec.targets:
            missing.append(f"target '{cfg.task.target}' (it has {', '.join(rec.targets) or 'no targets'})")
        if (cfg.task.force_weight > 0 or cell.metric.startswith("forces_")) and rec.forces is None:
            missing.append("forces")
        rank_on = exp.downstream[task].rank_on
        reported = metric_names(task_info(cfg, task, cfg.task.target))
        if rank_on is not None and rank_on not in reported:
            raise ConfigError(
                f"downstream.{task}.rank_on is '{rank_on}', which the task's test does not report",
                fix=f"use one of: {', '.join(sorted(reported))}",
            )
        if missing:
            preset = exp.downstream[task].preset
            raise ConfigError(
                f"downstream task '{task}' lacks {' and '.join(missing)}, which "
                f"{f'the preset {preset!r}' if preset else 'its settings'} train(s) and rank(s) on",
                file=ds.path,
                fix="choose a preset for the labels it has (energy-forces, property, qm9 with task.target=...) or "
                "set task.* / rank_on in the task's entry",
            )


def check_launcher(exp: ExperimentConfig, *, submit: bool = True) -> None:
    """The launcher can start (with `submit`; a dry run needs no SLURM here): submitit importable for the
    submitit launchers, SLURM's sbatch on PATH for `slurm`, before any work rather than after the CSI.
    SLURM-only keys under the local launcher are warned about."""
    lau = exp.launcher
    if lau.name == "local":
        given = sorted(lau.model_fields_set - {"name", "jobs"})  # every other launcher key is SLURM's
        if given:
            warnings.warn(
                f"launcher.{', launcher.'.join(given)} {'applies' if len(given) == 1 else 'apply'} to the slurm "
                "launcher only; the local launcher ignores it (set launcher.name=slurm to use it)",
                stacklevel=2,
            )
        return
    if not submit:
        return
    try:
        import submitit  # noqa: F401
    except ImportError:
        raise ConfigError(
            f"the {lau.name} launcher needs submitit", fix='pip install "atomsift[slurm]" (or submitit)'
        ) from None
    if lau.name == "slurm" and shutil.which("sbatch") is None:
        raise ConfigError(
            "launcher.name=slurm, but SLURM's sbatch is not on PATH here",
            fix="run the command on a SLURM login node, or use launcher.name=local (or submitit-local to try "
            "the submission path on this machine)",
        )


def preflight(exp: ExperimentConfig, jobs: list[Job], console: Console, *, show: bool) -> None:
    """Before any work: every distinct pretraining planned (N against each dataset), every downstream task's
    labels and split checked; with `show`, the plans are printed (--dry-run, which needs no SLURM here)."""
    check_launcher(exp, submit=not show)
    from atomsift.train.config import FinetuneConfig, PretrainConfig
    from atomsift.train.finetune import run_finetuning
    from atomsift.train.pretrain import plan_pretraining, print_plan

    quiet = Console(file=open(os.devnull, "w"))  # noqa: SIM115  (closed below)
    try:
        seen: set[str] = set()
        for job in jobs:
            if job.pretrain_settings is not None and job.budget is not None:
                key = f"{job.candidate}/{job.budget.label}"
                if key not in seen:
                    seen.add(key)
                    cfg = PretrainConfig.model_validate(job.pretrain_settings)
                    plan = plan_pretraining(cfg)
                    if show:
                        console.rule(f"pretrain {key}")
                        print_plan(plan, cfg, console)
        check_downstream_labels(exp, jobs)
        from atomsift.experiment.csi import csi_config

        csi_config(exp)  # the csi section's keys, checked before any work
        for task in exp.downstream:
            cell = next(c for j in jobs for c in j.finetunes if c.downstream == task)
            if show:
                console.rule(f"finetune {task} (ranked on {cell.metric})")
            cfg = FinetuneConfig.model_validate(cell.settings)
            run_finetuning(cfg, cell.folder, console=console if show else quiet, dry_run=True)
    finally:
        quiet.file.close()


def _under_cells(folder: str) -> str:
    """A cell folder from 'cells/' on (the part that names it)."""
    parts = Path(folder).parts
    return str(Path(*parts[parts.index("cells") :])) if "cells" in parts else folder


def _announce(console: Console, job: Job, status: dict[str, str], done: int, total: int, wall: float) -> None:
    ok = sum(v == "ok" for v in status.values())
    reused = sum(v == "reused" for v in status.values())
    bad = [_under_cells(k) for k, v in status.items() if v == "failed"]
    text = f"[{done}/{total}] {job.name}: {ok} cells run" + (f", {reused} reused" if reused else "") + f", {wall:.1f} s"
    if bad:
        text += f"; failed: {len(bad)} (failed.json in {bad[0]}, log logs/{job.name.replace('/', '__')}.log)"
    console.print(text)


def run_local(jobs: list[Job], out: Path, k: int, resume: bool, overwrite: bool, console: Console) -> None:
    """Jobs here, one after another (k = 1), or in k spawned processes sharing the machine's cores."""
    total = len(jobs)
    if k <= 1:
        for i, job in enumerate(jobs, start=1):
            start = time.perf_counter()
            status = run_job(job, resume=resume, overwrite=overwrite, log=_log_path(out, job))
            _announce(console, job, status, i, total, time.perf_counter() - start)
        return
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    os.environ["ATOMSIFT_THREADS"] = str(max(1, cores // k))  # inherited by the spawned workers
    pool = ProcessPoolExecutor(
        max_workers=k, mp_context=get_context("spawn"), initializer=_die_with_parent, initargs=(os.getpid(),)
    )
    queue = list(jobs)
    started: dict[Any, tuple[Job, float]] = {}

    def submit_next() -> Any:  # k in flight, no more: a Ctrl-C then finds no job queued inside the pool
        job = queue[0]
        fut = pool.submit(run_job, job, resume=resume, overwrite=overwrite, log=_log_path(out, job))
        queue.pop(0)  # only once the pool took it: a broken pool's refusal leaves it to be reported
        started[fut] = (job, time.perf_counter())
        return fut

    try:
        pending, done = {submit_next() for _ in range(min(k, len(queue)))}, 0
        while pending:
            finished, pending = wait(pending, return_when=FIRST_COMPLETED)
            try:
                for _ in range(min(len(finished), len(queue))):
                    pending.add(submit_next())
            except BrokenProcessPool as exc:  # a worker died (OOM, signal): the pool takes no more jobs
                for job in queue:
                    done += 1
                    console.print(
                        f"[{done}/{total}] {job.name}: not started, the process pool broke ({exc}); its cells stay pending"
                    )
                queue.clear()
            for fut in finished:
                done += 1
                job, t0 = started[fut]
                try:
                    status = fut.result()
                except Exception as exc:  # noqa: BLE001  (a lost worker is reported; its cells stay pending)
                    console.print(
                        f"[{done}/{total}] {job.name}: the job's process failed ({exc!r}); its cells stay pending"
                    )
                    continue
                _announce(console, job, status, done, total, time.perf_counter() - t0)
    except KeyboardInterrupt:
        # the workers got the Ctrl-C too and saved their checkpoints; jobs not yet started are dropped
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)


def submit_jobs(
    exp: ExperimentConfig, jobs: list[Job], out: Path, resume: bool, overwrite: bool
) -> list[tuple[Job, Any]]:
    """Submit the jobs through submitit: SLURM job arrays of at most `max_array_size` tasks (one array for most
    grids), each running at most `array_parallelism` at once, or submitit's local executor; (job, future)."""
    import submitit  # check_launcher said so before any work when it is missing

    lau = exp.launcher
    folder = out / "submitit" / "%j"
    if lau.name == "submitit-local":
        executor: Any = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(timeout_min=lau.time)
    else:
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
        params: dict[str, Any] = {
            "timeout_min": lau.time,
            "slurm_partition": lau.partition,
            "gpus_per_node": lau.gpus_per_task or None,
            "cpus_per_task": lau.cpus_per_task,
            "mem_gb": lau.mem_gb,
            "slurm_array_parallelism": lau.array_parallelism,
            "slurm_account": lau.account,
            "slurm_qos": lau.qos,
            "slurm_constraint": lau.constraint,
            **lau.extra,
        }
        executor.update_parameters(**{k: v for k, v in params.items() if v is not None})
    executor.update_parameters(name=f"atomsift-{out.name}")  # the cell names are in logs/ and the report
    futures: list[Any] = []
    for start in range(0, len(jobs), lau.max_array_size):
        with executor.batch():
            futures += [
                executor.submit(run_job, job, resume=resume, overwrite=overwrite, log=_log_path(out, job))
                for job in jobs[start : start + lau.max_array_size]
            ]
    return list(zip(jobs, futures, strict=True))


def run_submitit(exp: ExperimentConfig, jobs: list[Job], out: Path, resume: bool, overwrite: bool, console: Console):
    """Jobs as submitit jobs (SLURM, or submitit's local executor); waits for them (Ctrl-C leaves them running:
    `--report-only` gathers what has finished)."""
    lau = exp.launcher
    submitted = submit_jobs(exp, jobs, out, resume, overwrite)
    if lau.name == "slurm":  # from now on a Ctrl-C leaves SLURM jobs running: a rerun would submit them twice
        from atomsift.cli.common import on_interrupt

        on_interrupt(
            f"the submitted SLURM jobs keep running (scancel them to stop them); `atomsift experiment ... --out "
            f"{out} --report-only` gathers what has finished; rerun with --resume only once none of them is left"
        )
    console.print(f"submitted {len(submitted)} jobs ({lau.name}); submitit's files: {out}/submitit/")
    start = time.perf_counter()
    for i, (job, sub) in enumerate(submitted, start=1):
        try:
            status = sub.result()
        except Exception as exc:  # noqa: BLE001  (a lost job is reported; its cells stay pending)
            console.print(f"[{i}/{len(submitted)}] {job.name}: the job itself failed ({exc}); its cells stay pending")
            continue
        _announce(console, job, status, i, len(submitted), time.perf_counter() - start)  # since submission


def _dry_outlook(
    exp: ExperimentConfig, jobs: list[Job], out: Path, *, resume: bool, overwrite: bool, console: Console
) -> dict[str, Any]:
    """--dry-run's last line: the refusal the run would meet with `out` (its checks, read only), or that it
    would go ahead; {"refused": True} for the former (the command then exits 2, as the run would)."""
    from atomsift.errors import AtomsiftError
    from atomsift.settings import check_output_path

    try:
        check_output_path(out)
        if not overwrite:
            refuse_foreign_outputs(out, "experiment.yaml", EXPERIMENT_FILES, what="atomsift experiment")
        check_csi_settings(out, exp, overwrite)
        check_folders(jobs, resume=resume, overwrite=overwrite)
    except AtomsiftError as exc:
        console.print(f"experiment folder {out}: refused: {exc.message()}", markup=False, highlight=False)
        return {"refused": True}
    console.print(f"experiment folder {out}: the run would go ahead", markup=False, highlight=False)
    return {}


def run_experiment(
    exp: ExperimentConfig,
    out: Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    report_only: bool = False,
    dry: bool = False,
    console: Console | None = None,
) -> dict[str, Any]:
    """The whole experiment into `out`; returns the summary (also OUT/summary.json)."""
    console = console or Console()
    out = Path(out)
    jobs = build_jobs(exp, out)
    states = cell_states(jobs) if dry or report_only else []
    counts = Counter(s for _, s in states) if dry or report_only else None
    if dry:
        print_grid(exp, jobs, counts or Counter(), console)
        preflight(exp, jobs, console, show=True)
        return _dry_outlook(exp, jobs, out, resume=resume, overwrite=overwrite, console=console)
    from atomsift.csi.report import print_tables, write_outputs
    from atomsift.experiment.csi import grid_csi
    from atomsift.experiment.report import print_summary, write_report, write_results
    from atomsift.experiment.summary import summarize

    with removed_if_left_empty(out):  # docs/experiment.md: the checks come before anything is written
        out = check_output_dir(out)
        if not overwrite:
            refuse_foreign_outputs(out, "experiment.yaml", EXPERIMENT_FILES, what="atomsift experiment")
        csi_changed = check_csi_settings(out, exp, overwrite)
        if not report_only:
            counts = check_folders(jobs, resume=resume, overwrite=overwrite)
            preflight(exp, jobs, console, show=False)
        elif not overwrite:
            check_reported_grid(out, jobs, states)
        # data that changed since the cells ran (refused above without --overwrite; reported as stale with
        # --report-only) changed their CSI statistics too: computed again instead of refused by the cache
        csi_changed = csi_changed or bool((counts or Counter()).get("changed"))
    print_grid(exp, jobs, counts or Counter(), console)
    write_text_atomic(out / "experiment.yaml", yaml.safe_dump(exp.model_dump(mode="json"), sort_keys=False))
    console.rule("CSI of every candidate to every downstream task")
    csi_rows = grid_csi(exp, out / "csi", recompute=csi_changed)
    write_outputs(csi_rows, out / "csi")  # csi.json, csi.csv and the bar chart csi_bars.png
    print_tables(csi_rows, console)
    if not report_only:
        console.rule(f"training: {len(jobs)} jobs (logs with a line per epoch in {out}/logs/)")
        if exp.launcher.name == "local":
            run_local(jobs, out, exp.launcher.jobs, resume, overwrite, console)
        else:
            if exp.launcher.jobs > 1:
                warnings.warn(
                    f"--jobs / launcher.jobs applies to the local launcher; with '{exp.launcher.name}' "
                    "array_parallelism sets how many jobs run at once",
                    stacklevel=1,
                )
            run_submitit(exp, jobs, out, resume, overwrite, console)
    rows = result_rows(jobs, csi_rows, out)
    write_results(rows, out)
    summary = summarize(rows)
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2) + "\n")
    files = write_report(rows, summary, out)
    print_summary(summary, console, files)
    return summary
