"""End-to-end runs of the `atomsift` command in a subprocess, on bundled real data."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from ase.io import read

from atomsift.data import open_dataset
from atomsift.data.bundled import bundled_dir


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "atomsift.cli", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def inspect_json(*args: str) -> dict:
    proc = run("data", "inspect", *args, "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_inspect_ethanol_matches_ase():
    out = inspect_json("bundled:ethanol")
    frames = read(bundled_dir() / "rmd17_ethanol_1000.xyz", index=":")
    energies = np.array([a.get_potential_energy() for a in frames])
    forces = np.concatenate([a.get_forces() for a in frames])
    assert out["n_structures"] == len(frames) == 1000
    assert out["n_atoms_total"] == sum(len(a) for a in frames)
    assert out["elements"] == ["C", "H", "O"]
    assert out["energy_mean_eV"] == pytest.approx(energies.mean(), rel=1e-12)
    # the spread of -4209 eV energies (0.1 eV) to 1e-9: a one-pass sum of squares kept only 5 digits of it
    assert out["energy_std_eV"] == pytest.approx(energies.std(), rel=1e-9)
    assert out["forces_rms_eV_per_A"] == pytest.approx(np.sqrt(np.mean(forces**2)), rel=1e-12)
    assert out["n_classes"] == 1


def test_inspect_oxides_is_periodic_and_has_no_target_mean_unless_asked():
    out = inspect_json("bundled:oxides")
    assert out["n_structures"] == 295 and out["n_periodic"] == 295
    assert "target_mean" not in out
    assert out["elements"] == sorted(out["elements"])


def test_target_mean_of_adsorption_energy():
    raw = json.loads((bundled_dir() / "adsorbates_on_metals_energies.json").read_text())
    entries = [e for m in raw.values() for a in m.values() for s in a.values() for e in s.values()]
    values = [e for e in entries if isinstance(e, float)]
    assert len(entries) == 896 and len(values) == 882  # 14 entries hold the string "Q", not an energy
    out = inspect_json("bundled:adsorbates", "--target", "adsorption_energy")
    assert out["n_structures"] == len(values)
    assert out["target_mean"] == pytest.approx(np.mean(values), rel=1e-12)
    assert out["energy_mean_eV"] == pytest.approx(np.mean(values), rel=1e-12)
    assert out["forces_rms_eV_per_A"] is None


def test_unknown_target_lists_the_available_ones():
    proc = run("data", "inspect", "bundled:adsorbates", "--target", "homo", "--json")
    assert proc.returncode == 2
    assert "adsorption_energy" in proc.stderr and "Traceback" not in proc.stderr


def test_demo_prints_table_and_saves_json(tmp_path):
    # the experiment part: tests/experiment/ (the demo's grid: test_demo_config.py)
    proc = run("demo", "--out", str(tmp_path), "--no-experiment")
    assert proc.returncode == 0, proc.stderr
    names = ["ethanol", "acac", "oxides", "adsorbates", "oc20-frame", "bench-organic", "bench-reactive"]
    names += ["bench-catalysis", "bench-qm9"]
    for name in names:
        assert f"bundled:{name}" in proc.stdout
    rows = json.loads((tmp_path / "data_overview.json").read_text())
    assert [r["name"] for r in rows] == names
    old = run("demo", "--out", str(tmp_path), "--no-csi")  # the old flag still works, with a warning
    assert old.returncode == 0 and "--experiment" in old.stderr


def test_convert_to_aselmdb_roundtrip(tmp_path):
    dest = tmp_path / "oxides.aselmdb"
    proc = run("data", "convert", "bundled:oxides", "--out", str(dest))
    assert proc.returncode == 0, proc.stderr
    before, after = inspect_json("bundled:oxides"), inspect_json(str(dest))
    for key in ("n_structures", "n_atoms_total", "elements", "n_classes", "n_periodic"):
        assert after[key] == before[key], key
    assert after["energy_mean_eV"] == pytest.approx(before["energy_mean_eV"], rel=1e-12)
    assert after["forces_rms_eV_per_A"] == pytest.approx(before["forces_rms_eV_per_A"], rel=1e-12)
    again = run("data", "convert", "bundled:oxides", "--out", str(dest))
    assert again.returncode == 2 and "--overwrite" in again.stderr


def test_sample_writes_reproducible_subset(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    for out in (a, b):
        proc = run("data", "sample", "bundled:adsorbates", "--n-samples", "70", "--seed", "3", "--out", str(out))
        assert proc.returncode == 0, proc.stderr
    first, second = json.loads(a.read_text()), json.loads(b.read_text())
    assert first["indices"] == second["indices"] and len(first["indices"]) == 70
    assert first["method"] == "balanced" and first["n_classes"] == 7  # one class per metal
    labels = open_dataset("bundled:adsorbates").class_labels()
    assert Counter(labels[first["indices"]].tolist()) == dict.fromkeys(("Pt", "Ag", "Ir", "Au", "Pd", "Rh", "Cu"), 10)
    assert "warning" not in proc.stderr


def test_sample_asking_for_more_than_there_is_says_so(tmp_path):
    size = len(open_dataset("bundled:oxides"))
    out = tmp_path / "all.json"
    proc = run("data", "sample", "bundled:oxides", "--n-samples", "5000", "--sampling", "random", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(out.read_text())["indices"]) == size
    assert f"warning: asked for 5000 structures, but {size} are there to draw from" in proc.stderr
    proc = run("data", "sample", "bundled:acac", "--n-samples", "600", "--out", str(tmp_path / "b.json"))
    assert proc.returncode == 0 and "600 indices, 338 distinct" in proc.stderr  # balanced repeated silently


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("data", "inspect", "/no/such/file.h5"), "/no/such/file.h5"),
        (("data", "inspect", "bundled:ethanol", "--format", "nonsense"), "unknown format"),
        (("data", "inspect", "bundled:ethanol", "-o", "bogus=1"), "bogus"),
        (("data", "inspect", "bundled:nothing"), "bundled:ethanol"),
    ],
)
def test_bad_input_is_one_paragraph_without_traceback(args, needle):
    proc = run(*args)
    assert proc.returncode == 2
    assert needle in proc.stderr and "Fix:" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_debug_flag_shows_traceback():
    proc = run("data", "inspect", "/no/such/file.h5", "--debug")
    assert "Traceback" in proc.stderr and "Fix:" in proc.stderr
    assert proc.returncode == 2  # bad input stays bad input under --debug (1 would say: a bug)


def test_unreadable_content_names_file(tmp_path):
    bad = tmp_path / "broken.h5"
    bad.write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 100)
    proc = run("data", "inspect", str(bad), "--format", "ani1x")
    assert proc.returncode == 2 and "broken.h5" in proc.stderr and "Traceback" not in proc.stderr


def test_data_formats_lists_each_reader_s_options():
    """docs/formats.md and cli.md send users to `atomsift data formats` for the reader options."""
    done = run("data", "formats")
    assert done.returncode == 0, done.stderr
    text = " ".join(done.stdout.split())
    for needle in ("energy_key ('energy')", "forces_key ('forces')", "level ('wb97x_dz')", "skip_nan (False)"):
        assert needle in text, needle
