"""The `checkpoint:PATH` CSI extractor: strict loading by default, and its load report in csi.json and the cache."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

from atomsift.csi.cache import load_stats
from atomsift.csi.config import CSIConfig, DatasetSpec
from atomsift.csi.extract import get_extractor
from atomsift.csi.pipeline import run_csi
from atomsift.errors import ConfigError, DataError
from atomsift.models import AtomsModel, build_backbone, save_checkpoint


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """A clean PaiNN checkpoint (with EMA weights), one lacking a backbone weight, one lacking a head weight."""
    root = tmp_path_factory.mktemp("ckpt")
    torch.manual_seed(0)
    model = AtomsModel(build_backbone("painn", hidden=16, num_layers=1), {"energy": {"kind": "energy"}})
    ema = {k: v + 0.05 if v.is_floating_point() else v for k, v in model.state_dict().items()}
    clean = save_checkpoint(model, root / "clean.pt", ema_state_dict=ema)
    payload = torch.load(clean, weights_only=True)
    del payload["ema_state_dict"]
    backbone_key = next(k for k in payload["state_dict"] if k.startswith("backbone.") and k.endswith("weight"))
    head_key = next(k for k in payload["state_dict"] if k.startswith("heads."))
    broken = dict(payload, state_dict={k: v for k, v in payload["state_dict"].items() if k != backbone_key})
    torch.save(broken, root / "no_backbone_weight.pt")
    headless = dict(payload, state_dict={k: v for k, v in payload["state_dict"].items() if k != head_key})
    torch.save(headless, root / "no_head_weight.pt")
    return {
        "clean": clean,
        "broken": root / "no_backbone_weight.pt",
        "headless": root / "no_head_weight.pt",
        "backbone_key": backbone_key,
        "head_key": head_key,
    }


def test_missing_backbone_weight_is_refused_by_default(checkpoints):
    with pytest.raises(DataError, match="does not fit its backbone") as err:
        get_extractor(f"checkpoint:{checkpoints['broken']}")
    text = str(err.value)
    assert checkpoints["backbone_key"] in text and "strict=false" in text and "no_backbone_weight.pt" in text


def test_strict_false_loads_warns_and_reports(checkpoints):
    with pytest.warns(UserWarning, match="non-strictly"):
        ex = get_extractor(f"checkpoint:{checkpoints['broken']}", strict="false")  # text, as from a config file
    report = ex.provenance_extra()["load_report"]
    assert report["missing_keys"] == [checkpoints["backbone_key"]]
    assert checkpoints["backbone_key"] in report["summary"]
    with pytest.raises(ConfigError, match="strict='maybe'"):
        get_extractor(f"checkpoint:{checkpoints['broken']}", strict="maybe")


def test_head_weights_do_not_matter_for_features(checkpoints):
    ex = get_extractor(f"checkpoint:{checkpoints['headless']}")  # strict, yet loads: heads are dropped
    assert ex.provenance_extra()["load_report"]["missing_keys"] == [checkpoints["head_key"]]
    clean = get_extractor(f"checkpoint:{checkpoints['clean']}")
    assert clean.provenance_extra()["load_report"]["missing_keys"] == []
    assert clean.provenance_extra()["load_report"]["used_ema"] is True


def _config(tmp_path: Path, extractor: str, **options) -> CSIConfig:
    return CSIConfig(
        upstream={"acac": DatasetSpec(path="bundled:acac")},
        downstream={"ethanol": DatasetSpec(path="bundled:ethanol")},
        extractor=extractor,
        extractor_options=options,
        n_samples=6,
        bootstrap=0,
        groups=2,
        cache_dir=str(tmp_path / "cache"),
    )


def test_load_report_reaches_csi_rows_and_cache_provenance(tmp_path, checkpoints):
    with pytest.warns(UserWarning, match="non-strictly"):
        rows = run_csi(_config(tmp_path, f"checkpoint:{checkpoints['broken']}", strict=False), tmp_path / "out")
    assert rows[0]["extractor_load_report"]["missing_keys"] == [checkpoints["backbone_key"]]
    for cache_file in (tmp_path / "cache").glob("*.npz"):
        _, provenance = load_stats(cache_file)
        assert provenance["extractor_load_report"]["missing_keys"] == [checkpoints["backbone_key"]]


def test_cache_of_other_weights_from_the_same_file_is_not_reused(tmp_path, checkpoints):
    """EMA and raw weights of one file differ only in the load report: the cache must tell them apart."""
    spec = f"checkpoint:{checkpoints['clean']}"
    run_csi(_config(tmp_path, spec), tmp_path / "out")
    with pytest.raises(ConfigError, match="extractor_load_report"):
        run_csi(_config(tmp_path, spec, ema=False), tmp_path / "out")


def test_cli_refuses_a_partial_checkpoint_in_one_paragraph(tmp_path, checkpoints):
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "atomsift.cli",
            "csi",
            "-u",
            "acac=bundled:acac",
            "-d",
            "ethanol=bundled:ethanol",
            "--extractor",
            f"checkpoint:{checkpoints['broken']}",
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr
    assert "-x strict=false" in proc.stderr and "Traceback" not in proc.stderr


def test_the_checkpoint_extractor_without_its_path_says_how_to_give_it():
    """It said "missing a required argument: 'path'" and listed the options, path among them."""
    from atomsift.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        get_extractor("checkpoint")
    assert err.value.fix == "give its path after a colon: --extractor checkpoint:PATH"
