"""configs/paper/*.yaml, the paper's grids: each validates, holds the paper's settings, and passes
`atomsift experiment --dry-run` on tiny stand-ins in the release formats (paths overridden, N and E kept).

Expected numbers are the paper's, as docs/method.md and docs/paper_grids.md restate them (Ghunaim et al.,
arXiv 2502.11085); each is marked with the section or table it comes from.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

TESTS = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(TESTS))

from _make_h5 import t1x_reaction, write_transition1x  # noqa: E402
from _make_materials import make_folds, make_matbench, make_qmof  # noqa: E402
from _make_npz_qm9 import write_rmd17, write_sgdml  # noqa: E402
from atomsift.experiment.config import ExperimentConfig  # noqa: E402
from atomsift.experiment.grid import build_jobs  # noqa: E402
from atomsift.settings import validate  # noqa: E402

CONFIGS = TESTS.parent / "configs" / "paper"
DATA = TESTS / "data"

# -- what the paper's grids are (paper section 5 lists the tables; section 1 the main budget) ----------------
M = 1_000_000
ALL4 = {"ani1x", "transition1x", "oc20", "oc22"}  # the four upstream datasets (section 1, Table 1)
ID_TASKS = {"rmd17", "md22", "spice", "qm9"}  # in-distribution tasks of Table 1 (section 5), by preset
OOD_TASKS = {"qm9", "qmof", "matbench"}  # Table 4: QM9 delta-eps, QMOF band gap, MatBench phonons
GRIDS: dict[str, dict[str, Any]] = {
    # Table 1: N = 2M, E = 5 (section 1); the four singles plus Mixed (Balanced) and Mixed (Temp), GemNet-OC-S
    "table1_in_distribution.yaml": {
        "upstream": ALL4,
        "mixtures": {"balanced": ALL4, "temperature": ALL4},
        "budgets": [(2 * M, 5)],
        "tasks": ID_TASKS,
        "preset": "S",
    },
    # Table 2: E = 5 at N = 1M / 2M / 3M
    "table2_n_scaling.yaml": {
        "upstream": ALL4,
        "mixtures": {},
        "budgets": [(M, 5), (2 * M, 5), (3 * M, 5)],
        "tasks": ID_TASKS,
        "preset": "S",
    },
    # Table 3: GemNet-OC-L, C = 10M, ANI-1x
    "table3_large_backbone.yaml": {
        "upstream": {"ani1x"},
        "mixtures": {},
        "budgets": [(2 * M, 5)],
        "tasks": ID_TASKS,
        "preset": "L",
    },
    # Table 4: out of distribution; the four singles and Mixed (Balanced)
    "table4_out_of_distribution.yaml": {
        "upstream": ALL4,
        "mixtures": {"balanced": ALL4},
        "budgets": [(2 * M, 5)],
        "tasks": OOD_TASKS,
        "preset": "S",
    },
    # Table 5: C = 10M as 1M x 10 epochs (next to 2M x 5)
    "table5_n_vs_e.yaml": {
        "upstream": ALL4,
        "mixtures": {},
        "budgets": [(M, 10), (2 * M, 5)],
        "tasks": ID_TASKS,
        "preset": "S",
    },
    # Fig. 4: ANI-1x alone against ANI-1x + OC22 (at N = 3M the mixture is the paper's 2M + 1M)
    "fig4_misaligned_data.yaml": {
        "upstream": {"ani1x", "oc22"},
        "mixtures": {"temperature": {"ani1x", "oc22"}},
        "budgets": [(2 * M, 5), (3 * M, 5)],
        "tasks": ID_TASKS,
        "preset": "S",
    },
}

# Pretraining settings of the paper's released script (section 3 "Budgeted pretraining").
PRETRAIN = {
    "lr": 1e-5,
    "batch_size": 20,
    "warmup_steps": 2000,
    "warmup_start_factor": 0.2,
    "min_lr_factor": 0.1,
    "weight_decay": 0.1,
    "betas": [0.9, 0.95],
    "grad_clip": 1.0,
    "grad_clip_algorithm": "norm",
    "ema_decay": 0.99,
    "edge_dropout": 0.1,
    "forces": "direct",
}
# Finetuning protocol, section 4's table: epochs / batch per task; lr 8e-5 and split seed 42 for every task.
FINETUNE = {
    "rmd17": (600, 4),
    "md22": (100, 2),
    "spice": (250, 1),
    "qm9": (200, 48),
    "qmof": (40, 4),
    "matbench": (120, 8),
}
# Section 4: blocks of GemNet-OC S and L.
BLOCKS = {"S": 4, "L": 6}


def _load(name: str) -> dict[str, Any]:
    return yaml.safe_load((CONFIGS / name).read_text())


def test_every_paper_config_is_listed():
    assert sorted(p.name for p in CONFIGS.glob("*.yaml")) == sorted(GRIDS)


@pytest.mark.parametrize("name", sorted(GRIDS))
def test_config_holds_the_papers_settings(name, tmp_path):
    want, raw = GRIDS[name], _load(name)
    exp = validate(ExperimentConfig, raw, source=name)
    assert set(exp.upstream) == want["upstream"]
    assert {m.mixture: set(m.of) for m in exp.mixtures.values()} == want["mixtures"]
    for mix in exp.mixtures.values():
        if name.startswith("fig4"):  # Fig. 4: 2M ANI-1x + 1M OC22 = shares 2/3, 1/3 (T = 1 over sizes 2 : 1)
            assert mix.temperature == 1.0 and mix.nominal_sizes == {"ani1x": 2.0, "oc22": 1.0}
        elif mix.mixture == "temperature":  # section 3: Mixed (Temp) uses T = 2 over JMP's nominal sizes
            assert mix.temperature == 2.0
            assert mix.nominal_sizes == {"oc20": 100e6, "oc22": 8e6, "ani1x": 2e6, "transition1x": 10e6}
    assert [(b.n_samples, b.epochs) for b in exp.budgets] == want["budgets"]
    assert exp.singles
    pre = exp.pretrain
    assert pre["backbone"] == {"name": "gemnet_oc", "preset": want["preset"]}
    assert pre["heads"] == {"num_layers": 5}  # section 3: 5-layer MLP heads
    assert not pre.get("allow_repeats", False)  # the real releases hold N structures
    for key, value in PRETRAIN.items():
        assert pre[key] == value, key
    from atomsift.models.registry import presets

    assert presets("gemnet_oc")[want["preset"]]["num_blocks"] == BLOCKS[want["preset"]]
    # section 2: flatten aggregation, 10,000 structures, seed 0
    assert (exp.csi["aggregation"], exp.csi["n_samples"], exp.csi["seed"]) == ("flat", 10_000, 0)
    assert {d.preset for d in exp.downstream.values()} == want["tasks"]
    # every finetuning keeps its preset's (the paper's) protocol: nothing in the config overrides it
    jobs = build_jobs(exp, tmp_path)
    for cell in jobs[0].finetunes:
        s = cell.settings
        assert (s["epochs"], s["batch_size"]) == FINETUNE[s["preset"]], cell.downstream
        assert s["lr"] == 8e-5 and s["split"]["seed"] == 42 and s["ema_decay"] == 0.99
    if name == "table4_out_of_distribution.yaml":  # QM9 delta-eps (HOMO-LUMO gap) out of distribution
        qm9 = next(c for c in jobs[0].finetunes if c.settings["preset"] == "qm9")
        assert qm9.settings["task"]["target"] == "gap" and qm9.metric == "gap_mae_eV"  # a property in eV stays in eV
    if name == "table3_large_backbone.yaml":
        assert raw["pretrain"] == {
            **_load("table1_in_distribution.yaml")["pretrain"],
            "backbone": pre["backbone"],
        }  # only the backbone differs from Table 1
    else:
        assert raw["pretrain"] == _load("table1_in_distribution.yaml")["pretrain"]  # cells shared between grids
    t1 = _load("table1_in_distribution.yaml")["upstream"]
    assert all(raw["upstream"][k] == t1[k] for k in raw["upstream"])


# -- stand-ins in the release formats ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def standins(tmp_path_factory) -> dict[str, Path]:
    pytest.importorskip("torch_geometric")  # the OC LMDB stand-ins pickle PyG Data (the test extra has it)
    from _make_oc import frames, pyg_data, write_lmdb, write_oc20_mapping, write_oc22_metadata

    root = tmp_path_factory.mktemp("paper_standins")
    rng = np.random.default_rng(0)
    reactions = {
        "C2H4O": {"rxn0001": t1x_reaction(rng, [6, 6, 8, 1, 1, 1, 1], 6)},
        "H2N2": {"rxn0200": t1x_reaction(rng, [7, 7, 1, 1], 4)},
    }
    paths = {
        "ani1x": DATA / "ani1x" / "ani1_n5.hdf5",
        "transition1x": write_transition1x(root / "transition1x.h5", reactions, {"train": ["C2H4O", "H2N2"]}),
        "spice": DATA / "spice" / "SPICE-1.1.4_n2.hdf5",
        "qm9": DATA / "qm9" / "first10.tar.bz2",
        "qmof": make_qmof(root, n=10),
        "matbench": make_matbench(root, n=15),
        "folds": make_folds(root, "matbench_phonons", [f"mb-phonons-{i:02d}" for i in range(1, 16)]),
    }
    fr = frames(4)
    sids = sorted({f["sid"] for f in fr})
    for name, names in (("oc20", "old"), ("oc22", "new")):  # both LMDB writers (y/force, energy/forces)
        (root / name).mkdir()
        write_lmdb(root / name / "data.0000.lmdb", [pyg_data(f, names=names) for f in fr])
        paths[name] = root / name
    paths["oc20_classes"] = write_oc20_mapping(root / "oc20_data_mapping.pkl", sids, ["Pt"] * len(sids))
    paths["oc22_classes"] = write_oc22_metadata(root / "oc22_metadata.pkl", sids, ["IrO2"] * len(sids))
    write_rmd17(root / "rmd17_aspirin.npz", 1100)  # holds the preset's 950 / 50 / rest
    write_sgdml(root / "md22_Ac-Ala3-NHMe.npz", 6100, name="Ac-Ala3-NHMe")  # holds 5700 / 300 / rest
    paths["rmd17"], paths["md22"] = root / "rmd17_aspirin.npz", root / "md22_Ac-Ala3-NHMe.npz"
    return paths


def _overrides(raw: dict[str, Any], paths: dict[str, Path]) -> list[str]:
    out = ["pretrain.allow_repeats=true", "pretrain.accelerator=cpu", "finetune.accelerator=cpu"]
    for name, spec in raw["upstream"].items():
        out.append(f"upstream.{name}.path={paths[name]}")
        if "classes" in spec:
            out.append(f"upstream.{name}.classes={paths[name + '_classes']}")
    for name, task in raw["downstream"].items():
        out.append(f"downstream.{name}.path={paths[task['preset']]}")
        if task["preset"] == "qm9":  # 10 molecules stand in for QM9: not 10K val / 10K test
            out += [f"downstream.{name}.split.val=2", f"downstream.{name}.split.test=2"]
        if task["preset"] == "matbench":
            out.append(f"downstream.{name}.options.folds_file={paths['folds']}")
    return out


def _sections(stdout: str) -> dict[str, str]:
    """The dry run's output cut at its rules ('──── pretrain ani1x/N2000000_E5 ────'): {title: text}."""
    out, title = {}, "grid"
    for line in stdout.splitlines():
        m = re.fullmatch(r"─+ (.+?) ─+", line.strip())
        if m:
            title = m.group(1)
            out[title] = ""
        else:
            out[title] = out.get(title, "") + line + "\n"
    return out


