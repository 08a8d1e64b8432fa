"""Write tests/data/gemnet_oc_reference.pt: fairchem-core 1.10 GemNet-OC outputs for atomsift's parity test.

Run where fairchem-core 1.10 is installed (the side environment of docs/gemnet_oc.md), from the repository:

    PYTHONPATH=src fairchem-venv/bin/python tests/models/make_gemnet_reference.py

The file holds one set of random weights of fairchem's GemNetOC with the "tiny" preset's sizes (seeded,
every interaction on, random scale factors U(0.5, 2) so that each matters), a few structures (real
molecules, rattled oxide cells, OC20-style tagged slabs), and fairchem's own energies (eV, (B,)) and forces
(eV/A, (N, 3)) for them in float32, in both force modes and under two graph settings: the tiny preset's
(neighbour limits that never bind) and JMP's OC20 graph (12 A, 30 / 8 / 20 / 1000 neighbours, quadruplets
on tags 1 and 2). The gradient-force model uses the direct model's weights minus its force-only layers.
tests/models/test_gemnet_reference.py checks atomsift against it in every test run, without fairchem.
The script also runs atomsift on the same inputs and prints the relative errors it measured.
"""

from __future__ import annotations

import datetime
import sys
from pathlib import Path

import numpy as np
import torch
from ase import Atoms

from atomsift.data import open_dataset
from atomsift.graph import collate
from atomsift.models.backbones.gemnet_oc.compat import FairchemGemNetOC, gemnet_from_fairchem
from atomsift.models.backbones.gemnet_oc.fairchem_bridge import fairchem_gemnet, to_fairchem_batch
from atomsift.models.backbones.gemnet_oc.presets import PRESETS

OUT = Path(__file__).resolve().parents[1] / "data" / "gemnet_oc_reference.pt"
SEED = 20240
OC20_GRAPH = {
    "cutoff": 12.0,
    "cutoff_qint": 12.0,
    "cutoff_aeaint": 12.0,
    "cutoff_aint": 12.0,
    "max_neighbors": 30,
    "max_neighbors_qint": 8,
    "max_neighbors_aeaint": 20,
    "max_neighbors_aint": 1000,
    "qint_tags": [1, 2],
}


def structures() -> dict[str, list[Atoms]]:
    """Four batches (fairchem wants one pbc setting per batch): molecules, periodic cells, tagged slabs, clusters."""
    eth, acac = open_dataset("bundled:ethanol"), open_dataset("bundled:acac")
    molecules = [eth[3].to_atoms(), acac[7].to_atoms(), eth[400].to_atoms()]
    oxides = open_dataset("bundled:oxides")
    cells: dict[int, Atoms] = {}
    for i in range(len(oxides)):
        rec = oxides[i]
        if rec.natoms in (6, 12) and rec.natoms not in cells:
            atoms = rec.to_atoms()
            atoms.rattle(stdev=0.05, seed=rec.natoms)  # relaxed crystals hold singular collinear triplets
            cells[rec.natoms] = atoms
    frame = open_dataset("bundled:oc20-frame")[0].to_atoms()  # OC20 tags 0 / 1 / 2 from the file
    ads = open_dataset("bundled:adsorbates")[3].to_atoms()
    z = ads.positions[:, 2]
    metal = ads.numbers == ads.numbers[0]
    ads.set_tags(np.where(~metal, 2, np.where(z > np.sort(z[metal])[-5], 1, 0)))
    ads.rattle(stdev=0.03, seed=1)
    # the same two slabs cut out as clusters (no pbc), for JMP's OC20 graph: its neighbour limits bind, and in a
    # periodic cell they cut through exactly equidistant images (+a / -a), which float rounding orders; clusters
    # of rattled atoms have no such ties, so the reference does not depend on the machine's rounding
    clusters = []
    for atoms in (frame, ads):
        cluster = atoms.copy()
        cluster.pbc = False
        cluster.set_constraint()  # the OC20 frame fixes its subsurface atoms: rattle them too
        cluster.rattle(stdev=0.02, seed=2)
        clusters.append(cluster)
    batches = {"molecules": molecules, "cells": [cells[6], cells[12]], "slabs": [frame, ads], "clusters": clusters}
    for group in batches.values():
        for atoms in group:
            atoms.calc = None
    return batches


def smallest_gap_at_limits(atoms: Atoms, cutoff: float, limits: tuple[int, ...]) -> float:
    """Smallest distance gap (A) between the k-th and (k+1)-th neighbour of any atom, k in limits (no pbc).

    A limit that cuts between two (nearly) equidistant neighbours makes the graph depend on float rounding.
    """
    d = np.linalg.norm(atoms.positions[:, None] - atoms.positions[None], axis=-1)
    gaps = [np.inf]
    for i in range(len(atoms)):
        row = np.sort(np.delete(d[i], i))
        row = row[row <= cutoff]
        gaps += [row[k] - row[k - 1] for k in limits if len(row) > k]
    return float(min(gaps))


