"""Run-folder rules that protect what is already there (docs/cli.md: --out / --overwrite / --resume)."""

from __future__ import annotations

import subprocess
import sys
import warnings
import zipfile

import numpy as np
import pytest

from atomsift.csi.cache import load_stats, lookup, save_stats
from atomsift.errors import ConfigError, DataError
from atomsift.train.inputs import read_run_json
from atomsift.train.run_folder import LOCK_FILE, check_resumable, folder_outlook, prepare_run, releases_run_locks

SETTINGS = {"lr": 1e-3, "epochs": 2}


def _finished(out):
    assert prepare_run(out, SETTINGS, resume=False, overwrite=False, command="pretrain") == "new"
    (out / "model.pt").write_bytes(b"weights")
    (out / "summary.json").write_text("{}")


def test_resume_with_overwrite_is_refused_before_anything_is_deleted(tmp_path):
    out = tmp_path / "run"
    _finished(out)
    with pytest.raises(ConfigError, match="--resume and --overwrite contradict each other"):
        prepare_run(out, SETTINGS, resume=True, overwrite=True, command="pretrain")
    assert (out / "model.pt").read_bytes() == b"weights" and (out / "config.yaml").exists()


def test_files_a_run_writes_in_a_folder_that_holds_no_run_are_not_replaced(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "model.pt").write_bytes(b"my model")
    (out / "notes.txt").write_text("kept")
    with pytest.raises(ConfigError, match="--out holds model.pt but no atomsift run"):
        prepare_run(out, SETTINGS, resume=False, overwrite=False, command="pretrain")
    assert (out / "model.pt").read_bytes() == b"my model" and not (out / "config.yaml").exists()
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)  # empty folders are nothing to lose
    assert prepare_run(tmp_path / "empty", SETTINGS, resume=False, overwrite=False, command="pretrain") == "new"


def test_overwrite_that_would_delete_an_input_is_refused(tmp_path):
    out = tmp_path / "pt"
    _finished(out)
    with pytest.raises(ConfigError, match="--overwrite would delete .*model.pt, which this run reads"):
        prepare_run(out, {"x": 1}, resume=False, overwrite=True, command="finetune", inputs=(out / "model.pt",))
    assert (out / "model.pt").read_bytes() == b"weights"


def test_resume_into_a_missing_folder_creates_nothing(tmp_path):
    with pytest.raises(ConfigError, match="the run folder does not exist"):
        prepare_run(tmp_path / "nope", SETTINGS, resume=True, overwrite=False, command="pretrain")
    assert not (tmp_path / "nope").exists()


def test_damaged_run_files_are_clear_errors(tmp_path):
    out = tmp_path / "run"
    _finished(out)
    (out / "config.yaml").write_text("lr: [1,\n")
    with pytest.raises(ConfigError, match="config.yaml cannot be read") as exc:
        prepare_run(out, SETTINGS, resume=False, overwrite=False, command="pretrain")
    assert exc.value.file == str(out / "config.yaml")
    (out / "config.yaml").write_text("- a list\n")  # valid YAML, but not settings
    with pytest.raises(ConfigError, match="config.yaml cannot be read"):
        prepare_run(out, SETTINGS, resume=False, overwrite=False, command="pretrain")
    (out / "summary.json").write_text("{")
    with pytest.raises(DataError, match="summary.json cannot be read"):
        read_run_json(out / "summary.json")


def test_a_cut_short_csi_cache_is_a_clear_error_and_recompute_replaces_it(tmp_path):
    path = save_stats(tmp_path / "c.npz", {"mean": np.zeros(3)}, {"n": 1})
    path.write_bytes(path.read_bytes()[:40])
    with pytest.raises(DataError, match="cannot read the statistics cache file") as exc:
        load_stats(path)
    assert exc.value.file == str(path) and "--recompute" in exc.value.fix
    assert lookup(path, {"n": 1}, recompute=True) is None


