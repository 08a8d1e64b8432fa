"""Running the tiny grid: every cell trains, finished cells are reused, an interrupted cell resumes, a failing
cell is recorded while the others go on, and the parallel and submitit launchers give the same cells."""

from __future__ import annotations

import io
import json
import os

import pytest
from _grid_helpers import tiny
from rich.console import Console

from atomsift.errors import ConfigError
from atomsift.experiment import cells
from atomsift.experiment.config import ExperimentConfig
from atomsift.experiment.grid import build_jobs
from atomsift.experiment.run import check_folders, run_local, run_submitit
from atomsift.settings import validate

QUIET = Console(file=io.StringIO())  # output of the runs under test is not read here


def _grid(tmp_path, **overrides):
    exp = validate(ExperimentConfig, tiny(**overrides))
    return exp, build_jobs(exp, tmp_path)


def _rows(jobs, out):
    return {(r["upstream"], r["downstream"], r["seed"]): r for r in cells.result_rows(jobs, [], out)}


def test_grid_runs_reuses_and_resumes(tmp_path):
    _exp, jobs = _grid(tmp_path, mixtures={})
    assert check_folders(jobs, resume=False, overwrite=False) == {"new": 5}
    run_local(jobs, tmp_path, 1, False, False, QUIET)
    rows = _rows(jobs, tmp_path)
    assert {r["status"] for r in rows.values()} == {"ok"}
    first = {k: r["value"] for k, r in rows.items()}
    assert all(v is not None and v > 0 for v in first.values())
    assert rows[("scratch", "ethanol", 0)]["csi"] is None
    # the row's metrics are the cell's test metrics
    cell = tmp_path / rows[("acac", "ethanol", 0)]["finetune_dir"]
    assert json.loads((cell / "test_metrics.json").read_text())["forces_mae_meV_per_A"] == first[("acac", "ethanol", 0)]

    # a rerun reuses every finished cell: nothing trains again
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.rglob("model.pt")}
    assert check_folders(jobs, resume=False, overwrite=False) == {"done": 5}
    statuses = [cells.run_job(j) for j in jobs]
    assert {s for st in statuses for s in st.values()} == {"reused"}
    assert {p: p.stat().st_mtime_ns for p in tmp_path.rglob("model.pt")} == stamps

    # a cell killed after its last checkpoint (no summary yet): refused without --resume, finished with it
    pre = jobs[0].pretrain_folder
    (pre / "summary.json").unlink()
    with pytest.raises(ConfigError, match="--resume"):
        check_folders(jobs, resume=False, overwrite=False)
    status = cells.run_job(jobs[0], resume=True)
    assert status[str(pre)] == "ok" and (pre / "summary.json").exists()
    assert _rows(jobs, tmp_path)[("acac", "ethanol", 0)]["value"] == first[("acac", "ethanol", 0)]


def test_changed_settings_are_refused_unless_overwrite(tmp_path):
    _exp, jobs = _grid(tmp_path, mixtures={}, upstream={"acac": tiny()["upstream"]["acac"]}, scratch=False)
    run_local(jobs, tmp_path, 1, False, False, QUIET)
    # a cell whose config.yaml is damaged: its settings are unknown, so it is refused by name (was a traceback)
    # and replaced only with --overwrite
    saved = jobs[0].pretrain_folder / "config.yaml"
    kept = saved.read_text()
    saved.write_text("- not\n- settings\n")
    with pytest.raises(ConfigError, match=r"pretrain/acac/\S+ \(its config\.yaml cannot be read"):
        check_folders(jobs, resume=False, overwrite=False)
    assert check_folders(jobs, resume=False, overwrite=True)["conflict"] == 1
    saved.write_text(kept)
    pre = tiny()["pretrain"]
    _, changed = _grid(
        tmp_path,
        mixtures={},
        upstream={"acac": tiny()["upstream"]["acac"]},
        scratch=False,
        pretrain={**pre, "lr": 2e-3},
    )
    with pytest.raises(ConfigError, match=r"other settings, e\.g\. .*pretrain/acac.* \(lr: 0\.001 -> 0\.002\)"):
        check_folders(changed, resume=False, overwrite=False)  # the differing key named, as pretrain does
    counts = check_folders(changed, resume=False, overwrite=True)
    assert counts["conflict"] == 2
    status = cells.run_job(changed[0], overwrite=True)
    assert set(status.values()) == {"ok"}


