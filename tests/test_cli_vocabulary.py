"""The command vocabulary (docs/cli.md) end to end: spellings, --out/--overwrite, --config + overrides, bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from atomsift.cli.common import dataset_spec
from atomsift.data.spec import DatasetSpec, open_spec
from atomsift.errors import ConfigError


def run(*args: str, module: str = "atomsift.cli") -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=300)


def one_paragraph(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """Exit code 2, one 'error:' paragraph with a fix, no traceback."""
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "Fix:" in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])


@pytest.mark.parametrize("module", ["atomsift", "atomsift.cli"])
def test_python_dash_m_runs_the_command(module):
    proc = run("--help", module=module)
    assert proc.returncode == 0, proc.stderr
    for command in ("csi", "data", "model", "demo"):
        assert command in proc.stdout
    version = run("--version", module=module)
    assert version.returncode == 0 and version.stdout.startswith("atomsift ")


@pytest.fixture(scope="module")
def painn(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("vocab") / "painn.pt"
    proc = run("model", "init", "painn", "--out", str(path), "-p", "hidden=8", "-p", "num_layers=1")
    assert proc.returncode == 0, proc.stderr
    return path


def writers(tmp: Path, painn: Path) -> dict[str, tuple[list[str], Path]]:
    """Every command that writes a user file: (arguments before --out, the --out path)."""
    return {
        "data convert": (["data", "convert", "bundled:oxides", "--limit", "3"], tmp / "o.aselmdb"),
        "data sample": (["data", "sample", "bundled:adsorbates", "--n-samples", "7"], tmp / "s.json"),
        "model init": (["model", "init", "painn", "-p", "hidden=8", "-p", "num_layers=1"], tmp / "m.pt"),
        "model convert": (["model", "convert", str(painn)], tmp / "c.pt"),
        "model predict": (["model", "predict", str(painn), "bundled:ethanol", "--limit", "2"], tmp / "p.json"),
    }


@pytest.mark.parametrize("command", ["data convert", "data sample", "model init", "model convert", "model predict"])
def test_out_refuses_existing_file_and_folder_unless_overwrite(command, painn, tmp_path):
    args, out = writers(tmp_path, painn)[command]
    first = run(*args, "--out", str(out))
    assert first.returncode == 0 and out.is_file(), first.stderr
    stamp = out.stat().st_mtime_ns
    one_paragraph(run(*args, "--out", str(out)), "exists", "--overwrite", out.name)
    assert out.stat().st_mtime_ns == stamp  # refused: not touched
    again = run(*args, "--out", str(out), "--overwrite")
    assert again.returncode == 0 and out.stat().st_mtime_ns != stamp, again.stderr
    one_paragraph(run(*args, "--out", str(tmp_path)), "existing folder", "writes a file")


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--batch-size", "0"], "--batch-size must be at least 1, got 0"),
        (["--limit", "0"], "--limit must be at least 1, got 0"),
        (["--limit", "-3"], "--limit must be at least 1, got -3"),
    ],
)
def test_predict_rejects_non_positive_sizes(args, needle, painn):
    one_paragraph(run("model", "predict", str(painn), "bundled:ethanol", *args), needle)


def test_inspect_limit(tmp_path):
    one_paragraph(run("data", "inspect", "bundled:ethanol", "--limit", "0"), "--limit must be at least 1")
    proc = run("data", "inspect", "bundled:ethanol", "--limit", "7", "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["n_structures"] == 7


def test_old_spellings_work_with_a_warning(painn, tmp_path):
    old = run("data", "sample", "bundled:ethanol", "--n", "5", "--method", "random", "--out", str(tmp_path / "a.json"))
    new = run(
        "data", "sample", "bundled:ethanol", "--n-samples", "5", "--sampling", "random", "--out", str(tmp_path / "b")
    )
    assert old.returncode == 0 and new.returncode == 0, old.stderr + new.stderr
    assert "use --n-samples" in old.stderr and "use --sampling" in old.stderr and "old spelling" not in new.stderr
    a, b = json.loads((tmp_path / "a.json").read_text()), json.loads((tmp_path / "b").read_text())
    assert a["indices"] == b["indices"] and a["method"] == "random"
    proc = run("model", "predict", str(painn), "bundled:ethanol", "--n", "2", "--out", str(tmp_path / "p.json"))
    assert proc.returncode == 0 and "use --limit" in proc.stderr, proc.stderr
    assert len(json.loads((tmp_path / "p.json").read_text())["predictions"]) == 2
    proc = run("data", "convert", "bundled:oxides", str(tmp_path / "o.aselmdb"), "--limit", "2")
    assert proc.returncode == 0 and "--out" in proc.stderr and (tmp_path / "o.aselmdb").exists(), proc.stderr
    one_paragraph(run("data", "sample", "bundled:ethanol", "--n", "5", "--n-samples", "6", "--out", "x"), "twice")


def test_usage_errors_are_one_paragraph_too():
    """An unknown option or a bad flag value printed click's boxed usage text, not the one 'error:' line."""
    for args, needle in (
        (("csi", "--bogus-flag", "--out", "x"), "No such option: --bogus-flag"),
        (("data", "sample", "bundled:ethanol", "--out", "x.json", "--n-samples", "abc"), "--n-samples"),
        (("pretrain", "--dry-run"), "Missing option '--out'. Fix:"),  # click's own full stop, not two
        (("data", "inspct", "x"), "Did you mean 'inspect'? Fix:"),  # was "...?. Fix:"
    ):
        proc = run(*args)
        one_paragraph(proc, needle, "--help")
        assert "Usage:" not in proc.stderr and ".." not in proc.stderr