def as_tensors(atoms: Atoms) -> dict[str, torch.Tensor]:
    """One structure as plain tensors (what torch.load(weights_only=True) reads back)."""
    tags = atoms.get_tags() if "tags" in atoms.arrays else None
    out = {
        "numbers": torch.as_tensor(atoms.numbers, dtype=torch.int64),
        "positions": torch.as_tensor(atoms.positions, dtype=torch.float64),
        "cell": torch.as_tensor(atoms.cell.array, dtype=torch.float64),
        "pbc": torch.as_tensor(atoms.pbc, dtype=torch.bool),
    }
    if tags is not None:
        out["tags"] = torch.as_tensor(tags, dtype=torch.int64)
    return out


def random_weights(config: dict) -> dict[str, torch.Tensor]:
    """fairchem's random initialisation (seeded) with scale factors drawn from U(0.5, 2)."""
    from fairchem.core.modules.scaling import ScaleFactor

    model = fairchem_gemnet(config, seed=SEED)
    gen = torch.Generator().manual_seed(SEED + 1)
    for module in model.modules():
        if isinstance(module, ScaleFactor):
            module.scale_factor.data.fill_(0.5 + 1.5 * float(torch.rand((), generator=gen)))
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def main() -> None:
    import fairchem.core

    base = {"name": "gemnet_oc", **PRESETS["tiny"], "otf_graph": True}
    weights = random_weights({**base, "direct_forces": True})
    graphs = {"tiny": {}, "oc20": OC20_GRAPH}
    cases_of = {"tiny": ["molecules", "cells", "slabs"], "oc20": ["clusters"]}
    batches = structures()
    limits = tuple(OC20_GRAPH[k] for k in ("max_neighbors", "max_neighbors_qint", "max_neighbors_aeaint"))
    for atoms in batches["clusters"]:
        gap = smallest_gap_at_limits(atoms, OC20_GRAPH["cutoff"], limits)
        assert gap > 1e-4, f"a neighbour limit cuts through a near-tie ({gap:.1e} A): rattle differently"
    results: list[dict] = []
    worst = {"energy": 0.0, "forces": 0.0}
    for graph, overrides in graphs.items():
        for mode in ("direct", "gradient"):
            config = {**base, **overrides, "direct_forces": mode == "direct"}
            reference = fairchem_gemnet(config).eval()
            own = reference.state_dict()
            assert set(own) <= set(weights), sorted(set(own) - set(weights))
            reference.load_state_dict({k: weights[k] for k in own}, strict=True)
            backbone, heads, report = gemnet_from_fairchem(config, reference.state_dict())
            report.raise_if(strict=True)
            ours = FairchemGemNetOC(backbone, heads).eval()
            for name in cases_of[graph]:
                batch = collate(batches[name])
                expected = reference(to_fairchem_batch(batch))
                got = ours(batch)
                e_ref, f_ref = expected["energy"].detach().float(), expected["forces"].detach().float()
                rel_e = float(((got["energy"].detach() - e_ref).abs() / e_ref.abs()).max())
                rel_f = float((got["forces"].detach() - f_ref).abs().max() / f_ref.abs().max())
                worst["energy"], worst["forces"] = max(worst["energy"], rel_e), max(worst["forces"], rel_f)
                print(f"{graph:5s} {mode:8s} {name:9s} atomsift vs fairchem: energy {rel_e:.1e}, forces {rel_f:.1e}")
                results.append(
                    {
                        "graph": graph,
                        "forces": mode,
                        "batch": name,
                        "energy": e_ref.clone(),
                        "forces_eV_per_A": f_ref.clone(),
                    }
                )
    payload = {
        "format": 1,
        "config": base,
        "graphs": graphs,
        "weights": weights,
        "structures": {name: [as_tensors(a) for a in group] for name, group in batches.items()},
        "results": results,
        "meta": {
            "fairchem_core": str(fairchem.core.__version__),
            "torch": str(torch.__version__),
            "python": sys.version.split()[0],
            "seed": SEED,
            "made": datetime.date.today().isoformat(),
            "measured_max_rel_error_energy": worst["energy"],
            "measured_max_rel_error_forces": worst["forces"],
        },
    }
    torch.save(payload, OUT)
    print(
        f"wrote {OUT} ({OUT.stat().st_size / 1e6:.2f} MB); worst: energy {worst['energy']:.1e}, forces {worst['forces']:.1e}"
    )


if __name__ == "__main__":
    main()