def test_a_failing_cell_is_recorded_and_the_others_go_on(tmp_path, monkeypatch):
    _exp, jobs = _grid(tmp_path, mixtures={}, seeds=[0])
    real = cells._run_finetune

    def flaky(cell, resume, overwrite, console):
        if cell.candidate == "oxides":
            raise RuntimeError("out of memory (simulated)")
        return real(cell, resume, overwrite, console)

    monkeypatch.setattr(cells, "_run_finetune", flaky)
    run_local(jobs, tmp_path, 1, False, False, QUIET)
    rows = _rows(jobs, tmp_path)
    bad = rows[("oxides", "ethanol", 0)]
    assert bad["status"] == "failed" and "out of memory (simulated)" in bad["error"] and bad["value"] is None
    assert all(r["status"] == "ok" for k, r in rows.items() if k[0] != "oxides")
    # on a rerun the failed cell runs again (and the record goes once it succeeds)
    monkeypatch.setattr(cells, "_run_finetune", real)
    run_local(jobs, tmp_path, 1, False, False, QUIET)
    assert _rows(jobs, tmp_path)[("oxides", "ethanol", 0)]["status"] == "ok"
    assert not (tmp_path / bad["finetune_dir"] / "failed.json").exists()


def test_a_failed_pretraining_marks_its_finetunings_not_run(tmp_path, monkeypatch):
    _exp, jobs = _grid(tmp_path, mixtures={}, scratch=False, upstream={"acac": tiny()["upstream"]["acac"]})

    def broken(*args, **kwargs):
        raise RuntimeError("diverged (simulated)")

    monkeypatch.setattr("atomsift.train.pretrain.run_pretraining", broken)
    status = cells.run_job(jobs[0])
    assert list(status.values()) == ["failed", "failed"]
    row = cells.result_rows(jobs, [], tmp_path)[0]
    assert row["status"] == "failed" and "diverged (simulated)" in row["error"]


def _values(jobs, out):
    return {k: r["value"] for k, r in _rows(jobs, out).items()}


def test_two_local_processes_give_the_sequential_results(tmp_path):
    _, seq = _grid(tmp_path / "seq", mixtures={})
    run_local(seq, tmp_path / "seq", 1, False, False, QUIET)
    _, par = _grid(tmp_path / "par", mixtures={})
    run_local(par, tmp_path / "par", 2, False, False, QUIET)
    a, b = _values(seq, tmp_path / "seq"), _values(par, tmp_path / "par")
    assert a.keys() == b.keys()
    for key in a:  # same seeds, same data: the same numbers (threads may reorder float sums slightly)
        assert b[key] == pytest.approx(a[key], rel=1e-3)


def test_submitit_local_executor_runs_the_cells(tmp_path):
    pytest.importorskip("submitit")
    exp, jobs = _grid(
        tmp_path, mixtures={}, upstream={"acac": tiny()["upstream"]["acac"]}, launcher={"name": "submitit-local"}
    )
    run_submitit(exp, jobs, tmp_path, False, False, QUIET)
    rows = _rows(jobs, tmp_path)
    assert {r["status"] for r in rows.values()} == {"ok"}
    assert (tmp_path / "submitit").is_dir()


def test_review_cases_error_text_retry_after_checkpoint_moved_folder_and_stale_rows(tmp_path, monkeypatch):
    import shutil

    from atomsift.errors import ConfigError as CE

    one = {"acac": tiny()["upstream"]["acac"]}
    _, jobs = _grid(tmp_path / "a", mixtures={}, scratch=False, upstream=one)
    real = cells._run_finetune

    def config_error(cell, resume, overwrite, console):
        raise CE("the split asks too much", fix="lower split.train")

    monkeypatch.setattr(cells, "_run_finetune", config_error)
    run_local(jobs, tmp_path / "a", 1, False, False, QUIET)
    row = cells.result_rows(jobs, [], tmp_path / "a")[0]
    assert row["status"] == "failed"
    assert (
        row["error"].endswith("the split asks too much. Fix: lower split.train.") and "bound method" not in row["error"]
    )

    # a cell that failed after its checkpoint (a finished-looking folder without summary + failed.json) is retried
    monkeypatch.setattr(cells, "_run_finetune", real)
    run_local(jobs, tmp_path / "a", 1, False, False, QUIET)
    pre = jobs[0].pretrain_folder
    (pre / "summary.json").unlink()
    (pre / "failed.json").write_text('{"error": "diverged (simulated)"}')
    assert check_folders(jobs, resume=False, overwrite=False)["failed"] == 1
    status = cells.run_job(jobs[0])
    assert status[str(pre)] == "ok" and not (pre / "failed.json").exists()
    values = _values(jobs, tmp_path / "a")

    # the experiment folder moved: every cell is reused (the finetuning's checkpoint path moves with it)
    shutil.move(tmp_path / "a", tmp_path / "b")
    _, moved = _grid(tmp_path / "b", mixtures={}, scratch=False, upstream=one)
    assert check_folders(moved, resume=False, overwrite=False) == {"done": 2}
    assert set(cells.run_job(moved[0]).values()) == {"reused"}
    assert _values(moved, tmp_path / "b") == values

    # other settings: the old numbers are reported as stale, never as results of the new grid
    _, changed = _grid(
        tmp_path / "b", mixtures={}, scratch=False, upstream=one, pretrain={**tiny()["pretrain"], "lr": 5e-3}
    )
    row = cells.result_rows(changed, [], tmp_path / "b")[0]
    assert row["status"] == "stale" and row["value"] is None and "other settings" in row["error"]