@pytest.mark.parametrize(
    "args",
    [
        ("data", "sample", "bundled:ethanol", "--seed", "-1"),
        ("csi", "-d", "e=bundled:ethanol", "-u", "a=bundled:acac", "--extractor", "soap", "seed=-1"),
        ("finetune", "--preset", "rmd17", "--data", "bundled:ethanol", "--from-scratch", "split.seed=-1"),
    ],
)
def test_a_negative_seed_is_a_settings_error(args, tmp_path):
    """numpy refused it mid-run: exit 1 ('report it'), after pretrain/finetune had written into --out."""
    one_paragraph(run(*args, "--out", str(tmp_path / "out")), "greater than or equal to 0")
    assert not (tmp_path / "out").exists()


def test_commands_that_score_every_structure_refuse_sampling_keys(painn, tmp_path):
    """evaluate scored all 1000 structures of 'PATH,n_samples=10' without a word (predict refused it)."""
    proc = run("evaluate", str(painn), "--data", "bundled:ethanol,n_samples=10", "--out", str(tmp_path / "ev"))
    one_paragraph(proc, "n_samples", "mean(s) nothing to atomsift evaluate", "data sample")
    assert not (tmp_path / "ev" / "metrics.json").exists()


def test_dataset_argument_takes_inline_reader_options(tmp_path):
    """NAME=PATH,key=value and a bare PATH name the same data; values are YAML scalars, as with -o."""
    inline = run("data", "inspect", "eth=bundled:ethanol,energy_key=energy", "--limit", "4", "--json")
    flag = run("data", "inspect", "bundled:ethanol", "-o", "energy_key=energy", "--limit", "4", "--json")
    assert inline.returncode == 0 and flag.returncode == 0, inline.stderr + flag.stderr
    assert json.loads(inline.stdout)["energy_mean_eV"] == json.loads(flag.stdout)["energy_mean_eV"]
    one_paragraph(run("data", "inspect", "bundled:ethanol,n_samples=4"), "n_samples", "--limit")
    with pytest.raises(ConfigError, match="given both inline and as an option"):
        dataset_spec("t1x=/data/t1x.h5,split=train", split="val")
    _, spec = dataset_spec("bundled:ethanol", options=["a=1e-4", "b=[1, 2]", "c=true", "d=x.h5", "e='1e-4'"])
    assert spec.options == {"a": 1e-4, "b": [1, 2], "c": True, "d": "x.h5", "e": "1e-4"}  # quoted: text


def test_a_misspelt_reader_option_names_the_dataset_and_the_near_key():
    """As the user wrote the dataset (not an internal name), with the nearest key the command takes."""
    one_paragraph(
        run("data", "inspect", "bundled:ethanol,energy_ky=energy"),
        "dataset 'bundled:ethanol': option(s) energy_ky not understood",
        "did you mean 'energy_key' for 'energy_ky'?",
        "keys of a dataset entry itself: path, format.",  # inspect takes no sampling keys: none offered
    )
    with pytest.raises(ConfigError) as exc:
        open_spec(DatasetSpec(path="bundled:acac", options={"n_sample": 5}), "acac", role="upstream")
    assert "upstream 'acac': option(s) n_sample" in str(exc.value)
    assert "did you mean 'n_samples' for 'n_sample'?" in str(exc.value)
    import pickle

    from atomsift.data import open_dataset
    from atomsift.data.registry import UnknownReaderOptions

    with pytest.raises(UnknownReaderOptions) as raw:
        open_dataset("bundled:acac", n_sample=5)
    again = pickle.loads(pickle.dumps(raw.value))  # experiment workers send errors back pickled
    assert str(again) == str(raw.value) and again.unknown == ["n_sample"]