def test_a_run_whose_data_or_starting_checkpoint_changed_is_not_reused(tmp_path):
    """inputs.json records the data's and the starting checkpoint's fingerprints: a finished run is reused
    only while they match (it said 'reusing it' after the data file was edited)."""
    import os
    import shutil

    from _train_helpers import pretrain_config

    from atomsift.data.bundled import resolve_bundled
    from atomsift.train.config import FinetuneConfig
    from atomsift.train.finetune import run_finetuning
    from atomsift.train.pretrain import run_pretraining

    src, fmt, _ = resolve_bundled("acac")
    data = tmp_path / f"acac{''.join(src.suffixes)}"
    shutil.copy(src, data)
    cfg = pretrain_config(
        upstream={"acac": {"path": str(data), "format": fmt, "val_size": 6}}, mixture="single", epochs=1
    )
    run_pretraining(cfg, tmp_path / "pt", progress=False)
    assert "data:acac" in (tmp_path / "pt/inputs.json").read_text()
    run_pretraining(cfg, tmp_path / "pt", progress=False)  # unchanged: reused
    stat = data.stat()
    os.utime(data, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # the file was rewritten
    with pytest.raises(ConfigError, match=r"files this run read have changed since it ran \(data:acac"):
        run_pretraining(cfg, tmp_path / "pt", progress=False)
    ft = FinetuneConfig.model_validate(
        {"preset": "energy-forces", "data": {"path": "bundled:ethanol"}, "checkpoint": str(tmp_path / "pt/model.pt"),
         "epochs": 1, "split": {"train": 10, "val": 5, "test": 5}, "heads": {"num_layers": 1}}
    )  # fmt: skip
    run_finetuning(ft, tmp_path / "ft", progress=False)
    shutil.copy(tmp_path / "pt/last.pt", tmp_path / "pt/model.pt")  # other weights under the same name
    with pytest.raises(ConfigError, match=r"changed since it ran \(file:model.pt"):
        run_finetuning(ft, tmp_path / "ft", progress=False)


def test_overwrite_removes_the_run_s_own_files_and_leaves_the_user_s(tmp_path):
    out = tmp_path / "run"
    _finished(out)
    for rel in ("checkpoints/last.ckpt", "logs/attempt_0/metrics.csv", "subsets/acac.val.json",
                "checkpoints/my_best.ckpt", "logs/my_notes.log", "subsets/my_subset.json", "notes.txt"):  # fmt: skip
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text("x")
    assert prepare_run(out, {"lr": 2e-3}, resume=False, overwrite=True, command="pretrain") == "new"
    left = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.name != LOCK_FILE)
    assert left == [
        "checkpoints/my_best.ckpt",
        "config.yaml",
        "logs/my_notes.log",
        "notes.txt",
        "subsets/my_subset.json",
    ]


def test_resume_without_a_checkpoint_says_the_run_starts_again(tmp_path):
    out = tmp_path / "run"
    assert prepare_run(out, SETTINGS, resume=False, overwrite=False, command="pretrain") == "new"
    with pytest.warns(UserWarning, match="holds no checkpoint, so the run starts from its beginning"):
        assert prepare_run(out, SETTINGS, resume=True, overwrite=False, command="pretrain") == "new"


def test_overwrite_also_clears_run_files_without_config_and_tensorboard_logs(tmp_path):
    """The refusal says 'pass --overwrite to replace them': then they go, or a stale summary.json made a later
    --resume 'done' and old logs were merged in; TensorBoard's folder is the run's own too."""
    out = tmp_path / "run"
    for rel in ("summary.json", "logs/attempt_0/metrics.csv", "logs/tensorboard/attempt_0/events", "notes.txt"):
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_text("x")
    assert prepare_run(out, SETTINGS, resume=False, overwrite=True, command="pretrain") == "new"
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file() and p.name != LOCK_FILE) == [
        "config.yaml",
        "notes.txt",
    ]


def test_overwrite_refuses_only_inputs_it_would_delete(tmp_path):
    out = tmp_path / "pt"
    _finished(out)
    (out / "checkpoints").mkdir()
    (out / "checkpoints/my_best.ckpt").write_bytes(b"kept by --overwrite")
    kept = out / "checkpoints/my_best.ckpt"
    assert prepare_run(out, {"x": 2}, resume=False, overwrite=True, command="finetune", inputs=(kept,)) == "new"
    assert kept.read_bytes() == b"kept by --overwrite"


