"""`atomsift pretrain / finetune / evaluate` in subprocesses: the whole path, bad input, and DDP on 2 CPU processes."""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

PRETRAIN = {
    "backbone": {"name": "painn", "hparams": {"hidden": 16, "num_layers": 2, "num_rbf": 8, "cutoff": 4.0}},
    "heads": {"num_layers": 2},
    "upstream": {"acac": {"path": "bundled:acac", "val_size": 7}, "oxides": {"path": "bundled:oxides", "val_size": 5}},
    "mixture": "balanced",
    "n_samples": 30,
    "epochs": 2,
    "batch_size": 8,
    "lr": 1.0e-3,
    "warmup_steps": 2,
    "log_every": 1,
}


def run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "atomsift", *args], capture_output=True, text=True, timeout=timeout)


def write_config(path: Path, **changes) -> Path:
    path.write_text(yaml.safe_dump({**PRETRAIN, **changes}))
    return path


def _children_cpu_s() -> float:
    import resource

    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def test_pretrain_finetune_evaluate_end_to_end(tmp_path):
    start = _children_cpu_s()  # CPU seconds, not wall: other processes on a shared machine do not count
    cfg = write_config(tmp_path / "pt.yaml")
    dry = run("pretrain", "--config", str(cfg), "--out", str(tmp_path / "pt"), "--dry-run", "warmup_steps=100")
    assert dry.returncode == 0, dry.stderr
    assert "C = 60 structure passes" in dry.stdout and not (tmp_path / "pt").exists()
    assert "warmup_steps=100 is not below the run's 8 optimizer steps" in dry.stderr  # said by the run alone
    assert f"run folder {tmp_path / 'pt'}: a new run" in dry.stdout
    pt = run("pretrain", "--config", str(cfg), "--out", str(tmp_path / "pt"), "seed=3")
    assert pt.returncode == 0, pt.stderr
    assert "30 x 2 = 60 structure passes (60 seen)" in pt.stdout
    # each epoch's line shows that epoch's training loss (Lightning runs callbacks before the module's hook)
    with open(tmp_path / "pt/metrics.csv", newline="") as fh:
        logged = [float(r["train/loss_epoch"]) for r in csv.DictReader(fh) if r.get("train/loss_epoch")]
    shown = [
        float(line.split("train/loss ")[1].split(",")[0]) for line in pt.stdout.splitlines() if "train/loss " in line
    ]
    assert len(shown) == len(logged) == 2 and shown == pytest.approx(logged, rel=1e-3)
    assert yaml.safe_load((tmp_path / "pt/config.yaml").read_text())["seed"] == 3
    dry = run("pretrain", "--config", str(cfg), "--out", str(tmp_path / "pt"), "seed=4", "--dry-run")
    assert "refused: the run folder holds a run with other settings (seed: 3 -> 4)" in " ".join(dry.stdout.split())
    assert dry.returncode == 2  # as the run would: a script can trust a dry run's exit status
    ft = run(
        "finetune",
        "--preset",
        "rmd17",
        "--data",
        "bundled:ethanol",
        "--checkpoint",
        str(tmp_path / "pt/model.pt"),
        "--out",
        str(tmp_path / "ft"),
        "--epochs",
        "2",
        "split.train=40",
        "split.val=10",
        "split.test=30",
    )
    assert ft.returncode == 0, ft.stderr
    test = json.loads((tmp_path / "ft/test_metrics.json").read_text())
    assert test["n_structures"] == 30 and test["forces_mae_meV_per_A"] > 0
    ev = run(
        "evaluate",
        str(tmp_path / "ft/model.pt"),
        "--data",
        "bundled:ethanol",
        "--split",
        "test",
        "--out",
        str(tmp_path / "ev"),
    )
    assert ev.returncode == 0, ev.stderr
    metrics = json.loads((tmp_path / "ev/metrics.json").read_text())
    for key in ("energy_mae_meV", "energy_per_atom_mae_meV", "forces_mae_meV_per_A", "forces_rmse_meV_per_A"):
        assert metrics[key] == pytest.approx(test[key], rel=1e-6), key  # evaluate == the run's own test
    assert {Path(p).name for p in metrics["plots"]} == {"parity_energy.png", "parity_forces.png", "learning_curve.png"}
    again = run("evaluate", str(tmp_path / "ft/model.pt"), "--data", "bundled:ethanol", "--out", str(tmp_path / "ev"))
    assert again.returncode == 2 and "--overwrite" in again.stderr
    assert _children_cpu_s() - start < 60
    assert "note" not in metrics
    whole = run("evaluate", str(tmp_path / "ft/model.pt"), "--data", "bundled:ethanol", "--out", str(tmp_path / "all"))
    assert whole.returncode == 0, whole.stderr
    assert "note: no --split: all 1000 structures were scored, the run's training" in whole.stdout.replace("\n", " ")
    # labels under other keys: no error to report, and metrics.json and the console say how to read them
    import ase.io

    from atomsift.data import open_dataset

    frames = []
    for rec in [open_dataset("bundled:ethanol")[i] for i in range(3)]:
        atoms = rec.to_atoms()
        atoms.calc = None  # no energy / forces under the default keys
        atoms.info["dft_energy"] = rec.energy
        atoms.arrays["dft_forces"] = rec.forces
        frames.append(atoms)
    ase.io.write(tmp_path / "custom.extxyz", frames, format="extxyz")
    other = run("evaluate", str(tmp_path / "ft/model.pt"), "--data", str(tmp_path / "custom.extxyz"), "--out",
                str(tmp_path / "custom"))  # fmt: skip
    assert other.returncode == 0, other.stderr
    said = json.loads((tmp_path / "custom/metrics.json").read_text())["warning"]
    assert "none of the 3 structures has the label 'energy' or forces" in said
    assert (
        "reader option energy_key=dft_energy (a dataset given as PATH,energy_key=dft_energy" in said
        and "forces_key=dft_forces" in said
    )
    assert "reader option energy_key=dft_energy" in " ".join((other.stdout + other.stderr).split())
    # a model trained on ethanol (C, H, O) scored on oxides: the metals' energies extrapolate, and it says so
    oxides = run("evaluate", str(tmp_path / "ft/model.pt"), "--data", "bundled:oxides", "--out", str(tmp_path / "ox"))
    assert oxides.returncode == 0, oxides.stderr
    warned = json.loads((tmp_path / "ox/metrics.json").read_text())["warning"]
    assert "element(s) Ti, V, Ru, Sn, Ir never appeared in the structures head" in warned
    # pretraining on it: the dry run says there are no energies (it printed a plan; the run then failed)
    custom = f"upstream.mine.path={tmp_path / 'custom.extxyz'}"
    dry = run("pretrain", custom, "backbone.name=painn", "n_samples=2", "--dry-run", "--out", str(tmp_path / "pt"))
    said = " ".join(dry.stderr.split())
    assert dry.returncode == 2 and "upstream 'mine' has no energies" in said and "energy_key=dft_energy" in said


