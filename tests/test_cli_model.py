"""`atomsift model ...` and `atomsift csi --extractor checkpoint:PATH` end to end, in a subprocess."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from atomsift.data import open_dataset


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "atomsift.cli", *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def gemnet_file(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("models") / "goc.pt"
    proc = run(
        "model",
        "init",
        "gemnet_oc",
        "--out",
        str(path),
        "--preset",
        "tiny",
        "--forces",
        "direct",
        "--seed",
        "3",
        "--fit-scales",
        "bundled:ethanol",
        "--fit-batches",
        "2",
    )
    assert proc.returncode == 0, proc.stderr
    assert "scale factors fitted on bundled:ethanol" in proc.stdout
    return path


def test_init_info_convert(gemnet_file, tmp_path):
    proc = run("model", "info", str(gemnet_file), "--json")
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["backbone"] == "gemnet_oc" and info["missing_keys"] == [] and info["unexpected_keys"] == []
    assert info["heads"]["energy"]["forces"] == "direct" and info["parameters"] > 0
    assert info["unfitted_scale_factors"] == [] and info["trained"] is False
    import torch

    state = torch.load(gemnet_file, weights_only=True)["state_dict"]
    factors = [float(v) for k, v in state.items() if k.endswith("scale_factor")]
    assert factors and all(f > 0 for f in factors)  # fitted, stored in the checkpoint (0 = unfitted)
    out = tmp_path / "copy.pt"
    proc = run("model", "convert", str(gemnet_file), "--out", str(out))
    assert proc.returncode == 0 and out.is_file(), proc.stderr


def test_predict_writes_json_and_mae(gemnet_file, tmp_path):
    out = tmp_path / "pred.json"
    proc = run("model", "predict", str(gemnet_file), "bundled:ethanol", "--limit", "12", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "forces (meV/A)" in proc.stdout
    rows = json.loads(out.read_text())["predictions"]
    ds = open_dataset("bundled:ethanol")
    assert [r["id"] for r in rows] == [ds[i].id for i in range(12)]
    assert all(np.isfinite(r["energy_eV"]) and np.array(r["forces_eV_per_A"]).shape == (9, 3) for r in rows)
    # --overwrite replaces outputs, never the input: the checkpoint as --out was replaced by a JSON file
    before = gemnet_file.read_bytes()
    own = run("model", "predict", str(gemnet_file), "bundled:ethanol", "--limit", "2", "--out", str(gemnet_file),
              "--overwrite")  # fmt: skip
    assert own.returncode == 2 and "the file this command reads" in own.stderr and "Traceback" not in own.stderr
    assert gemnet_file.read_bytes() == before


def test_model_errors_are_one_paragraph(tmp_path):
    proc = run("model", "init", "painn", "--out", str(tmp_path / "x.pt"), "-p", "hiden=3")
    assert proc.returncode == 2 and "hiden" in proc.stderr and "Traceback" not in proc.stderr
    proc = run("model", "info", str(tmp_path / "absent.pt"))
    assert proc.returncode == 2 and "not found" in proc.stderr
    proc = run("model", "init", "gemnet_oc", "--out", str(tmp_path / "x.pt"), "--preset", "XL")
    assert proc.returncode == 2 and "preset" in proc.stderr


def test_init_without_fitting_lists_unfitted_scale_factors(tmp_path):
    """model init says how many scale factors are unfitted; model info lists the same ones."""
    from atomsift.models import build_backbone
    from atomsift.models.backbones.gemnet_oc.scaling import ScaleFactor

    names = sorted(
        n for n, m in build_backbone("gemnet_oc", preset="tiny").named_modules() if isinstance(m, ScaleFactor)
    )
    assert names
    path = tmp_path / "raw.pt"
    proc = run("model", "init", "gemnet_oc", "--preset", "tiny", "--out", str(path))
    assert proc.returncode == 0, proc.stderr
    assert f"{len(names)} GemNet-OC scale factors are unfitted" in proc.stdout and "--fit-scales" in proc.stdout
    info = json.loads(run("model", "info", str(path), "--json").stdout)
    assert info["unfitted_scale_factors"] == names
    table = run("model", "info", str(path))
    assert f"{len(names)} (act as identity)" in table.stdout and "never trained" in table.stdout


def test_predict_warns_only_for_untrained_weights(gemnet_file, tmp_path):
    import torch

    from atomsift.models import load_checkpoint, save_checkpoint

    untrained = run("model", "predict", str(gemnet_file), "bundled:ethanol", "--limit", "2")
    assert untrained.returncode == 0 and "never trained" in untrained.stderr, untrained.stderr
    copy = tmp_path / "converted.pt"
    assert run("model", "convert", str(gemnet_file), "--out", str(copy)).returncode == 0
    assert "never trained" in run("model", "predict", str(copy), "bundled:ethanol", "--limit", "2").stderr
    model = load_checkpoint(gemnet_file)
    model.metadata["trained"] = True  # what training writes
    save_checkpoint(model, tmp_path / "trained.pt")
    trained = run("model", "predict", str(tmp_path / "trained.pt"), "bundled:ethanol", "--limit", "2")
    assert trained.returncode == 0 and "warning" not in trained.stderr, trained.stderr
    assert torch.load(tmp_path / "trained.pt", weights_only=True)["metadata"]["trained"] is True


def test_init_config_flags_and_overrides(tmp_path):
    config = tmp_path / "init.yaml"
    config.write_text("backbone: painn\nhparams: {hidden: 16, num_layers: 2}\nseed: 4\nforces: direct\n")
    path = tmp_path / "p.pt"
    proc = run("model", "init", "--config", str(config), "-p", "hidden=12", "hparams.num_layers=1", "--out", str(path))
    assert proc.returncode == 0, proc.stderr
    info = json.loads(run("model", "info", str(path), "--json").stdout)
    assert info["hparams"]["hidden"] == 12 and info["hparams"]["num_layers"] == 1  # flag, override over file
    assert info["heads"]["energy"]["forces"] == "direct" and info["metadata"]["seed"] == 4
    proc = run("model", "init", "--config", str(config), "forcs=none", "--out", str(tmp_path / "q.pt"))
    assert proc.returncode == 2 and "forcs" in proc.stderr and "Traceback" not in proc.stderr


def test_csi_with_checkpoint_extractor(tmp_path):
    model = tmp_path / "painn.pt"
    assert run("model", "init", "painn", "--out", str(model), "-p", "hidden=16").returncode == 0
    proc = run(
        "csi",
        "-d",
        "ethanol=bundled:ethanol",
        "-u",
        "acac=bundled:acac",
        "-u",
        "oxides=bundled:oxides",
        "--extractor",
        f"checkpoint:{model}",
        "--trust-checkpoint",
        "-x",
        "batch_size=8",
        "--n-samples",
        "40",
        "--bootstrap",
        "0",
        "--out",
        str(tmp_path / "csi"),
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "csi" / "csi.json").read_text())
    text = json.dumps(result)
    assert "painn:painn.pt" in text and "acac" in text and "oxides" in text
    saved = yaml.safe_load((tmp_path / "csi" / "csi_config.yaml").read_text())
    assert saved["extractor_options"] == {"trusted": True, "batch_size": 8}
