"""The mini-benchmark: the generator end to end on the QM9 fixture, its determinism, the CLI's refusals, and
checks of the shipped files (bundled:bench-*): counts, units, force range, disjointness of the downstream
molecules from the upstream ones, and labels recomputed with tblite directly."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from atomsift.data.benchmark import FILES, PROVENANCE_FILE, BenchmarkSizes, make_benchmark
from atomsift.data.bundled import bundled_dir, resolve_bundled
from atomsift.data.registry import open_dataset
from atomsift.data.spec import open_spec, parse_dataset_arg
from atomsift.errors import ConfigError

QM9_FIXTURE = Path(__file__).resolve().parent / "data" / "qm9" / "first10.tar.bz2"
SHIPPED = bundled_dir() / "benchmark"
TINY = BenchmarkSizes(n_organic=3, n_reactive_molecules=2, frames_per_molecule=2, n_catalysis=2, n_qm9=3)
UPSTREAM = ("bench-organic", "bench-reactive", "bench-catalysis")


def _cli(*args: str, pre: str = "pass") -> subprocess.CompletedProcess:
    code = f"import sys, runpy; {pre}; sys.argv = ['atomsift', *sys.argv[1:]]; runpy.run_module('atomsift.cli', run_name='__main__')"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory) -> dict[str, Path]:
    """The generator on the 10-molecule QM9 fixture: twice with seed 0, once with seed 1."""
    pytest.importorskip("tblite")
    mp = pytest.MonkeyPatch()
    mp.setenv("OMP_NUM_THREADS", "1")  # restored afterwards (the generator sets it for tblite)
    runs = {}
    try:
        for key, seed in (("a", 0), ("b", 0), ("c", 1)):
            out = tmp_path_factory.mktemp(f"bench_{key}")
            make_benchmark(out, seed=seed, sizes=TINY, qm9=QM9_FIXTURE, progress=False)
            runs[key] = out
    finally:
        mp.undo()
    return runs


def test_generator_end_to_end_on_the_qm9_fixture(tiny_runs):
    out = tiny_runs["a"]
    prov = json.loads((out / PROVENANCE_FILE).read_text())
    assert sorted(p.name for p in out.iterdir()) == sorted([*FILES.values(), PROVENANCE_FILE])
    counts = {"bench-organic": 3, "bench-reactive": 4, "bench-catalysis": 2, "bench-qm9": 3}
    fixture = open_dataset(QM9_FIXTURE)
    by_id = {fixture[i].id: fixture[i] for i in range(len(fixture))}
    for name, file in FILES.items():
        ds = open_dataset(out / file)
        assert len(ds) == counts[name] == prov["sets"][name]["n_structures"]
        from atomsift.data._benchmark_labels import sha256_file

        assert prov["sets"][name]["sha256"] == sha256_file(out / file)
        for i in range(len(ds)):
            rec = ds[i]
            if name == "bench-qm9":
                assert rec.energy is None and rec.forces is None
                src = by_id[rec.info["qm9_id"]]
                np.testing.assert_allclose(rec.positions, src.positions, atol=1e-8)  # B3LYP geometry, unrattled
                for key in ("U0", "U0_atom", "gap", "homo", "lumo"):
                    assert rec.targets[key] == pytest.approx(src.targets[key], abs=1e-7)
            else:
                assert np.isfinite(rec.energy) and rec.forces.shape == rec.positions.shape
                assert 0.0 < np.abs(rec.forces).max() < 20.0
    organic = open_dataset(out / FILES["bench-organic"])
    for i in range(len(organic)):  # rattled: moved, but by no more than a few sigma
        rec = organic[i]
        shift = np.abs(rec.positions - by_id[rec.info["qm9_id"]].positions)
        assert 0.0 < shift.max() < 6 * prov["settings"]["rattle_sigma_a"]
    catalysis = open_dataset(out / FILES["bench-catalysis"])
    assert catalysis[0].cell is not None and catalysis[0].pbc.all()
    ids = [prov["sets"][n]["qm9_ids"] for n in ("bench-organic", "bench-reactive", "bench-qm9")]
    assert len(set().union(*map(set, ids))) == sum(map(len, ids))  # each QM9 molecule used once


def test_generator_is_deterministic_and_uses_the_seed(tiny_runs):
    a, b, c = tiny_runs["a"], tiny_runs["b"], tiny_runs["c"]
    for file in [*FILES.values(), PROVENANCE_FILE]:
        assert (a / file).read_bytes() == (b / file).read_bytes(), file
    assert (a / FILES["bench-organic"]).read_bytes() != (c / FILES["bench-organic"]).read_bytes()


def test_cli_refuses_an_existing_out_and_bad_sizes(tmp_path):
    out = tmp_path / "bench"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    res = _cli("data", "make-benchmark", "--out", str(out), "--qm9", str(QM9_FIXTURE))
    assert res.returncode == 2 and "--overwrite" in res.stderr and "Traceback" not in res.stderr
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    (tmp_path / "file").write_text("x")
    res = _cli("data", "make-benchmark", "--out", str(tmp_path / "file"), "--qm9", str(QM9_FIXTURE))
    assert res.returncode == 2 and "existing file" in res.stderr
    res = _cli("data", "make-benchmark", "--out", str(tmp_path / "new"), "--n-qm9", "0")
    assert res.returncode == 2 and "--n-qm9" in res.stderr and not (tmp_path / "new").exists()


def test_cli_runs_and_overwrites(tmp_path):
    pytest.importorskip("tblite")
    out = tmp_path / "bench"
    out.mkdir()
    (out / "old.txt").write_text("old")
    sizes = ["--n-organic", "1", "--n-reactive-molecules", "1", "--frames-per-molecule", "1", "--n-catalysis", "1"]
    res = _cli(
        "data", "make-benchmark", "--out", str(out), "--overwrite", "--qm9", str(QM9_FIXTURE), *sizes, "--n-qm9", "1"
    )
    assert res.returncode == 0, res.stderr
    assert (out / PROVENANCE_FILE).is_file() and "wall time" in res.stdout
    assert len(open_dataset(out / FILES["bench-reactive"])) == 1


def test_missing_dependencies_name_the_extra(monkeypatch):
    from atomsift.data._benchmark_labels import require_modules

    monkeypatch.setitem(sys.modules, "tblite", None)  # importlib then finds no such module
    monkeypatch.setitem(sys.modules, "qm9pack", None)
    with pytest.raises(ConfigError, match=r'pip install "atomsift\[benchmark\]"') as err:
        require_modules(["tblite", "qm9pack"])
    assert "tblite, qm9pack" in str(err.value)
    res = _cli("data", "make-benchmark", "--out", "unused_dir", pre="sys.modules['tblite'] = None")
    assert res.returncode == 2 and 'pip install "atomsift[benchmark]"' in res.stderr
    assert "Traceback" not in res.stderr and not Path("unused_dir").exists()


def test_check_output_dir_overwrite_modes(tmp_path):
    from atomsift.settings import check_output_dir

    full = tmp_path / "full"
    full.mkdir()
    (full / "x").write_text("x")
    assert check_output_dir(full) == full  # a run folder: reused
    assert check_output_dir(full, True) == full
    with pytest.raises(ConfigError, match="not empty"):
        check_output_dir(full, False)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert check_output_dir(empty, False) == empty
    assert check_output_dir(tmp_path / "a" / "b", False).is_dir()


# -- the shipped files --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def shipped() -> dict:
    return json.loads((SHIPPED / PROVENANCE_FILE).read_text())


def _open_bundled(name: str):
    _, spec = parse_dataset_arg(f"{name}=bundled:{name}")  # the way `atomsift experiment` names datasets
    return open_spec(spec, name)


def test_shipped_files_match_provenance_and_read_as_bundled(shipped):
    from atomsift.data._benchmark_labels import sha256_file

    for name, file in FILES.items():
        path, fmt, _ = resolve_bundled(name)
        assert path == SHIPPED / file and fmt == "extxyz"
        assert sha256_file(path) == shipped["sets"][name]["sha256"]
        ds = _open_bundled(name)
        assert len(ds) == shipped["sets"][name]["n_structures"]
    assert shipped["seed"] == 0 and shipped["qm9_source"]["source"] == "qm9pack"
    total = sum(p.stat().st_size for p in SHIPPED.iterdir())
    assert total < 10 * 2**20


@pytest.mark.parametrize("name", UPSTREAM)
def test_shipped_upstream_labels_are_sane(name, shipped):
    ds = _open_bundled(name)
    elements: set[int] = set()
    max_force = 0.0
    for i in range(len(ds)):
        rec = ds[i]
        assert rec.forces.shape == rec.positions.shape and np.isfinite(rec.forces).all()
        per_atom = rec.energy / len(rec.numbers)  # total xTB energies: tens to a hundred-odd eV per atom
        assert -200.0 < per_atom < -5.0
        max_force = max(max_force, float(np.linalg.norm(rec.forces, axis=1).max()))
        elements.update(rec.numbers.tolist())
    assert 0.5 < max_force < 20.0
    assert max_force == pytest.approx(shipped["sets"][name]["max_force_norm_ev_per_a"], abs=1e-3)
    if name == "bench-catalysis":
        assert {1, 6, 7, 8, 78, 79, 29} <= elements and ds[0].pbc.all()
    else:
        assert elements <= {1, 6, 7, 8, 9} and ds[0].cell is None


def test_shipped_qm9_targets(shipped):
    ds = _open_bundled("bench-qm9")
    hartree = 27.211386  # eV (CODATA 2018, to 6 digits)
    free_atom_u0 = {1: -0.500273, 6: -37.846772, 7: -54.583861, 8: -75.064579, 9: -99.718730}  # QM9 atomref.txt
    for i in range(len(ds)):
        t = ds[i].targets
        assert ds[i].energy is None
        assert -25000.0 < t["U0"] < -1000.0 and 1.0 < t["gap"] < 20.0
        assert t["gap"] == pytest.approx(t["lumo"] - t["homo"], abs=6e-3)  # QM9 rounds each to 1e-4 Ha
        ref = sum(free_atom_u0[int(z)] for z in ds[i].numbers) * hartree
        assert t["U0_atom"] == pytest.approx(t["U0"] - ref, abs=0.01)


def test_shipped_sets_use_disjoint_recorded_qm9_molecules(shipped):
    sets = shipped["sets"]
    organic, reactive, down = (set(sets[n]["qm9_ids"]) for n in ("bench-organic", "bench-reactive", "bench-qm9"))
    assert len(organic) == 600 and len(reactive) == 20 and len(down) == 600
    assert not (organic & down) and not (reactive & down) and not (organic & reactive)
    for name, ids in (("bench-organic", organic), ("bench-reactive", reactive), ("bench-qm9", down)):
        ds = _open_bundled(name)
        assert {ds[i].info["qm9_id"] for i in range(len(ds))} == ids


def _graph_hash(numbers: np.ndarray, positions: np.ndarray) -> str:
    """Bond graph (ASE's natural cutoffs, 1.2x covalent radii) -> networkx's Weisfeiler-Lehman hash."""
    import networkx as nx
    from ase import Atoms
    from ase.neighborlist import NeighborList, natural_cutoffs

    atoms = Atoms(numbers=numbers, positions=positions)
    nl = NeighborList(natural_cutoffs(atoms, mult=1.2), self_interaction=False, bothways=True, skin=0.0)
    nl.update(atoms)
    g = nx.Graph()
    for i, z in enumerate(atoms.get_chemical_symbols()):
        g.add_node(i, element=z)
        for j in nl.get_neighbors(i)[0]:
            g.add_edge(i, int(j))
    return f"{atoms.get_chemical_formula()}:{nx.weisfeiler_lehman_graph_hash(g, node_attr='element', iterations=4)}"


def test_shipped_downstream_molecules_differ_from_upstream_by_bond_graph():
    """Independent of the recorded ids: no downstream molecule has the bond graph of an upstream molecule
    (organic: its rattled geometry; reactive: the graph most of its MD frames share)."""
    organic = _open_bundled("bench-organic")
    upstream = {_graph_hash(r.numbers, r.positions) for r in (organic[i] for i in range(len(organic)))}
    reactive = _open_bundled("bench-reactive")
    frames: dict[str, list[str]] = {}
    for i in range(len(reactive)):
        rec = reactive[i]
        frames.setdefault(rec.info["qm9_id"], []).append(_graph_hash(rec.numbers, rec.positions))
    upstream |= {Counter(hashes).most_common(1)[0][0] for hashes in frames.values()}
    down = _open_bundled("bench-qm9")
    clashes = [
        down[i].info["qm9_id"] for i in range(len(down)) if _graph_hash(down[i].numbers, down[i].positions) in upstream
    ]
    assert not clashes


def _distances(numbers: np.ndarray, positions: np.ndarray) -> np.ndarray:
    """Interatomic distances (N(N-1)/2,) A grouped by element pair (H-H, H-C, ...) and sorted within each:
    the same for any atom order, rotation or translation; comparable between molecules of one formula."""
    d = np.linalg.norm(positions[:, None] - positions[None], axis=-1)
    i, j = np.triu_indices(len(positions), 1)
    pair = np.minimum(numbers[i], numbers[j]) * 100 + np.maximum(numbers[i], numbers[j])
    return d[i, j][np.lexsort((d[i, j], pair))]


def test_shipped_downstream_geometries_are_no_rattled_organic_molecules(shipped):
    """Independent of ids and bonds: no downstream geometry is within 0.25 A (largest change of any sorted
    distance) of an organic one of the same formula; a rattled copy would be (measured: rattled copies at
    the set's sigma differ by at most ~0.11 A, different molecules of one formula by 0.4 A or more)."""
    organic = _open_bundled("bench-organic")
    by_formula: dict[str, list[np.ndarray]] = {}
    for i in range(len(organic)):
        rec = organic[i]
        by_formula.setdefault(rec.class_label, []).append(_distances(rec.numbers, rec.positions))
    down = _open_bundled("bench-qm9")
    sigma = shipped["settings"]["rattle_sigma_a"]
    rng = np.random.default_rng(0)
    clashes = []
    for i in range(len(down)):
        rec = down[i]
        d = _distances(rec.numbers, rec.positions)
        if any(np.abs(d - other).max() < 0.25 for other in by_formula.get(rec.class_label, [])):
            clashes.append(rec.info["qm9_id"])
        rattled = _distances(rec.numbers, rec.positions + rng.normal(0.0, sigma, rec.positions.shape))
        assert np.abs(d - rattled).max() < 0.25  # the check would catch a rattled copy
    assert not clashes


def test_shipped_labels_recomputed_with_tblite(shipped, monkeypatch):
    """A few labels recomputed by tblite's own ASE calculator, with the settings the provenance records."""
    pytest.importorskip("tblite")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    from ase import Atoms
    from tblite.ase import TBLite

    for name, index in (("bench-organic", 0), ("bench-organic", 321), ("bench-reactive", 57), ("bench-catalysis", 5)):
        labels = shipped["sets"][name]["labels"]
        rec = _open_bundled(name)[index]
        atoms = Atoms(numbers=rec.numbers, positions=rec.positions, cell=rec.cell, pbc=rec.cell is not None)
        atoms.calc = TBLite(
            method=labels["method"],
            accuracy=labels["accuracy"],
            electronic_temperature=labels["electronic_temperature_k"],
            verbosity=0,
        )
        # within the SCF tolerance: MD steps start each SCF from the previous step's density, this one does not
        assert atoms.get_potential_energy() == pytest.approx(rec.energy, abs=1e-4)
        np.testing.assert_allclose(atoms.get_forces(), rec.forces, atol=1e-3)