@pytest.mark.parametrize(
    ("changes", "args", "needle"),
    [
        ({"learning_rate": 1e-3}, (), "learning_rate: unknown key"),
        (
            {"upstream": {"ads": {"path": "bundled:adsorbates", "force_weight": 10}}, "mixture": "single"},
            (),
            "its structures have no forces",
        ),
        (
            {"upstream": {"acac": {"path": "bundled:acac"}}, "mixture": "single", "n_samples": 5000},
            (),
            "n_samples asks 5000 structures of 'acac', which has 475 available",
        ),
        ({}, ("mixture=single",), "mixture 'single' takes one upstream dataset"),
        ({}, ("--batch-size", "0"), "--batch-size must be at least 1"),
        ({}, ("devices=0",), "Lightning refused the run settings"),  # was exit 1, "report it"
        ({}, ("devices=2", "strategy=ddp_spawn"), "starts its processes from a pickled copy"),
        ({}, ("num_nodes=2",), "would wait for the other nodes for good"),  # it hung, deaf to Ctrl-C
        (
            {"backbone": {"checkpoint": "no/such/model.pt"}},
            ("--dry-run",),
            "checkpoint file not found",
        ),  # was "a new run"
    ],
)
def test_bad_pretrain_input_is_one_paragraph(tmp_path, changes, args, needle):
    cfg = write_config(tmp_path / "c.yaml", **changes)
    proc = run("pretrain", "--config", str(cfg), "--out", str(tmp_path / "run"), *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert needle in proc.stderr and "Traceback" not in proc.stderr


def test_bad_finetune_input_is_one_paragraph(tmp_path):
    proc = run("finetune", "--preset", "rmd71", "--data", "bundled:ethanol", "--from-scratch", "--out", str(tmp_path))
    assert proc.returncode == 2 and "unknown finetuning preset 'rmd71'" in proc.stderr
    property_args = ("finetune", "--preset", "property", "--data", "bundled:bench-qm9", "--from-scratch")
    property_args += ("backbone.name=painn", "--out", str(tmp_path / "prop"))
    proc = run(*property_args)
    assert proc.returncode == 2 and "needs the name of the target" in proc.stderr  # trained REPLACE_WITH_TARGET_NAME
    proc = run(*property_args, "task.target=U0", "split.train=10", "split.val=5", "split.test=5", "--dry-run")
    assert proc.returncode == 0 and "metrics are named U0_mae_units" in proc.stderr, proc.stderr
    missing = ("--checkpoint", str(tmp_path / "no.pt"), "--out", str(tmp_path / "ft"), "--dry-run")
    proc = run("finetune", "--preset", "rmd17", "--data", "bundled:ethanol", *missing)
    assert proc.returncode == 2 and "checkpoint file not found" in proc.stderr, proc.stdout  # a dry run said nothing
    other = tmp_path / "other.pt"
    init = run("model", "init", "gemnet_oc", "--preset", "tiny", "--out", str(other))
    assert init.returncode == 0, init.stderr
    import torch

    saved = torch.load(other, weights_only=True)
    saved["backbone"]["hparams"]["num_blocks"] = 1  # the weights are of a two-block network
    torch.save(saved, other)
    proc = run(
        "finetune",
        "--preset",
        "rmd17",
        "--data",
        "bundled:ethanol",
        "--checkpoint",
        str(other),
        "--out",
        str(tmp_path / "ft"),
        "split.train=100",
    )
    assert proc.returncode == 2 and "unexpected" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def _step_losses(run_dir: Path) -> dict[int, float]:
    with open(run_dir / "metrics.csv", newline="") as fh:
        return {int(r["step"]): float(r["train/loss_step"]) for r in csv.DictReader(fh) if r.get("train/loss_step")}


def test_ddp_two_cpu_processes_match_one_process(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", ema_decay=None)
    one = run("pretrain", "--config", str(cfg), "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr
    two = run(
        "pretrain", "--config", str(cfg), "--out", str(tmp_path / "two"), "batch_size=4", "devices=2", "strategy=ddp"
    )
    assert two.returncode == 0, two.stderr
    a, b = (json.loads((tmp_path / d / "summary.json").read_text()) for d in ("one", "two"))
    for key in ("structures_seen", "structures_seen_per_dataset", "atoms_seen", "optimizer_steps"):
        assert a[key] == b[key], key
    la, lb = _step_losses(tmp_path / "one"), _step_losses(tmp_path / "two")
    assert la.keys() == lb.keys() and len(la) == 8
    for step in la:
        assert lb[step] == pytest.approx(la[step], rel=1e-3), step
    for name, value in a["best_val_loss"].items():
        assert b["best_val_loss"][name] == pytest.approx(value, rel=1e-3)


def test_ddp_ctrl_c_to_the_first_process_stops_both_and_resumes_exactly(tmp_path):
    """SIGINT to the first process only (timeout, kill -INT) left the other waiting in a collective for good;
    now the processes agree after each step and stop at the same one, and the resume replays the logs too."""
    import signal

    import torch

    cfg = write_config(tmp_path / "c.yaml", n_samples=64, epochs=8, batch_size=4, checkpoint_every=1000)
    ddp = ("devices=2", "strategy=ddp", "accelerator=cpu")
    ref = run("pretrain", "--config", str(cfg), "--out", str(tmp_path / "ref"), *ddp)
    assert ref.returncode == 0, ref.stderr
    proc = subprocess.Popen(
        [sys.executable, "-m", "atomsift", "pretrain", "--config", str(cfg), "--out", str(tmp_path / "run"), *ddp],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in proc.stdout:
        if line.startswith("epoch 2/"):
            time.sleep(0.2)
            proc.send_signal(signal.SIGINT)
            break
    _, err = proc.communicate(timeout=120)  # a hang fails here
    assert proc.returncode == 130, err
    resumed = run("pretrain", "--config", str(cfg), "--out", str(tmp_path / "run"), "--resume", *ddp)
    assert resumed.returncode == 0, resumed.stderr
    a = torch.load(tmp_path / "ref/last.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "run/last.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "run/metrics.csv").read_text() == (tmp_path / "ref/metrics.csv").read_text()


def test_ctrl_c_saves_and_resume_finishes_the_same_run(tmp_path):
    import signal

    import torch

    cfg = write_config(tmp_path / "c.yaml", n_samples=200, epochs=4, batch_size=4, checkpoint_every=1000)
    ref = run("pretrain", "--config", str(cfg), "--out", str(tmp_path / "ref"))
    assert ref.returncode == 0, ref.stderr
    proc = subprocess.Popen(
        [sys.executable, "-m", "atomsift", "pretrain", "--config", str(cfg), "--out", str(tmp_path / "run")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    for line in proc.stdout:  # one line per epoch: interrupt during the second epoch
        if line.startswith("epoch 1/"):
            time.sleep(0.2)
            proc.send_signal(signal.SIGINT)
            break
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "--resume" in err and "checkpoints" in err
    saved = torch.load(tmp_path / "run/checkpoints/last.ckpt", weights_only=False)
    assert 0 < saved["global_step"] < 200  # written at the interrupt, mid-run (checkpoint_every is 1000)
    damaged = tmp_path / "damaged"  # the same run with its checkpoint cut short: refused, named, exit 2
    shutil.copytree(tmp_path / "run", damaged)
    ckpt = damaged / "checkpoints/last.ckpt"
    ckpt.write_bytes(ckpt.read_bytes()[:5000])
    cut = run("pretrain", "--config", str(cfg), "--out", str(damaged), "--resume")
    assert cut.returncode == 2 and "checkpoint is damaged" in cut.stderr and "Traceback" not in cut.stderr
    dry = run("pretrain", "--config", str(cfg), "--out", str(damaged), "--resume", "--dry-run")
    assert dry.returncode == 2 and "refused: the run's checkpoint is damaged" in " ".join(dry.stdout.split())
    resumed = run("pretrain", "--config", str(cfg), "--out", str(tmp_path / "run"), "--resume")
    assert resumed.returncode == 0, resumed.stderr
    a = torch.load(tmp_path / "ref/last.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "run/last.pt", weights_only=True)["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # the first Ctrl-C lets the step finish, so the logs replay too: same rows, same steps, same values
    with open(tmp_path / "ref/metrics.csv", newline="") as fa, open(tmp_path / "run/metrics.csv", newline="") as fb:
        ref_rows, run_rows = list(csv.DictReader(fa)), list(csv.DictReader(fb))
    assert [r["step"] for r in run_rows] == [r["step"] for r in ref_rows]
    for x, y in zip(ref_rows, run_rows, strict=True):
        for key in x:
            if x[key] and key not in ("struct/s",):
                assert float(y[key]) == pytest.approx(float(x[key]), rel=1e-6, abs=1e-9), (x["step"], key)