def test_a_users_subset_of_a_bundled_set_is_fingerprinted(tmp_path):
    import json as _json

    from atomsift.data import open_dataset
    from atomsift.train.inputs import input_fingerprints

    subset = tmp_path / "subset.json"
    subset.write_text(_json.dumps({"indices": [0, 1, 2]}))
    plain = open_dataset("bundled:acac")
    assert input_fingerprints({"acac": plain}) == {}  # bundled files change only with atomsift
    picked = open_dataset("bundled:acac", indices=str(subset))
    first = input_fingerprints({"acac": picked})
    assert set(first) == {"data:acac"}
    subset.write_text(_json.dumps({"indices": [0, 1, 3]}))
    import os

    os.utime(subset, ns=(subset.stat().st_atime_ns, subset.stat().st_mtime_ns + 10**9))
    assert input_fingerprints({"acac": open_dataset("bundled:acac", indices=str(subset))}) != first


def test_a_second_process_in_the_same_run_folder_is_refused(tmp_path):
    """Two identical commands into one --out both trained and both wrote there: the folder is locked by the run
    that holds it (until that run ends)."""
    out = tmp_path / "run"
    assert prepare_run(out, SETTINGS, resume=False, overwrite=False, command="pretrain") == "new"
    code = (
        "import sys; from atomsift.errors import ConfigError; from atomsift.train.run_folder import prepare_run\n"
        f"try: prepare_run({str(out)!r}, {SETTINGS!r}, resume=False, overwrite=False, command='pretrain')\n"
        "except ConfigError as exc: print(exc.message()); sys.exit(2)"
    )
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert other.returncode == 2 and "another atomsift process is running in this run folder" in other.stdout


def test_a_run_releases_its_folder_lock_when_it_ends(tmp_path):
    @releases_run_locks
    def run(out):
        prepare_run(out, SETTINGS, resume=False, overwrite=False, command="pretrain")
        assert (out / LOCK_FILE).exists()

    run(tmp_path / "run")
    assert not (tmp_path / "run" / LOCK_FILE).exists()
    run(tmp_path / "run")  # taken again by the next run in this process


def _state(root, name):
    """A run folder in one of the states prepare_run tells apart."""
    out = root / name
    if name == "missing":
        return out
    if name == "a-file":
        out.write_text("x")
        return out
    if name == "parent-a-file":
        out.write_text("x")
        return out / "run"
    out.mkdir()
    if name == "foreign":
        (out / "metrics.csv").write_text("mine")
        return out
    if name == "damaged-config":
        (out / "config.yaml").write_text("[unclosed")
        return out
    settings = {**SETTINGS, "epochs": 3} if name == "other-settings" else SETTINGS
    assert (
        prepare_run(out, settings, resume=False, overwrite=False, command="pretrain", fingerprints={"d": "1"}) == "new"
    )
    if name in ("stopped-early", "other-settings"):
        return out
    (out / "checkpoints").mkdir()
    if name == "cut-short-checkpoint":
        (out / "checkpoints" / "last.ckpt").write_bytes(b"PK\x03\x04 cut short")
    else:  # torch writes zip archives; the contents are not read here
        with zipfile.ZipFile(out / "checkpoints" / "last.ckpt", "w") as archive:
            archive.writestr("archive/data.pkl", b"")
    (out / "model.pt").write_bytes(b"weights")
    if name.startswith("finished"):
        (out / "summary.json").write_text("{" if name == "finished-damaged-summary" else "{}")
    return out