def test_rank_on_must_be_a_reported_metric(tmp_path):
    from atomsift.experiment.run import preflight

    down = tiny()["downstream"]
    down["ethanol"]["rank_on"] = "nonsense_mae_meV"
    exp, jobs = _grid(tmp_path, downstream=down)
    with pytest.raises(ConfigError) as err:
        preflight(exp, jobs, QUIET, show=False)
    assert "rank_on" in err.value.message() and "forces_mae_meV_per_A" in err.value.message()


def test_a_finetuning_from_another_pretraining_is_not_reused_without_overwrite(tmp_path):
    one = {"acac": tiny()["upstream"]["acac"]}
    _, jobs = _grid(tmp_path, mixtures={}, scratch=False, upstream=one)
    run_local(jobs, tmp_path, 1, False, False, QUIET)
    cell = jobs[0].finetunes[0]
    (cell.folder / "cell.json").write_text('{"pretraining": "acac/N40_E2/seed0", "settings_sha256": "0000"}')
    status = cells.run_job(jobs[0])
    assert status[str(cell.folder)] == "failed"
    assert "another pretraining" in json.loads((cell.folder / "failed.json").read_text())["error"]
    assert set(cells.run_job(jobs[0], overwrite=True).values()) == {"reused", "ok"}


def test_the_launcher_is_checked_before_any_work(tmp_path, monkeypatch):
    """slurm without sbatch on PATH failed after the CSI with exit 1 ('report it'); SLURM keys under the local
    launcher were ignored without a word."""
    import warnings

    from atomsift.experiment.run import check_launcher

    slurm, _ = _grid(tmp_path, launcher={"name": "slurm", "partition": "gpu"})
    monkeypatch.setenv("PATH", str(tmp_path))  # no sbatch here
    with pytest.raises(ConfigError, match="sbatch is not on PATH"):
        check_launcher(slurm)
    check_launcher(slurm, submit=False)  # a dry run needs no SLURM
    local, _ = _grid(tmp_path, launcher={"name": "local", "partition": "gpu", "mem_gb": 8})
    with pytest.warns(UserWarning, match=r"launcher.mem_gb, launcher.partition apply to the slurm launcher only"):
        check_launcher(local)
    plain, _ = _grid(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        check_launcher(plain)


def test_a_lost_worker_leaves_its_cells_pending_and_the_grid_goes_on(tmp_path, monkeypatch):
    """With jobs handed to the pool one at a time, a dead worker made the next submit raise BrokenProcessPool
    out of the launcher: no report at all. Now every job is announced, the lost ones as pending."""
    from _fake_jobs import FakeJob, fake_job

    from atomsift.experiment import run as launcher

    monkeypatch.setattr(launcher, "run_job", fake_job)
    console = Console(record=True, width=200, file=io.StringIO())
    launcher.run_local([FakeJob(f"j{i}") for i in range(5)], tmp_path, 2, False, False, console)
    text = console.export_text()
    assert all(f"/5] j{i}" in text for i in range(5)), text
    assert "stay pending" in text


def test_slurm_jobs_go_as_job_arrays_of_at_most_max_array_size(tmp_path, monkeypatch):
    """A recording `sbatch` on PATH: the grid's jobs are submitted as arrays (it sent one sbatch per job once),
    split where a grid exceeds the cluster's MaxArraySize (one sbatch for it would fail)."""
    from atomsift.experiment.run import submit_jobs

    record = tmp_path / "sbatch"
    record.mkdir()
    fake = tmp_path / "bin" / "sbatch"
    fake.parent.mkdir()
    fake.write_text(
        f'#!/bin/sh\nn=$(ls {record} | wc -l)\ncp "$1" {record}/$n.sh\necho "Submitted batch job $((100 + n))"\n'
    )
    fake.chmod(0o755)
    (fake.parent / "srun").write_text("#!/bin/sh\nexit 1\n")  # submitit's cluster check looks for it
    (fake.parent / "srun").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake.parent}:{os.environ['PATH']}")
    launcher = {"name": "slurm", "partition": "gpu", "array_parallelism": 2, "max_array_size": 3}
    exp, jobs = _grid(tmp_path / "exp", launcher=launcher, seeds=[0, 1])
    assert len(jobs) == 8  # (acac, oxides, their mixture, scratch) x 2 seeds
    submitted = submit_jobs(exp, jobs, tmp_path / "exp", resume=False, overwrite=False)
    assert [j for j, _ in submitted] == jobs
    scripts = [(record / f"{i}.sh").read_text() for i in range(len(list(record.iterdir())))]
    arrays = [line for text in scripts for line in text.splitlines() if line.startswith("#SBATCH --array")]
    assert arrays == ["#SBATCH --array=0-2%2", "#SBATCH --array=0-2%2", "#SBATCH --array=0-1%2"]
    assert all("#SBATCH --partition=gpu" in text for text in scripts)