@pytest.mark.parametrize("name", sorted(GRIDS))
def test_dry_run_on_standins(name, standins, tmp_path):
    raw = _load(name)
    cmd = [sys.executable, "-m", "atomsift.cli", "experiment", "--config", str(CONFIGS / name)]
    cmd += ["--out", str(tmp_path / "out"), "--dry-run", *_overrides(raw, standins)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=180, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    sections = _sections(proc.stdout)
    want = GRIDS[name]
    candidates = sorted(raw["upstream"]) + sorted(raw.get("mixtures") or {})
    for cand in candidates:
        members = raw["mixtures"][cand]["of"] if cand in (raw.get("mixtures") or {}) else [cand]
        for n, e in want["budgets"]:
            text = sections[f"pretrain {cand}/N{n}_E{e}"]  # KeyError: the candidate was not planned
            assert f"N = {n} structures x E = {e} epochs = C = {n * e} structure passes" in text
            steps = -(-n // 20) * e  # batch 20 (section 3)
            assert f"{steps} optimizer steps" in text
            for member in members:
                assert re.search(rf"│ {member}\s+│", text), (cand, member)
    planned = [t for t in sections if t.startswith("pretrain ")]
    assert len(planned) == len(candidates) * len(want["budgets"])  # nothing else pretrained
    finetunes = [t for t in sections if t.startswith("finetune ")]
    assert sorted(t.split()[1] for t in finetunes) == sorted(raw["downstream"])
    assert not (tmp_path / "out").exists()  # a dry run writes nothing