STATES = ("missing", "a-file", "parent-a-file", "foreign", "damaged-config", "stopped-early", "other-settings")
STATES += ("unfinished", "cut-short-checkpoint", "finished", "finished-inputs-changed", "finished-damaged-summary")


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize(("resume", "overwrite"), [(False, False), (True, False), (False, True), (True, True)])
def test_the_dry_run_outlook_says_what_prepare_run_then_does(tmp_path, state, resume, overwrite):
    """--dry-run's line against what prepare_run does for the same folder and flags, and then the run's checks of
    what it reads there (it printed the plan alone, and a first outlook disagreed in six states)."""
    out = _state(tmp_path, state)
    prints = "changed" if state == "finished-inputs-changed" else "1"
    kwargs = {"resume": resume, "overwrite": overwrite, "command": "pretrain", "fingerprints": {"d": prints}}
    kwargs["inputs"] = (out / "model.pt",) if state == "finished" else ()
    before = sorted((str(p), p.stat().st_mtime_ns) for p in tmp_path.rglob("*"))
    line = folder_outlook(out, SETTINGS, **kwargs)
    assert sorted((str(p), p.stat().st_mtime_ns) for p in tmp_path.rglob("*")) == before  # the outlook reads only
    try:
        with warnings.catch_warnings(record=True) as said:
            warnings.simplefilter("always")
            result = prepare_run(out, SETTINGS, **kwargs)
        if result == "resume":
            check_resumable(out)  # run_fit's first check
        elif result == "done":
            read_run_json(out / "summary.json")  # what a finished run returns
    except (ConfigError, DataError) as exc:
        assert "refused" in line and exc.message() in line, line
        return
    assert "refused" not in line, line
    if said:
        expected = "starts from its beginning"
    elif result == "new" and overwrite:
        expected = "a new run" if state == "missing" else "--overwrite removes the run there"
    elif result == "new":
        expected = "starts again" if state in ("stopped-early", "damaged-config", "other-settings") else "a new run"
    else:
        expected = {"done": "it is reused and nothing trains", "resume": "resuming"}[result]
    assert expected in line, (result, line)


def test_fingerprints_are_computed_only_where_the_folder_needs_them_and_a_fresh_start_records_its_own(tmp_path):
    """A dry run hashed the starting checkpoint whole even for a new folder; a --resume that found no checkpoint
    started again but kept the earlier attempt's inputs.json, so its next --resume was refused."""
    calls = []

    def fingerprints(value):
        return lambda: calls.append(value) or {"d": value}

    out = tmp_path / "run"
    folder_outlook(out, SETTINGS, resume=False, overwrite=False, command="pretrain", fingerprints=fingerprints("x"))
    assert calls == []  # nothing there to compare with
    assert prepare_run(out, SETTINGS, resume=False, overwrite=False, command="pretrain", fingerprints={"d": "OLD"})
    with pytest.warns(UserWarning, match="starts from its beginning"):
        state = prepare_run(
            out, SETTINGS, resume=True, overwrite=False, command="pretrain", fingerprints=fingerprints("NEW")
        )
    assert state == "new" and read_run_json(out / "inputs.json") == {"d": "NEW"}
    (out / "checkpoints").mkdir()
    (out / "checkpoints" / "last.ckpt").write_bytes(b"x")
    kwargs = {"resume": True, "overwrite": False, "command": "pretrain", "fingerprints": fingerprints("NEW")}
    assert prepare_run(out, SETTINGS, **kwargs) == "resume"


def test_a_settings_difference_names_a_removed_or_added_entry_once():
    """A csi rerun without one upstream set listed each of its keys as `upstream.mols.path: '/x' -> None`."""
    from atomsift.train.run_folder import config_diff

    old = {"upstream": {"mols": {"path": "/x", "options": {"k": 1}}, "acac": {"path": "a"}}, "seed": 1}
    new = {"upstream": {"acac": {"path": "a"}}, "seed": 2}
    assert config_diff(old, new) == ["seed: 1 -> 2", "upstream.mols: removed"]
    assert config_diff(new, old) == ["seed: 2 -> 1", "upstream.mols: added"]
    assert config_diff({"a": {"b": 1}}, {"a": {"b": 2, "c": 3}}) == ["a.b: 1 -> 2", "a.c: None -> 3"]
    assert config_diff({"x": {"y": 1, "z": 2}}, {}) == ["x: removed"]
    assert config_diff(old, old) == [] and config_diff({"a": {"b": None}}, {"a": {"c": None}}) == []
