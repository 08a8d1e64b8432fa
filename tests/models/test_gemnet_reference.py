"""atomsift's GemNet-OC against fairchem-core 1.10's stored outputs: parity checked in every test run.

tests/data/gemnet_oc_reference.pt (written by tests/models/make_gemnet_reference.py where fairchem is
installed) holds random fairchem GemNet-OC weights with the "tiny" preset's sizes and random scale factors
U(0.5, 2), the structures (3 real molecules, 2 rattled periodic oxides, 2 OC20-style tagged periodic slabs,
the 2 slabs as untagged-pbc clusters) and fairchem's energies and forces for them, direct and gradient
forces, under the tiny preset's graph and JMP's OC20 graph (12 A, 30 / 8 / 20 / 1000 neighbours,
quadruplets on tags 1 and 2). No fairchem is needed here: the weights load by key into atomsift.

Measured when the file was made (float32, 2-core x86-64 CPU, torch 2.13.0): largest relative error 3.5e-6
in energy (|dE| / |E|, worst structure) and 2.2e-5 in forces (max |dF| over a batch / max |F| of the batch;
gradient forces on the oxide cells). Float32 rounding alone moves these energies by up to 1.4e-5 relative
(the same structures rotated), so another CPU may land elsewhere: the tolerance is 1e-4 relative for both,
the figure the README states and tests/models/test_gemnet_parity.py asserts against live fairchem.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from ase import Atoms

from atomsift.graph import collate
from atomsift.models import load_checkpoint
from atomsift.models.backbones.gemnet_oc.compat import FairchemGemNetOC, gemnet_from_fairchem

REFERENCE = Path(__file__).resolve().parents[1] / "data" / "gemnet_oc_reference.pt"
TOL = 1e-4
# layers fairchem's GemNetOC has only with direct forces; the gradient-force model uses the rest of the weights
DIRECT_ONLY = re.compile(r"(^|\.)(out_mlp_F|out_forces|seq_forces|dense_rbf_F|scale_rbf_F)\.")


@pytest.fixture(scope="module")
def reference() -> dict:
    ref = torch.load(REFERENCE, map_location="cpu", weights_only=True)
    assert ref["format"] == 1 and ref["meta"]["fairchem_core"].startswith("1.10")
    return ref


def to_atoms(item: dict) -> Atoms:
    atoms = Atoms(
        numbers=item["numbers"].numpy(),
        positions=item["positions"].numpy(),
        cell=item["cell"].numpy(),
        pbc=item["pbc"].numpy(),
    )
    if "tags" in item:
        atoms.set_tags(item["tags"].numpy())
    return atoms


def case_config(ref: dict, case: dict) -> dict:
    return {**ref["config"], **ref["graphs"][case["graph"]], "direct_forces": case["forces"] == "direct"}


def case_weights(ref: dict, case: dict) -> dict[str, torch.Tensor]:
    if case["forces"] == "direct":
        return ref["weights"]
    return {k: v for k, v in ref["weights"].items() if not DIRECT_ONLY.search(k)}


def relative_errors(energy, forces, case: dict) -> tuple[float, float]:
    """(worst |dE| / |E| over structures, max |dF| / max |F| over the batch) against fairchem's values."""
    e_ref, f_ref = case["energy"].double(), case["forces_eV_per_A"].double()
    energy, forces = torch.as_tensor(energy).double(), torch.as_tensor(forces).double()
    assert energy.shape == e_ref.shape and forces.shape == f_ref.shape
    rel_e = float(((energy - e_ref).abs() / e_ref.abs()).max())
    rel_f = float((forces - f_ref).abs().max() / f_ref.abs().max())
    return rel_e, rel_f


def case_ids() -> list[str]:
    ref = torch.load(REFERENCE, map_location="cpu", weights_only=True)
    return [f"{c['graph']}-{c['forces']}-{c['batch']}" for c in ref["results"]]


CASES = case_ids()


@pytest.mark.parametrize("index", range(len(CASES)), ids=CASES)
def test_matches_fairchem_reference(reference, index):
    """Weights by key into atomsift's GemNet-OC + fairchem's output heads; energies and forces within TOL."""
    case = reference["results"][index]
    config = case_config(reference, case)
    backbone, heads, report = gemnet_from_fairchem(config, reference["weights"])
    assert not report.missing_keys and not report.unfitted_scale_factors
    assert all(DIRECT_ONLY.search(k) for k in report.unexpected_keys)  # gradient mode: the force layers only
    assert bool(report.unexpected_keys) == (case["forces"] == "gradient")
    model = FairchemGemNetOC(backbone, heads).eval()
    out = model(collate([to_atoms(s) for s in reference["structures"][case["batch"]]]))
    rel_e, rel_f = relative_errors(out["energy"].detach(), out["forces"].detach(), case)
    assert rel_e < TOL, f"energy relative error {rel_e:.2e}"
    assert rel_f < TOL, f"force relative error {rel_f:.2e}"


@pytest.mark.parametrize("index", range(len(CASES)), ids=CASES)
def test_fairchem_checkpoint_file_predicts_reference(reference, index, tmp_path):
    """The user's route: a fairchem-format file -> load_checkpoint -> predict() gives fairchem's numbers."""
    case = reference["results"][index]
    config = case_config(reference, case)
    state = {f"module.{k}": v for k, v in case_weights(reference, case).items()}
    torch.save({"config": {"model": config}, "state_dict": state}, tmp_path / "fairchem_tiny.pt")
    model = load_checkpoint(tmp_path / "fairchem_tiny.pt")
    assert model.load_report.clean, model.load_report.summary()
    got = model.predict([to_atoms(s) for s in reference["structures"][case["batch"]]])
    energy = np.array([g["energy"] for g in got])
    forces = np.concatenate([g["forces"] for g in got])
    rel_e, rel_f = relative_errors(energy, forces, case)
    assert rel_e < TOL and rel_f < TOL, (rel_e, rel_f)


def test_reference_detects_a_changed_scale_factor(reference):
    """The check can fail: one scale factor of the first block 5 % off moves the outputs well beyond TOL."""
    case = next(c for c in reference["results"] if c["forces"] == "direct" and c["batch"] == "molecules")
    weights = dict(reference["weights"])
    key = next(k for k in weights if k.endswith("scale_factor") and k.startswith("int_blocks.0."))
    weights[key] = weights[key] * 1.05
    backbone, heads, _ = gemnet_from_fairchem(case_config(reference, case), weights)
    out = FairchemGemNetOC(backbone, heads).eval()(collate([to_atoms(s) for s in reference["structures"]["molecules"]]))
    rel_e, rel_f = relative_errors(out["energy"].detach(), out["forces"].detach(), case)
    assert max(rel_e, rel_f) > 3 * TOL, (key, rel_e, rel_f)