def test_the_command_exits_3_when_runs_failed(tmp_path, monkeypatch, capsys):
    """A grid whose cells failed exited 0 (scripts and CI could not tell); now 3, after the report."""
    import yaml

    from atomsift.cli import main

    def broken(cell, resume, overwrite, console):
        raise RuntimeError("out of memory (simulated)")

    monkeypatch.setattr(cells, "_run_finetune", broken)
    config = tmp_path / "grid.yaml"
    config.write_text(yaml.safe_dump(tiny(mixtures={}, scratch=False, upstream={"acac": tiny()["upstream"]["acac"]})))
    with pytest.raises(SystemExit) as exit_:
        main(["experiment", "--config", str(config), "--out", str(tmp_path / "exp")])
    assert exit_.value.code == 3
    assert "1 of 1 result rows failed or were lost" in capsys.readouterr().err
    assert (tmp_path / "exp" / "report.md").exists()
    # a worker or SLURM job killed outright leaves its cells pending: lost after a grid that ran to its end,
    # still running (maybe) when --report-only gathers
    import typer

    from atomsift.cli.experiment import exit_if_runs_failed

    with pytest.raises(typer.Exit) as lost:
        exit_if_runs_failed({"status_counts": {"ok": 3, "pending": 1}})
    assert lost.value.exit_code == 3
    exit_if_runs_failed({"status_counts": {"ok": 3, "pending": 1}}, pending_were_lost=False)


def test_a_damaged_result_file_is_a_failed_row_and_the_cell_runs_again(tmp_path):
    """A finished cell whose test_metrics.json was damaged was listed as pending and 'rerun with --resume' never
    helped (the cell counted as finished): it is a failed row saying why, and the next run of the grid redoes it."""
    _exp, jobs = _grid(tmp_path, mixtures={}, seeds=[0], upstream={"acac": tiny()["upstream"]["acac"]}, scratch=False)
    run_local(jobs, tmp_path, 1, False, False, QUIET)
    before = _rows(jobs, tmp_path)[("acac", "ethanol", 0)]
    metrics = tmp_path / before["finetune_dir"] / "test_metrics.json"
    metrics.write_text("{")
    row = _rows(jobs, tmp_path)[("acac", "ethanol", 0)]
    assert row["status"] == "failed" and "test_metrics.json cannot be read" in row["error"]
    assert check_folders(jobs, resume=False, overwrite=False)["damaged"] == 1
    status = cells.run_job(jobs[0])
    assert status[str(metrics.parent)] == "ok"
    again = _rows(jobs, tmp_path)[("acac", "ethanol", 0)]
    assert again["status"] == "ok" and again["value"] == before["value"]  # the same run, rerun


def test_cells_whose_input_files_changed_are_not_reused(tmp_path):
    """A finished cell was reused after its data file changed (the cells kept settings digests only); a
    pretraining changed under its finetunings made them stale too (their starting weights differ)."""
    import shutil

    from atomsift.data.bundled import resolve_bundled

    data = tmp_path / "acac.xyz"  # a user's file: bundled data change only with atomsift and are not fingerprinted
    shutil.copy(resolve_bundled("acac")[0], data)
    upstream = {"acac": {"path": str(data), "val_size": 10}}
    _exp, jobs = _grid(tmp_path, upstream=upstream, mixtures={}, scratch=False)
    run_local(jobs, tmp_path, 1, False, False, QUIET)
    (job,) = jobs
    assert [s for _, s in cells.job_states(job)] == ["done", "done"]
    data.write_text(data.read_text().replace("energy=-", "energy=-1", 1))  # one label edited
    assert [s for _, s in cells.job_states(job)] == ["changed", "done"]
    with pytest.raises(ConfigError, match="1 cell folder.*input files .* changed since they ran"):
        check_folders(jobs, resume=False, overwrite=False)
    row = _rows(jobs, tmp_path)[("acac", "ethanol", 0)]  # its weights came from the old data: not averaged
    assert row["status"] == "stale" and "changed since it ran" in row["error"]
    run_local(jobs, tmp_path, 1, False, True, QUIET)  # --overwrite: the pretraining runs again, then its finetuning
    assert [s for _, s in cells.job_states(job)] == ["done", "done"]
    assert (
        json.loads((job.finetunes[0].folder / "inputs.json").read_text())["file:model.pt"]
        == (cells.finetune_inputs(job.finetunes[0].settings)()["file:model.pt"])
    )