def test_sample_config_flags_and_overrides_in_that_order(tmp_path):
    config = tmp_path / "s.yaml"
    config.write_text(yaml.safe_dump({"data": {"path": "bundled:ethanol"}, "n_samples": 9, "seed": 1}))
    out = tmp_path / "s.json"
    proc = run("data", "sample", "--config", str(config), "--seed", "2", "--sampling", "random", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    got = json.loads(out.read_text())
    assert (got["n"], got["seed"], got["method"]) == (9, 2, "random")  # file, then flag over file
    proc = run(
        "data", "sample", "--config", str(config), "seed=3", "--seed", "2", "n_samples=4", "--out", str(out),
        "--overwrite", "sampling=random",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    got = json.loads(out.read_text())
    assert (got["n"], got["seed"]) == (4, 3)  # key=value over flag over file
    one_paragraph(run("data", "sample", "--config", str(config), "n_sampels=3", "--out", str(out)), "n_sampels")


def test_model_info_on_a_folder(painn, tmp_path):
    one_paragraph(run("model", "info", str(tmp_path)), "a folder, not a checkpoint file", "holds none")
    (tmp_path / "model.pt").write_bytes(painn.read_bytes())
    one_paragraph(run("model", "info", str(tmp_path)), "a folder", str(tmp_path / "model.pt"))
    assert run("model", "info", str(tmp_path / "model.pt")).returncode == 0


def test_csi_config_flags_and_overrides(tmp_path):
    """--config < flags < key=value; -u adds to the file's upstream sets; the resolved settings are saved."""
    config = tmp_path / "c.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "extractor": "soap",
                "n_samples": 20,
                "bootstrap": 0,
                "seed": 5,
                "upstream": {"acac": {"path": "bundled:acac"}},
                "downstream": {"eth": {"path": "bundled:ethanol"}},
            }
        )
    )
    out = tmp_path / "run"
    proc = run(
        "csi", "--config", str(config), "-u", "oxides=bundled:oxides", "--n-samples", "15", "--seed", "6",
        "seed=7", "upstream.acac.n_samples=8", "--out", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    saved = yaml.safe_load((out / "csi_config.yaml").read_text())
    assert (saved["n_samples"], saved["seed"], saved["bootstrap"]) == (15, 7, 0)
    assert set(saved["upstream"]) == {"acac", "oxides"} and saved["upstream"]["acac"]["n_samples"] == 8
    rows = {r["upstream"]: r for r in json.loads((out / "csi.json").read_text())}
    assert rows["acac"]["n_structures_upstream"] == 8 and rows["oxides"]["n_structures_upstream"] == 15
    one_paragraph(run("csi", "--config", str(config), "--out", str(config)), "existing file", "folder")
    one_paragraph(run("csi", "--config", str(config), "--trust-checkpoint", "--out", str(out)), "checkpoint:PATH")
    one_paragraph(run("csi", "--config", str(config), "boostrap=3", "--out", str(out)), "boostrap")
    # results of other settings in --out are not replaced without --overwrite; run mechanics may differ
    before = (out / "csi.json").read_text()
    one_paragraph(run("csi", "--config", str(config), "--out", str(out)), "results of a run with other settings")
    assert (out / "csi.json").read_text() == before
    again = (
        "csi", "--config", str(config), "-u", "oxides=bundled:oxides", "--n-samples", "15", "seed=7",
        "upstream.acac.n_samples=8", "--batch-size", "3", "--out", str(out),
    )  # fmt: skip
    assert run(*again).returncode == 0
    (out / "csi_config.yaml").write_text("n_samples: [\n")  # damaged: named, not taken for other settings
    one_paragraph(run(*again), "csi_config.yaml cannot be read")
    assert run("csi", "--config", str(config), "--out", str(out), "--overwrite", "--recompute").returncode == 0


def test_an_out_that_cannot_be_made_is_bad_input_not_a_bug(tmp_path):
    """--out under a file (or where one may not write) was 'unexpected NotADirectoryError ... report it', exit 1."""
    (tmp_path / "afile").write_text("x")
    inside = str(tmp_path / "afile" / "run")
    one_paragraph(run("data", "sample", "bundled:ethanol", "--n-samples", "3", "--out", inside + ".json"), "afile")
    config = str(Path(__file__).resolve().parents[1] / "configs" / "pretrain_demo.yaml")
    one_paragraph(run("pretrain", "--config", config, "--out", inside), "afile is a file, not a folder")
    debug = run("data", "sample", "bundled:ethanol", "--n-samples", "3", "--out", inside + ".json", "--debug")
    assert debug.returncode == 2 and "Traceback" in debug.stderr  # as other bad input: traceback, then exit 2
    assert debug.stderr.rstrip().splitlines()[-1].startswith("error: ")
